"""Tests of fixed-effect contrasts: Satterthwaite degrees of freedom and limma's variance squeezing.

Notation (as in :mod:`._objective`)
-----------------------------------
For one feature fit by REML at θ̂, with ``n`` observations, ``p`` estimable fixed effects,
``ν = n − p``, ``Ω(θ) = S A S + diag(I_q, 0, 0)`` built from the augmented cross-product
``A = [Z X y]' W [Z X y]``, ``N`` its leading ``(q+p)`` block (everything but the response) and
``r²(θ)`` the penalized residual sum of squares::

    log|N| = log|M| + log|R_X|²,    (N⁻¹)_ββ = (R_X'R_X)⁻¹,    r² = min_x w'Ω w,  w = (−x, 1).

Satterthwaite (lmerTest; Kuznetsova, Brockhoff & Christensen 2017, JSS 82(13))
-----------------------------------------------------------------------------------
The variance parameters are ``varpar = (θ_1 … θ_G, σ)`` in the fit's elimination order (the terms
of the factor eliminated first, then the others by decreasing number of levels; lme4 orders them
all by decreasing number of levels, which leaves df unchanged).  lmerTest's ``devfun_vp`` is the
REML deviance at *given* (θ, σ), not profiled::

    dev(θ, σ) = log|N(θ)| + r²(θ)/σ² + ν log(2πσ²),

``Cov(β̂)(θ, σ) = σ² (R_X'R_X)⁻¹`` and, for a contrast vector ``l``::

    A  = 2 H⁺,   H = ∂²dev/∂varpar² at (θ̂, σ̂),   σ̂² = r²(θ̂)/ν
    g  = ∂(l'Cov(β̂)l)/∂varpar
    df = 2 (l'Cov(β̂)l)² / (g'A g).

``H⁺`` is the Moore–Penrose inverse over the eigenvalues above 1e-8 (negative ones are dropped
too), as lmerTest's ``as_lmerModLmerTest``; here H is taken with σ in units of the feature's
standard deviation (the fit's standardization), so the cut does not depend on the data's units.
On the boundary (θ_g = 0) every parameter is kept: dev is even in θ_g, so its θ_g row of H is
the curvature there and g_g = 0.  A term seen at fewer than two levels of a feature has no
variance parameter (its θ is fixed at 0 by the fit); its row and column of H are zeroed, which
the pseudo-inverse then ignores.

lmerTest differentiates numerically (numDeriv); here every derivative is analytic.  With
``D_a = ∂Ω/∂θ_a``, ``D_ab = ∂²Ω/∂θ_a∂θ_b`` (Ω is quadratic in θ), ``N_a``, ``N_ab`` their leading
blocks, ``P = N⁻¹`` and ``w = (−P b, 1)`` the minimizer of ``r²``::

    ∂ log|N|  = tr(P N_a),         ∂² log|N| = tr(P N_ab) − tr(P N_a P N_b)
    ∂ r²      = w'D_a w,           ∂² r²     = w'D_ab w − 2 (D_a w)_N' P (D_b w)_N
    ∂ l'(R_X'R_X)⁻¹l = −v'N_a v,   v = P l̃   (l̃ = l padded with zeros on the random columns),

(the second line is the envelope theorem for a minimum of a quadratic form), and the σ
derivatives of dev are closed-form.  As in :mod:`._objective`, the first term is eliminated
in closed form: a scalar term's block of Ω is diagonal, ``1 + θ₁² c_i``, so everything above is
computed on the Schur complement ``Ω̃ = S_r Ã(θ₁) S_r + I``, ``Ã = A_rr − A_r1 diag(s) A_1r``,
``s_i = θ₁²/(1 + θ₁² c_i)``, with ``log|N| = Σ_i log(1 + θ₁² c_i) + log|Ñ|``.  Every feature is a
slice of one batched array: there is no loop over features.

Correlated terms ``(x|g)`` (see :mod:`._dense`): varpar is the fit's θ (each term's diagonal
entry of its relative Cholesky factor ``T``, then the off-diagonals ``T_ac``; lme4 lists the same
numbers column-wise, so only the order differs, which leaves df unchanged) and σ.  Term 1 is
eliminated level by level as in the fit, so ``P``, ``x`` and ``r²`` come from the small Schur
complement ``Ω̃`` and term 1's modes per level.  Only two kinds of derivative are needed there:
quadratic forms ``z'D_a z`` (``∂r² = w'D_a w`` and ``v'N_a v``), which the per-level pieces of
:mod:`._dense` give in closed form, and the θ block of H, which is the REML criterion's analytic
θ-Hessian (:func:`~._dense.dense_criterion`, ``∂²log|N| + ν ∂²r²/r² − ν ∂r²∂r²'/r⁴``) plus
``ν ∂r²∂r²'/r⁴``, since ``dev`` holds σ fixed at ``σ̂² = r²/ν``.  A correlation has no
parameter when either of its components has none.

Variance squeezing (limma; Smyth 2004, SAGMB 3(1) art. 3)
----------------------------------------------------------
:func:`squeeze_var` is limma's ``squeezeVar`` with its moment estimator of the prior (``fitFDist``,
``legacy = TRUE``): ``s²_i ~ s₀² F(d_i, d₀)``, fitted by the mean and variance of
``log s²_i − ψ(d_i/2) + log(d_i/2)`` with ``ψ'`` inverted by Newton's method, and posterior
``s̃²_i = (d_i s²_i + d₀ s₀²)/(d_i + d₀)``.

Moderated tests (``moderate=True``) squeeze the residual variances ``σ̂²_i`` with msqrob2's
residual df of a mixed model, ``d_i = RSS_i/σ̂²_i`` (RSS of the conditional residuals
``y − Xβ̂ − Zb̂``, i.e. ``ν (r² − ‖u‖²)/r²``).  Only σ² is moderated: ``Cov(β̂) = σ² C(θ̂)`` is
rescaled by ``σ̃²/σ̂²`` with θ̂ kept, as msqrob2 does.  msqrob2's df, ``d_i + d₀``, suit
contrasts whose variance comes from σ² alone; for a contrast between levels of a random factor
(condition across donors) ``df_satterthwaite + d₀`` is anticonservative (measured on null data,
4 batches × 8 donors × 3 samples, d₀ ≈ 110: 9.5 % of p-values below 0.05).  The moderated
Satterthwaite df therefore count the prior as ``d₀`` extra observations of σ: ``4d₀/σ̂²`` (the
σσ entry of H from ``d₀`` residual df) is added to H before inverting.  This gives exactly
limma's ``ν + d₀`` for a model without random effects and leaves a contrast driven by a
random-effect variance near its lmerTest df.  Both df are capped at the pooled ``Σ d_i``, as
limma caps ``df.total``.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd
from scipy import special

from ._contrasts import contrast_vector, estimable
from ._crossprod import Cross
from ._dense import (
    DenseLayout,
    DenseReduced,
    _mm,
    _quad,
    _State,
    _state,
    _sym,
    _t,
    _trace,
    dense_criterion,
    reduce_dense,
)
from ._design import Design, plan_design
from ._fit import _check_response, _level_counts, prepare
from ._grouped import bucket_problems
from ._moderation import squeeze_var
from ._objective import Layout, reduce, solve_leading

if TYPE_CHECKING:
    from ._result import LMMResult

__all__ = [
    "contrast_moments",
    "contrast_moments_grouped",
    "satterthwaite",
    "satterthwaite_grouped",
    "t_table",
]

_EIGEN_TOL = 1e-8  # lmerTest's tolerance for a positive eigenvalue of the deviance Hessian
_CHUNK_BYTES = 64 * 2**20
_COLUMNS = ("estimate", "var", "df_residual", "df_effective", "sigma2", "n_obs")


# ----------------------------------------------------------------------------------------------
# The reduced system and its derivatives


class _System(NamedTuple):
    """The reduced system of a chunk at θ and its θ-derivatives (see the module docstring).

    ``e`` is the size of ``Ñ`` (rest random columns + fixed effects), ``dr = e + 1``.
    """

    P: np.ndarray  # (m, e, e): Ñ⁻¹
    x: np.ndarray  # (m, e): minimizer of r²: spherical random effects of the rest terms, β̂
    w: np.ndarray  # (m, dr): (−x, 1)
    r2: np.ndarray  # (m,): penalized residual sum of squares
    u2: np.ndarray  # (m,): ‖u‖², all spherical random effects
    D: list[np.ndarray]  # k × (m, dr, dr): ∂Ω̃/∂θ_a
    D2: dict[tuple[int, int], np.ndarray]  # a ≤ b: ∂²Ω̃/∂θ_a∂θ_b
    ell2: np.ndarray  # (m,): ∂²/∂θ₁² Σ log(1 + θ₁² c_i)


def _system(cross: Cross, theta: np.ndarray, layout: Layout) -> _System:
    """Eliminate term 1 from ``Ω = S A S + diag(I, 0, 0)`` at θ; solve; differentiate in θ."""
    m = cross.n_features
    q, k = layout.q, layout.n_theta
    q1 = layout.sizes[0] if k else 0
    qr, dr = q - q1, layout.dim - q1
    rest = layout.term_of()[q1:]
    s = np.ones((m, dr))
    s[:, :qr] = theta[:, rest]
    SS = s[:, :, None] * s[:, None, :]

    red = reduce(cross, Layout(layout.sizes, layout.p))  # term 1 by level
    At = red.A
    At1 = At11 = None
    ell2 = np.zeros(m)
    if k:
        t1, c = theta[:, :1], red.counts
        den = 1.0 + t1**2 * c
        # s, ∂s/∂θ₁ and ∂²s/∂θ₁² of s = θ₁²/(1 + θ₁²c), weighted at once.
        s1 = [t1**2 / den, 2.0 * t1 / den**2, 2.0 * (1.0 - 3.0 * t1**2 * c) / den**3]
        W = red.weighted(np.stack(s1, axis=1))
        At, At1, At11 = At - W[:, 0], -W[:, 1], -W[:, 2]  # Ã, ∂Ã/∂θ₁, ∂²Ã/∂θ₁²
        ell2 = (2.0 * c * (1.0 - t1**2 * c) / den**2).sum(axis=1)

    P, x, r2 = solve_leading(At * SS, qr)
    w = np.concatenate([-x, np.ones((m, 1))], axis=1)
    u2 = (x[:, :qr] ** 2).sum(axis=1)
    if k:  # term 1's modes from its (diagonal) rows of the full system
        u1 = t1 * cross.times(s * w) / den
        u2 = u2 + (u1**2).sum(axis=1)

    # Ω̃ = S Ã(θ₁) S + I: θ₁ enters through Ã, the other θ_a through S (rows/columns E_a).
    E = np.zeros((k, dr))
    E[:, :qr] = rest == np.arange(k)[:, None]
    AtS = At * s[:, None, :]
    D = [At1 * SS] if k else []
    D += [_sym(E[a][None, :, None] * AtS) for a in range(1, k)]
    D2 = {}
    for a in range(k):
        for b in range(a, k):
            if b == 0:
                D2[a, b] = At11 * SS
            elif a == 0:
                D2[a, b] = _sym(E[b][None, :, None] * At1 * s[:, None, :])
            else:
                D2[a, b] = _sym(E[a][None, :, None] * At * E[b][None, None, :])
    return _System(P, x, w, r2, u2, D, D2, ell2)


class _DenseSystem(NamedTuple):
    """The system of correlated terms at θ, term 1 eliminated level by level (see :mod:`._dense`).

    ``P``, ``x``, ``w``, ``r2`` and ``u2`` as in :class:`_System`, on ``Ω̃``; ``Q = I − PC`` and
    ``G = TN`` are term 1's per-level pieces ``(b, b, m, L)``.
    """

    P: np.ndarray
    x: np.ndarray
    w: np.ndarray
    r2: np.ndarray
    u2: np.ndarray
    theta: np.ndarray
    red: DenseReduced
    st: _State
    Q: np.ndarray
    G: np.ndarray


def _dense_system(cross: Cross, theta: np.ndarray, dense: DenseLayout) -> _DenseSystem:
    """:func:`_system` for correlated terms: term 1 eliminated as the fit does (:mod:`._dense`).

    Term 1's spherical modes follow per level, ``u_l = G_l'B_l S_r w``.
    """
    red = reduce_dense(cross, dense)
    st = _state(theta, red, dense)
    m = red.A.shape[0]
    qr = dense.elimination.qr
    P, x, r2 = solve_leading(st.Om.copy(), qr)
    w = np.concatenate([-x, np.ones((m, 1))], axis=1)
    b = red.C.shape[0]
    G = _mm(st.W, st.Rinv)
    Q = -_mm(_mm(st.W, _t(st.W)), red.C)
    Q[np.arange(b), np.arange(b)] += 1.0
    u1 = np.einsum("iml,ijml->jml", _level_rows(st, red, w), G)
    u2 = (x[:, :qr] ** 2).sum(axis=1) + (u1**2).sum(axis=(0, 2))
    return _DenseSystem(P, x, w, r2, u2, theta, red, st, Q, G)


def _level_rows(st: _State, red: DenseReduced, z: np.ndarray) -> np.ndarray:
    """``B_l S_r z`` per level, ``(b, m, L)``."""
    return np.einsum("idml,md->iml", red.B, np.einsum("mij,mj->mi", st.S, z))


def _dense_forms(sys: _DenseSystem, dense: DenseLayout, z: np.ndarray) -> np.ndarray:
    """``z'D_a z`` for every parameter ``a`` (the layout's order), ``D_a = ∂Ω̃/∂θ_a``.

    For term 1's entry ``(i, j)`` of ``T``, ``D_a = −S_r' sym(Σ_l U_{:i}V_{:j}') S_r`` (module
    notes of :mod:`._dense`) gives ``−2 Σ_l (z'S_r'U_l)_i (z'S_r'V_l)_j`` with ``U_l = B_l'Q_l``,
    ``V_l = B_l'G_l``; for the others ``D_a = sym(E_a'ÃS_r)`` gives ``2 (E_a z)'ÃS_r z``.
    """
    el = dense.elimination
    By = _level_rows(sys.st, sys.red, z)
    yU = np.einsum("iml,ijml->jml", By, sys.Q)
    yV = np.einsum("iml,ijml->jml", By, sys.G)
    out = np.empty((z.shape[0], dense.n_theta))
    out[:, el.t_param] = -2.0 * (yU[el.t_i] * yV[el.t_j]).sum(axis=-1).T
    ASz = np.einsum("mij,mj->mi", sys.st.A_t, np.einsum("mij,mj->mi", sys.st.S, z))
    for a, (rows, cols) in zip(el.r_param, el.r_entries, strict=True):
        out[:, a] = 2.0 * (z[:, cols] * ASz[:, rows]).sum(axis=1)
    return out


def _dense_curvature(
    sys: _DenseSystem, nu: np.ndarray, dense: DenseLayout
) -> tuple[np.ndarray, np.ndarray]:
    """``∂²dev/∂θ²`` at ``σ̂² = r²/ν`` and ``∂r²/∂θ`` for correlated terms.

    The REML criterion ``log|N| + ν log r² + const`` has the θ-Hessian (:func:`dense_criterion`)
    ``∂²log|N| + ν ∂²r²/r² − ν ∂r²∂r²'/r⁴``; the deviance at fixed ``σ̂`` lacks the last term.
    ``∂r² = w'D_a w`` (envelope theorem).
    """
    r2_grad = _dense_forms(sys, dense, sys.w)
    _, _, hess = dense_criterion(
        sys.theta, sys.red, nu, np.zeros_like(nu), dense, reml=True, order=2
    )
    outer = r2_grad[:, :, None] * r2_grad[:, None, :]
    return hess + (nu / sys.r2**2)[:, None, None] * outer, r2_grad


def _curvature(sys: _System, nu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``∂²dev/∂θ²`` at ``σ̂² = r²/ν`` and ``∂r²/∂θ`` (module notes)."""
    m, k, e = sys.r2.size, len(sys.D), sys.P.shape[1]
    sigma2 = sys.r2 / nu
    PN = [sys.P @ D[:, :e, :e] for D in sys.D]
    Dw = [np.einsum("mij,mj->mi", D, sys.w) for D in sys.D]
    H = np.zeros((m, k, k))
    for (a, b), D2 in sys.D2.items():
        logdet = _trace(sys.P, D2[:, :e, :e]) - _trace(PN[a], PN[b])
        if b == 0:
            logdet = logdet + sys.ell2
        r2_ab = _quad(sys.w, D2, sys.w) - 2.0 * _quad(Dw[a][:, :e], sys.P, Dw[b][:, :e])
        H[:, a, b] = H[:, b, a] = logdet + r2_ab / sigma2
    r2_grad = np.array([np.einsum("mi,mi->m", sys.w, D) for D in Dw]).reshape(k, m).T
    return H, r2_grad


def _deviance_hessian(
    H_theta: np.ndarray, r2_grad: np.ndarray, r2: np.ndarray, nu: np.ndarray, free: np.ndarray
) -> np.ndarray:
    """Hessian of lmerTest's ``devfun_vp`` in (θ, σ) at (θ, σ̂), ``σ̂² = r²/ν``.

    ``H_theta`` is its θ block, ``r2_grad`` is ``∂r²/∂θ``; the σ row is closed-form.  Parameters
    fixed by the fit (``free`` false) get zero rows and columns.
    """
    m, k = r2_grad.shape
    sigma2 = r2 / nu
    H = np.zeros((m, k + 1, k + 1))
    H[:, :k, :k] = H_theta
    H[:, :k, k] = H[:, k, :k] = -2.0 * r2_grad / sigma2[:, None] ** 1.5
    H[:, k, k] = 6.0 * r2 / sigma2**2 - 2.0 * nu / sigma2
    keep = np.concatenate([free, np.ones((m, 1), dtype=bool)], axis=1)
    return np.where(keep[:, :, None] & keep[:, None, :], H, 0.0)


def _half_pinv(H: np.ndarray) -> np.ndarray:
    """``2 H⁺`` over eigenvalues above lmerTest's tolerance: the asymptotic Cov of varpar."""
    vals, vecs = np.linalg.eigh(H)
    pos = vals > _EIGEN_TOL
    inv = np.where(pos, 1.0 / np.where(pos, vals, 1.0), 0.0)
    return 2.0 * (vecs * inv[:, None, :]) @ vecs.transpose(0, 2, 1)


def _moments_chunk(
    Yt: np.ndarray,
    design: Design,
    theta: np.ndarray,
    L: np.ndarray,
    *,
    satterthwaite: bool,
    X: np.ndarray,
) -> dict[str, np.ndarray]:
    """Contrast estimate and variance, residual variance and Satterthwaite pieces per feature.

    ``Yt`` is features × rows, ``X`` the rows' fixed-effects design, ``theta`` features × terms
    in elimination order (NaN: not fit), followed for correlated terms by the off-diagonals
    ``design.extra_names``.
    Besides ``_COLUMNS`` (data scale) it returns ``scale`` and, on the fit's standardized scale
    (``y / scale``), ``var_std``, ``sigma2_std``, the gradient ``grad`` of ``l'Cov(β̂)l`` in
    (θ, σ) and the deviance Hessian ``hessian`` (elimination order, then σ).
    """
    layout = design.layout
    m = Yt.shape[0]
    q, p, k = layout.q, layout.p, design.n_theta
    # Random columns left in the solved system once term 1 is eliminated.
    block = design.dense is not None  # the first factor's terms eliminated level by level
    qr = design.dense.elimination.qr if block else q - (layout.sizes[0] if k else 0)

    # Standardize and drop non-estimable coefficients exactly as the fit does.
    prep = prepare(Yt, design)
    cross, n_obs, scale, center = prep.cross, prep.n_obs, prep.scale, prep.center
    dropped = prep.dropped
    nu = n_obs - prep.p_eff
    counts = _level_counts(cross, design)
    term_of = layout.term_of()
    free = np.zeros((m, k), dtype=bool)
    for j in range(layout.n_theta):
        free[:, j] = (counts[:, term_of == j] > 0).sum(axis=1) >= 2
    for i, name in enumerate(design.extra_names):  # a correlation needs both its components
        a, c = (design.term_names.index(n) for n in name.split("~"))
        free[:, layout.n_theta + i] = free[:, a] & free[:, c]

    fitted = np.all(np.isfinite(theta), axis=1)
    observed = np.isfinite(Yt).astype(np.float64)
    can = estimable(L, np.einsum("fn,np,nq->fpq", observed, X, X))
    ok = fitted & (nu >= 1) & can
    reason = np.full(m, "", dtype=object)
    reason[~(nu >= 1)] = "no residual degrees of freedom"
    reason[~can] = "contrast not estimable from the observed samples"
    reason[~fitted] = "feature not fit"
    rows = np.flatnonzero(ok)
    # An estimable contrast has one value whichever aliased column the fit dropped: the fit's
    # solution (dropped coefficients 0) is one solution of the full normal equations.
    Lf = np.where(dropped, 0.0, L[None, :])[rows]
    out = {
        name: np.full(m, np.nan)
        for name in ("estimate", "var", "sigma2", "df_effective", "var_std", "sigma2_std")
    }
    out["reason"] = reason
    out["df_residual"] = np.where(ok, nu, np.nan)
    out["n_obs"] = n_obs
    out["scale"] = scale
    out["grad"] = np.full((m, k + 1), np.nan)
    out["hessian"] = np.full((m, k + 1, k + 1), np.nan)
    if not rows.size:
        return out

    if block:
        sys = _dense_system(cross.take(rows), theta[rows], design.dense)
    else:
        sys = _system(cross.take(rows), theta[rows], layout)
    nu, scale, center = nu[rows], scale[rows], center[rows]
    sigma2 = sys.r2 / nu
    e = sys.P.shape[1]
    l_pad = np.zeros((rows.size, e))
    l_pad[:, qr : qr + p] = Lf
    v = np.einsum("mij,mj->mi", sys.P, l_pad)
    lCl = np.einsum("mi,mi->m", v, l_pad)
    estimate = np.einsum("mi,mi->m", sys.x[:, qr : qr + p], Lf) * scale
    if design.intercept is not None:
        estimate = estimate + Lf[:, design.intercept] * center
    out["estimate"][rows] = estimate
    out["var_std"][rows] = sigma2 * lCl
    out["sigma2_std"][rows] = sigma2
    out["var"][rows] = sigma2 * lCl * scale**2
    out["sigma2"][rows] = sigma2 * scale**2
    # msqrob2's residual df of an LMM: conditional residual sum of squares / σ̂².
    out["df_effective"][rows] = nu * (sys.r2 - sys.u2) / sys.r2
    if satterthwaite:
        if block:
            H_theta, r2_grad = _dense_curvature(sys, nu, design.dense)
            v_pad = np.concatenate([v, np.zeros((v.shape[0], 1))], axis=1)  # (v, 0)
            dvar = _dense_forms(sys, design.dense, v_pad)
        else:
            H_theta, r2_grad = _curvature(sys, nu)
            dvar = np.array([_quad(v, D[:, :e, :e], v) for D in sys.D]).reshape(k, v.shape[0]).T
        out["hessian"][rows] = _deviance_hessian(H_theta, r2_grad, sys.r2, nu, free[rows])
        out["grad"][rows, :k] = -sigma2[:, None] * dvar  # ∂ l'Cov(β̂)l = −σ² v'N_a v
        out["grad"][rows, k] = 2.0 * np.sqrt(sigma2) * lCl
    return out


def _satterthwaite_df(arrays: dict[str, np.ndarray], df_prior=0.0) -> np.ndarray:
    """``2 V² / (g'Ag)`` with ``A = 2 (H + 4 d₀/σ̂² e_σe_σ')⁺``.

    ``d₀ > 0`` (a number, or one per feature) adds the information of ``d₀`` prior
    observations of σ (moderation); ``d₀ = ∞`` treats σ as known (its row of A is zero).
    """
    H = arrays["hessian"].copy()
    grad = arrays["grad"].copy()
    k = H.shape[1] - 1
    prior = np.broadcast_to(np.asarray(df_prior, dtype=np.float64), H.shape[:1])
    known = np.isinf(prior)
    H[known, k, :] = H[known, :, k] = 0.0
    grad[known, k] = 0.0
    with np.errstate(invalid="ignore"):
        H[~known, k, k] += 4.0 * prior[~known] / arrays["sigma2_std"][~known]
    ok = np.all(np.isfinite(H), axis=(1, 2)) & np.all(np.isfinite(grad), axis=1)
    vcov = _half_pinv(np.where(ok[:, None, None], H, np.eye(k + 1)))
    denom = np.einsum("mi,mij,mj->m", grad, vcov, grad)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = 2.0 * arrays["var_std"] ** 2 / denom
    return np.where(ok & (denom > 0), df, np.where(ok, np.inf, np.nan))


def _moments_table(
    arrays: dict[str, np.ndarray],
    index: pd.Index,
    *,
    satterthwaite: bool,
    moderate: bool,
    robust: bool = False,
) -> pd.DataFrame:
    """The per-feature table of :func:`contrast_moments`, moderated if asked."""
    table = pd.DataFrame({c: arrays[c] for c in _COLUMNS}, index=index)
    table.insert(2, "df_satterthwaite", _satterthwaite_df(arrays) if satterthwaite else np.nan)
    table["reason"] = arrays["reason"]
    if not moderate:
        return table
    sigma2, d = arrays["sigma2"], arrays["df_effective"]
    ok = np.isfinite(sigma2) & np.isfinite(d) & (d > 0)
    if ok.sum() < 3:
        raise ValueError(
            f"moderation needs at least three features with a residual variance, got {ok.sum()}"
        )
    sq = squeeze_var(np.where(ok, sigma2, np.nan), np.where(ok, d, 0.0), robust=robust)
    pooled = d[ok].sum()  # limma caps the total df at the pooled residual df
    table["sigma2_post"] = sq.var_post
    with np.errstate(divide="ignore", invalid="ignore"):
        table["var_post"] = arrays["var"] * sq.var_post / sigma2
    table["df_residual_post"] = np.minimum(table["df_residual"] + sq.df_prior, pooled)
    table["df_satterthwaite_post"] = (
        np.minimum(_satterthwaite_df(arrays, sq.df_prior), pooled) if satterthwaite else np.nan
    )
    if np.ndim(sq.df_prior):
        table["df_prior"] = sq.df_prior
    table.attrs.update(
        df_prior=float(np.max(sq.df_prior)), var_prior=sq.var_prior, n_prior=sq.n_prior
    )
    return table


def _chunk_size(design: Design) -> int:
    d = design.layout.dim
    k = design.n_theta
    if design.dense is not None:  # Ω̃ plus term 1's per-level pieces (B_l'[Q_l G_l], b × b blocks)
        n_levels, b = design.dense.levels.shape
        dr = d - n_levels * b
        per_level = n_levels * (2 * b * dr + 12 * b**2) + b**4
    else:
        dr = d - design.layout.sizes[0] if k else d
        per_level = 0
    per_feature = 8 * (3 * d**2 + dr**2 * (k * (k + 1) // 2 + 2 * k + 6) + per_level)
    return int(max(16, min(8192, _CHUNK_BYTES // per_feature)))


def _moment_arrays(
    result: LMMResult,
    Y: np.ndarray,
    data: pd.DataFrame,
    L,
    *,
    satterthwaite: bool,
    chunk_size: int | None,
) -> dict[str, np.ndarray]:
    """Per-feature moments of contrast ``L`` for the features of ``result`` (columns of Y)."""
    if not result.reml:
        raise ValueError("Satterthwaite df follow lmerTest's REML deviance; refit with reml=True")
    spec = result.spec.evaluate(data)
    with warnings.catch_warnings():
        # The fit already reported ±inf values; it treated them as missing.
        warnings.simplefilter("ignore", UserWarning)
        Y = _check_response(Y, spec.n_rows, "missing")
    if Y.shape[1] != result.n_features:
        raise ValueError(f"Y has {Y.shape[1]} features, the fit {result.n_features}")
    weights, _ = contrast_vector(L, spec.fixed_names)
    design = plan_design(spec)
    values = result.theta.to_numpy(dtype=np.float64)  # NaN for features that did not converge
    n_terms = len(spec.term_names)
    theta_elim = np.concatenate([values[:, design.order], values[:, n_terms:]], axis=1)
    size = chunk_size or _chunk_size(design)
    parts = [
        _moments_chunk(
            np.ascontiguousarray(Y[:, a : a + size].T),
            design,
            theta_elim[a : a + size],
            weights,
            satterthwaite=satterthwaite,
            X=spec.X,
        )
        for a in range(0, Y.shape[1], size)
    ]
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def contrast_moments(
    result: LMMResult,
    Y: np.ndarray,
    data: pd.DataFrame,
    L,
    *,
    satterthwaite: bool = True,
    moderate: bool = False,
    robust: bool = False,
    chunk_size: int | None = None,
) -> pd.DataFrame:
    """Per feature: a contrast's REML estimate and variance, its df and the residual variance.

    Parameters
    ----------
    result
        The REML fit (:func:`~omixed.lmm.fit`); its specification is evaluated on ``data`` by
        name and its θ used (features that did not converge give NaN).
    Y
        ``(n_rows, n_features)`` responses the model was fit to (NaN: missing).
    data
        The rows' data frame (the fit's rows, or a subset of them).
    L
        The contrast: anything :func:`contrast_vector` reads.
    satterthwaite
        Compute the Satterthwaite df (else that column is NaN).
    moderate
        Also squeeze the residual variances across the features (:func:`squeeze_var`, with
        msqrob2's ``df_effective``) and add the moderated columns.
    robust
        With ``moderate``: protect the prior against outlying variances (limma's
        ``robust = TRUE``); the prior df is then one per feature (column ``df_prior``).
    chunk_size
        Features per batch (default: from the model size).

    Returns
    -------
    DataFrame (index: the fit's features) with columns ``estimate`` (``l'β̂``), ``var``
    (``l'Cov(β̂)l``), ``df_satterthwaite`` (lmerTest), ``df_residual`` (``n − p``),
    ``df_effective`` (msqrob2's ``RSS/σ̂²``, RSS of the conditional residuals), ``sigma2``
    (``σ̂²``) and ``n_obs``.  With ``moderate``: ``sigma2_post`` (``σ̃²``), ``var_post``
    (``var·σ̃²/σ̂²``), ``df_residual_post`` (``n − p + d₀``) and ``df_satterthwaite_post``
    (Satterthwaite with ``d₀`` prior observations of σ: ``4d₀/σ̂²`` added to the σ entry of
    the deviance Hessian, which gives ``ν + d₀`` for a model without random effects), both
    capped at the pooled ``Σ df_effective``; ``attrs`` holds ``df_prior`` and ``var_prior``.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from omixed import lmm
    >>> rng = np.random.default_rng(0)
    >>> data = pd.DataFrame({"g": np.repeat(list("abcdef"), 4), "x": np.tile(["u", "v"], 12)})
    >>> Y = rng.normal(size=(24, 3)) + rng.normal(size=(6, 3)).repeat(4, axis=0)
    >>> res = lmm.fit(Y, data, "~ x + (1|g)")
    >>> mom = contrast_moments(res, Y, data, "x[T.v]")
    >>> bool(np.allclose(np.sqrt(mom["var"]), res.se["x[T.v]"]))
    True
    """
    arrays = _moment_arrays(result, Y, data, L, satterthwaite=satterthwaite, chunk_size=chunk_size)
    return _moments_table(
        arrays, result.feature_names, satterthwaite=satterthwaite, moderate=moderate, robust=robust
    )


def contrast_moments_grouped(
    result: LMMResult,
    values: pd.DataFrame,
    design: pd.DataFrame,
    L,
    *,
    feature: str = "feature",
    unit: str = "sample",
    local: str = "peptide",
    value: str = "y",
    satterthwaite: bool = True,
    moderate: bool = False,
    robust: bool = False,
) -> pd.DataFrame:
    """:func:`contrast_moments` for a :func:`~omixed.lmm.fit_grouped` fit.

    ``values`` and ``design`` are the long table and unit design it was fit to (as passed to
    ``fit_grouped``); features of the fit absent from ``values`` are NaN.  Moderation pools all
    features.

    Examples
    --------
    >>> import omixed
    >>> from omixed import lmm
    >>> pep = omixed.datasets.example_peptides()
    >>> long = pep.to_df().melt(ignore_index=False, var_name="peptide", value_name="y")
    >>> long = long.dropna().rename_axis("sample").reset_index()
    >>> long["feature"] = pep.var.loc[long["peptide"], "protein"].to_numpy()
    >>> long = long[long["feature"].isin(["P0000", "P0001"])]
    >>> f = "~ condition + (1|batch) + (1|sample) + (1|peptide)"
    >>> res, _ = lmm.fit_grouped(long, pep.obs, f)
    >>> mom = contrast_moments_grouped(res, long, pep.obs, "condition[T.treated]")
    >>> mom.index.tolist()
    ['P0000', 'P0001']
    """
    missing = [c for c in (feature, unit, local, value) if c not in values.columns]
    if missing:
        raise ValueError(f"columns {missing} not in the long table ({list(values.columns)})")
    blocks, _ = bucket_problems(
        values[values[feature].isin(result.feature_names)],
        design,
        feature=feature,
        unit=unit,
        local=local,
        value=value,
    )
    parts, members = [], []
    for names, Y, data in blocks:
        parts.append(
            _moment_arrays(
                result.subset(names), Y, data, L, satterthwaite=satterthwaite, chunk_size=None
            )
        )
        members.append(names)
    if not parts:
        raise ValueError("none of the fit's features occurs in the long table")
    order = pd.Index(np.concatenate(members)).get_indexer(result.feature_names)
    arrays = {}
    for key in parts[0]:
        stacked = np.concatenate([part[key] for part in parts])
        if stacked.dtype == object:
            out = np.full(len(order), "no values of this feature", dtype=object)
        else:
            out = np.full((len(order), *stacked.shape[1:]), np.nan)
        out[order >= 0] = stacked[order[order >= 0]]
        arrays[key] = out
    return _moments_table(
        arrays, result.feature_names, satterthwaite=satterthwaite, moderate=moderate, robust=robust
    )


def t_table(estimate, var, df) -> pd.DataFrame:
    """``estimate, se, t, df, pvalue`` (two-sided, t distribution with ``df``) from moments."""
    estimate, var, df = (np.asarray(a, dtype=np.float64) for a in (estimate, var, df))
    se = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = estimate / se
    pvalue = 2.0 * special.stdtr(df, -np.abs(t))  # t.sf, without importing scipy.stats
    return pd.DataFrame({"estimate": estimate, "se": se, "t": t, "df": df, "pvalue": pvalue})


def satterthwaite(
    result: LMMResult, Y: np.ndarray, data: pd.DataFrame, L, *, chunk_size: int | None = None
) -> pd.DataFrame:
    """t-test of a fixed-effect contrast per feature with Satterthwaite df, as lmerTest.

    Parameters
    ----------
    result
        A REML fit from :func:`~omixed.lmm.fit`.
    Y, data
        The responses and data it was fit to.
    L
        The contrast: a coefficient name, ``{name: weight}``, a vector over the fixed effects or
        an expression such as ``"condition[T.b] - condition[T.c]"`` (see :func:`contrast_vector`).
    chunk_size
        Features per batch (default: from the model size).

    Returns
    -------
    DataFrame (index: features) with ``estimate``, ``se``, ``t``, ``df``, ``pvalue``
    (two-sided); NaN for features that did not converge or whose contrast is not estimable.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from omixed import lmm
    >>> rng = np.random.default_rng(0)
    >>> data = pd.DataFrame({"batch": np.repeat(list("abcdef"), 4)})
    >>> Y = rng.normal(size=(24, 5)) + rng.normal(size=(6, 5)).repeat(4, axis=0)
    >>> res = lmm.fit(Y, data, "~ 1 + (1|batch)")
    >>> tab = satterthwaite(res, Y, data, "Intercept")
    >>> bool(np.allclose(tab["df"], 5.0))  # balanced one-way: groups − 1
    True
    """
    mom = contrast_moments(result, Y, data, L, chunk_size=chunk_size)
    return t_table(mom["estimate"], mom["var"], mom["df_satterthwaite"]).set_axis(mom.index)


def satterthwaite_grouped(
    result: LMMResult,
    values: pd.DataFrame,
    design: pd.DataFrame,
    L,
    *,
    feature: str = "feature",
    unit: str = "sample",
    local: str = "peptide",
    value: str = "y",
) -> pd.DataFrame:
    """:func:`satterthwaite` for a :func:`~omixed.lmm.fit_grouped` fit (e.g. peptides → proteins).

    Parameters
    ----------
    result
        The REML fit returned by :func:`~omixed.lmm.fit_grouped`.
    values, design, feature, unit, local, value
        The long table and unit design it was fit to, as passed to ``fit_grouped``.
    L
        The contrast (see :func:`satterthwaite`).

    Returns
    -------
    DataFrame (index: features) with ``estimate``, ``se``, ``t``, ``df``, ``pvalue``.

    Examples
    --------
    See :func:`contrast_moments_grouped`; this adds the t-test columns.
    """
    mom = contrast_moments_grouped(
        result, values, design, L, feature=feature, unit=unit, local=local, value=value
    )
    return t_table(mom["estimate"], mom["var"], mom["df_satterthwaite"]).set_axis(mom.index)
