"""The result of fitting one mixed model to many features."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._spec import Specification

__all__ = ["LMMResult"]


@dataclass
class LMMResult:
    """Per-feature estimates of one mixed model fit to many features.

    Attributes
    ----------
    spec
        The model's :class:`~omixed.lmm.Specification`: formula, fixed-effect encoding and
        names, random terms and their levels.  Everything downstream (correction, tests,
        prediction) evaluates it on data by name.
    reml
        Whether the criterion is REML (else ML).
    criterion
        REML criterion (−2 × restricted log-likelihood) or ML deviance per feature, on lme4's
        scale (``REMLcrit()`` / ``deviance()``).
    theta
        Relative standard deviations θ_g = σ_g / σ, features × random terms.  Every estimate
        is NaN for a feature that did not converge (see ``reason``).
    variance
        Variance components, features × (random terms, ``"Residual"``).
    beta, se
        Fixed effects and their standard errors, features × fixed-effect names; NaN for
        coefficients not estimable from a feature's observed rows.
    blup
        Conditional modes per random term: ``{term: DataFrame(features × levels)}``; NaN for
        levels not observed in a feature.
    converged
        Whether the fit converged (False for features that could not be fit).
    reason
        Why a feature did not converge or could not be fit (empty string otherwise).
    notes
        Adjustments made for a feature that was fit (dropped coefficients, fixed variances).
    n_obs
        Observations used per feature.
    n_iter
        Newton iterations per feature.
    """

    spec: Specification
    reml: bool
    criterion: pd.Series
    theta: pd.DataFrame
    variance: pd.DataFrame
    beta: pd.DataFrame
    se: pd.DataFrame
    blup: dict[str, pd.DataFrame]
    converged: pd.Series
    reason: pd.Series
    notes: pd.Series
    n_obs: pd.Series
    n_iter: pd.Series

    @property
    def feature_names(self) -> pd.Index:
        return self.criterion.index

    @property
    def n_features(self) -> int:
        return len(self.criterion)

    @classmethod
    def from_arrays(
        cls,
        spec: Specification,
        order: np.ndarray,
        arrays: dict[str, np.ndarray],
        index: pd.Index,
        reml: bool,
    ) -> LMMResult:
        """Assemble a result from per-chunk arrays in elimination order (see ``_fit``)."""
        names = list(spec.term_names)
        back = np.argsort(order)  # elimination position of each formula-order term
        n = len(names)
        theta = np.column_stack([arrays["theta"][:, back], arrays["theta"][:, n:]])
        variance = np.column_stack(
            [arrays["variance"][:, back], arrays["covariance"], arrays["sigma2"]]
        )
        extra, cov_names = list(spec.extra_names), list(spec.covariance_names)
        sizes = [spec.terms[i].n_levels for i in order]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        blup = {}
        for pos, term_idx in enumerate(order):
            term = spec.terms[term_idx]
            block = arrays["blup"][:, offsets[pos] : offsets[pos + 1]]
            blup[term.name] = pd.DataFrame(block, index=index, columns=list(term.labels))
        blup = {name: blup[name] for name in names}
        # A feature that did not converge has no estimates that could pass for valid ones.
        failed = ~np.asarray(arrays["converged"], dtype=bool)
        for table in (theta, variance, arrays["beta"], arrays["se"]):
            table[failed] = np.nan
        for table in blup.values():
            table.iloc[failed] = np.nan
        return cls(
            spec=spec,
            reml=reml,
            criterion=pd.Series(arrays["criterion"], index=index, name="criterion"),
            theta=pd.DataFrame(theta, index=index, columns=[*names, *extra]),
            variance=pd.DataFrame(variance, index=index, columns=[*names, *cov_names, "Residual"]),
            beta=pd.DataFrame(arrays["beta"], index=index, columns=list(spec.fixed_names)),
            se=pd.DataFrame(arrays["se"], index=index, columns=list(spec.fixed_names)),
            blup=blup,
            converged=pd.Series(arrays["converged"], index=index, name="converged"),
            reason=pd.Series(arrays["reason"], index=index, name="reason", dtype=object),
            notes=pd.Series(arrays["notes"], index=index, name="notes", dtype=object),
            n_obs=pd.Series(arrays["n_obs"], index=index, name="n_obs"),
            n_iter=pd.Series(arrays["n_iter"], index=index, name="n_iter"),
        )

    _PER_FEATURE = (
        "criterion",
        "theta",
        "variance",
        "beta",
        "se",
        "converged",
        "reason",
        "notes",
        "n_obs",
        "n_iter",
    )

    def subset(self, features) -> LMMResult:
        """The result for ``features`` (names, in that order)."""
        index = pd.Index(features)
        take = self.feature_names.get_indexer(index)
        if (take < 0).any():
            raise KeyError(f"features not in the result: {list(index[take < 0][:5])}")
        return LMMResult(
            spec=self.spec,
            reml=self.reml,
            blup={name: table.iloc[take] for name, table in self.blup.items()},
            **{attr: getattr(self, attr).iloc[take] for attr in self._PER_FEATURE},
        )

    def summary(self) -> pd.DataFrame:
        """One row per feature: criterion, convergence, observations, reason, notes, variance
        components (``var_``), fixed effects (``beta_``) and their standard errors (``se_``)."""
        parts = [
            self.criterion,
            self.converged,
            self.n_obs,
            self.reason,
            self.notes,
            self.variance.add_prefix("var_"),
            self.beta.add_prefix("beta_"),
            self.se.add_prefix("se_"),
        ]
        return pd.concat(parts, axis=1)

    @classmethod
    def concat(cls, results: list[LMMResult], order: pd.Index | None = None) -> LMMResult:
        """Stack results of the same formula fit to different features (e.g. shape buckets).

        The results must be of one model; their random terms may have different levels (the
        buckets of :func:`~omixed.lmm.fit_grouped`).  ``spec`` is the one whose levels hold
        every other's; BLUP tables are aligned on its levels (NaN where a level is absent).
        ``order`` reorders the features.
        """
        if not results:
            raise ValueError("nothing to concatenate")
        first = results[0]
        for res in results[1:]:
            if res.spec.fixed_names != first.spec.fixed_names or res.reml != first.reml:
                raise ValueError("results differ in fixed effects or REML/ML; cannot concatenate")

        index = pd.Index(
            np.concatenate([r.feature_names for r in results]), name=first.feature_names.name
        )
        take = None
        if order is not None:
            take = index.get_indexer(order)
            if (take < 0).any():
                raise ValueError("order names features that are in none of the results")
            index = index[take]

        def stack(tables: list):
            first = tables[0]
            same = first.ndim == 1 or (
                first.dtypes.nunique() <= 1
                and all(t.columns.equals(first.columns) for t in tables[1:])
            )
            if not same:  # e.g. BLUPs of a local factor with more levels in some results
                out = pd.concat(tables)
                return out if take is None else out.iloc[take]
            # One array per table: much cheaper than pd.concat for a handful of small tables.
            values = np.concatenate([t.to_numpy() for t in tables])
            values = values if take is None else values[take]
            if first.ndim == 1:
                return pd.Series(values, index=index, name=first.name, dtype=first.dtype)
            return pd.DataFrame(values, index=index, columns=first.columns)

        # The specification whose terms hold every level: the largest bucket of fit_grouped.
        spec = max((r.spec for r in results), key=lambda s: sum(t.n_levels for t in s.terms))
        for res in results:
            if not res.spec.same_fixed_and_terms(spec) or any(
                not set(a.labels) <= set(b.labels)
                for a, b in zip(res.spec.terms, spec.terms, strict=True)
            ):
                raise ValueError("results of different models cannot be concatenated")
        blup = {
            term.name: stack([r.blup[term.name] for r in results]).reindex(
                columns=list(term.labels)
            )
            for term in spec.terms
        }
        return cls(
            spec=spec,
            reml=first.reml,
            blup=blup,
            **{attr: stack([getattr(r, attr) for r in results]) for attr in cls._PER_FEATURE},
        )
