"""Likelihood estimators against exact enumeration on a tiny vocabulary and length.

For masked diffusion with a linear-in-expectation NELBO, summing over masks M of the continuous-time weight
gives NELBO(x) = sum_{m=1}^{L} (1/m) * mean_{|M|=m} sum_{i in M} CE_i(x with M masked), which is also the
average over all L! unmasking orders of -log p_order(x). Jensen then gives -log mean_order p_order(x) <= NELBO.
"""

import itertools
import math

import pytest
import torch

from tdlm import TDLMConfig, TDLMForCausalLM, TDLMForMaskedDiffusion
from tdlm.evaluation.likelihood import (
    ar_conditional_loglikelihood,
    ar_nll,
    diffusion_conditional_loglikelihood,
    diffusion_nelbo,
    diffusion_ordered_nll,
    llada_masks,
)

VOCAB, MASK, LENGTH = 8, 7, 4


def tiny(mode, seed=0):
    torch.manual_seed(seed)
    config = TDLMConfig(vocab_size=VOCAB, mask_token_id=MASK, pad_token_id=0, bos_token_id=0, eos_token_id=0,
                        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=16, training_mode=mode, initializer_range=0.5)
    model = (TDLMForMaskedDiffusion if mode == "diffusion" else TDLMForCausalLM)(config).eval()
    return model


@torch.no_grad()
def masked_ce(model, x, positions):
    """Sum over `positions` of -log p(x_i | x with `positions` masked)."""
    noisy = x.clone()
    noisy[list(positions)] = MASK
    logprobs = torch.log_softmax(model(input_ids=noisy[None]).logits[0].double(), -1)
    return -sum(float(logprobs[i, x[i]]) for i in positions)


def exact_nelbo(model, x, span=None):
    """sum_m (1/m) mean_{|M|=m} sum_{i in M} CE_i, masks drawn from `span` (default all positions)."""
    span = list(range(len(x))) if span is None else list(span)
    total = 0.0
    for m in range(1, len(span) + 1):
        subsets = list(itertools.combinations(span, m))
        total += sum(masked_ce(model, x, s) for s in subsets) / len(subsets) / m
    return total


@pytest.fixture(scope="module")
def diffusion_model():
    return tiny("diffusion")


@pytest.fixture(scope="module")
def block():
    return torch.tensor([[3, 1, 5, 2]])


def test_monte_carlo_nelbo_matches_enumerated_nelbo(diffusion_model, block):
    exact = exact_nelbo(diffusion_model, block[0]) / LENGTH
    estimate = diffusion_nelbo(diffusion_model, block, num_samples=4000, seed=1, time_epsilon=1e-4, batch_size=1000)
    # truncating t < eps drops at most eps * (sum of single-token CEs) per block
    truncation = 1e-4 * max(masked_ce(diffusion_model, block[0], [i]) for i in range(LENGTH))
    assert abs(estimate["nelbo"] - exact) < 4 * estimate["standard_error"] + truncation
    assert estimate["standard_error"] < 0.05 * exact  # the check above is not vacuous


def test_order_averaged_likelihood_equals_nelbo_and_bounds_nll(diffusion_model, block):
    exact = exact_nelbo(diffusion_model, block[0])
    per_order = [diffusion_ordered_nll(diffusion_model, block, order=torch.tensor(o))["nll"] * LENGTH
                 for o in itertools.permutations(range(LENGTH))]
    assert sum(per_order) / len(per_order) == pytest.approx(exact, rel=1e-5)
    mixture_nll = -math.log(sum(math.exp(-v) for v in per_order) / len(per_order))
    assert mixture_nll <= exact + 1e-9
    assert min(per_order) < exact < max(per_order)  # single orders are not bounded by the NELBO
    left_to_right = diffusion_ordered_nll(diffusion_model, block)
    assert left_to_right["nll"] * LENGTH == pytest.approx(per_order[0], rel=1e-6)


def test_standard_error_shrinks_like_one_over_sqrt_k(diffusion_model):
    blocks = torch.randint(0, MASK, (8, LENGTH), generator=torch.Generator().manual_seed(0))
    small = diffusion_nelbo(diffusion_model, blocks, num_samples=16, seed=0)["standard_error"]
    large = diffusion_nelbo(diffusion_model, blocks, num_samples=256, seed=0)["standard_error"]
    assert 2.5 < small / large < 6.4  # sqrt(256/16) = 4; sample-variance noise with 8*15 degrees of freedom
    again = diffusion_nelbo(diffusion_model, blocks, num_samples=16, seed=0)
    assert again["standard_error"] == small  # fixed seed, reproducible


def test_ar_nll_is_exact_over_non_overlapping_blocks():
    model = tiny("autoregressive")
    stream = torch.randint(0, MASK, (3 * LENGTH + 2,), generator=torch.Generator().manual_seed(0))
    blocks = stream[: 3 * LENGTH].view(3, LENGTH)  # packed blocks, ragged tail dropped
    result = ar_nll(model, blocks)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=blocks).logits.double(), -1)
    manual = -logprobs[:, :-1].gather(-1, blocks[:, 1:, None]).sum() / (3 * (LENGTH - 1))
    assert result["num_tokens"] == 3 * (LENGTH - 1)
    assert result["nll"] == pytest.approx(float(manual), rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(float(manual)), rel=1e-5)


def test_ar_conditional_loglikelihood_is_exact_with_left_truncation():
    model = tiny("autoregressive")
    context, continuation = list(range(1, 7)) * 3, [2, 4]  # 20 tokens > max_position_embeddings 16
    ((score, greedy),) = ar_conditional_loglikelihood(model, [(context, continuation)])
    window = (context + continuation)[-17:]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([window[:-1]])).logits[0].double(), -1)
    expected = float(logprobs[-2, 2] + logprobs[-1, 4])
    assert score == pytest.approx(expected, rel=1e-6)
    assert greedy == bool(logprobs[-2].argmax() == 2 and logprobs[-1].argmax() == 4)


def test_llada_masks_are_stratified_and_paired_across_lengths():
    masks, weights = llada_masks(key=7, length=5, mc_num=10)
    counts = masks.sum(-1)
    assert sorted(counts.tolist()) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]  # stratified over 1..L
    torch.testing.assert_close(weights, 5 / counts.double())
    shorter, _ = llada_masks(key=7, length=3, mc_num=10)
    # same key: the random keys of the first 3 positions are shared, so each draw masks the k smallest of them
    generator = torch.Generator().manual_seed(7)
    torch.rand(1, generator=generator, dtype=torch.float64)
    keys = torch.rand(5, 10, generator=generator, dtype=torch.float64).t()
    for row in range(10):
        k = int(shorter[row].sum())
        assert set(shorter[row].nonzero().flatten().tolist()) == set(keys[row, :3].argsort()[:k].tolist())
        assert set(masks[row].nonzero().flatten().tolist()) == set(keys[row].argsort()[:int(counts[row])].tolist())


def test_llada_conditional_estimate_is_unbiased_for_the_continuation_nelbo(diffusion_model):
    context, continuation = [1, 2], [3, 5, 4]
    x = torch.tensor(context + continuation)
    exact = exact_nelbo(diffusion_model, x, span=range(2, 5))
    ((estimate, _),) = diffusion_conditional_loglikelihood(diffusion_model, [(context, continuation)], [11],
                                                           mc_num=3000, batch_size=1000)
    # each draw is (L/l) * sum CE over one mask: bounded by W, so its sd is <= W/2 and the mean's <= W/(2 sqrt(n))
    span = range(2, 5)
    bound = max(3 / m * masked_ce(diffusion_model, x, s) for m in (1, 2, 3) for s in itertools.combinations(span, m))
    assert abs(-estimate - exact) < 4 * bound / (2 * math.sqrt(3000))
    ((repeat, _),) = diffusion_conditional_loglikelihood(diffusion_model, [(context, continuation)], [11], mc_num=3000,
                                                         batch_size=1000)
    assert repeat == estimate


@pytest.mark.parametrize("mode", ["autoregressive", "diffusion"])
def test_overlong_continuation_scores_its_last_tokens(mode):
    from tdlm.evaluation.likelihood import fit_continuations

    model = tiny(mode)
    context, continuation = [1, 2], list(range(1, 7)) * 3  # 18 tokens > max_position_embeddings - 1 = 15
    ((fit_context, fit_continuation),) = fit_continuations([(context, continuation)], 16)
    assert fit_continuation == continuation[-15:] and fit_context == context + continuation[:3]
    score = (ar_conditional_loglikelihood(model, [(fit_context, fit_continuation)]) if mode == "autoregressive" else
             diffusion_conditional_loglikelihood(model, [(fit_context, fit_continuation)], [0], mc_num=4))[0][0]
    assert math.isfinite(score) and score < 0
