"""Gaussian expectations of activations: the mean-field quantities of variance propagation at init.

For u ~ N(0, q): c_phi(q) = E[phi(u)^2] and d_phi(q) = E[phi'(u)^2] by adaptive quadrature (at q = 1 the
constants of Kaiming's rule, Var(w) fan_in c_phi = 1 forward and d_phi = 1 backward; He et al. 2015,
arXiv:1502.01852), and the slope d ln c(q) / d ln q at q = 1 that says whether the Kaiming fixed point is
stable (Poole et al. 2016, arXiv:1606.05340; Schoenholz et al. 2017, arXiv:1611.01232). phi is the one the
schemes use (``init_schemes.schemes.ACTIVATIONS``: GELU is GPT-2's tanh approximation, as in
models/common.py); at q = 1, c_phi agrees with ``init_schemes.schemes.gaussian_second_moment`` to 1e-9.
Used by scripts/paper/variance_propagation.py and scripts/variance_at_init.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from scipy import integrate
from scipy.special import expit

from init_schemes.schemes import ACTIVATIONS as SCHEME_PHI

Z_CUTOFF = 12.0  # |z| > 12 carries < 1e-30 of the Gaussian mass
ASYMPTOTIC_U = 20.0  # beyond |u| = 20 every activation here is in its asymptotic (smooth) regime
QUAD_RTOL = 1e-8  # accepted relative error of a Gaussian expectation (summed quad error estimates)


def _gauss_pdf(u: float) -> float:
    return math.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)


def _sech_sq(u: float) -> float:
    """1/cosh(u)^2 without overflow for large |u|."""
    e = math.exp(-2.0 * abs(u))
    return 4.0 * e / (1.0 + e) ** 2


@dataclass(frozen=True)
class Activation:
    """phi and phi' on Python floats (for quadrature) and phi on tensors (for the measured MLP)."""

    phi: Callable[[float], float]
    dphi: Callable[[float], float]
    torch_phi: Callable[[torch.Tensor], torch.Tensor]


GELU_K, GELU_A = math.sqrt(2.0 / math.pi), 0.044715  # GPT-2's tanh GELU: 0.5 u (1 + tanh(K (u + A u^3)))


def _gelu_tanh_derivative(u: float) -> float:
    inner = GELU_K * (u + GELU_A * u ** 3)
    return 0.5 * (1.0 + math.tanh(inner)) + 0.5 * u * _sech_sq(inner) * GELU_K * (1.0 + 3.0 * GELU_A * u * u)


# phi is init_schemes.schemes.ACTIVATIONS' (what the kaiming gain integrates), phi' and a tensor phi added
ACTIVATIONS: dict[str, Activation] = {
    "linear": Activation(SCHEME_PHI["linear"], lambda u: 1.0, lambda t: t),
    "relu": Activation(SCHEME_PHI["relu"], lambda u: 1.0 if u > 0 else 0.0, torch.relu),
    "tanh": Activation(SCHEME_PHI["tanh"], _sech_sq, torch.tanh),
    "gelu": Activation(SCHEME_PHI["gelu"], _gelu_tanh_derivative,
                       lambda t: torch.nn.functional.gelu(t, approximate="tanh")),
    "silu": Activation(SCHEME_PHI["silu"], lambda u: expit(u) * (1.0 + u * (1.0 - expit(u))),
                       torch.nn.functional.silu),
}


def gaussian_expectation(f: Callable[[float], float], q: float = 1.0) -> float:
    """E[f(sqrt(q) z)] for z ~ N(0, 1) by adaptive Gauss-Kronrod quadrature over |z| <= 12.

    The breakpoints split off |sqrt(q) z| <= 20, where activations bend (and ReLU has its kink at 0),
    so the integral stays accurate for q from 1e-200 to 1e+200 (deep random MLPs with tiny or huge weights go there).
    """
    if not q > 0:
        raise ValueError(f"variance q must be positive, got {q}")
    scale = math.sqrt(q)
    bend = min(Z_CUTOFF, ASYMPTOTIC_U / scale)
    knots = sorted({-Z_CUTOFF, -bend, 0.0, bend, Z_CUTOFF})
    total, total_error = 0.0, 0.0
    for lo, hi in zip(knots[:-1], knots[1:]):
        # full_output=1 returns quad's diagnostics instead of warning: a far tail such as GELU's
        # u * Phi(u) at u < -20 (~1e-180) cannot meet a relative tolerance and does not need to
        value, error, *_ = integrate.quad(lambda z: f(scale * z) * _gauss_pdf(z), lo, hi,
                                          epsabs=0.0, epsrel=1e-11, limit=200, full_output=1)
        total += value
        total_error += error
    if total_error > QUAD_RTOL * abs(total):
        raise ArithmeticError(f"quadrature of E[f(sqrt({q:.3g}) z)] = {total:.6g} has error {total_error:.3g}; "
                              "the integrand is too irregular for the knots used")
    return total


def activation_moments(name: str, q: float = 1.0) -> tuple[float, float]:
    """(E[phi(u)^2], E[phi'(u)^2]) for u ~ N(0, q); at q = 1 these are c_phi and d_phi."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}")
    act = ACTIVATIONS[name]
    return (gaussian_expectation(lambda u: act.phi(u) ** 2, q),
            gaussian_expectation(lambda u: act.dphi(u) ** 2, q))


def fixed_point_slope(name: str, log_step: float = 1e-3) -> float:
    """d ln c(q) / d ln q at q = 1: how a deviation of q from the Kaiming fixed point q = 1 grows per layer.

    Under Kaiming (gain^2 = 1/c) the forward map is q -> c(q) / c(1): a slope of 1 is neutral (ReLU,
    homogeneous), < 1 pulls q back to 1 (tanh), > 1 pushes it away (GELU, SiLU).
    """
    up = activation_moments(name, math.exp(log_step))[0]
    down = activation_moments(name, math.exp(-log_step))[0]
    return (math.log(up) - math.log(down)) / (2 * log_step)
