"""diffusion_generate: shapes, infilling, EOS, determinism, batch invariance, remasking rules, schedules,
parallel decoding, blocks, errors, saved defaults and sampling through trust_remote_code alone."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from publish_helpers import NO_TDLM_PRELUDE
from training_helpers import EOS, MASK, PAD, VOCAB, tiny_model

from tdlm import DiffusionGenerationConfig, TDLMConfig, TDLMForMaskedDiffusion
from tdlm.generation_tdlm import ClassifierFreeGuidance, propose_tokens
from tdlm.schedules import get_noise_schedule, unmask_counts


def column_logits(table):
    """A stand-in for `_active_logits` whose proposal at canvas column c is `table[c]`, whatever the context:
    the commit order then depends only on the remasking rule."""
    def fake(tokens, attention_mask, positions, cache=None):
        return table[positions.nonzero()[:, 1]].clone()
    return fake


def test_unconditional_and_prompted_shapes_no_mask_left_prompt_kept():
    model = tiny_model()
    out = model.diffusion_generate(batch_size=3, max_length=20, num_steps=5)
    assert out.shape == (3, 20) and not (out == MASK).any()

    prompt = torch.tensor([[PAD, PAD, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    out = model.diffusion_generate(prompt, mask, max_new_tokens=11, num_steps=4)
    assert out.shape == (2, 16) and not (out == MASK).any()
    assert torch.equal(out[:, :5], prompt)


def test_infilling_keeps_given_tokens_and_fills_masks():
    model = tiny_model()
    x = torch.randint(3, MASK, (2, 24), generator=torch.Generator().manual_seed(1))
    holes = torch.zeros_like(x, dtype=torch.bool)
    holes[0, 3:9] = True
    holes[1, ::3] = True
    canvas = x.masked_fill(holes, MASK)
    out = model.diffusion_generate(canvas, num_steps=4, return_dict_in_generate=True)
    assert out.sequences.shape == x.shape and not (out.sequences == MASK).any()
    assert torch.equal(out.sequences[~holes], x[~holes])
    assert ((out.commit_step >= 0) == holes).all()  # exactly the holes were decided by the sampler
    assert torch.equal(canvas, x.masked_fill(holes, MASK))  # the caller's tensor is not written into


def test_stop_at_eos_pads_everything_after_the_first_generated_eos(monkeypatch):
    model = tiny_model()
    length, eos_column = 16, 6
    table = torch.full((length, VOCAB), -5.0)
    table[torch.arange(length), 10 + torch.arange(length)] = 5.0  # column c proposes token 10 + c
    table[eos_column, :] = -5.0
    table[eos_column, EOS] = 10.0  # the most confident proposal of all
    monkeypatch.setattr(model, "_active_logits", column_logits(table))
    prompt = torch.tensor([[3, 4]])
    out = model.diffusion_generate(prompt, max_new_tokens=length - 2, num_steps=14, stop_at_eos=True,
                                   return_dict_in_generate=True)
    seq = out.sequences[0]
    assert seq[eos_column] == EOS
    assert torch.equal(seq[2:eos_column], 10 + torch.arange(2, eos_column))
    assert (seq[eos_column + 1:] == PAD).all()
    # the EOS is the most confident proposal: committed first, and the tail is padded in the same step
    first_commit = int((out.committed_per_step[0] > 0).nonzero()[0])
    assert out.commit_step[0, eos_column] == first_commit
    assert (out.commit_step[0, eos_column + 1:] == first_commit).all()
    full = model.diffusion_generate(prompt, max_new_tokens=length - 2, num_steps=14)
    assert torch.equal(full[0, eos_column + 1:], 10 + torch.arange(eos_column + 1, length))


def test_seeded_sampling_is_deterministic_and_seed_dependent():
    model = tiny_model()
    kwargs = dict(batch_size=2, max_length=24, num_steps=6, temperature=1.0, top_k=50, top_p=0.95)
    a = model.diffusion_generate(generator=torch.Generator().manual_seed(7), **kwargs)
    b = model.diffusion_generate(generator=torch.Generator().manual_seed(7), **kwargs)
    c = model.diffusion_generate(generator=torch.Generator().manual_seed(8), **kwargs)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("options", [{}, {"confidence_threshold": 0.05}, {"block_length": 4, "step_schedule": "linear"},
                                     {"cfg_scale": 1.5}])
def test_a_rows_greedy_output_does_not_depend_on_its_batch(options):
    model = tiny_model(dtype=torch.float64)  # float64: no argmax flips from batched-kernel rounding
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    batched = model.diffusion_generate(ids, mask, max_new_tokens=12, num_steps=6, **options)
    for row, prompt in enumerate(prompts):
        alone = model.diffusion_generate(torch.tensor([prompt]), max_new_tokens=12, num_steps=6, **options)
        assert torch.equal(batched[row, width - len(prompt):], alone[0]), f"row {row} changed with its batch"


def _commit_order(model, monkeypatch, table, **options):
    monkeypatch.setattr(model, "_active_logits", column_logits(table))
    length = table.shape[0]
    out = model.diffusion_generate(torch.full((1, length), MASK), num_steps=length, step_schedule="linear",
                                   return_dict_in_generate=True, **options)
    assert (out.committed_per_step == 1).all()  # linear schedule, L masks in L steps: one per step
    return out.commit_step[0]


def test_remasking_rules_commit_in_the_order_of_their_own_confidence(monkeypatch):
    model = tiny_model()
    length = 12
    gen = torch.Generator().manual_seed(3)
    # columns with different sharpness so that p(top-1), margin and entropy rank them differently
    table = torch.randn(length, VOCAB, generator=gen)
    table = table * torch.linspace(0.5, 4.0, length)[torch.randperm(length, generator=gen)][:, None]
    table[:, MASK] = float("-inf")
    probs = table.softmax(-1)
    top2 = probs.topk(2, -1).values
    expected = {
        "low_confidence": top2[:, 0],
        "margin": top2[:, 0] - top2[:, 1],
        "entropy": (probs * probs.clamp_min(1e-30).log()).sum(-1),
    }
    orders = {}
    for rule, confidence in expected.items():
        commit_step = _commit_order(model, monkeypatch, table, remasking=rule)
        assert torch.equal(commit_step, confidence.argsort(descending=True).argsort()), rule
        orders[rule] = commit_step
    assert not torch.equal(orders["low_confidence"], orders["margin"])
    assert not torch.equal(orders["low_confidence"], orders["entropy"])
    randoms = [_commit_order(model, monkeypatch, table, remasking="random", generator=torch.Generator().manual_seed(s))
               for s in (0, 1)]
    for order in randoms:
        assert torch.equal(order.sort().values, torch.arange(length))
    assert not torch.equal(randoms[0], randoms[1])


@pytest.mark.parametrize("step_schedule", ["cosine", "linear"])
def test_committed_per_step_follows_the_schedule_per_row(step_schedule):
    model = tiny_model()
    x = torch.randint(3, MASK, (3, 40), generator=torch.Generator().manual_seed(0))
    num_masks = torch.tensor([40, 23, 7])
    for row, n in enumerate(num_masks):
        x[row, :n] = MASK
    out = model.diffusion_generate(x, num_steps=10, step_schedule=step_schedule, return_dict_in_generate=True)
    expected = unmask_counts(num_masks, 10, get_noise_schedule(model.config.noise_schedule), step_schedule)
    assert torch.equal(out.committed_per_step, expected)
    # steps where no row commits anything skip the model call
    assert out.num_model_calls == int((expected.sum(0) > 0).sum())
    assert torch.equal(out.row_model_calls, (expected > 0).sum(1))


def test_confidence_threshold_reduces_model_calls(monkeypatch):
    model = tiny_model()
    length = 32
    table = torch.full((length, VOCAB), -10.0)
    table[torch.arange(length), 3 + torch.arange(length) % 50] = 10.0  # every proposal has p ~ 1
    table[5, :] = 0.0  # ... except column 5, which is uniform
    monkeypatch.setattr(model, "_active_logits", column_logits(table))
    canvas = torch.full((1, length), MASK)
    plain = model.diffusion_generate(canvas, num_steps=16, return_dict_in_generate=True)
    fast = model.diffusion_generate(canvas, num_steps=16, confidence_threshold=0.9, return_dict_in_generate=True)
    assert plain.num_model_calls > 8
    assert fast.num_model_calls == 2  # all confident columns at once, then the uniform one
    assert fast.commit_step[0, 5] == 1 and (fast.commit_step[0, torch.arange(length) != 5] == 0).all()
    assert torch.equal(fast.sequences, plain.sequences)


def test_blocks_are_committed_left_to_right():
    model = tiny_model()
    out = model.diffusion_generate(torch.tensor([[5, 6, 7]]), max_new_tokens=20, num_steps=10, block_length=6,
                                   return_dict_in_generate=True)
    steps = out.commit_step[0, 3:]
    blocks = [steps[i:i + 6] for i in range(0, 20, 6)]
    for earlier, later in zip(blocks, blocks[1:], strict=False):
        assert earlier.max() < later.min()
    assert not (out.sequences == MASK).any()
    assert out.committed_per_step.shape[1] <= 10


def test_one_step_commits_everything_in_one_call():
    model = tiny_model()
    out = model.diffusion_generate(batch_size=2, max_length=30, num_steps=1, return_dict_in_generate=True)
    assert out.num_model_calls == 1
    assert (out.commit_step == 0).all() and not (out.sequences == MASK).any()


def test_history_records_every_step_and_only_fills_masks():
    model = tiny_model()
    out = model.diffusion_generate(batch_size=1, max_length=16, num_steps=4, output_history=True,
                                   return_dict_in_generate=True)
    assert len(out.history) == out.committed_per_step.shape[1]
    masks_left = [int((h == MASK).sum()) for h in out.history]
    assert masks_left == sorted(masks_left, reverse=True) and masks_left[-1] == 0
    assert torch.equal(out.history[-1], out.sequences)


def test_classifier_free_guidance_extrapolates_from_the_prompt_masked_logits():
    """LLaDA's guidance: u + (1 + w)(c - u), u from the same canvas with the prompt masked, pads left alone."""
    model = tiny_model(dtype=torch.float64)
    tokens = torch.tensor([[PAD, 5, 6, MASK, MASK, MASK], [7, 8, 9, 10, MASK, MASK]])
    attention_mask = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    positions = tokens == MASK
    prompt = attention_mask.bool() & ~positions

    def logits_of(canvas):
        return model.lm_head(model.model(input_ids=canvas, attention_mask=attention_mask).last_hidden_state)[positions]

    conditional, unconditional = logits_of(tokens), logits_of(tokens.masked_fill(prompt, MASK))
    assert not torch.allclose(conditional, unconditional)  # the prompt matters, so guidance has work to do
    guided = ClassifierFreeGuidance(model, attention_mask, prompt, 2.0)(0, tokens, model._active_logits(
        tokens, attention_mask, positions), positions)
    expected = unconditional + 3.0 * (conditional - unconditional)
    torch.testing.assert_close(guided[:, :MASK], expected[:, :MASK].float(), rtol=1e-6, atol=1e-6)
    assert torch.isneginf(guided[:, MASK]).all() and torch.isfinite(guided[:, :MASK]).all()
    unguided = model._active_logits(tokens, attention_mask, positions)
    torch.testing.assert_close(unguided[:, :MASK], conditional[:, :MASK].float(), rtol=1e-6, atol=1e-6)


def test_guidance_without_a_prompt_changes_nothing():
    """Unconditional canvases have no prompt to mask: u = c, so any cfg_scale samples what cfg_scale=0 does."""
    model = tiny_model(dtype=torch.float64)
    plain = model.diffusion_generate(batch_size=2, max_length=16, num_steps=4)
    guided = model.diffusion_generate(batch_size=2, max_length=16, num_steps=4, cfg_scale=3.0)
    assert torch.equal(plain, guided)


def test_guidance_hook_samples_what_the_batched_guided_call_did():
    """cfg_scale is a logits hook that runs the prompt-masked rows as a second call; for a fixed seed it samples what
    the former sampler did with conditional and unconditional rows in one batched call (rebuilt here as a hook)."""
    model = tiny_model(dtype=torch.float64)
    ids = torch.tensor([[PAD, PAD, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    new_tokens, scale = 10, 2.0
    attention = torch.cat([mask, torch.ones(2, new_tokens, dtype=torch.long)], 1)
    prompt = torch.cat([mask.bool(), torch.zeros(2, new_tokens, dtype=torch.bool)], 1)

    def batched_guidance(step, tokens, logits, positions):  # ignores the given logits: one call on twice the rows
        rows = positions.any(-1)
        canvas, where = tokens[rows], torch.cat([positions[rows], positions[rows]])
        both = torch.cat([canvas, canvas.masked_fill(prompt[rows], MASK)])
        hidden = model.model(input_ids=both, attention_mask=attention[rows].repeat(2, 1)).last_hidden_state
        conditional, unconditional = model.lm_head(hidden[where]).float().chunk(2)
        return unconditional + (1.0 + scale) * (conditional - unconditional)

    kwargs = dict(max_new_tokens=new_tokens, num_steps=5, temperature=1.0, top_k=40)
    guided = model.diffusion_generate(ids, mask, cfg_scale=scale, generator=torch.Generator().manual_seed(4), **kwargs)
    reference = model.diffusion_generate(ids, mask, logits_hook=batched_guidance,
                                         generator=torch.Generator().manual_seed(4), **kwargs)
    plain = model.diffusion_generate(ids, mask, generator=torch.Generator().manual_seed(4), **kwargs)
    assert torch.equal(guided, reference)
    assert not torch.equal(guided, plain)


def test_a_logits_hook_runs_once_per_model_step_and_can_steer_the_output():
    model = tiny_model()
    prompt = torch.tensor([[5, 6, 7]])
    calls = []

    def record(step, tokens, logits, positions):
        calls.append((step, tokens.clone(), positions.clone(), tuple(logits.shape)))
        return logits

    kwargs = dict(max_new_tokens=8, num_steps=8, step_schedule="linear")
    out = model.diffusion_generate(prompt, logits_hook=record, return_dict_in_generate=True, **kwargs)
    assert torch.equal(out.sequences, model.diffusion_generate(prompt, **kwargs))  # an identity hook changes nothing
    assert [call[0] for call in calls] == list(range(8)) and out.num_model_calls == 8
    for _, tokens, positions, shape in calls:
        assert torch.equal(positions, tokens == MASK)  # one block: every mask left has logits
        assert shape == (int(positions.sum()), VOCAB)

    def only_42(step, tokens, logits, positions):
        steered = torch.full_like(logits, -1e4)
        steered[:, 42] = 0.0
        steered[:, MASK] = 1e4  # the sampler keeps the mask token at -inf whatever a hook returns
        return steered

    forced = model.diffusion_generate(prompt, logits_hook=only_42, **kwargs)
    assert (forced[0, 3:] == 42).all() and torch.equal(forced[0, :3], prompt[0])
    assert not (out.sequences[0, 3:] == 42).all()


def test_a_tokens_hook_sees_each_steps_commits_and_can_edit_the_canvas():
    model = tiny_model()
    prompt = torch.tensor([[5, 6, 7]])
    seen = []

    def commit_sevens(step, tokens, committed):
        seen.append((step, committed.clone()))
        return tokens.masked_fill(committed, 7)

    out = model.diffusion_generate(prompt, max_new_tokens=9, num_steps=4, tokens_hook=commit_sevens,
                                   return_dict_in_generate=True)
    assert [step for step, _ in seen] == list(range(out.committed_per_step.shape[1]))
    assert torch.equal(torch.stack([c.sum(-1) for _, c in seen], 1), out.committed_per_step)
    for step, committed in seen:
        assert (out.commit_step[committed] == step).all()
    assert (out.sequences[0, 3:] == 7).all() and torch.equal(out.sequences[0, :3], prompt[0])


def test_hooks_must_be_callable():
    model = tiny_model()
    for name in ("logits_hook", "tokens_hook"):
        with pytest.raises(TypeError, match=name):
            model.diffusion_generate(batch_size=1, max_length=8, **{name: "not a function"})


def test_propose_tokens_top_k_one_is_greedy_at_any_temperature():
    logits = torch.randn(64, VOCAB, generator=torch.Generator().manual_seed(0))
    config = DiffusionGenerationConfig(temperature=5.0, top_k=1)
    tokens, _ = propose_tokens(logits, config, torch.Generator().manual_seed(1))
    assert torch.equal(tokens, logits.argmax(-1))
    config = DiffusionGenerationConfig(temperature=5.0, top_p=1e-6)
    tokens, _ = propose_tokens(logits, config, torch.Generator().manual_seed(1))
    assert torch.equal(tokens, logits.argmax(-1))


@pytest.mark.parametrize("kwargs, message", [
    (dict(input_ids=torch.tensor([[5] * 40]), max_new_tokens=9), "max_position_embeddings"),
    (dict(batch_size=1, max_length=8, num_steps=0), "num_steps"),
    (dict(input_ids=torch.tensor([[5, 6]]), attention_mask=torch.tensor([[1, 1, 1]]), max_new_tokens=4),
     "attention_mask shape"),
    (dict(batch_size=1, max_length=8, top_p=0.0), "top_p"),
    (dict(batch_size=1, max_length=8, top_p=1.5), "top_p"),
    (dict(input_ids=torch.tensor([[5, 6]])), "nothing to generate"),
    (dict(batch_size=1, max_length=8, num_step=3), "unknown options"),
    (dict(batch_size=1, max_length=8, cfg_scale=-1.0), "cfg_scale"),
])
def test_bad_input_gets_a_clear_error(kwargs, message):
    model = tiny_model()
    with pytest.raises((ValueError, TypeError), match=message):
        model.diffusion_generate(**kwargs)


def test_model_without_mask_token_is_refused():
    model = tiny_model()
    model.config.mask_token_id = None
    with pytest.raises(ValueError, match="mask_token_id"):
        model.diffusion_generate(batch_size=1, max_length=8)


def test_generation_config_round_trip_keeps_diffusion_defaults(tmp_path):
    model = tiny_model()
    model.generation_config.num_steps = 7
    model.generation_config.remasking = "margin"
    model.generation_config.block_length = 4
    model.generation_config.max_new_tokens = 9
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert saved["num_steps"] == 7 and saved["remasking"] == "margin" and saved["block_length"] == 4
    reloaded = TDLMForMaskedDiffusion.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded.generation_config, DiffusionGenerationConfig)
    assert reloaded.generation_config.num_steps == 7 and reloaded.generation_config.remasking == "margin"
    out = reloaded.diffusion_generate(torch.tensor([[5, 6]]), return_dict_in_generate=True)
    assert out.sequences.shape == (1, 11)
    assert out.committed_per_step.shape[1] <= 7
    assert torch.equal(out.sequences, model.diffusion_generate(torch.tensor([[5, 6]])))


@pytest.mark.slow
def test_saved_checkpoint_samples_through_trust_remote_code_alone(tmp_path):
    model = tiny_model()
    model.generation_config.num_steps = 5
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    expected = model.diffusion_generate(torch.tensor([[5, 6, 7]]), max_new_tokens=10)
    script = NO_TDLM_PRELUDE + textwrap.dedent(f"""
        import sys, torch
        from transformers import AutoModelForMaskedLM
        model = AutoModelForMaskedLM.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        assert type(model.generation_config).__name__ == "DiffusionGenerationConfig", type(model.generation_config)
        assert model.generation_config.num_steps == 5
        out = model.diffusion_generate(torch.tensor([[5, 6, 7]]), max_new_tokens=10, return_dict_in_generate=True)
        print("SEQ", out.sequences.tolist(), "CALLS", out.num_model_calls)
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = [text for text in result.stdout.splitlines() if text.startswith("SEQ")][0]
    assert line.split("CALLS")[0].strip() == f"SEQ {expected.tolist()}"
    assert int(line.split("CALLS")[1]) <= 5


def test_benchmark_sampling_rows_report_generated_tokens_and_calls():
    from tdlm import TDLMForCausalLM
    from tdlm.evaluation.sampling_speed import benchmark_sampling, format_table

    diffusion = tiny_model()
    torch.manual_seed(0)
    ar = TDLMForCausalLM(TDLMConfig(**{**tiny_model().config.to_diff_dict(), "training_mode": "autoregressive"}))
    rows = benchmark_sampling(diffusion, ar, batch_size=2, length=16, steps_list=(1, 4), confidence_threshold=0.0,
                              repeats=1, device="cpu")
    assert [(r["method"], r["num_steps"]) for r in rows] == [
        ("diffusion", 1), ("diffusion", 4), ("diffusion+threshold", 1), ("diffusion+threshold", 4),
        ("autoregressive", None)]
    calls = {(r["method"], r["num_steps"]): r["model_calls"] for r in rows}
    assert calls[("diffusion", 1)] == 1 and 1 <= calls[("diffusion", 4)] <= 4
    assert calls[("diffusion+threshold", 4)] == 1  # threshold 0: every proposal is above it
    assert calls[("autoregressive", None)] == 16
    for r in rows:
        assert r["tokens_per_second"] == pytest.approx(2 * 16 / r["wall_time_s"])
    assert format_table(rows).count("\n") == len(rows) + 1
