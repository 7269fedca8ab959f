"""Gating-constraint modes: raw gate projections -> (log_alpha, beta, log_mu, eta) for the MDN op.

Inputs per token and head (spec §5.1), all fp32, shape [..., H]:
  a, b, m  the raw projections W_a x, W_b x, W_m x
  e        (W_e x) / tau
and the per-head parameters A_log, Mu_log, dt_bias, mu_bias [H] (log_factor [H] for ``trig`` only).

Common to every mode:
  log alpha_raw = -exp(A_log)  * softplus(a + dt_bias)        in (-inf, 0]
  log mu_raw    = -exp(Mu_log) * softplus(m + mu_bias)        in (-inf, 0]
  eta           = tanh(e) + 1                                 in (0, 2)
  beta_raw      = sigmoid(b)                                  in (0, 1)

Modes (spec §5.2 for the stability statements; rho = alpha with use_p_times_alpha, else 1;
the transition along a key has tr T = alpha + mu - beta*eta*rho and det T = alpha*mu):
  trig      the paper's coupling: theta = arctan(eta * exp(log_factor)), beta = sin^2(theta) * beta_raw,
            alpha = cos^2(theta) * alpha_raw (so alpha + beta <= 1), log mu >= min_log_mu.
            tr T > 0 is guaranteed for rho = alpha when min_log_mu > ln(1/8); nothing for rho = 1.
  clamp     no coupling; only log mu >= min_log_mu.                        (no guarantee on tr T)
  none      no coupling, no clamp.                                          (no guarantee on tr T)
  quadrant  ours: bound the product that enters the trace directly,
                beta = beta_raw * min(1, (alpha + mu) / (rho * eta)),
            so beta*eta*rho <= beta_raw * (alpha + mu) < alpha + mu, i.e. tr T > (1 - beta_raw)(alpha + mu) > 0
            for EVERY alpha, mu in (0, 1], for rho = alpha and rho = 1 alike, with no clamp on mu.
            Schur stability follows (alpha + mu < (1 + alpha)(1 + mu)). The bound only bites when
            eta * rho > alpha + mu; with rho = alpha it needs eta > 1 + mu/alpha. min_log_mu, if set, is
            still applied: not for stability but for the chunk kernel's numerics (spec §2.5).

``trig`` is computed in log space with cos^2(arctan x) = 1/(1+x^2) and sin^2(arctan x) = x^2/(1+x^2):
log cos^2(theta) = -softplus(log x^2) and sin^2(theta) = sigmoid(log x^2), which neither overflow nor underflow
(same values as the arctan form; tested).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

GATE_MODES = ("trig", "clamp", "none", "quadrant")


def raw_gates(a, b, m, e, A_log, Mu_log, dt_bias, mu_bias):
    """The unconstrained gates shared by all modes: (log_alpha_raw, beta_raw, log_mu_raw, eta)."""
    log_alpha = -A_log.to(a.dtype).exp() * F.softplus(a + dt_bias.to(a.dtype))
    log_mu = -Mu_log.to(m.dtype).exp() * F.softplus(m + mu_bias.to(m.dtype))
    eta = 2.0 * torch.sigmoid(2.0 * e)  # = tanh(e) + 1, without its cancellation for very negative e
    beta = torch.sigmoid(b)
    return log_alpha, beta, log_mu, eta


def _log_eta(e):
    """log(tanh(e) + 1) = log 2 + logsigmoid(2e): finite where tanh(e) + 1 rounds to 0."""
    return math.log(2.0) + F.logsigmoid(2.0 * e)


def _clamp_mu(log_mu, min_log_mu):
    return log_mu if min_log_mu is None else log_mu.clamp_min(float(min_log_mu))


def gates_trig(a, b, m, e, *, A_log, Mu_log, dt_bias, mu_bias, log_factor, min_log_mu=-2.0, **_):
    """The paper's constraint (spec §5.1): alpha <= cos^2(theta), beta <= sin^2(theta), log mu >= min_log_mu."""
    log_alpha, beta, log_mu, eta = raw_gates(a, b, m, e, A_log, Mu_log, dt_bias, mu_bias)
    log_x2 = 2.0 * (_log_eta(e) + log_factor.to(eta.dtype))  # log tan^2(theta), tan(theta) = eta * factor
    beta = beta * torch.sigmoid(log_x2)  # sin^2(theta) = x^2 / (1 + x^2)
    log_alpha = log_alpha - F.softplus(log_x2)  # log cos^2(theta) = -log(1 + x^2)
    return log_alpha, beta, _clamp_mu(log_mu, min_log_mu), eta


def gates_clamp(a, b, m, e, *, A_log, Mu_log, dt_bias, mu_bias, min_log_mu=-2.0, **_):
    """Only the momentum clamp log mu >= min_log_mu."""
    log_alpha, beta, log_mu, eta = raw_gates(a, b, m, e, A_log, Mu_log, dt_bias, mu_bias)
    return log_alpha, beta, _clamp_mu(log_mu, min_log_mu), eta


def gates_none(a, b, m, e, *, A_log, Mu_log, dt_bias, mu_bias, **_):
    """No constraint at all (the raw gates)."""
    return raw_gates(a, b, m, e, A_log, Mu_log, dt_bias, mu_bias)


def gates_quadrant(a, b, m, e, *, A_log, Mu_log, dt_bias, mu_bias, min_log_mu=None, use_p_times_alpha=True, **_):
    """Direct trace bound: beta * eta * rho <= beta_raw * (alpha + mu), so tr T > 0 for rho = alpha and rho = 1."""
    log_alpha, beta, log_mu, eta = raw_gates(a, b, m, e, A_log, Mu_log, dt_bias, mu_bias)
    log_mu = _clamp_mu(log_mu, min_log_mu)
    # log of the largest admissible beta*eta: log((alpha + mu) / rho), computed in log space (alpha may be ~0).
    log_bound = torch.logaddexp(log_alpha, log_mu)
    if use_p_times_alpha:
        log_bound = log_bound - log_alpha
    beta = beta * torch.exp(torch.clamp(log_bound - _log_eta(e), max=0.0))
    return log_alpha, beta, log_mu, eta


_MODES = {"trig": gates_trig, "clamp": gates_clamp, "none": gates_none, "quadrant": gates_quadrant}


def compute_gates(mode: str, a, b, m, e, **params):
    """Dispatch on ``mode`` (one of GATE_MODES). Returns (log_alpha, beta, log_mu, eta), all fp32 like the inputs.

    ``params``: A_log, Mu_log, dt_bias, mu_bias (and log_factor for trig), min_log_mu, use_p_times_alpha.
    """
    try:
        fn = _MODES[mode]
    except KeyError:
        raise ValueError(f"gate_mode={mode!r}: expected one of {', '.join(GATE_MODES)}") from None
    return fn(a, b, m, e, **params)


def transition_trace(log_alpha, beta, log_mu, eta, use_p_times_alpha: bool = True):
    """tr T = alpha + mu - beta*eta*rho of the 2x2 per-key transition (spec §5.2); > 0 is the quadrant condition."""
    alpha, mu = log_alpha.exp(), log_mu.exp()
    rho = alpha if use_p_times_alpha else torch.ones_like(alpha)
    return alpha + mu - beta * eta * rho
