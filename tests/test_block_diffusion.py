"""Block diffusion (BD3-LM): the maths against diffusion and AR, the vectorised forward against a per-block loop,
cached sampling against uncached, the scoring convention shared by every objective, config and remote code."""

import json
import os
import subprocess
import sys

import pytest
import torch
from publish_helpers import NO_TDLM_PRELUDE

from tdlm import TDLMConfig
from tdlm.block_diffusion_tdlm import BlockDiffusionGenerationMixin, block_causal_mask, training_mask
from tdlm.config import ConfigError, load_config
from tdlm.evaluation.likelihood import block_conditional_loglikelihood, diffusion_nelbo_samples
from tdlm.evaluation.scoring import held_out_loss
from tdlm.modeling_tdlm import TDLMForBlockDiffusion, TDLMForCausalLM, TDLMForMaskedDiffusion
from tdlm.objectives import objective_for
from tdlm.schedules import block_diffusion_targets, get_noise_schedule

VOCAB, MASK, EOS = 24, 23, 1


def _config(mode, block=None, positions=32, **extra):
    return TDLMConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=positions, mask_token_id=MASK, pad_token_id=0,
                      bos_token_id=EOS, eos_token_id=EOS, training_mode=mode, bd_block_size=block,
                      head_implementation="chunked", **extra)


def _model(mode, block=None, seed=0, **extra):
    torch.manual_seed(seed)
    return {"diffusion": TDLMForMaskedDiffusion, "autoregressive": TDLMForCausalLM,
            "block_diffusion": TDLMForBlockDiffusion}[mode](_config(mode, block, **extra)).eval()


def _blocks(n, length, seed=1):
    return torch.randint(2, MASK, (n, length), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------------------------
def test_training_mask_is_bd3lms_three_parts():
    mask = training_mask(4, 2)[0, 0].int()
    expected = torch.tensor([
        # x_t: own block (bidirectional) + clean blocks before it | x_0: block-causal
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 1],
        [0, 0, 0, 0, 1, 1, 1, 1]])
    assert torch.equal(mask, expected)
    assert torch.equal(block_causal_mask(4, 2)[0, 0].int(), expected[4:, 4:])


# ---------------------------------------------------------------------------------------------
# B = L is diffusion, B = 1 is AR
# ---------------------------------------------------------------------------------------------
def test_one_block_equals_diffusion_loss_and_nelbo_on_the_same_draws():
    length = 16
    diffusion = _model("diffusion")
    block = TDLMForBlockDiffusion(_config("block_diffusion", length)).eval()
    block.load_state_dict(diffusion.state_dict())
    x0 = _blocks(6, length)
    schedule = get_noise_schedule("linear")
    draws = {}
    for name, model in (("diffusion", diffusion), ("block", block)):
        objective = objective_for(model.config)
        targets = objective.training_targets(x0, None, model.config, schedule, torch.Generator().manual_seed(3),
                                             (0.0, 1.0), True)
        inputs = objective.model_inputs({"input_ids": x0}, targets)
        draws[name] = (targets, model(**inputs, num_items_in_batch=x0.numel()).loss)
    (d_targets, d_loss), (b_targets, b_loss) = draws["diffusion"], draws["block"]
    assert torch.equal(d_targets["input_ids"], b_targets["input_ids"])
    assert torch.equal(d_targets["loss_weights"], b_targets["loss_weights"])
    torch.testing.assert_close(b_loss, d_loss, rtol=1e-5, atol=1e-6)
    d_nelbo = held_out_loss(diffusion, x0, num_samples=8, seed=5)
    b_nelbo = held_out_loss(block, x0, num_samples=8, seed=5)
    assert b_nelbo["num_tokens"] == d_nelbo["num_tokens"] == x0.numel()
    assert b_nelbo["loss"] == pytest.approx(d_nelbo["loss"], rel=1e-5)
    assert b_nelbo["standard_error"] == pytest.approx(d_nelbo["standard_error"], rel=1e-4)


def _exact_chain_rule_nll(model, x0):
    """-log p(x0) of a B = 1 model, one forward per position: position i masked after the clean x0[:i]."""
    total = torch.zeros(x0.shape[0], dtype=torch.float64)
    for i in range(x0.shape[1]):
        inputs = torch.cat([x0[:, :i], torch.full_like(x0[:, :1], MASK)], dim=1)
        logits = model(input_ids=inputs).logits[:, -1].double()
        total += torch.nn.functional.cross_entropy(logits, x0[:, i], reduction="none")
    return total


def test_unit_blocks_nelbo_is_the_ar_chain_rule_nll():
    """B = 1: each block is one token, so the NELBO is the AR factorisation's NLL in expectation (exactly when every
    block's t is forced to 1: everything masked, weight 1 under the linear schedule)."""
    length = 12
    model = _model("block_diffusion", 1)
    x0 = _blocks(3, length)
    exact = _exact_chain_rule_nll(model, x0)
    schedule = get_noise_schedule("linear")
    forced = block_diffusion_targets(x0, None, schedule, MASK, 1, t=torch.ones(3, length))
    with torch.no_grad():
        out = model(input_ids=forced["input_ids"], clean_input_ids=x0, labels=forced["labels"])
    per_row = out.token_losses.double().view(3, length).sum(-1)
    torch.testing.assert_close(per_row, exact, rtol=1e-5, atol=1e-5)
    samples = diffusion_nelbo_samples(model, x0, num_samples=256, seed=0, noise_block_size=1)
    mean, se = samples.mean(1), samples.std(1) / 256 ** 0.5
    assert ((mean - exact).abs() < 3 * se).all(), (mean, exact, se)
    assert (se > 0).all()


# ---------------------------------------------------------------------------------------------
# the vectorised x_t (+) x_0 forward
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_vectorised_forward_equals_a_per_block_loop(attention):
    size, length = 4, 16
    model = _model("block_diffusion", size)
    model.config._attn_implementation = attention
    x0 = _blocks(2, length)
    x_t = block_diffusion_targets(x0, None, get_noise_schedule("linear"), MASK, size,
                                  generator=torch.Generator().manual_seed(0))["input_ids"]
    with torch.no_grad():
        vectorised = model(input_ids=x_t, clean_input_ids=x0).logits
        for lo in range(0, length, size):  # one forward per block: the clean prefix, then the noisy block
            inputs = torch.cat([x0[:, :lo], x_t[:, lo:lo + size]], dim=1)
            loop = model(input_ids=inputs).logits[:, lo:]
            torch.testing.assert_close(vectorised[:, lo:lo + size], loop, rtol=1e-4, atol=1e-5)


def test_eager_sdpa_and_gradient_checkpointing_give_the_same_loss_and_gradients():
    size, length = 4, 16
    x0 = _blocks(4, length)
    targets = block_diffusion_targets(x0, None, get_noise_schedule("linear"), MASK, size,
                                      generator=torch.Generator().manual_seed(0))
    results = []
    for attention, checkpointing in (("sdpa", False), ("eager", False), ("sdpa", True)):
        model = _model("block_diffusion", size).train()
        model.config._attn_implementation = attention
        if checkpointing:
            getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
        loss = model(input_ids=targets["input_ids"], clean_input_ids=x0, labels=targets["labels"],
                     loss_weights=targets["loss_weights"], num_items_in_batch=x0.numel()).loss
        loss.backward()
        results.append((loss.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()))
    for loss, grad in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, results[0][1], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [dict(temperature=0.0), dict(temperature=1.0, top_k=8, remasking="margin"),
                                     dict(temperature=0.7, top_p=0.9, confidence_threshold=0.2)])
def test_cached_sampling_gives_the_tokens_of_uncached_sampling(options):
    model = _model("block_diffusion", 4)
    prompt = _blocks(3, 6)
    runs = [model.diffusion_generate(input_ids=prompt, max_new_tokens=20, num_steps=3, use_cache=use_cache,
                                     generator=torch.Generator().manual_seed(7), **options)
            for use_cache in (True, False)]
    assert runs[0].shape == (3, 26)
    assert torch.equal(runs[0], runs[1])
    assert torch.equal(runs[0][:, :6], prompt) and not (runs[0] == MASK).any()


def test_rows_that_skip_a_step_keep_their_cache_rows_and_infill_matches_uncached():
    model = _model("block_diffusion", 4)
    x = _blocks(3, 16)
    x[0, 1], x[1, 5:7], x[2, 9:16] = MASK, MASK, MASK  # different rows run at different steps and blocks
    runs = [model.diffusion_generate(input_ids=x, num_steps=4, use_cache=use_cache) for use_cache in (True, False)]
    assert torch.equal(runs[0], runs[1])
    given = x != MASK
    assert torch.equal(runs[0][given], x[given]) and not (runs[0] == MASK).any()


def test_each_finished_block_is_computed_once(monkeypatch):
    model = _model("block_diffusion", 4)
    stored = []
    original = BlockDiffusionGenerationMixin._cache_block

    def counting(self, block, lo, cache):
        stored.append((lo, block.shape[1], cache.get_seq_length()))
        original(self, block, lo, cache)

    monkeypatch.setattr(BlockDiffusionGenerationMixin, "_cache_block", counting)
    out = model.diffusion_generate(batch_size=2, max_length=30, num_steps=2, return_dict_in_generate=True)
    # blocks [0,4), [4,8), ..., [24,28) are cached once each, in order, each on top of exactly the ones before it;
    # the last block [28,30) is never needed again
    assert stored == [(lo, 4, lo) for lo in range(0, 28, 4)]
    assert out.sequences.shape == (2, 30)
    assert out.num_model_calls == 2 * 8  # two denoising steps per block, nothing recomputed


def test_sampling_runs_to_the_position_limit_and_stops_at_eos():
    model = _model("block_diffusion", 4, positions=64)
    long = model.diffusion_generate(batch_size=2, max_length=64, num_steps=4)
    assert long.shape == (2, 64) and not (long == MASK).any()
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.diffusion_generate(batch_size=1, max_length=65)
    with torch.no_grad():  # make EOS the likeliest token everywhere
        model.lm_head.weight[EOS] *= 0
        model.lm_head.weight[EOS] += model.model.norm.weight.sign() * 0.5
    out = model.diffusion_generate(batch_size=2, max_length=24, num_steps=4, stop_at_eos=True, pad_token_id=0)
    for row in out:
        first = int((row == EOS).nonzero()[0])
        assert (row[first + 1:] == 0).all()


def test_sampling_refuses_what_it_does_not_do():
    model = _model("block_diffusion", 4)
    with pytest.raises(ValueError, match="block_length"):
        model.diffusion_generate(batch_size=1, max_length=8, block_length=2)
    with pytest.raises(ValueError, match="cfg_scale"):
        model.diffusion_generate(batch_size=1, max_length=8, cfg_scale=1.0)
    with pytest.raises(TypeError, match="diffusion_generate"):
        model.generate(torch.ones(1, 2, dtype=torch.long))


# ---------------------------------------------------------------------------------------------
# one scoring convention: all L tokens of each block, in every path
# ---------------------------------------------------------------------------------------------
def _three_models(length):
    return {"autoregressive": _model("autoregressive", positions=length + 1),
            "diffusion": _model("diffusion", positions=length),
            "block_diffusion": _model("block_diffusion", 4, positions=length)}


def test_every_objective_scores_all_tokens_of_each_block_in_every_path(monkeypatch):
    length, blocks = 16, _blocks(5, 16)
    for mode, model in _three_models(length).items():
        objective = objective_for(model.config)
        # held_out_loss: tdlm-evaluate --likelihood, compare_models, the run's evaluation
        assert held_out_loss(model, blocks, num_samples=2)["num_tokens"] == blocks.numel(), mode
        # the Trainer's (eval) loss: targets of a collated batch
        batch = objective.collator(model.config, 0)([{"input_ids": row} for row in blocks])
        assert int(model.prediction_targets(batch["labels"]).ne(-100).sum()) == blocks.numel(), mode
        # lm-eval loglikelihood_rolling over a document of 2.5 blocks
        scored = []
        monkeypatch.setattr("tdlm.objectives.ar_conditional_loglikelihood",
                            lambda m, windows, *a, scored=scored: scored.extend(len(c) for _, c in windows)
                            or [(0.0, True)])
        monkeypatch.setattr("tdlm.objectives.diffusion_nelbo_samples",
                            lambda m, block, *a, scored=scored, **k: scored.append(block.numel()) or torch.zeros(1, 1))
        objective.rolling_loglikelihood(model, list(range(2, 42)), EOS, 2, 0, 4)
        assert sum(scored) == 40, mode


def test_a_checkpoint_from_before_the_convention_scores_as_it_did(tmp_path):
    model = _model("autoregressive", positions=16)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["ar_context_token"] is True
    del saved["ar_context_token"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    old = TDLMForCausalLM.from_pretrained(tmp_path).eval()
    assert old.config.ar_context_token is False
    blocks = _blocks(3, 16)
    result = held_out_loss(old, blocks)
    assert result["num_tokens"] == 3 * 15 and result["context_token"] is False
    fresh = held_out_loss(model, blocks[:, :15])
    assert fresh["num_tokens"] == 3 * 15 and fresh["context_token"] is True
    with pytest.raises(ValueError, match="max_position_embeddings >= 17"):
        held_out_loss(model, blocks)


# ---------------------------------------------------------------------------------------------
# conditional log-likelihood (lm-eval)
# ---------------------------------------------------------------------------------------------
def test_conditional_loglikelihood_is_paired_and_checks_the_greedy_continuation():
    model = _model("block_diffusion", 4)
    context = _blocks(1, 6)[0].tolist()
    greedy = model.diffusion_generate(input_ids=torch.tensor([context]), max_new_tokens=5, num_steps=4,
                                      temperature=0.0, remasking="low_confidence")[0, 6:].tolist()
    other = [(t + 1) % MASK or 2 for t in greedy]
    (ll_greedy, is_greedy), (ll_other, not_greedy) = block_conditional_loglikelihood(
        model, [(context, greedy), (context, other)], [11, 11], mc_num=64)
    assert is_greedy and not not_greedy
    assert ll_greedy > ll_other  # the model's own greedy continuation is the likelier one
    again = block_conditional_loglikelihood(model, [(context, greedy)], [11], mc_num=64)
    assert again[0][0] == ll_greedy


# ---------------------------------------------------------------------------------------------
# config, YAML and remote code
# ---------------------------------------------------------------------------------------------
def test_config_checks_name_their_key():
    with pytest.raises(ValueError, match="bd_block_size"):
        _config("block_diffusion", None)
    with pytest.raises(ConfigError, match="^model.bd_block_size: 5 does not divide data.block_size 64"):
        load_config("configs/quick_test_bd.yaml", ["model.bd_block_size=5"])
    with pytest.raises(ConfigError, match="^model.bd_block_size: only training_mode block_diffusion"):
        load_config("configs/quick_test.yaml", ["model.bd_block_size=4"])
    with pytest.raises(ConfigError, match="^model.ar_context_token: expected bool, got 'maybe'$"):
        load_config("configs/quick_test_ar.yaml", ["model.ar_context_token=maybe"])
    with pytest.raises(ConfigError, match=r"^model.max_position_embeddings: 64 is shorter than data.block_size 64 \+"):
        load_config("configs/quick_test_ar.yaml", ["model.max_position_embeddings=64"])
    assert load_config("configs/quick_test_ar.yaml", ["model.max_position_embeddings=64",
                                                      "model.ar_context_token=false"])
    # a pretrained AR start (model.init_from) whose positions leave no room for the context token
    from tdlm.training import build_data

    with pytest.raises(ValueError, match="^data.block_size: 64 tokens plus the AR context token need "
                                         "max_position_embeddings >= 65; the model has 64$"):
        build_data(load_config("configs/quick_test_ar.yaml"), None, _model("autoregressive", positions=64))


CHILD = NO_TDLM_PRELUDE + r'''
import torch
from transformers import AutoModel
model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
x = torch.load(sys.argv[2])
out = {"class": type(model).__name__, "logits": model(input_ids=x[1], clean_input_ids=x[0]).logits,
       "sample": model.diffusion_generate(input_ids=x[0][:, :5], max_new_tokens=7, num_steps=2)}
torch.save(out, sys.argv[3])
'''


def test_automodel_with_remote_code_alone_gives_the_block_diffusion_head(tmp_path):
    model = _model("block_diffusion", 4)
    model.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "block_diffusion_tdlm.py").is_file()
    x0 = _blocks(2, 12)
    x_t = x0.masked_fill(torch.rand(x0.shape, generator=torch.Generator().manual_seed(0)) < 0.5, MASK)
    torch.save((x0, x_t), tmp_path / "x.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "model"), str(tmp_path / "x.pt"),
                           str(tmp_path / "out.pt")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = torch.load(tmp_path / "out.pt")
    assert out["class"] == "TDLMForBlockDiffusion"
    with torch.no_grad():
        torch.testing.assert_close(out["logits"], model(input_ids=x_t, clean_input_ids=x0).logits)
    assert torch.equal(out["sample"], model.diffusion_generate(input_ids=x0[:, :5], max_new_tokens=7, num_steps=2))


def test_quick_test_bd_trains_evaluates_and_samples(tmp_path):
    from tdlm.runs import load_checkpoint
    from tdlm.text_generation import generate_text
    from tdlm.training import run_training

    config = load_config("configs/quick_test_bd.yaml", [
        "training.max_steps=6", "training.batch_size=8", "training.eval_steps=3", "training.save_every_n_steps=6",
        "training.detailed_metrics_steps=3", "training.attention_analysis_steps=3", "training.logging_steps=3",
        "enhanced_evaluation.max_eval_batches=2"])
    summary = run_training(config, "bd", output_dir=str(tmp_path))
    assert summary["training_mode"] == "block_diffusion" and summary["best_eval_loss"] < 7.0
    model, tokenizer = load_checkpoint(summary["final_checkpoint"], "cpu")
    assert type(model).__name__ == "TDLMForBlockDiffusion" and model.config.bd_block_size == 16
    texts = generate_text(model, tokenizer, ["The", ""], max_new_tokens=40, num_steps=4)
    assert len(texts) == 2 and all(texts)


def test_lora_and_model_card_of_a_block_diffusion_checkpoint(tmp_path):
    pytest.importorskip("peft")
    from tdlm.model_card import model_card
    from tdlm.peft_utils import apply_lora

    model = _model("block_diffusion", 4).train()
    model.save_pretrained(tmp_path / "base")
    wrapped = apply_lora(model, {"r": 4, "base_model": str(tmp_path / "base")})
    x0 = _blocks(2, 12)
    targets = block_diffusion_targets(x0, None, get_noise_schedule("linear"), MASK, 4,
                                      generator=torch.Generator().manual_seed(0))
    wrapped(input_ids=targets["input_ids"], clean_input_ids=x0, labels=targets["labels"],
            loss_weights=targets["loss_weights"]).loss.backward()
    trained = {name for name, p in wrapped.named_parameters() if p.grad is not None}
    assert trained and all("lora_" in name for name in trained)
    card = str(model_card(tmp_path / "base", repo_id="user/tiny-bd"))
    assert "pipeline_tag: text-generation" in card and "block-diffusion" in card
    assert "block size: 4 tokens" in card and "AutoModel.from_pretrained" in card
