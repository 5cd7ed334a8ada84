"""The data-reuse model of Muennighoff et al. (2023), as Prabhudesai et al. (2025) use it for AR vs diffusion.

U unique tokens seen for R = epochs - 1 repetitions are worth the effective data
    D'(U, R) = U + U * R* * (1 - exp(-R / R*))
fresh tokens: the first repetitions are worth almost as much as new data, and their value decays with the
half-life R* (after R* repetitions a further epoch is worth 1/e of a fresh one; D' saturates at U (1 + R*)).
The held-out loss follows a power law in D', L = E + B / D'^beta. The study fits this to the best-so-far curve
(the lower envelope of held-out loss over epochs: what early stopping keeps, monotone as the model requires) of
one arm, over one budget or several at once (E, B, beta shared); R* and its uncertainty come from the fit's
covariance (delta method on log R*).
"""

import math

import numpy as np

TOKENS_UNIT = 1e6  # D' in millions of tokens keeps B and beta of order one for the fit


def effective_data(unique_tokens, epochs, r_star):
    """D' (same unit as `unique_tokens`) after `epochs` passes over `unique_tokens` with half-life `r_star`."""
    repetitions = np.maximum(np.asarray(epochs, dtype=float) - 1, 0)
    return np.asarray(unique_tokens, dtype=float) * (1 + r_star * (1 - np.exp(-repetitions / r_star)))


def reuse_loss(x, e, log_b, beta, log_r_star):
    """L(U, epochs) = E + B / D'^beta; x = (unique tokens in TOKENS_UNIT, epochs), parameters in fit space."""
    unique, epochs = x
    return e + math.exp(log_b) / effective_data(unique, epochs, math.exp(log_r_star)) ** beta


def best_so_far(points: list[dict]) -> tuple[list[int], list[float]]:
    """(epochs, running minimum of eval_loss): the early-stopping envelope of one curve."""
    epochs, envelope, best = [], [], math.inf
    for point in points:
        best = min(best, point["eval_loss"])
        epochs.append(point["epoch"])
        envelope.append(best)
    return epochs, envelope


def fit_reuse(curves: list[tuple[int, list[dict]]]) -> dict | None:
    """Fit the reuse model to [(unique tokens, curve points), ...] of one arm; None when it cannot be fitted
    (fewer points than 5, or no convergence).

    Returns R* with a 95% interval exp(log R* +- 1.96 se); `r_star_high` is inf when the curve has not saturated
    within the epochs run (then R* is only bounded from below: more repetitions would still have helped)."""
    from scipy.optimize import curve_fit  # scipy: the eval extra

    unique, epochs, losses = [], [], []
    for tokens, points in curves:
        curve_epochs, envelope = best_so_far(points)
        unique += [tokens / TOKENS_UNIT] * len(curve_epochs)
        epochs += curve_epochs
        losses += envelope
    if len(losses) < 5:
        return None
    x, y = np.array([unique, epochs], dtype=float), np.array(losses)
    start = [y.min() - 0.5, math.log(max(y.max() - y.min(), 1e-3)), 0.5, math.log(10.0)]
    bounds = ([0.0, -20.0, 0.01, math.log(0.1)], [y.min(), 20.0, 3.0, math.log(1e5)])
    try:
        params, covariance = curve_fit(reuse_loss, x, y, p0=start, bounds=bounds, maxfev=20_000)
    except (RuntimeError, ValueError):
        return None
    log_r, variance = params[3], covariance[3, 3]
    se = math.sqrt(variance) if np.isfinite(variance) and variance >= 0 else math.inf
    residuals = y - reuse_loss(x, *params)
    return {"r_star": math.exp(log_r), "log_r_star_se": se,
            "r_star_low": math.exp(log_r - 1.96 * se) if math.isfinite(se) else 0.0,
            "r_star_high": math.exp(log_r + 1.96 * se) if se < 50 else math.inf,
            "e": params[0], "b": math.exp(params[1]), "beta": params[2],
            "rmse": float(np.sqrt(np.mean(residuals ** 2))), "num_points": len(y)}
