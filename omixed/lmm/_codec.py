"""A JSON encoding of model specifications that keeps Python types and never runs code.

A fitted model travels in h5ad files and between workflow jobs.  Pickle would run code when
loaded; plain JSON would lose types that matter here (integer dictionary keys of formulaic's
``poly`` state, tuples of levels, numpy arrays, formulaic's contrast classes).  Values are tagged
``{"__type__": ..., ...}`` objects instead, and :func:`loads` rebuilds only the types listed in
this module: formulaic's contrast dataclasses and enums, numpy arrays, tuples and dicts.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any

import numpy as np
from formulaic.parser.types import Factor
from formulaic.transforms import contrasts
from formulaic.utils.sentinels import Sentinel

__all__ = ["dumps", "loads"]

# The only classes loads() instantiates.
_DATACLASSES = {
    cls.__name__: cls
    for cls in (
        contrasts.ContrastsState,
        contrasts.TreatmentContrasts,
        contrasts.SumContrasts,
        contrasts.HelmertContrasts,
        contrasts.DiffContrasts,
        contrasts.PolyContrasts,
        contrasts.CustomContrasts,
    )
}
_ENUMS = {"Factor.Kind": Factor.Kind, "Sentinel": Sentinel}


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.generic):
        return _encode(value.item())
    if isinstance(value, int | float):
        return value
    if isinstance(value, enum.Enum):
        name = next((k for k, v in _ENUMS.items() if isinstance(value, v)), None)
        if name is None:
            raise TypeError(f"cannot encode enum {value!r}")
        return {"__type__": "enum", "enum": name, "name": value.name}
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return {"__type__": "array", "dtype": "object", "values": _encode(value.tolist())}
        return {"__type__": "array", "dtype": value.dtype.str, "values": value.tolist()}
    if isinstance(value, tuple):
        return {"__type__": "tuple", "items": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {"__type__": "dict", "items": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if dataclasses.is_dataclass(value) and type(value).__name__ in _DATACLASSES:
        fields = {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"__type__": "dataclass", "class": type(value).__name__, "fields": fields}
    raise TypeError(f"cannot encode {type(value).__name__} {value!r} in a model specification")


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    kind = value.get("__type__")
    if kind == "tuple":
        return tuple(_decode(v) for v in value["items"])
    if kind == "dict":
        return {_hashable(_decode(k)): _decode(v) for k, v in value["items"]}
    if kind == "array":
        if value["dtype"] == "object":
            return np.array(_decode(value["values"]), dtype=object)
        return np.array(value["values"], dtype=np.dtype(value["dtype"]))
    if kind == "enum":
        return _ENUMS[value["enum"]][value["name"]]
    if kind == "dataclass":
        cls = _DATACLASSES.get(value["class"])
        if cls is None:
            raise ValueError(f"unknown class {value['class']!r} in a model specification")
        return cls(**{k: _decode(v) for k, v in value["fields"].items()})
    raise ValueError(f"not a model-specification value: {value!r}")


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def dumps(value: Any) -> str:
    """``value`` as tagged JSON (see the module notes)."""
    return json.dumps(_encode(value), allow_nan=True, separators=(",", ":"))


def loads(text: str) -> Any:
    """The value :func:`dumps` wrote; only the types listed in this module are rebuilt."""
    return _decode(json.loads(text))
