"""Scaling laws: power-law fits of loss against size, the compute of training, and compute-optimal allocation.

Kaplan et al. (2020) fit the test loss of language models to power laws in the number of non-embedding parameters
N, the tokens of data D and the compute C: L(N) = (N_c / N)^alpha_N when data is not the limit, and find
N_opt growing as C^0.73. Hoffmann et al. (2022, "Chinchilla") fit one law in both N and D,

    L(N, D) = E + A / N^alpha + B / D^beta,

with a Huber loss on log L, minimised by L-BFGS from a grid of starting points (their Approach 3), and find N and D
growing at nearly the same rate: about 20 tokens per parameter. Training compute is C = 6 N D floating-point
operations (2 N per token forward, twice that backward). NumPy and SciPy only, no torch. Introduced in Chapter 5.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize, minimize_scalar

PF_DAY = 1e15 * 24 * 3600  # one petaFLOP/s for a day, in floating-point operations (Kaplan's and GPT-3's unit)


def _positive(name: str, values: ArrayLike, minimum: int = 1) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or len(array) < minimum:
        raise ValueError(f"{name} must be a 1-D sequence of at least {minimum} numbers, got shape {array.shape}")
    if not np.all(np.isfinite(array)) or np.any(array <= 0):
        raise ValueError(f"{name} must hold finite numbers > 0, got {array.tolist()}")
    return array


def _same_length(**arrays: NDArray[np.float64]) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{' and '.join(lengths)} must have the same length, got {lengths}")


@dataclass(frozen=True)
class PowerLaw:
    """L(x) = E + (x_c / x)^alpha: Kaplan's form (E = 0), or with an irreducible loss E. Introduced in Chapter 5."""

    x_c: float
    alpha: float
    E: float = 0.0

    def __call__(self, x: ArrayLike) -> NDArray[np.float64]:
        return self.E + (self.x_c / _positive("x", np.atleast_1d(x))) ** self.alpha


def _fit_without_e(log_x: NDArray[np.float64], log_loss: NDArray[np.float64]) -> tuple[float, float]:
    slope, intercept = np.polyfit(log_x, log_loss, 1)  # log L = alpha log x_c - alpha log x
    alpha = -slope
    if alpha <= 0:
        raise ValueError(f"the loss does not fall with x (log-log slope {slope:+.3g}): no power law L = (x_c/x)^alpha")
    return math.exp(intercept / alpha), alpha


def fit_power_law(x: ArrayLike, loss: ArrayLike, irreducible: bool = False) -> PowerLaw:
    """Least-squares fit of ``PowerLaw`` to points (x_i, L_i), in log L (so each point weighs by its relative error).

    Without ``irreducible`` it is a straight line on log-log axes. With it, E is found by a bounded one-dimensional
    search in [0, min L): for each E the best x_c and alpha are the straight-line fit of log(L - E), and E is chosen
    where the fitted curve is closest to log L. Needs at least 2 points (3 with E). Introduced in Chapter 5.
    """
    xs = _positive("x", x, 2)
    losses = _positive("loss", loss, 3 if irreducible else 2)
    _same_length(x=xs, loss=losses)
    log_x, log_loss = np.log(xs), np.log(losses)
    if not irreducible:
        return PowerLaw(*_fit_without_e(log_x, log_loss))

    def law_at(e: float) -> PowerLaw:
        return PowerLaw(*_fit_without_e(log_x, np.log(losses - e)), E=e)

    def error(e: float) -> float:
        try:
            return float(np.sum((np.log(law_at(e)(xs)) - log_loss) ** 2))
        except ValueError:
            return math.inf

    top = float(losses.min()) * (1 - 1e-9)
    best = minimize_scalar(error, bounds=(0.0, top), method="bounded", options={"xatol": 1e-10 * top})
    e = float(best.x) if error(float(best.x)) <= error(0.0) else 0.0
    return law_at(e)


@dataclass(frozen=True)
class Chinchilla:
    """L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, Eq. 2). Introduced in Chapter 5."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def __call__(self, n_params: ArrayLike, n_tokens: ArrayLike) -> NDArray[np.float64]:
        N = _positive("n_params", np.atleast_1d(n_params))
        D = _positive("n_tokens", np.atleast_1d(n_tokens))
        return self.E + self.A / N**self.alpha + self.B / D**self.beta

    def optimal(self, compute: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(N_opt, D_opt) minimising L(N, D) under 6 N D = compute: the paper's Eq. 4,

        N_opt = G (C / 6)^(beta / (alpha + beta)), D_opt = (C / 6)^(alpha / (alpha + beta)) / G,
        G = (alpha A / (beta B))^(1 / (alpha + beta)).
        """
        C = _positive("compute", np.atleast_1d(compute))
        s = self.alpha + self.beta
        G = (self.alpha * self.A / (self.beta * self.B)) ** (1 / s)
        return G * (C / 6) ** (self.beta / s), (C / 6) ** (self.alpha / s) / G


# Hoffmann et al.'s fitted constants (their Eq. 10 and Approach 3), as published.
CHINCHILLA = Chinchilla(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)

# Besiroglu, Erdil, Barnett and You (2024, "Chinchilla Scaling: A replication attempt") refitted Approach 3 to the
# points of Hoffmann et al.'s Figure 4 and found these constants; unlike the published ones, their frontier gives
# about 20 tokens per parameter, as the paper's Approaches 1 and 2 and its Table 3 do.
BESIROGLU_2024 = Chinchilla(E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)

# Hoffmann et al., Table 3: compute-optimal (parameters, training FLOPs, training tokens), projected with Approach 1
# (N_opt and D_opt each proportional to C^0.50), as printed.
CHINCHILLA_TABLE_3 = (
    (400e6, 1.92e19, 8.0e9), (1e9, 1.21e20, 20.2e9), (10e9, 1.23e22, 205.1e9), (67e9, 5.76e23, 1.5e12),
    (175e9, 3.85e24, 3.7e12), (280e9, 9.90e24, 5.9e12), (520e9, 3.43e25, 11.0e12), (1e12, 1.27e26, 21.2e12),
    (10e12, 1.30e28, 216.2e12),
)

# The paper's grid of initialisations (Appendix D.2): alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1.5},
# a, b in {0, 5, ..., 25}, where A = e^a, B = e^b, E = e^e.
PAPER_GRID = dict(alpha=np.arange(0, 2.01, 0.5), beta=np.arange(0, 2.01, 0.5), e=np.arange(-1, 1.51, 0.5),
                  a=np.arange(0, 25.1, 5), b=np.arange(0, 25.1, 5))
# A coarser grid, 36 times smaller, for fits that must be quick (a chapter's cell, the tests).
COARSE_GRID = dict(alpha=np.array([0.5, 1.0]), beta=np.array([0.5, 1.0]), e=np.array([-1.0, 0.0, 1.0]),
                   a=np.array([0.0, 10.0, 20.0]), b=np.array([0.0, 10.0, 20.0]))


def _huber(r: NDArray[np.float64], delta: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    small = np.abs(r) <= delta
    value = np.where(small, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta))
    grad = np.where(small, r, delta * np.sign(r))
    return value, grad


def fit_chinchilla(n_params: ArrayLike, n_tokens: ArrayLike, loss: ArrayLike, delta: float = 1e-3,
                   grid: Mapping[str, Sequence[float] | NDArray[np.float64]] | None = None) -> Chinchilla:
    """Fit ``Chinchilla`` to runs (N_i, D_i, L_i) as Hoffmann et al. did: minimise the sum of Huber_delta of
    LSE(a - alpha log N, b - beta log D, e) - log L over (a, b, e, alpha, beta) with L-BFGS, from every point of
    ``grid`` (default ``COARSE_GRID``; ``PAPER_GRID`` is theirs), and keep the best. Needs at least 5 runs.
    Introduced in Chapter 5.
    """
    N = _positive("n_params", n_params, 5)
    D = _positive("n_tokens", n_tokens, 5)
    L = _positive("loss", loss, 5)
    _same_length(n_params=N, n_tokens=D, loss=L)
    if not delta > 0:
        raise ValueError(f"delta must be > 0, got {delta}")
    starts: Mapping[str, Sequence[float] | NDArray[np.float64]] = COARSE_GRID if grid is None else grid
    if set(starts) != {"alpha", "beta", "e", "a", "b"}:
        raise ValueError(f"grid must have the keys alpha, beta, e, a, b, got {sorted(starts)}")
    log_n, log_d, log_l = np.log(N), np.log(D), np.log(L)

    def objective(theta: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
        a, b, e, alpha, beta = theta
        terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])  # (3, n)
        top = terms.max(axis=0)
        weights = np.exp(terms - top)
        lse = top + np.log(weights.sum(axis=0))
        value, dvalue = _huber(lse - log_l, delta)
        soft = weights / weights.sum(axis=0)  # d lse / d terms
        grad = np.array([np.sum(dvalue * soft[0]), np.sum(dvalue * soft[1]), np.sum(dvalue * soft[2]),
                         np.sum(dvalue * soft[0] * -log_n), np.sum(dvalue * soft[1] * -log_d)])
        return float(value.sum()), grad

    best = None
    for alpha, beta, e, a, b in itertools.product(*(starts[k] for k in ("alpha", "beta", "e", "a", "b"))):
        result = minimize(objective, np.array([a, b, e, alpha, beta], dtype=np.float64), jac=True, method="L-BFGS-B")
        if np.all(np.isfinite(result.x)) and (best is None or result.fun < best.fun):
            best = result
    assert best is not None  # the grid is not empty
    a, b, e, alpha, beta = best.x
    return Chinchilla(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=float(alpha), beta=float(beta))


def training_flops(n_params: float, n_tokens: float) -> float:
    """C = 6 N D: 2 N floating-point operations per token forward (a multiply and an add per weight), 4 N
    backward. Introduced in Chapter 5."""
    for name, value in (("n_params", n_params), ("n_tokens", n_tokens)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return 6.0 * n_params * n_tokens


def kaplan_flops_per_token(n_params: float, n_layers: int, context_length: int, d_model: int) -> float:
    """Training FLOPs per token as Kaplan et al. count them (their Table 1, forward x 3): 6 N + 6 n_layers n_ctx
    d_attn, with N the non-embedding parameters and d_attn = d_model; the second term is attention over the
    context. Introduced in Chapter 5."""
    for name, value in (("n_params", n_params), ("n_layers", n_layers), ("context_length", context_length),
                        ("d_model", d_model)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return 6.0 * n_params + 6.0 * n_layers * context_length * d_model


def palm_flops_per_token(n_params: float, n_layers: int, n_heads: int, head_dim: int, seq_len: int) -> float:
    """Training FLOPs per token as PaLM (Chowdhery et al. 2022, Appendix B) counts them: 6 N + 12 L H Q T, the
    second term for the attention scores and their use (L layers, H heads of size Q, sequence length T).
    Introduced in Chapter 5."""
    for name, value in (("n_params", n_params), ("n_layers", n_layers), ("n_heads", n_heads),
                        ("head_dim", head_dim), ("seq_len", seq_len)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return 6.0 * n_params + 12.0 * n_layers * n_heads * head_dim * seq_len


def pf_days(flops: float) -> float:
    """Floating-point operations in PF-days (10^15 operations per second for a day). Introduced in Chapter 5."""
    if not (math.isfinite(flops) and flops >= 0):
        raise ValueError(f"flops must be a finite number >= 0, got {flops}")
    return flops / PF_DAY


KAPLAN_N_EXPONENT = 0.73  # Kaplan et al.: the compute-efficient model size grows as C^0.73
KAPLAN_N_AT_ONE_PF_DAY = 1.3e9  # ... from 1.3e9 non-embedding parameters at one PF-day (their Eq. 6.1, Figure 14)


def kaplan_optimal_params(compute: float, reference_compute: float = PF_DAY,
                          reference_params: float = KAPLAN_N_AT_ONE_PF_DAY,
                          exponent: float = KAPLAN_N_EXPONENT) -> float:
    """Kaplan's compute-efficient size, N_opt proportional to C^0.73, scaled from a reference point (C_ref, N_ref):
    N_ref (C / C_ref)^0.73. The default reference is Kaplan's own, N_opt = 1.3e9 C^0.73 with C in PF-days.
    Ten times the compute buys 5.4 times the parameters (with Hoffmann et al.'s exponent of about 0.5, 3.2 times).
    Introduced in Chapter 5."""
    for name, value in (("compute", compute), ("reference_compute", reference_compute),
                        ("reference_params", reference_params), ("exponent", exponent)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return reference_params * (compute / reference_compute) ** exponent
