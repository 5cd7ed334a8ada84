"""Masked (absorbing-state) diffusion math, defined once for trainer, evaluator and sampler.

Time t runs from 0 (clean data) to 1 (everything masked). A noise schedule gives a_t, the probability
that a token is still unmasked at time t; each token is masked independently with probability 1 - a_t.
The continuous-time NELBO (Sahoo et al. 2024, Shi et al. 2024) is

    E_t E_{x_t ~ q(.|x_0)} [ w(t) * sum_{i masked} -log p_theta(x_0^i | x_t) ],   w(t) = -a'_t / (1 - a_t),

which is 1/t for the linear schedule a_t = 1 - t.

Shipped as remote code next to the weights: imports only torch.
"""

import math

import torch


# ---------------------------------------------------------------------------------------------
# Noise schedules a_t
# ---------------------------------------------------------------------------------------------
class NoiseSchedule:
    """a_t on t in [0, 1] with a_0 = 1 and a_1 = 0; subclasses give a_t, a'_t and the inverse of 1 - a_t."""

    name = "base"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def alpha_derivative(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def time_for_mask_ratio(self, ratio: torch.Tensor) -> torch.Tensor:
        """The t at which 1 - a_t equals `ratio`."""
        raise NotImplementedError

    def mask_ratio(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 - self.alpha(t)

    def elbo_weight(self, t: torch.Tensor) -> torch.Tensor:
        """-a'_t / (1 - a_t): the NELBO weight of the cross-entropy at masked positions."""
        return -self.alpha_derivative(t) / (1.0 - self.alpha(t))


class LinearSchedule(NoiseSchedule):
    """a_t = 1 - t (LLaDA, MDLM's default); w(t) = 1/t."""

    name = "linear"

    def alpha(self, t):
        return 1.0 - t

    def alpha_derivative(self, t):
        return -torch.ones_like(t)

    def time_for_mask_ratio(self, ratio):
        return torch.as_tensor(ratio, dtype=torch.float64)

    def elbo_weight(self, t):
        return 1.0 / t  # exact form of the generic formula, without its cancellation error


class CosineSchedule(NoiseSchedule):
    """a_t = cos(pi t / 2) (MDLM's cosine); w(t) = (pi/2) sin(pi t/2) / (1 - cos(pi t/2))."""

    name = "cosine"

    def alpha(self, t):
        return torch.cos(0.5 * math.pi * t)

    def alpha_derivative(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def time_for_mask_ratio(self, ratio):
        return torch.arccos(1.0 - torch.as_tensor(ratio, dtype=torch.float64)) * 2.0 / math.pi

    def elbo_weight(self, t):
        # 1 - cos(x) = 2 sin^2(x/2) avoids cancellation for small t
        half = 0.25 * math.pi * t
        return 0.5 * math.pi * torch.sin(2 * half) / (2.0 * torch.sin(half) ** 2)


class LogLinearSchedule(NoiseSchedule):
    """MDLM's log-linear schedule: total noise sigma_t = -log(1 - (1 - eps) t), so a_t = 1 - (1 - eps) t.

    a_1 = eps > 0 keeps sigma finite at t = 1; w(t) = (1 - eps) / ((1 - eps) t) = 1/t.
    """

    name = "loglinear"

    def __init__(self, eps: float = 1e-3):
        self.eps = eps

    def alpha(self, t):
        return 1.0 - (1.0 - self.eps) * t

    def alpha_derivative(self, t):
        return -(1.0 - self.eps) * torch.ones_like(t)

    def time_for_mask_ratio(self, ratio):
        return torch.as_tensor(ratio, dtype=torch.float64) / (1.0 - self.eps)

    def elbo_weight(self, t):
        return 1.0 / t


NOISE_SCHEDULES = {cls.name: cls for cls in (LinearSchedule, CosineSchedule, LogLinearSchedule)}


def get_noise_schedule(name: str) -> NoiseSchedule:
    if name not in NOISE_SCHEDULES:
        raise ValueError(f"unknown noise schedule {name!r}; expected one of {tuple(NOISE_SCHEDULES)}")
    return NOISE_SCHEDULES[name]()


# corruption levels of the research metrics and gradient heatmaps, by mask ratio 1 - a_t:
# [0, 0.3) low, [0.3, 0.7) medium, [0.7, 1] high
LEVELS = ("low", "medium", "high")
LEVEL_BOUNDARIES = (0.3, 0.7)


def corruption_levels(mask_ratio: torch.Tensor) -> torch.LongTensor:
    """0 / 1 / 2 for low / medium / high corruption."""
    boundaries = torch.tensor(LEVEL_BOUNDARIES, dtype=mask_ratio.dtype, device=mask_ratio.device)
    return torch.bucketize(mask_ratio.contiguous(), boundaries, right=True)


# ---------------------------------------------------------------------------------------------
# Forward process q(x_t | x_0)
# ---------------------------------------------------------------------------------------------
def sample_times(
    shape: tuple[int, ...],
    schedule: NoiseSchedule,
    min_mask_ratio: float = 0.0,
    max_mask_ratio: float = 1.0,
    time_epsilon: float = 1e-3,
    antithetic: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw diffusion times t (float32) of `shape` so that the mask ratio 1 - a_t lies in [min, max].

    `antithetic` stratifies the first dimension: t_i = (u + i/B) mod 1 before rescaling (MDLM's
    low-discrepancy sampler), which lowers the variance of the batch-mean loss without bias.
    """
    t_low = max(float(schedule.time_for_mask_ratio(torch.tensor(min_mask_ratio))), time_epsilon)
    # t never passes 1 (loglinear reaches its largest ratio 1 - eps there; asking for more must not extend t)
    t_high = min(float(schedule.time_for_mask_ratio(torch.tensor(max_mask_ratio))), 1.0)
    if t_high <= t_low:
        raise ValueError(f"mask ratio range [{min_mask_ratio}, {max_mask_ratio}] is empty after time_epsilon "
                         f"{time_epsilon}")
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
    if antithetic:
        offsets = torch.arange(shape[0], device=u.device, dtype=torch.float64) / shape[0]
        u = (u[:1] + offsets.view(-1, *([1] * (len(shape) - 1)))) % 1.0
    return (t_low + (t_high - t_low) * u).float()


def corrupt(
    input_ids: torch.LongTensor,
    t: torch.Tensor,
    schedule: NoiseSchedule,
    mask_token_id: int,
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.LongTensor, torch.BoolTensor]:
    """Sample x_t ~ q(x_t | x_0): mask each real token independently with probability 1 - a_t.

    `t` has shape [B, 1] (one ratio per sequence) or [B, L] (one per token). Padding (attention_mask 0)
    is never masked. Returns (x_t, masked).
    """
    mask_prob = schedule.mask_ratio(t.double()).expand(input_ids.shape)
    draws = torch.rand(input_ids.shape, generator=generator, device=input_ids.device, dtype=torch.float64)
    masked = draws < mask_prob
    if attention_mask is not None:
        masked &= attention_mask.bool()
    noisy = input_ids.masked_fill(masked, mask_token_id)
    return noisy, masked


def diffusion_targets(
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None,
    schedule: NoiseSchedule,
    mask_token_id: int,
    single_ratio_per_sequence: bool = True,
    min_mask_ratio: float = 0.0,
    max_mask_ratio: float = 1.0,
    time_epsilon: float = 1e-3,
    antithetic: bool = False,
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """One draw of the forward process plus everything the NELBO needs.

    Returns a dict with `input_ids` (x_t), `labels` (x_0 where masked, -100 elsewhere), `loss_weights`
    (w(t) per position, 0 where unmasked), `t` ([B, 1] or [B, L]), `masked` and `num_items_in_batch`
    (number of real tokens: the loss is normalised per real token, Sahoo et al. 2024).
    """
    batch, length = input_ids.shape
    if t is None:
        shape = (batch, 1) if single_ratio_per_sequence else (batch, length)
        t = sample_times(shape, schedule, min_mask_ratio, max_mask_ratio, time_epsilon, antithetic,
                         generator=generator, device=input_ids.device)
    noisy, masked = corrupt(input_ids, t, schedule, mask_token_id, attention_mask, generator)
    weights = schedule.elbo_weight(t.double()).float().expand(batch, length) * masked
    num_real = attention_mask.sum() if attention_mask is not None else torch.tensor(input_ids.numel())
    return {
        "input_ids": noisy,
        "labels": input_ids.masked_fill(~masked, -100),
        "loss_weights": weights,
        "t": t,
        "masked": masked,
        "num_items_in_batch": num_real.to(input_ids.device),
    }


def block_diffusion_targets(
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None,
    schedule: NoiseSchedule,
    mask_token_id: int,
    block_size: int,
    single_ratio_per_sequence: bool = True,
    min_mask_ratio: float = 0.0,
    max_mask_ratio: float = 1.0,
    time_epsilon: float = 1e-3,
    antithetic: bool = False,
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """`diffusion_targets` with one t per block of `block_size` tokens (BD3-LM; `single_ratio_per_sequence` False: one
    per token): `t` is [B, number of blocks] (given or drawn), each block's tokens are masked with its own ratio and
    weighted by its own w(t); [min_mask_ratio, max_mask_ratio] is BD3-LM's clipped range. With one block (block_size
    >= L) this draws exactly what `diffusion_targets` draws with one ratio per sequence. The returned `t` is per token
    ([B, L]) when there are several blocks."""
    batch, length = input_ids.shape
    num_blocks = -(-length // block_size)
    if t is None:
        shape = (batch, num_blocks) if single_ratio_per_sequence else (batch, length)
        t = sample_times(shape, schedule, min_mask_ratio, max_mask_ratio, time_epsilon, antithetic,
                         generator=generator, device=input_ids.device)
    if t.shape[-1] == num_blocks and num_blocks > 1:
        t = t.repeat_interleave(block_size, dim=-1)[:, :length]
    return diffusion_targets(input_ids, attention_mask, schedule, mask_token_id, generator=generator, t=t)


# ---------------------------------------------------------------------------------------------
# Reverse process: how many tokens each sampling step commits
# ---------------------------------------------------------------------------------------------
def _linear_steps(progress: torch.Tensor) -> torch.Tensor:
    return 1.0 - progress


def _cosine_steps(progress: torch.Tensor) -> torch.Tensor:
    return torch.cos(0.5 * math.pi * progress)


def add_to_registry(registry: dict, kind: str, name: str, function=None):
    """`registry[name] = function` for a callable; without `function`, a decorator that does it (the shape of every
    `register_*` of the extension points)."""
    def add(function):
        if not callable(function):
            raise TypeError(f"{kind} {name!r} must be callable, got {type(function).__name__}")
        registry[name] = function
        return function

    return add(function) if function is not None else add


# name -> function from sampling progress p_k = k / K (float64, 0 .. 1) to the time t_k at step k
STEP_SCHEDULES = {"cosine": _cosine_steps, "linear": _linear_steps}


def register_step_schedule(name: str, times=None):
    """Add a step schedule: `times(progress) -> t`, float64 tensors of shape [K + 1], from t = 1 at progress 0
    down to t = 0 at progress 1, never increasing. Usable as `register_step_schedule("name", fn)` or as a
    decorator `@register_step_schedule("name")`; the name then works as `step_schedule` everywhere."""
    return add_to_registry(STEP_SCHEDULES, "step schedule", name, times)


def timestep_grid(num_steps: int, step_schedule: str = "cosine", device=None) -> torch.Tensor:
    """Times t_0 = 1 > t_1 > ... > t_K = 0 (float64) at which a K-step sampler stands.

    "linear" spaces t uniformly; "cosine" uses t_k = cos(pi k / 2K), so that under a linear noise
    schedule the fraction still masked follows MaskGIT's cosine (few tokens early, many late).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if step_schedule not in STEP_SCHEDULES:
        raise ValueError(f"unknown step schedule {step_schedule!r}; expected one of {tuple(STEP_SCHEDULES)}")
    progress = torch.arange(num_steps + 1, dtype=torch.float64, device=device) / num_steps
    grid = STEP_SCHEDULES[step_schedule](progress).to(torch.float64)
    if grid.shape != progress.shape or (grid[1:] > grid[:-1]).any() or abs(float(grid[0]) - 1.0) > 1e-6 \
            or abs(float(grid[-1])) > 1e-6:
        raise ValueError(f"step schedule {step_schedule!r} must map progress [0..1] to times from 1 down to 0 "
                         f"(never increasing, shape [num_steps + 1])")
    grid[0], grid[-1] = 1.0, 0.0  # exact ends: cos(pi / 2) is 6e-17, not 0
    return grid


def unmask_counts(
    num_masked: torch.LongTensor, num_steps: int, schedule: NoiseSchedule, step_schedule: str = "cosine"
) -> torch.LongTensor:
    """Tokens to commit at each of `num_steps` steps, per row: shape [B, K], each row sums to num_masked.

    Row b still has round(M_b * (1 - a_{t_k}) / (1 - a_{t_0})) masks after step k, where t_k is the step
    grid; counts are computed per row so a row's schedule never depends on the rest of its batch.
    """
    grid = timestep_grid(num_steps, step_schedule, device=num_masked.device)
    remaining_fraction = schedule.mask_ratio(grid) / schedule.mask_ratio(grid[:1])
    remaining = torch.round(num_masked.double().unsqueeze(1) * remaining_fraction.unsqueeze(0)).long()
    remaining[:, 0] = num_masked
    remaining[:, -1] = 0
    return remaining[:, :-1] - remaining[:, 1:]
