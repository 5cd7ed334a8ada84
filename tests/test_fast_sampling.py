"""Fast diffusion sampling: the LM head only where its output is used (random order, streamed confidence),
Fast-dLLM prefix/dual KV caches, and Hugging Face generation option names.

The reference for "today's sampler" is the full-logits route, which any logits hook selects (hooks see the logits at
every candidate): an identity hook gives the old outputs bit for bit."""

import pytest
import torch
from scipy import stats
from training_helpers import MASK, PAD, VOCAB, tiny_model

from tdlm import generation_tdlm
from tdlm.generation_tdlm import BlockKVCache, DiffusionGenerationConfig, propose_tokens, streamed_proposals


def identity_hook(step, tokens, logits, positions):
    return logits


def head_rows(model):
    """A list that collects the number of rows of every LM head call."""
    rows = []
    model.lm_head.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    return rows


PROMPTS = torch.tensor([[PAD, PAD, 5, 6, 7], [8, 9, 10, 11, 12]])
PROMPT_MASK = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
OPTION_SETS = [
    dict(num_steps=8),
    dict(num_steps=5, step_schedule="linear"),
    dict(num_steps=12, block_length=6),
    dict(num_steps=16, confidence_threshold=0.05),
    dict(num_steps=9, block_length=4, confidence_threshold=0.1, top_k=5),
]


@pytest.mark.parametrize("options", OPTION_SETS)
def test_random_order_runs_the_head_only_at_committed_rows_with_the_same_tokens(options):
    model = tiny_model()
    generate = dict(input_ids=PROMPTS, attention_mask=PROMPT_MASK, max_new_tokens=18, remasking="random",
                    return_dict_in_generate=True, **options)
    rows = head_rows(model)
    fast = model.diffusion_generate(generator=torch.Generator().manual_seed(7), **generate)
    assert sum(rows) == 2 * 18  # one head row per generated token
    rows.clear()
    full = model.diffusion_generate(generator=torch.Generator().manual_seed(7), logits_hook=identity_hook, **generate)
    assert sum(rows) >= 2 * 18
    assert torch.equal(fast.sequences, full.sequences)
    assert torch.equal(fast.commit_step, full.commit_step)


@pytest.mark.parametrize("remasking", ["low_confidence", "margin"])
@pytest.mark.parametrize("options", OPTION_SETS[:4])
def test_streamed_confidence_samples_what_the_full_logits_did(monkeypatch, remasking, options):
    model = tiny_model()
    monkeypatch.setattr(generation_tdlm, "PROPOSAL_CHUNK_SIZE", 16)  # 97 columns: 7 chunks, the mask in the last
    generate = dict(input_ids=PROMPTS, attention_mask=PROMPT_MASK, max_new_tokens=18, remasking=remasking,
                    return_dict_in_generate=True, **options)
    rows = head_rows(model)
    streamed = model.diffusion_generate(**generate)
    assert rows == []  # the head module never ran: its weight was streamed in chunks
    full = model.diffusion_generate(logits_hook=identity_hook, **generate)
    assert rows
    assert torch.equal(streamed.sequences, full.sequences)
    assert torch.equal(streamed.commit_step, full.commit_step)


@pytest.mark.parametrize("remasking", ["low_confidence", "margin"])
@pytest.mark.parametrize("chunk_size", [1, 10, 96, 97, 200])
def test_streamed_proposals_equal_propose_tokens(remasking, chunk_size):
    gen = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(40, 16, generator=gen), torch.randn(VOCAB, 16, generator=gen)
    hidden[1] = hidden[0]  # identical rows: identical results
    weight[5] = weight[3]  # tied logits: the lower id wins, as argmax
    logits = hidden @ weight.T
    logits[:, MASK] = float("-inf")
    config = DiffusionGenerationConfig(remasking=remasking)
    tokens, confidence = streamed_proposals(hidden, weight, config, MASK, chunk_size=chunk_size)
    expected_tokens, expected_confidence = propose_tokens(logits, config)
    assert torch.equal(tokens, expected_tokens) and (tokens != MASK).all()
    torch.testing.assert_close(confidence, expected_confidence, rtol=1e-5, atol=1e-6)
    assert confidence[0] == confidence[1]


def _chi_square_p(observed, probs):
    assert (observed[probs == 0] == 0).all()
    observed, expected = observed[probs > 0], probs[probs > 0] * observed.sum()
    keep = expected > 5  # pool the rare tokens into one cell
    obs, exp = observed[keep].double(), expected[keep].double()
    if not keep.all():
        obs, exp = torch.cat([obs, observed[~keep].sum()[None]]), torch.cat([exp, expected[~keep].sum()[None]])
    return stats.chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_streamed_sampling_follows_the_tempered_softmax(temperature):
    """Gumbel-max drawn chunk by chunk samples softmax(logits / T): chi-square goodness of fit over 20k draws."""
    gen = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(1, 8, generator=gen), torch.randn(VOCAB, 8, generator=gen) * 0.5
    logits = (hidden @ weight.T)[0]
    logits[MASK] = float("-inf")
    config = DiffusionGenerationConfig(temperature=temperature)
    tokens, confidence = streamed_proposals(hidden.expand(20000, -1), weight, config, MASK,
                                            generator=torch.Generator().manual_seed(2), chunk_size=16)
    observed = torch.bincount(tokens, minlength=VOCAB)
    assert observed[MASK] == 0
    assert _chi_square_p(observed, (logits / temperature).softmax(-1)) > 1e-3
    # confidence is p(proposal) under the untempered distribution
    torch.testing.assert_close(confidence, logits.softmax(-1)[tokens], rtol=1e-5, atol=1e-7)


def test_random_order_sampling_is_equal_in_distribution_to_the_full_route():
    """Temperature 1, random order: the fast route draws the order first and the Gumbel noise only at committed rows,
    so tokens differ for a seed; their distribution must not. Two-sample chi-square per position over 3000 rows."""
    model = tiny_model(seed=3)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)  # sharper, position-dependent distributions: a real test of the route
    options = dict(batch_size=3000, max_length=3, num_steps=3, remasking="random", temperature=1.0)
    fast = model.diffusion_generate(generator=torch.Generator().manual_seed(0), **options)
    full = model.diffusion_generate(generator=torch.Generator().manual_seed(1), logits_hook=identity_hook, **options)
    assert not torch.equal(fast, full)
    for column in range(3):
        table = torch.stack([torch.bincount(fast[:, column], minlength=VOCAB),
                             torch.bincount(full[:, column], minlength=VOCAB)])
        table = table[:, table.sum(0) > 0]
        frequent = table.sum(0) >= 20
        table = torch.cat([table[:, frequent], table[:, ~frequent].sum(1, keepdim=True)], 1)
        assert stats.chi2_contingency(table.numpy()).pvalue > 1e-3, column
    # and the joint law differs from independent positions: pairs are sampled from the model, not the marginals
    assert len({tuple(r) for r in fast[:, :2].tolist()}) > 10


# ---------------------------------------------------------------------------------------------
# Fast-dLLM caches
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_cached_window_forward_equals_the_full_forward_when_nothing_changed(mode):
    """Right after a refresh the cached keys/values are exact: the window's hidden states equal the full forward's."""
    model = tiny_model(dtype=torch.float64)
    tokens = torch.tensor([[PAD, 5, 6, 7, MASK, MASK, MASK, MASK, MASK, MASK, MASK, MASK],
                           [8, 9, 10, 11, 12, 13, MASK, MASK, MASK, MASK, MASK, MASK]])
    attention_mask = torch.tensor([[0] + [1] * 11, [1] * 12])
    in_block = torch.zeros_like(tokens, dtype=torch.bool)
    in_block[:, 6:9] = True
    everywhere = torch.ones_like(in_block)
    cache = BlockKVCache(mode, 2, 12, "cpu")
    rows, block = torch.arange(2), torch.tensor([1, 0])
    assert cache.prepare(rows, block, in_block) == (0, 12)  # first sight of these blocks: a full refresh
    full = model._active_hidden(tokens, attention_mask, everywhere, cache)
    assert torch.equal(full, model._active_hidden(tokens, attention_mask, everywhere))
    window = cache.prepare(rows, block, in_block)
    assert window == ((6, 12) if mode == "prefix" else (6, 9))
    positions = torch.zeros_like(in_block)
    positions[:, window[0]:window[1]] = True
    torch.testing.assert_close(model._active_hidden(tokens, attention_mask, positions, cache),
                               full.view(2, 12, -1)[:, window[0]:window[1]].reshape(-1, full.shape[-1]))
    # one row only (the other skips the step): its own cached rows are used
    positions = positions[1:]
    cache.prepare(rows[1:], block[1:], in_block[1:])
    torch.testing.assert_close(model._active_hidden(tokens[1:], attention_mask[1:], positions, cache),
                               full.view(2, 12, -1)[1, window[0]:window[1]])


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_one_step_per_block_with_a_cache_is_the_uncached_sampler(mode):
    """Every step starts a block, so every step refreshes: bit-identical to no cache."""
    model = tiny_model()
    options = dict(input_ids=PROMPTS, attention_mask=PROMPT_MASK, max_new_tokens=18, block_length=6, num_steps=3)
    assert torch.equal(model.diffusion_generate(cache=mode, **options), model.diffusion_generate(**options))


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_cache_runs_only_the_window_between_refreshes(mode):
    model = tiny_model()
    lengths = []
    model.model.register_forward_hook(lambda module, args, kwargs, out: lengths.append(kwargs["input_ids"].shape[1]),
                                      with_kwargs=True)
    out = model.diffusion_generate(torch.tensor([[5, 6, 7, 8]]), max_new_tokens=24, block_length=8, num_steps=12,
                                   cache=mode, return_dict_in_generate=True)
    assert not (out.sequences == MASK).any() and torch.equal(out.sequences[0, :4], torch.tensor([5, 6, 7, 8]))
    steps = out.commit_step[0, 4:]
    for earlier, later in zip(steps[:16].view(2, 8), steps[8:].view(2, 8), strict=True):
        assert earlier.max() < later.min()  # blocks still go left to right
    assert lengths.count(28) == 3  # one refresh per block
    windows = [n for n in lengths if n != 28]
    assert len(windows) == out.num_model_calls - 3
    if mode == "dual":
        assert set(windows) == {8}
    else:
        assert set(windows) == {24, 16, 8}


def test_cache_option_is_validated():
    model = tiny_model()
    with pytest.raises(ValueError, match="cache"):
        model.diffusion_generate(batch_size=1, max_length=8, cache="full")


# ---------------------------------------------------------------------------------------------
# Hugging Face generation names
# ---------------------------------------------------------------------------------------------
def test_do_sample_maps_onto_temperature():
    model = tiny_model()
    greedy = model.diffusion_generate(batch_size=2, max_length=10, num_steps=4)
    assert torch.equal(model.diffusion_generate(batch_size=2, max_length=10, num_steps=4, do_sample=False), greedy)
    sampled = model.diffusion_generate(batch_size=2, max_length=10, num_steps=4, do_sample=True,
                                       generator=torch.Generator().manual_seed(0))
    at_one = model.diffusion_generate(batch_size=2, max_length=10, num_steps=4, temperature=1.0,
                                      generator=torch.Generator().manual_seed(0))
    assert torch.equal(sampled, at_one) and not torch.equal(sampled, greedy)
    model.generation_config.temperature = 0.5  # a saved temperature: do_sample=False still means greedy
    assert torch.equal(model.diffusion_generate(batch_size=2, max_length=10, num_steps=4, do_sample=False), greedy)
    for kwargs in (dict(do_sample=False, temperature=0.8), dict(do_sample=True, temperature=0.0)):
        with pytest.raises(ValueError, match="do_sample"):
            model.diffusion_generate(batch_size=1, max_length=8, **kwargs)


def test_num_return_sequences_gives_samples_per_prompt():
    model = tiny_model()
    out = model.diffusion_generate(PROMPTS, PROMPT_MASK, max_new_tokens=6, num_steps=3, num_return_sequences=3,
                                   do_sample=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == (6, 11)
    assert torch.equal(out[:3, :5], PROMPTS[:1].expand(3, -1)) and torch.equal(out[3:, :5], PROMPTS[1:].expand(3, -1))
    assert model.diffusion_generate(batch_size=2, max_length=7, num_return_sequences=3).shape == (6, 7)


@pytest.mark.parametrize("option, value", [("num_beams", 4), ("repetition_penalty", 1.3), ("min_new_tokens", 5),
                                           ("use_cache", True), ("output_scores", True)])
def test_ignored_hugging_face_options_are_refused(option, value):
    model = tiny_model()
    with pytest.raises(ValueError, match=f"{option}={value!r}"):
        model.diffusion_generate(batch_size=1, max_length=8, **{option: value})


def test_neutral_hugging_face_values_are_accepted():
    model = tiny_model()
    out = model.diffusion_generate(batch_size=1, max_length=8, num_beams=1, repetition_penalty=1.0, top_k=50,
                                   top_p=0.9, output_scores=False)
    assert out.shape == (1, 8)


def test_max_length_with_a_prompt_is_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="max_length"):
        model.diffusion_generate(PROMPTS, PROMPT_MASK, max_length=12)


def test_entropy_rule_keeps_the_full_logits(monkeypatch):
    model = tiny_model()
    monkeypatch.setattr(generation_tdlm, "PROPOSAL_CHUNK_SIZE", 16)
    rows = head_rows(model)
    model.diffusion_generate(batch_size=1, max_length=8, num_steps=4, remasking="entropy")
    assert sum(rows) > 8
