"""Random-effects meta-analysis of per-feature effects, vectorized over features.

Notation, for one feature (every array in this module is features × studies, and every sum runs
over the studies where that feature was observed):

``y_j``, ``v_j = se_j²``
    effect estimate and sampling variance in study ``j``; ``k`` studies observed.
``τ²``
    between-study variance; ``y_j ~ N(μ, v_j + τ²)``.
``w_j(τ²) = 1 / (v_j + τ²)``, ``S = Σ w_j``, ``μ(τ²) = Σ w_j y_j / S``
    inverse-variance weights, their sum and the weighted mean; ``w⁰ = w(0)``.
``Q(τ²) = Σ w_j (y_j − μ)²``
    generalised Cochran statistic; Cochran's ``Q`` is ``Q(0)``.

Absent studies are carried as ``y = 0, v = 1`` with a 0/1 mask ``m`` folded into the weights
(``w = m / (v + τ²)``), so every sum is a plain row sum with no NaN arithmetic, and the iterative
estimators update all features at once, dropping each from the active set once it has converged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import special

_LONG_COLUMNS = ("feature", "study", "estimate", "se")
_RESULT_COLUMNS = [
    "estimate",
    "se",
    "stat",
    "pvalue",
    "ci_low",
    "ci_high",
    "tau2",
    "Q",
    "Q_pvalue",
    "I2",
    "H2",
    "k",
    "df",
    "converged",
]


class _Studies(NamedTuple):
    """Masked features × studies data; absent entries hold ``y = 0, v = 1, m = 0``."""

    y: np.ndarray
    v: np.ndarray
    m: np.ndarray

    def rows(self, idx: np.ndarray) -> _Studies:
        return _Studies(self.y[idx], self.v[idx], self.m[idx])


class _Pooled(NamedTuple):
    """Weights ``w``, their sum ``S``, weighted mean ``μ`` and residuals ``r = y − μ``."""

    w: np.ndarray
    S: np.ndarray
    mu: np.ndarray
    r: np.ndarray


def _pool(d: _Studies, tau2: np.ndarray) -> _Pooled:
    """Inverse-variance pooling at ``τ²``: ``w = m/(v + τ²)``, ``μ = Σ w y / Σ w``."""
    w = d.m / (d.v + tau2[:, None])
    S = w.sum(axis=1)
    mu = (w * d.y).sum(axis=1) / S
    return _Pooled(w, S, mu, d.y - mu[:, None])


def _gen_q(p: _Pooled) -> np.ndarray:
    """Generalised Cochran statistic ``Q(τ²) = Σ w (y − μ)²``."""
    return (p.w * p.r**2).sum(axis=1)


def _scale(d: _Studies) -> np.ndarray:
    """Mean sampling variance, the natural unit of ``τ²`` (keeps tolerances scale-free)."""
    return (d.m * d.v).sum(axis=1) / d.m.sum(axis=1)


def _tau2_dl(d: _Studies, **_: float) -> tuple[np.ndarray, np.ndarray]:
    """DerSimonian–Laird: ``τ² = max(0, (Q − (k − 1)) / (S⁰ − Σ w⁰² / S⁰))``."""
    p = _pool(d, np.zeros(len(d.y)))
    k = d.m.sum(axis=1)
    c = p.S - (p.w**2).sum(axis=1) / p.S
    tau2 = np.maximum(0.0, (_gen_q(p) - (k - 1)) / c)
    return tau2, np.ones(len(tau2), dtype=bool)


def _tau2_pm(d: _Studies, *, max_iter: int, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Paule–Mandel: the root of ``Q(τ²) = k − 1``, or 0 when ``Q(0) ≤ k − 1``.

    ``Q(τ²)`` is convex and decreasing (``dQ/dτ² = −Σ w² (y − μ)²``), so Newton's method started
    at ``τ² = 0`` climbs monotonically to the root without overshooting; no bracketing needed.
    """
    n = len(d.y)
    k = d.m.sum(axis=1)
    scale = _scale(d)
    tau2 = np.zeros(n)
    converged = _gen_q(_pool(d, tau2)) <= k - 1
    for _ in range(max_iter):
        act = np.flatnonzero(~converged)
        if act.size == 0:
            break
        p = _pool(d.rows(act), tau2[act])
        step = (_gen_q(p) - (k[act] - 1)) / (p.w**2 * p.r**2).sum(axis=1)
        tau2[act] += step
        converged[act] = np.abs(step) <= tol * (tau2[act] + scale[act])
    return tau2, converged


def _reml_loglik(d: _Studies, tau2: np.ndarray) -> np.ndarray:
    """Restricted log-likelihood up to a constant: ``−½ (Σ log(v + τ²) + log S + Q(τ²))``."""
    p = _pool(d, tau2)
    logdet = (d.m * np.log(d.v + tau2[:, None])).sum(axis=1)
    return -0.5 * (logdet + np.log(p.S) + _gen_q(p))


def _tau2_reml(d: _Studies, *, max_iter: int, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """REML: maximise the restricted likelihood over ``τ² ≥ 0`` by safeguarded Newton steps.

    With ``P = W − w wᵀ/S`` and ``u = Py = w r`` the derivatives of ``ℓ_R`` are
    ``ℓ' = ½ (uᵀu − tr P)`` and ``ℓ'' = ½ tr P² − uᵀPu``, where ``uᵀu = Σ w² r²``,
    ``uᵀPu = Σ w u² − (Σ w u)²/S``, ``tr P = S − Σ w²/S`` and
    ``tr P² = Σ w² − 2 Σ w³/S + (Σ w²/S)²``. The step is Newton's ``−ℓ'/ℓ''`` where ``ℓ`` is
    locally concave and the Fisher-scoring step ``ℓ' / (½ tr P²)`` (metafor's ``rma``) elsewhere;
    plain Fisher scoring can oscillate for hundreds of iterations when the information is low.
    Each step is projected onto ``τ² ≥ 0`` and halved while it lowers ``ℓ_R`` (beyond rounding),
    so the iteration is an ascent method that cannot cycle. When the slope points down, ``τ² = 0``
    is tried too (near the boundary ``ℓ_R`` is often convex and the quadratic steps crawl), so a
    feature whose maximum is on the boundary lands on exactly 0. Convergence needs a small
    Newton step at a concave point, or a boundary point whose slope points out of the domain.
    Starts at the DerSimonian–Laird value.
    """
    tau2, _ = _tau2_dl(d)
    scale = _scale(d)
    ll = _reml_loglik(d, tau2)
    ll_zero = _reml_loglik(d, np.zeros(len(tau2)))
    converged = np.zeros(len(tau2), dtype=bool)
    for _ in range(max_iter):
        act = np.flatnonzero(~converged)
        if act.size == 0:
            break
        da, old = d.rows(act), tau2[act]
        p = _pool(da, old)
        u = p.w * p.r
        w2 = (p.w**2).sum(axis=1)
        tr_p = p.S - w2 / p.S
        tr_pp = w2 - 2 * (p.w**3).sum(axis=1) / p.S + (w2 / p.S) ** 2
        score = 0.5 * ((u**2).sum(axis=1) - tr_p)
        curvature = (p.w * u**2).sum(axis=1) - (p.w * u).sum(axis=1) ** 2 / p.S - 0.5 * tr_pp
        info = np.where(curvature > 0, curvature, 0.5 * tr_pp)  # −ℓ'' if concave, else Fisher
        new = np.maximum(0.0, old + score / info)
        # Converged when the step to the local maximum (Newton's, where ℓ_R is concave, or the
        # projection onto the boundary) is below tolerance.
        small = np.abs(new - old) <= tol * (old + scale[act])
        ll_new = _reml_loglik(da, new)
        slack = 1e-9 * (1 + np.abs(ll[act]))  # rounding in ℓ_R must not reject tiny steps
        for _ in range(30):  # step halving; 2⁻³⁰ of a step is below any useful tolerance
            worse = np.flatnonzero(ll_new < ll[act] - slack)
            if worse.size == 0:
                break
            new[worse] = 0.5 * (old[worse] + new[worse])
            ll_new[worse] = _reml_loglik(da.rows(worse), new[worse])
        # Near the boundary ℓ_R is often convex and the quadratic steps crawl: try 0 directly.
        zero = (score < 0) & (ll_zero[act] > ll_new + slack)
        new[zero], ll_new[zero] = 0.0, ll_zero[act][zero]
        tau2[act], ll[act] = new, ll_new
        converged[act] = small & ((curvature > 0) | (new == 0)) & ~zero
    return tau2, converged


_TAU2: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "dl": _tau2_dl,
    "pm": _tau2_pm,
    "reml": _tau2_reml,
}


def _as_wide(
    estimates: pd.DataFrame | np.ndarray, ses: pd.DataFrame | np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, pd.Index]:
    """Return estimates and standard errors as features × studies float arrays, and the index."""
    if ses is None:
        if not isinstance(estimates, pd.DataFrame) or not set(_LONG_COLUMNS) <= set(
            estimates.columns
        ):
            got = list(estimates.columns) if isinstance(estimates, pd.DataFrame) else "an array"
            raise ValueError(
                "ses is required for wide (features x studies) input; long input must be a "
                f"DataFrame with columns {list(_LONG_COLUMNS)} (got {got})"
            )
        dup = estimates.duplicated(["feature", "study"])
        if dup.any():
            pairs = estimates.loc[dup, ["feature", "study"]].head(5).to_records(index=False)
            raise ValueError(f"duplicated (feature, study) pairs, e.g. {pairs.tolist()}")
        features = pd.Index(pd.unique(estimates["feature"]), name="feature")
        studies = pd.unique(estimates["study"])
        wide = estimates.pivot(index="feature", columns="study", values=["estimate", "se"])
        wide = wide.reindex(index=features)
        y = wide["estimate"].reindex(columns=studies).to_numpy(dtype=float)
        se = wide["se"].reindex(columns=studies).to_numpy(dtype=float)
        return y, se, features

    frames = [x for x in (estimates, ses) if isinstance(x, pd.DataFrame)]
    if len(frames) == 2 and not (
        estimates.index.equals(ses.index) and estimates.columns.equals(ses.columns)
    ):
        raise ValueError("estimates and ses DataFrames must have identical index and columns")
    y = np.atleast_2d(np.asarray(estimates, dtype=float))
    se = np.atleast_2d(np.asarray(ses, dtype=float))
    if y.ndim != 2 or y.shape != se.shape:
        raise ValueError(
            f"estimates {y.shape} and ses {se.shape} must both be features x studies, same shape"
        )
    return y, se, frames[0].index if frames else pd.RangeIndex(y.shape[0])


def _validate(y: np.ndarray, se: np.ndarray) -> np.ndarray:
    """Check the estimate/SE pairs and return the observed mask (both present)."""
    y_nan, se_nan = np.isnan(y), np.isnan(se)
    if (y_nan != se_nan).any():
        raise ValueError(
            f"{int((y_nan != se_nan).sum())} entries have an estimate without a standard error "
            "or vice versa; a study must give both or neither (NaN) for each feature"
        )
    observed = ~y_nan
    if np.isinf(y[observed]).any() or np.isinf(se[observed]).any():
        raise ValueError("estimates and ses must be finite or NaN (absent)")
    if (se[observed] <= 0).any():
        raise ValueError(f"ses must be > 0; found {int((se[observed] <= 0).sum())} values <= 0")
    return observed


def meta(
    estimates: pd.DataFrame | np.ndarray,
    ses: pd.DataFrame | np.ndarray | None = None,
    *,
    method: str = "reml",
    knapp_hartung: bool = False,
    level: float = 0.95,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> pd.DataFrame:
    r"""Random-effects meta-analysis of every feature across studies, vectorized over features.

    For each feature, with ``k`` studies giving estimates :math:`y_j` and sampling variances
    :math:`v_j = \mathrm{se}_j^2`, fits :math:`y_j \sim N(\mu, v_j + \tau^2)`:

    - between-study variance :math:`\tau^2 \ge 0` by

      - ``"dl"`` DerSimonian–Laird: :math:`\max\{0, (Q - (k-1)) / (S^0 - \sum w_j^{0\,2}/S^0)\}`
        with :math:`w^0_j = 1/v_j`, :math:`S^0 = \sum w^0_j`;
      - ``"pm"`` Paule–Mandel: the root of :math:`\sum w_j (y_j - \hat\mu)^2 = k - 1` with
        :math:`w_j = 1/(v_j + \tau^2)` (0 if there is none), by Newton's method;
      - ``"reml"`` restricted maximum likelihood (metafor's ``rma`` default), by Newton or
        Fisher-scoring steps with step halving, all features iterated together;

    - pooled estimate :math:`\hat\mu = \sum w_j y_j / \sum w_j`, with
      :math:`\mathrm{SE} = (\sum w_j)^{-1/2}` and a z test, or with ``knapp_hartung=True``
      :math:`\mathrm{SE} = \{\sum w_j (y_j - \hat\mu)^2 / ((k-1) \sum w_j)\}^{1/2}` and a t test on
      ``k − 1`` degrees of freedom (not truncated at the z-based SE, as metafor's ``test="knha"``);
      ``ci_low, ci_high`` are :math:`\hat\mu \mp c\,\mathrm{SE}` with ``c`` the matching quantile;
    - heterogeneity: Cochran's :math:`Q = \sum w^0_j (y_j - \hat\mu^0)^2` with its
      :math:`\chi^2_{k-1}` p-value, and, as in metafor, with the typical sampling variance
      :math:`s^2 = (k-1) S^0 / ((S^0)^2 - \sum w_j^{0\,2})`,
      :math:`I^2 = 100\,\tau^2/(\tau^2 + s^2)` (percent) and :math:`H^2 = (\tau^2 + s^2)/s^2`.

    Parameters
    ----------
    estimates
        Either a features × studies DataFrame or array of per-study effects (NaN where a feature
        is absent from a study; a 1-D array is one feature), with ``ses`` of the same shape; or,
        with ``ses=None``, a long DataFrame with columns ``feature, study, estimate, se``
        (one row per observed pair; pairs not listed are absent).
    ses
        Standard errors matching wide ``estimates``, > 0; NaN exactly where ``estimates`` is NaN.
    method
        ``"reml"``, ``"pm"`` or ``"dl"`` (case-insensitive).
    knapp_hartung
        Use the Knapp–Hartung SE and a t distribution with ``k − 1`` df for test and CI.
    level
        Confidence level of the interval.
    max_iter
        Iteration limit of the ``"pm"``/``"reml"`` solvers; features that reach it get
        ``converged=False``.
    tol
        Convergence when a ``τ²`` update is at most ``tol · (τ² + mean v)``.

    Returns
    -------
    DataFrame indexed by feature (the index of ``estimates``, the order of first appearance for
    long input, or 0..n−1 for arrays) with columns ``estimate, se, stat, pvalue, ci_low, ci_high,
    tau2, Q, Q_pvalue, I2, H2, k, df, converged``. ``df = k − 1``. A feature seen in one study
    gets that study's estimate, SE and z test, NaN heterogeneity columns and
    ``converged=False``; a feature seen in none is all NaN with ``k=0``. With ``knapp_hartung``,
    identical estimates in every study give ``se = 0`` and an infinite (or NaN) ``stat``.

    Examples
    --------
    Three features (rows) measured in four studies (columns); the third feature is missing from
    the last study.

    >>> import numpy as np
    >>> y = np.array([[0.5, 0.7, 0.2, 0.6], [0.0, 0.1, -0.1, 0.0], [1.0, 2.0, 1.5, np.nan]])
    >>> se = np.array([[0.1, 0.2, 0.15, 0.1], [0.2, 0.2, 0.2, 0.2], [0.3, 0.3, 0.3, np.nan]])
    >>> meta(y, se)[["estimate", "se", "tau2", "I2", "k"]].round(3)
       estimate     se   tau2      I2  k
    0     0.497  0.091  0.016  50.004  4
    1     0.000  0.100  0.000   0.000  4
    2     1.500  0.289  0.160  64.000  3

    Long input (one row per observed feature and study), DerSimonian–Laird with Knapp–Hartung;
    feature ``b`` is in one study only, so it keeps that study's estimate and is flagged:

    >>> import pandas as pd
    >>> long = pd.DataFrame(
    ...     {"feature": ["a", "a", "a", "b"], "study": ["s1", "s2", "s3", "s1"],
    ...      "estimate": [0.2, 0.5, 0.3, 1.0], "se": [0.1, 0.1, 0.1, 0.5]}
    ... )
    >>> res = meta(long, method="dl", knapp_hartung=True)
    >>> res[["estimate", "se", "pvalue", "tau2", "converged"]].round(3)  # doctest: +ELLIPSIS
             estimate     se  pvalue   tau2  converged
    feature...
    a           0.333  0.088   0.063  0.013       True
    b           1.000  0.500   0.046    NaN      False
    """
    method = method.lower()
    if method not in _TAU2:
        raise ValueError(f"method must be one of {sorted(_TAU2)}, got {method!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    y, se, index = _as_wide(estimates, ses)
    observed = _validate(y, se)
    k = observed.sum(axis=1)
    res = {c: np.full(len(k), np.nan) for c in _RESULT_COLUMNS}
    res["converged"] = np.zeros(len(k), dtype=bool)

    one = k == 1  # nansum picks out the single observed value of each such row
    res["estimate"][one] = np.nansum(y[one], axis=1)
    res["se"][one] = np.nansum(se[one], axis=1)

    many = k >= 2
    if many.any():
        d = _Studies(np.where(observed, y, 0.0)[many], np.where(observed, se**2, 1.0)[many],
                     observed[many].astype(float))  # fmt: skip
        km = k[many]
        tau2, res["converged"][many] = _TAU2[method](d, max_iter=max_iter, tol=tol)
        fe, re = _pool(d, np.zeros(len(km))), _pool(d, tau2)
        q = _gen_q(fe)
        s2 = (km - 1) * fe.S / (fe.S**2 - (fe.w**2).sum(axis=1))
        res["estimate"][many] = re.mu
        res["se"][many] = (
            np.sqrt(_gen_q(re) / ((km - 1) * re.S)) if knapp_hartung else 1 / np.sqrt(re.S)
        )
        res["tau2"][many] = tau2
        res["Q"][many] = q
        res["Q_pvalue"][many] = special.chdtrc(km - 1, q)  # χ² upper tail
        res["I2"][many] = 100 * tau2 / (tau2 + s2)
        res["H2"][many] = (tau2 + s2) / s2

    # A zero Knapp–Hartung SE (all estimates identical) gives an infinite or undefined statistic.
    with np.errstate(divide="ignore", invalid="ignore"):
        res["stat"] = res["estimate"] / res["se"]
    use_t = many & knapp_hartung  # a single-study feature keeps its own z test
    t_df = np.where(use_t, k - 1.0, 1.0)  # the 1 is a placeholder where the normal is used
    z = np.abs(res["stat"])
    # scipy.special's t and normal tails and quantiles: ufuncs, cheap for one feature or many
    res["pvalue"] = 2 * np.where(use_t, special.stdtr(t_df, -z), special.ndtr(-z))
    q = 0.5 + level / 2
    crit = np.where(use_t, special.stdtrit(t_df, q), special.ndtri(q))
    res["ci_low"] = res["estimate"] - crit * res["se"]
    res["ci_high"] = res["estimate"] + crit * res["se"]
    res["k"] = k
    res["df"] = np.where(k > 0, k - 1.0, np.nan)
    return pd.DataFrame(res, index=index, columns=_RESULT_COLUMNS)
