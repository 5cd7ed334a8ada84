"""The forward process and its statistics: mask rates, time sampling, ELBO weights, step counts, and a
Monte-Carlo NELBO that converges to the exact value enumerated over all mask sets.

Tolerances come from the sampling distributions: a masked fraction of N Bernoulli(p) draws has standard
deviation sqrt(p (1 - p) / N); a Monte-Carlo mean has standard error std / sqrt(N). We allow 5 sigma.
"""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from tdlm import TDLMConfig, TDLMForMaskedDiffusion
from tdlm.schedules import (
    NOISE_SCHEDULES,
    corrupt,
    diffusion_targets,
    get_noise_schedule,
    sample_times,
    timestep_grid,
    unmask_counts,
)

SCHEDULES = sorted(NOISE_SCHEDULES)
MASK_ID = 99


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("t", [0.05, 0.3, 0.5, 0.9])
def test_masked_fraction_matches_one_minus_alpha(name, t):
    schedule = get_noise_schedule(name)
    ids = torch.randint(0, MASK_ID, (100, 200), generator=generator(1))
    noisy, masked = corrupt(ids, torch.full((100, 1), t), schedule, MASK_ID, generator=generator(2))
    p = float(schedule.mask_ratio(torch.tensor(t, dtype=torch.float64)))
    sigma = math.sqrt(p * (1 - p) / ids.numel())
    assert abs(masked.double().mean().item() - p) < 5 * sigma
    assert torch.equal(noisy == MASK_ID, masked)
    assert torch.equal(noisy[~masked], ids[~masked])


def test_per_sequence_and_per_token_times():
    schedule = get_noise_schedule("linear")
    ids = torch.randint(0, MASK_ID, (64, 32), generator=generator(1))
    per_sequence = diffusion_targets(ids, None, schedule, MASK_ID, single_ratio_per_sequence=True,
                                     generator=generator(2))
    per_token = diffusion_targets(ids, None, schedule, MASK_ID, single_ratio_per_sequence=False,
                                  generator=generator(2))
    assert per_sequence["t"].shape == (64, 1)
    assert per_token["t"].shape == (64, 32)
    assert (per_token["t"].std(-1) > 0.1).all()  # Uniform(0, 1) within a row: std ~0.29
    for out in (per_sequence, per_token):
        masked, t = out["masked"], out["t"].expand(64, 32)
        expected_weights = torch.where(masked, 1.0 / t.double(), 0.0).float()
        torch.testing.assert_close(out["loss_weights"], expected_weights)
        assert torch.equal(out["labels"], ids.masked_fill(~masked, -100))
        assert torch.equal(out["input_ids"], ids.masked_fill(masked, MASK_ID))
    # with one t per row, the per-row mask counts spread far beyond Binomial(32, 1/2) (variance 8): the
    # count is Binomial(32, t) with t ~ U(0, 1), variance 32/6 + 32^2/12 ~ 91; per token it is ~ 8
    rows_seq = per_sequence["masked"].sum(-1).double()
    rows_tok = per_token["masked"].sum(-1).double()
    assert rows_seq.var() > 40 > rows_tok.var()


def test_per_sequence_mask_count_follows_its_row_time():
    schedule = get_noise_schedule("linear")
    ids = torch.randint(0, MASK_ID, (400, 256), generator=generator(3))
    out = diffusion_targets(ids, None, schedule, MASK_ID, generator=generator(4))
    t = out["t"].squeeze(-1).double()
    counts = out["masked"].sum(-1).double()
    z = (counts - 256 * t) / torch.sqrt(256 * t * (1 - t))
    assert z.abs().max() < 5.5  # 400 rows: max |z| of 400 normals exceeds 5.5 with probability ~1.5e-5
    assert abs(z.mean().item()) < 5 / math.sqrt(400)


def test_padding_is_never_masked_nor_counted():
    schedule = get_noise_schedule("linear")
    ids = torch.randint(0, MASK_ID, (8, 20), generator=generator(1))
    attention_mask = torch.ones_like(ids)
    attention_mask[:4, 15:] = 0  # right padding
    attention_mask[4:, :7] = 0  # left padding
    out = diffusion_targets(ids, attention_mask, schedule, MASK_ID, min_mask_ratio=0.999,
                            generator=generator(2))
    padding = attention_mask == 0
    assert not out["masked"][padding].any()
    assert out["masked"][~padding].float().mean() > 0.99
    assert (out["labels"][padding] == -100).all()
    assert (out["loss_weights"][padding] == 0).all()
    assert torch.equal(out["input_ids"][padding], ids[padding])
    assert int(out["num_items_in_batch"]) == int(attention_mask.sum()) == 8 * 20 - 4 * 5 - 4 * 7
    no_mask = diffusion_targets(ids, None, schedule, MASK_ID, generator=generator(2))
    assert int(no_mask["num_items_in_batch"]) == ids.numel()


@pytest.mark.parametrize("name", SCHEDULES)
def test_min_and_max_mask_ratio_are_respected(name):
    schedule = get_noise_schedule(name)
    for antithetic in (False, True):
        t = sample_times((4000, 1), schedule, min_mask_ratio=0.2, max_mask_ratio=0.6, antithetic=antithetic,
                         generator=generator(5))
        ratio = schedule.mask_ratio(t.double())
        assert ratio.min() >= 0.2 - 1e-6 and ratio.max() <= 0.6 + 1e-6
        assert ratio.min() < 0.21 and ratio.max() > 0.59  # the whole range is used
    # the default range is t in [time_epsilon, 1]: never beyond 1, where a_t leaves [0, 1] for loglinear
    t = sample_times((4000, 1), schedule, generator=generator(7))
    assert t.max() <= 1.0 and t.max() > 0.99 and t.min() >= 1e-3 - 1e-7
    assert (schedule.mask_ratio(t.double()) <= 1.0).all()
    # time_epsilon is a floor on t, so the weight stays finite
    t = sample_times((4000, 1), schedule, time_epsilon=0.05, generator=generator(6))
    assert t.min() >= 0.05 - 1e-7
    assert torch.isfinite(schedule.elbo_weight(t.double())).all()
    ids = torch.randint(0, MASK_ID, (500, 64), generator=generator(7))
    out = diffusion_targets(ids, None, schedule, MASK_ID, min_mask_ratio=0.2, max_mask_ratio=0.6,
                            generator=generator(8))
    row_ratio = schedule.mask_ratio(out["t"].double())
    assert (row_ratio >= 0.2 - 1e-6).all() and (row_ratio <= 0.6 + 1e-6).all()
    # given the row ratios r_b, the masked fraction is a mean of Binomial(64, r_b) / 64: sd <= sqrt(0.25 / N)
    fraction = out["masked"].double().mean()
    assert abs(fraction - row_ratio.mean()) < 5 * math.sqrt(0.25 / ids.numel())
    if name == "linear":  # r ~ U(0.2, 0.6): mean 0.4, variance 0.4^2 / 12 per row
        sigma = math.sqrt(0.4**2 / 12 / 500 + 0.25 / ids.numel())
        assert abs(fraction - 0.4) < 5 * sigma
    with pytest.raises(ValueError, match="empty"):
        sample_times((4, 1), schedule, min_mask_ratio=0.0, max_mask_ratio=1e-6, time_epsilon=0.5)


@pytest.mark.parametrize("batch", [1, 7, 16])
def test_antithetic_times_hit_each_stratum_once(batch):
    schedule = get_noise_schedule("linear")
    eps = 1e-3
    for seed in range(20):
        t = sample_times((batch, 5), schedule, time_epsilon=eps, antithetic=True, generator=generator(seed))
        u = (t.double() - eps) / (1 - eps)  # back to the unit interval
        strata = torch.floor(u * batch).long().sort(0).values
        assert torch.equal(strata, torch.arange(batch)[:, None].expand(batch, 5)), seed
        if batch > 1:  # the strata share one offset: consecutive rows are exactly 1/B apart (mod 1)
            gaps = torch.remainder(u[1:] - u[:-1], 1.0)
            torch.testing.assert_close(gaps, torch.full_like(gaps, 1 / batch), atol=1e-6, rtol=0)
    # iid sampling does not stratify: with 16 rows some stratum is (almost surely) hit twice
    t = sample_times((16, 1), schedule, time_epsilon=eps, antithetic=False, generator=generator(0))
    assert len(set(torch.floor((t.double() - eps) / (1 - eps) * 16).long().flatten().tolist())) < 16


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_derivative_weight_and_inverse(name):
    schedule = get_noise_schedule(name)
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    h = 1e-6
    finite_difference = (schedule.alpha(t + h) - schedule.alpha(t - h)) / (2 * h)
    torch.testing.assert_close(schedule.alpha_derivative(t), finite_difference, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(schedule.elbo_weight(t), -finite_difference / (1 - schedule.alpha(t)),
                               atol=1e-6, rtol=1e-6)
    assert float(schedule.alpha(torch.tensor(0.0, dtype=torch.float64))) == 1.0
    assert float(schedule.alpha(torch.tensor(1.0, dtype=torch.float64))) < 1e-2
    assert (schedule.alpha_derivative(t) < 0).all()
    ratio = torch.linspace(0.0, 0.99, 50, dtype=torch.float64)
    torch.testing.assert_close(schedule.mask_ratio(schedule.time_for_mask_ratio(ratio)), ratio)
    # the weight is finite and accurate at the smallest t (no cancellation in 1 - a_t)
    tiny = torch.tensor([1e-6], dtype=torch.float64)
    assert torch.isfinite(schedule.elbo_weight(tiny)).all()
    if name in ("linear", "loglinear"):
        torch.testing.assert_close(schedule.elbo_weight(t), 1.0 / t)
        torch.testing.assert_close(schedule.elbo_weight(tiny), 1.0 / tiny)
    else:  # cosine: w ~ 4 / (pi t) * (pi/2) = 2 / t as t -> 0
        torch.testing.assert_close(schedule.elbo_weight(tiny), 2.0 / tiny, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="unknown noise schedule"):
        get_noise_schedule("geometric")


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("step_schedule", ["cosine", "linear"])
def test_unmask_counts_sum_per_row_and_ignore_the_batch(name, step_schedule):
    schedule = get_noise_schedule(name)
    num_masked = torch.tensor([0, 1, 5, 17, 64, 200])
    for steps in (1, 3, 8, 64):
        counts = unmask_counts(num_masked, steps, schedule, step_schedule)
        assert counts.shape == (6, steps)
        assert (counts >= 0).all()
        assert torch.equal(counts.sum(-1), num_masked)
        for row in range(6):
            alone = unmask_counts(num_masked[row:row + 1], steps, schedule, step_schedule)
            assert torch.equal(alone[0], counts[row])
    grid = timestep_grid(10, step_schedule)
    assert grid[0] == 1.0 and grid[-1] == 0.0 and (grid[1:] < grid[:-1]).all()
    if step_schedule == "linear" and name == "linear":  # 64 masks in 8 linear steps: 8 each
        assert torch.equal(unmask_counts(torch.tensor([64]), 8, schedule, "linear"), torch.full((1, 8), 8))


# ---------------------------------------------------------------------------------------------
# Monte-Carlo NELBO against the exact expectation over masks
# ---------------------------------------------------------------------------------------------
def _exact_mask_set_probability_integral(name, size, length, eps):
    """int_eps^1 w(t) (1 - a_t)^size a_t^(length - size) dt / (1 - eps): the weight times the probability of
    one particular mask set of `size` positions, averaged over t ~ U[eps, 1]."""
    if name == "linear":  # closed form: expand (1 - t)^(L - k) binomially; w(t) t^k = t^(k - 1)
        n = length - size
        return sum(math.comb(n, j) * (-1) ** j * (1 - eps ** (size + j)) / (size + j) for j in range(n + 1)) / (1 - eps)
    schedule = get_noise_schedule(name)
    t = torch.linspace(eps, 1.0, 100_001, dtype=torch.float64)
    alpha = schedule.alpha(t)
    integrand = schedule.elbo_weight(t) * (1 - alpha) ** size * alpha ** (length - size)
    return float(torch.trapezoid(integrand, t)) / (1 - eps)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_monte_carlo_nelbo_converges_to_the_exact_value(name):
    torch.manual_seed(0)
    vocab, mask_id, length, eps = 7, 6, 4, 1e-3
    config = TDLMConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=8, mask_token_id=mask_id, pad_token_id=0,
                        bos_token_id=0, eos_token_id=0, noise_schedule=name, time_epsilon=eps)
    model = TDLMForMaskedDiffusion(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.5)
    x0 = torch.tensor([[1, 4, 2, 5]])
    schedule = get_noise_schedule(name)

    # exact: enumerate every non-empty mask set m; E = sum_m I(|m|) * sum_{i in m} CE_i(x_m)
    mask_sets = [m for k in range(1, length + 1) for m in itertools.combinations(range(length), k)]
    masked = torch.zeros(len(mask_sets), length, dtype=torch.bool)
    for row, m in enumerate(mask_sets):
        masked[row, list(m)] = True
    with torch.no_grad():
        logits = model(x0.expand(len(mask_sets), length).masked_fill(masked, mask_id)).logits
    ce = F.cross_entropy(logits.transpose(1, 2), x0.expand(len(mask_sets), length), reduction="none")
    by_size = {k: _exact_mask_set_probability_integral(name, k, length, eps) for k in range(1, length + 1)}
    integrals = torch.tensor([by_size[len(m)] for m in mask_sets], dtype=torch.float64)
    exact = float((integrals * (ce.double() * masked).sum(-1)).sum())
    # the weights alone integrate to E[w(t) * #masked] = L * int_eps^1 -a'_t dt / (1 - eps)
    # = L (a_eps - a_1) / (1 - eps), which is L for the linear schedule
    a_eps, a_1 = (float(schedule.alpha(torch.tensor(v, dtype=torch.float64))) for v in (eps, 1.0))
    assert abs(float((integrals * masked.sum(-1)).sum()) - length * (a_eps - a_1) / (1 - eps)) < 1e-6

    # Monte Carlo: one draw of the forward process per row, through the model's loss path
    num_samples = 20_000
    ids = x0.expand(num_samples, length)
    targets = diffusion_targets(ids, torch.ones_like(ids), schedule, mask_id, time_epsilon=eps, antithetic=False,
                                generator=generator(11))
    with torch.no_grad():
        out = model(input_ids=targets["input_ids"], labels=targets["labels"], loss_weights=targets["loss_weights"],
                    num_items_in_batch=targets["num_items_in_batch"])
    rows = targets["masked"].nonzero()[:, 0]
    weighted = out.token_losses.double() * targets["loss_weights"][targets["masked"]].double()
    per_row = torch.zeros(num_samples, dtype=torch.float64).index_add_(0, rows, weighted)
    # the model's loss is the same sum, normalised per real token
    torch.testing.assert_close(out.loss.double(), per_row.sum() / (num_samples * length), rtol=1e-4, atol=0)
    mean, stderr = per_row.mean().item(), (per_row.std() / math.sqrt(num_samples)).item()
    assert stderr < 0.05 * exact  # the check has power
    print(f"{name}: MC NELBO {mean:.4f} +- {stderr:.4f} (n={num_samples}), exact {exact:.4f}")
    assert abs(mean - exact) < 5 * stderr, (mean, exact, stderr)
    # and a wrong weighting (none) is rejected at this precision
    unweighted = torch.zeros(num_samples, dtype=torch.float64).index_add_(0, rows, out.token_losses.double())
    assert abs(unweighted.mean().item() - exact) > 10 * stderr
