"""scripts/validate_schedule.py and scripts/generate.py on tiny randomly initialised checkpoint folders."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from tdlm import TDLMConfig, model_class_for
from tdlm.evaluation.schedule_validation import mask_blocks, path_nll, validate_schedules
from tdlm.tokenization import config_kwargs_for_tokenizer, train_bpe_tokenizer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import generate as generate_script  # noqa: E402
import validate_schedule as validate_script  # noqa: E402

TEXT = ("The river flows past the old mill and the children play on the bank . " * 40 +
        "A storm came over the hills in the night and the village woke to snow . " * 40)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text(TEXT)
    return path


def make_checkpoint(folder, corpus, mode="diffusion"):
    tokenizer = train_bpe_tokenizer([corpus], vocab_size=300, min_frequency=1)
    config = TDLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=32, training_mode=mode, **config_kwargs_for_tokenizer(tokenizer))
    torch.manual_seed(0)
    model = model_class_for(config)(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer


def test_validate_schedule_writes_table_json_and_plot(tmp_path, corpus, capsys):
    experiment = tmp_path / "experiments" / "tiny"
    checkpoint = experiment / "checkpoints" / "checkpoint-10"
    make_checkpoint(checkpoint, corpus)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"log_history": []}))

    validate_script.main(["--list", "--experiments-dir", str(tmp_path / "experiments")])
    assert f"tiny\tdiffusion\t{checkpoint}" in capsys.readouterr().out

    out_dir = tmp_path / "report"
    validate_script.main(["--test", str(checkpoint), "--steps", "1,4", "--num-samples", "4", "--length", "16",
                          "--eval-file", str(corpus), "--output-dir", str(out_dir)])
    report = json.loads((out_dir / "schedule_validation.json").read_text())
    rows = report["results"]
    settings = {(r["step_schedule"], r["num_steps"]) for r in rows}
    assert settings == {(s, k) for s in ("cosine", "linear") for k in (1, 4)}
    for r in rows:
        assert 0.0 <= r["recovered"] <= 1.0 and math.isfinite(r["path_nll"]) and r["path_nll"] > 0
        assert r["masked_tokens"] == 4 * 8
        assert r["model_calls_per_block"] <= r["num_steps"]
    assert "| 4 | cosine |" in (out_dir / "schedule_validation.md").read_text()
    assert (out_dir / "schedule_validation.png").read_bytes()[:4] == b"\x89PNG"


def test_one_step_path_nll_is_the_one_shot_masked_nll(tmp_path, corpus):
    model, tokenizer = make_checkpoint(tmp_path / "ckpt", corpus)
    blocks = torch.tensor(tokenizer(TEXT[:400])["input_ids"][:48]).view(3, 16)
    canvas = mask_blocks(blocks, model.config.mask_token_id, "second_half")
    out = model.diffusion_generate(canvas, num_steps=1, output_history=True, return_dict_in_generate=True)
    got = path_nll(model, canvas, blocks, out.history, out.commit_step)
    with torch.no_grad():
        log_probs = model(input_ids=canvas).logits.log_softmax(-1).gather(-1, blocks[..., None]).squeeze(-1)
    expected = -(log_probs.double() * (canvas == model.config.mask_token_id)).sum(-1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    rows = validate_schedules(model, blocks, steps=(1,), show_progress=False)
    assert rows[0]["path_nll"] == pytest.approx(float(expected.sum()) / 24, rel=1e-5)
    assert rows[0]["recovered"] == pytest.approx(float(((out.sequences == blocks) & (canvas != blocks)).sum()) / 24)


def test_yaml_config_without_experiment_is_refused(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("model: {}\n")
    with pytest.raises(ValueError, match="config without weights"):
        validate_script.main(["--test", str(config)])


@pytest.mark.parametrize("mode", ["diffusion", "autoregressive"])
def test_generate_script_prints_samples_with_the_checkpoints_sampler(tmp_path, corpus, capsys, mode):
    make_checkpoint(tmp_path / "ckpt", corpus, mode)
    generate_script.main(["--model", str(tmp_path / "ckpt"), "--prompt", "The river", "--prompt", "A storm",
                          "--max-new-tokens", "8", "--device", "cpu"]
                         + (["--num-steps", "4", "--cfg-scale", "1.0"] if mode == "diffusion" else []))
    captured = capsys.readouterr()
    out = captured.out
    sampler = "diffusion_generate" if mode == "diffusion" else "generate (KV cache)"
    assert out.count(f"({mode}, {sampler})") == 2
    samples = out.split("---\n")[1:]
    assert samples[0].startswith("The river") and samples[1].startswith("A storm")
    assert all(len(s.strip()) > len("A storm") for s in samples)
    # progress on stderr: one bar (two nested bars leave cursor-up escape codes in logs): over the samples here;
    # over the diffusion steps when there is a single prompt
    assert "samples: 100%" in captured.err and "2/2 [" in captured.err
    assert "diffusion sampling" not in captured.err and "\x1b[A" not in captured.err
    if mode == "diffusion":
        generate_script.main(["--model", str(tmp_path / "ckpt"), "--prompt", "The river", "--max-new-tokens", "8",
                              "--num-steps", "4"])
        err = capsys.readouterr().err
        assert "diffusion sampling" in err and "samples:" not in err


def test_generate_script_refuses_diffusion_options_for_ar(tmp_path, corpus):
    make_checkpoint(tmp_path / "ckpt", corpus, "autoregressive")
    with pytest.raises(SystemExit):
        generate_script.main(["--model", str(tmp_path / "ckpt"), "--prompt", "x", "--num-steps", "4"])
