"""Bad input gets a one-line error naming the flag / key / file and the allowed range, exit code 1 (2 for argparse
usage), no traceback, and never changes an existing experiment (issue 15, part 3).

One row per case. CLI rows run `cli([...])` in-process (a few run the scripts in a subprocess to prove the exit code
and the missing traceback end to end); API rows call the Python API. Every row hashes the experiments folder before
and after. Placeholders in argv: {dd}/{ar} diffusion/AR checkpoints, {exp} the diffusion experiment, {root} the
experiments folder, {bad}/{nan}/{torn}/{noweights} broken copies of {dd}, {corpus} the text folder.
"""

import hashlib
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from training_helpers import tiny_config

from tdlm import TDLMConfig
from tdlm.cli.evaluate import cli as evaluate_cli
from tdlm.cli.generate import cli as generate_cli
from tdlm.cli.train import cli as train_cli
from tdlm.config import ConfigError, load_config, save_config
from tdlm.evaluation.runner import evaluate_checkpoint
from tdlm.generation_tdlm import DiffusionGenerationConfig
from tdlm.runs import load_checkpoint
from tdlm.text_generation import generate_text
from tdlm.training import run_training

REPO = Path(__file__).resolve().parents[1]
CLIS = {"train": train_cli, "generate": generate_cli, "evaluate": evaluate_cli}


def folder_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def paths(corpus, tmp_path_factory):  # noqa: F811
    """Two finished 2-step runs (diffusion, AR; 16 positions) and broken copies of the diffusion checkpoint."""
    root = tmp_path_factory.mktemp("experiments")
    for mode, name in (("diffusion", "dd"), ("autoregressive", "ar")):
        run_training(tiny_config(corpus, f"model.training_mode={mode}", "training.max_steps=2",
                                 "training.save_every_n_steps=2", "data.eval_files=null"), name, str(root))
    broken = tmp_path_factory.mktemp("broken")
    dd = root / "dd" / "checkpoints" / "checkpoint-2"
    copies = {name: shutil.copytree(dd, broken / name) for name in ("bad", "nan", "torn", "noweights")}
    weights = load_file(dd / "model.safetensors")
    save_file({k: torch.full_like(v, math.nan) for k, v in weights.items()}, copies["nan"] / "model.safetensors")
    data = (dd / "model.safetensors").read_bytes()
    (copies["torn"] / "model.safetensors").write_bytes(data[: len(data) // 2])
    (copies["noweights"] / "model.safetensors").unlink()
    (broken / "bad.yaml").write_text("model: {hidden_size: [32\n")
    (broken / "binary.raw").write_bytes(bytes(range(256)) * 8)
    (broken / "short.txt").write_text("too short\n")
    (broken / "emptytok").mkdir()
    config_file = broken / "tiny.yaml"
    save_config(tiny_config(corpus, "training.max_steps=1", "data.eval_files=null"), config_file)
    return {"root": root, "exp": root / "dd", "dd": dd, "ar": root / "ar" / "checkpoints" / "checkpoint-2",
            "corpus": corpus, "broken": broken, "cfg": config_file, **copies}


def run_cli(paths, tool, argv, capsys):
    """(exit code, stderr) of `cli(argv)` with placeholders filled in; the experiments folder must not change."""
    before = folder_hash(paths["root"])
    code = CLIS[tool]([arg.format(**paths) for arg in argv])
    err = capsys.readouterr().err
    assert folder_hash(paths["root"]) == before, "an existing experiment changed"
    return code, err


def check(code, err, expected_code, words):
    assert code == expected_code, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"


TRAIN = ["--config", "{cfg}", "--output-dir", "{root}", "--experiment-id", "new"]
TRAIN_CASES = [  # (overrides or argv, exit code, words in the message)
    (["training.learning_rate=.nan"], 1, ["training.learning_rate", "finite"]),
    (["training.learning_rate=.inf"], 1, ["training.learning_rate", "finite"]),
    (["training.learning_rate=1e999"], 1, ["training.learning_rate", "finite"]),
    (["training.learning_rate=0"], 1, ["training.learning_rate", "> 0"]),
    (["training.adam_beta1=1.5"], 1, ["training.adam_beta1", "[0, 1)"]),
    (["training.adam_beta2=-0.1"], 1, ["training.adam_beta2", "[0, 1)"]),
    (["training.seed=-1"], 1, ["training.seed", "[0, 2**32)"]),
    (["training.max_grad_norm=-1"], 1, ["training.max_grad_norm", ">= 0"]),
    (["training.dataloader_num_workers=-1"], 1, ["training.dataloader_num_workers", ">= 0"]),
    (["training.weight_decay=-0.1"], 1, ["training.weight_decay", ">= 0"]),
    (["training.warmup_steps=-1"], 1, ["training.warmup_steps", ">= 0"]),
    (["training.max_steps=0"], 1, ["training.max_steps", ">= 1"]),
    (["training.batch_size=0"], 1, ["training.batch_size", ">= 1"]),
    (["training.epochs=0", "training.max_steps=null"], 1, ["training.epochs", "> 0"]),
    (["training.learnig_rate=1e-3"], 1, ["training.learnig_rate", "unknown key"]),
    (["training.learning_rate=[1"], 1, ["training.learning_rate", "not a valid YAML value"]),
    (["training.learning_rate"], 1, ["section.key=value"]),
    (["model.rope_theta=0"], 1, ["model.rope_theta", "> 0"]),
    (["model.initializer_range=-1"], 1, ["model.initializer_range", "> 0"]),
    (["model.num_attention_heads=3"], 1, ["model.num_attention_heads", "divide"]),
    (["model.hidden_dropout=1.0"], 1, ["model.hidden_dropout", "[0, 1)"]),
    (["model.attention_dropout=.nan"], 1, ["model.attention_dropout", "finite"]),
    (["model.training_mode=gan"], 1, ["model.training_mode", "diffusion"]),
    (["model.head_implementation=cuda"], 1, ["model.head_implementation", "chunked"]),
    (["model.hidden_size=0"], 1, ["model.hidden_size", "positive"]),
    (["diffusion.time_epsilon=0"], 1, ["diffusion.time_epsilon", "(0, 1)"]),
    (["diffusion.max_mask_ratio=1.5"], 1, ["diffusion.min_mask_ratio", "<= 1"]),
    (["diffusion.noise_schedule=sqrt"], 1, ["diffusion.noise_schedule", "linear"]),
    (["sampling.temperature=.nan"], 1, ["sampling.temperature", "finite"]),
    (["sampling.cfg_scale=-1"], 1, ["sampling.cfg_scale", ">= 0"]),
    (["sampling.top_p=2"], 1, ["sampling.top_p", "(0, 1]"]),
    (["sampling.num_steps=0"], 1, ["sampling.num_steps", ">= 1"]),
    (["sampling.max_new_tokens=-3"], 1, ["sampling.max_new_tokens", ">= 1"]),
    (["enhanced_evaluation.mc_num=0"], 1, ["enhanced_evaluation.mc_num", ">= 1"]),
    (["peft.dropout=2.0"], 1, ["peft.dropout", "[0, 1)"]),
    (["model.max_position_embeddings=8"], 1, ["model.max_position_embeddings", "data.block_size"]),
    (["model.train_bpe=null", "model.tokenizer=../no/such/tokenizer"], 1, ["model.tokenizer", "no such folder"]),
    (["model.train_bpe=null", "model.init_from=/no/such/run"], 1, ["model.init_from", "no such folder"]),
    (["model.train_bpe=null", "model.tokenizer=no-such-org/no-such-tokenizer"], 1, ["model.tokenizer", "cannot load"]),
    (["model.train_bpe={{files: [{broken}/binary.raw]}}"], 1, ["binary.raw", "not UTF-8"]),
    (["model.train_bpe={{files: [{broken}/none.txt]}}"], 1, ["none.txt", "not found"]),
    (["model.train_bpe=null", "model.tokenizer={broken}/emptytok"], 1, ["model.tokenizer", "emptytok",
                                                                       "no tokenizer files"]),
    (["data.train_files={broken}/binary.raw"], 1, ["binary.raw", "not UTF-8"]),
    (["data.train_files={broken}/short.txt"], 1, ["data.train_files=", "short.txt", "fewer than one block"]),
    (["data.eval_files={broken}/short.txt"], 1, ["data.eval_files=", "short.txt", "fewer than one block"]),
]
TRAIN_ARGV_CASES = [  # whole argv
    (["--config", "{broken}/bad.yaml", "--output-dir", "{root}"], 1, ["bad.yaml", "not a valid YAML file"]),
    (["--config", "{broken}/none.yaml", "--output-dir", "{root}"], 1, ["none.yaml", "not found"]),
    (["--config", "{cfg}", "--output-dir", "{root}", "--experiment-id", "dd"], 1, ["already exists", "--resume",
                                                                                 "--overwrite"]),
    (["--resume", "{root}/nothing"], 1, ["--resume", "not found"]),
    (["--resume", "{root}/ar/checkpoints/checkpoint-2", "--config", "{cfg}", "model.training_mode=diffusion"], 1,
     ["model.training_mode", "autoregressive"]),
    (["--eval-only", "--config", "{cfg}"], 2, ["--eval-only needs --resume"]),
    (["--output-dir", "{root}"], 2, ["--config is required"]),
    (["--config", "{cfg}", "--bogus-flag"], 2, ["unrecognized arguments"]),
]

GENERATE = ["--model", "{dd}", "--prompt", "The"]
GENERATE_CASES = [  # (argv, exit code, words)
    (GENERATE + ["--max-new-tokens", "-1"], 2, ["--max-new-tokens", ">= 1"]),
    (GENERATE + ["--max-new-tokens", "1.5"], 2, ["--max-new-tokens", "integer"]),
    (GENERATE + ["--max-new-tokens", "0"], 2, ["--max-new-tokens", ">= 1"]),
    (GENERATE + ["--max-new-tokens", "1000"], 1, ["max_position_embeddings=16"]),
    (GENERATE + ["--num-samples", "0"], 2, ["--num-samples", ">= 1"]),
    (GENERATE + ["--num-samples", "abc"], 2, ["--num-samples", "integer"]),
    (GENERATE + ["--num-steps", "0"], 2, ["--num-steps", ">= 1"]),
    (GENERATE + ["--temperature", "inf"], 2, ["--temperature", "finite"]),
    (GENERATE + ["--temperature", "nan"], 2, ["--temperature", "finite"]),
    (GENERATE + ["--temperature", "-1"], 2, ["--temperature", ">= 0"]),
    (GENERATE + ["--cfg-scale", "nan"], 2, ["--cfg-scale", "finite"]),
    (GENERATE + ["--cfg-scale", "-1"], 2, ["--cfg-scale", ">= 0"]),
    (GENERATE + ["--top-p", "2"], 2, ["--top-p", "(0, 1]"]),
    (GENERATE + ["--top-p", "0"], 2, ["--top-p", "(0, 1]"]),
    (GENERATE + ["--top-k", "0"], 2, ["--top-k", ">= 1"]),
    (GENERATE + ["--confidence-threshold", "1.5"], 2, ["--confidence-threshold", "[0, 1]"]),
    (GENERATE + ["--block-length", "0"], 2, ["--block-length", ">= 1"]),
    (GENERATE + ["--seed", "-1"], 2, ["--seed", "2**32"]),
    (GENERATE + ["--step-schedule", "quadratic"], 2, ["--step-schedule", "invalid choice"]),
    (GENERATE + ["--remasking", "best"], 2, ["--remasking", "invalid choice"]),
    (["--prompt", "The"], 2, ["--model"]),
    (["--model", "{root}/no_such_checkpoint"], 1, ["no_such_checkpoint"]),
    (["--model", "{exp}"], 1, ["no config.json", "dd"]),
    (["--model", "{dd}", "--prompt", "the " * 40], 1, ["prompt has", "max_position_embeddings=16"]),
    (["--model", "{torn}"], 1, ["torn/model.safetensors", "cannot load the model weights"]),
    (["--model", "{noweights}"], 1, ["noweights", "cannot load the model weights"]),
    (["--model", "{nan}"], 1, ["nan", "NaN/inf"]),
    (["--model", "{ar}", "--num-steps", "4"], 2, ["autoregressive", "diffusion models only"]),
    (["--model", "{ar}", "--temperature", "-1"], 2, ["--temperature", ">= 0"]),
    (["--model", "{ar}", "--top-p", "2"], 2, ["--top-p", "(0, 1]"]),
    (["--model", "{ar}", "--max-new-tokens", "100"], 1, ["max_position_embeddings=17"]),  # block 16 + context token
    (["--model", "{dd}", "--prompt", "The game", "--num-steps", "4"], 0, []),  # the README's command, fitted
    (["--model", "{ar}", "--prompt", "The game"], 0, []),
]

EVALUATE = ["--model", "{dd}", "--likelihood", "--eval-file", "{corpus}/eval.txt"]
EVALUATE_CASES = [
    (["--model", "{dd}", "--tasks", "arc_easy", "--limit", "0"], 2, ["--limit", ">= 1"]),
    (["--model", "{dd}", "--tasks", "arc_easy", "--limit", "-1"], 2, ["--limit", ">= 1"]),
    (["--model", "{dd}", "--tasks", "arc_easy", "--mc-num", "0"], 2, ["--mc-num", ">= 1"]),
    (EVALUATE + ["--nelbo-samples", "0"], 2, ["--nelbo-samples", ">= 1"]),
    (EVALUATE + ["--batch-size", "0"], 2, ["--batch-size", ">= 1"]),
    (EVALUATE + ["--max-blocks", "0"], 2, ["--max-blocks", ">= 1"]),
    (EVALUATE + ["--block-size", "0"], 2, ["--block-size", ">= 1"]),
    (EVALUATE + ["--block-size", "4096"], 1, ["block_size 4096", "max_position_embeddings=16"]),
    (EVALUATE + ["--seed", "-5"], 2, ["--seed", "2**32"]),
    (EVALUATE + ["--backend", "hf"], 2, ["--backend", "invalid choice"]),
    (["--model", "{dd}", "--likelihood"], 2, ["--likelihood needs --eval-file"]),
    (["--model", "{dd}"], 2, ["nothing to do"]),
    (["--tasks", "arc_easy"], 2, ["--model is required"]),
    (["--model", "{dd}", "--likelihood", "--eval-file", "{corpus}/none.txt"], 1, ["none.txt", "not found"]),
    (["--model", "{dd}", "--tasks", "no_such_task", "--limit", "2"], 1, ["unknown task", "no_such_task"]),
    (["--model", "{root}/no_such_checkpoint", "--tasks", "arc_easy"], 1, ["no_such_checkpoint"]),
    (["--model", "{nan}", "--likelihood", "--eval-file", "{corpus}/eval.txt"], 1, ["nan", "NaN/inf"]),
    (["--model", "{torn}", "--tasks", "arc_easy"], 1, ["torn/model.safetensors", "cannot load the model weights"]),
    (EVALUATE + ["--max-blocks", "2", "--nelbo-samples", "2"], 0, []),
]


@pytest.mark.parametrize("overrides, code, words", TRAIN_CASES, ids=lambda v: str(v)[:60])
def test_train_config(paths, capsys, overrides, code, words):
    check(*run_cli(paths, "train", TRAIN + overrides, capsys), code, words)
    assert not (paths["root"] / "new").exists()  # a failed start leaves no experiment folder behind


@pytest.mark.parametrize("argv, code, words", TRAIN_ARGV_CASES, ids=lambda v: str(v)[:60])
def test_train_cli(paths, capsys, argv, code, words):
    check(*run_cli(paths, "train", argv, capsys), code, words)


@pytest.mark.parametrize("argv, code, words", GENERATE_CASES, ids=lambda v: str(v)[:60])
def test_generate_cli(paths, capsys, argv, code, words):
    check(*run_cli(paths, "generate", argv, capsys), code, words)


@pytest.mark.parametrize("argv, code, words", EVALUATE_CASES, ids=lambda v: str(v)[:60])
def test_evaluate_cli(paths, capsys, argv, code, words):
    check(*run_cli(paths, "evaluate", argv, capsys), code, words)


SUBPROCESS_CASES = [  # end to end: the scripts' exit codes, no traceback
    ("generate.py", GENERATE + ["--temperature", "inf"], 2, ["--temperature"]),
    ("generate.py", ["--model", "{nan}"], 1, ["NaN/inf"]),
    ("evaluate.py", EVALUATE + ["--block-size", "4096"], 1, ["max_position_embeddings"]),
    ("train.py", TRAIN + ["training.adam_beta1=1.5"], 1, ["training.adam_beta1"]),
]


@pytest.mark.parametrize("script, argv, code, words", SUBPROCESS_CASES, ids=lambda v: str(v)[:40])
def test_scripts_exit_codes(paths, script, argv, code, words):
    before = folder_hash(paths["root"])
    env = {k: v for k, v in os.environ.items() if k != "TDLM_DEBUG"}
    result = subprocess.run([sys.executable, str(REPO / "scripts" / script), *[a.format(**paths) for a in argv]],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    check(result.returncode, result.stderr, code, words)
    assert folder_hash(paths["root"]) == before


def test_tdlm_debug_shows_the_traceback(paths, monkeypatch):
    monkeypatch.setenv("TDLM_DEBUG", "1")
    with pytest.raises(FloatingPointError, match="NaN/inf"):
        generate_cli(["--model", str(paths["nan"])])


# ---------------------------------------------------------------------------------------------
# The Python API: (call, exception type, words)
# ---------------------------------------------------------------------------------------------
def _dd(paths):
    return load_checkpoint(paths["dd"], "cpu")


def _ar(paths):
    return load_checkpoint(paths["ar"], "cpu")


def _sample(**kwargs):
    return lambda p: _dd(p)[0].diffusion_generate(**{"input_ids": torch.tensor([[5, 6]]), "max_new_tokens": 4,
                                                     "num_steps": 2, **kwargs})


def _ar_generate(input_ids, **kwargs):
    return lambda p: _ar(p)[0].generate(input_ids=torch.tensor(input_ids), **kwargs)


API_CASES = [
    ("temperature inf", _sample(temperature=math.inf), ValueError, ["temperature", "finite"]),
    ("temperature nan", _sample(temperature=math.nan), ValueError, ["temperature", "finite"]),
    ("cfg_scale nan", _sample(cfg_scale=math.nan), ValueError, ["cfg_scale", "finite"]),
    ("top_p nan", _sample(top_p=math.nan), ValueError, ["top_p", "(0, 1]"]),
    ("threshold nan", _sample(confidence_threshold=math.nan), ValueError, ["confidence_threshold", "[0, 1]"]),
    ("num_steps float", _sample(num_steps=1.5), ValueError, ["num_steps", "integer"]),
    ("max_new_tokens < 0", _sample(max_new_tokens=-1), ValueError, ["max_new_tokens", ">= 1"]),
    ("max_new_tokens float", _sample(max_new_tokens=2.5), ValueError, ["max_new_tokens", "integer"]),
    ("top_k 0", _sample(top_k=0), ValueError, ["top_k", ">= 1"]),
    ("id >= vocab", _sample(input_ids=torch.tensor([[10**6]])), ValueError, ["input_ids", "vocab_size"]),
    ("negative id", _sample(input_ids=torch.tensor([[-1, 5]])), ValueError, ["input_ids", "vocab_size"]),
    ("float ids", _sample(input_ids=torch.tensor([[1.0, 2.0]])), ValueError, ["input_ids", "dtype"]),
    ("diffusion generate()", lambda p: _dd(p)[0].generate(torch.tensor([[5]])), TypeError, ["diffusion_generate"]),
    ("AR past positions", _ar_generate([[5, 6]], max_new_tokens=100), ValueError, ["max_position_embeddings=17"]),
    ("AR max_length", _ar_generate([[5, 6]], max_length=40), ValueError, ["max_position_embeddings=17"]),
    ("AR id >= vocab", _ar_generate([[10**6]], max_new_tokens=2), ValueError, ["input_ids", "vocab_size"]),
    ("AR max_new_tokens 0", _ar_generate([[5]], max_new_tokens=0), ValueError, ["max_new_tokens", ">= 1"]),
    ("prompt too long", lambda p: generate_text(*_dd(p), ["the " * 40]), ValueError, ["prompt has"]),
    ("nan checkpoint", lambda p: load_checkpoint(p["nan"]), FloatingPointError, ["nan", "NaN/inf"]),
    ("torn weights", lambda p: load_checkpoint(p["torn"]), ValueError, ["torn/model.safetensors", "cannot load"]),
    ("nelbo samples 0", lambda p: evaluate_checkpoint(p["dd"], likelihood=True, num_samples=0), ValueError,
     ["num_samples", ">= 1"]),
    ("mc_num 0", lambda p: evaluate_checkpoint(p["dd"], ["arc_easy"], mc_num=0), ValueError, ["mc_num", ">= 1"]),
    ("limit 0", lambda p: evaluate_checkpoint(p["dd"], ["arc_easy"], limit=0), ValueError, ["limit", ">= 1"]),
    ("block too long", lambda p: evaluate_checkpoint(p["dd"], likelihood=True, block_size=64,
                                                     eval_file=p["corpus"] / "eval.txt"), ValueError,
     ["block_size 64", "max_position_embeddings=16"]),
    ("rope_theta 0", lambda p: TDLMConfig(rope_theta=0), ValueError, ["TDLMConfig.rope_theta", "> 0"]),
    ("initializer -1", lambda p: TDLMConfig(initializer_range=-1.0), ValueError, ["initializer_range", "> 0"]),
    ("rms eps inf", lambda p: TDLMConfig(rms_norm_eps=math.inf), ValueError, ["rms_norm_eps", "finite"]),
    ("dropout nan", lambda p: TDLMConfig(hidden_dropout=math.nan), ValueError, ["hidden_dropout", "[0, 1)"]),
    ("odd head dim", lambda p: TDLMConfig(hidden_size=12, num_attention_heads=4), ValueError, ["hidden_size", "even"]),
    ("generation top_k", lambda p: DiffusionGenerationConfig(top_k=0).validate(), ValueError, ["top_k"]),
    ("load_config nan", lambda p: load_config(p["cfg"], ["training.adam_beta2=.nan"]), ConfigError,
     ["training.adam_beta2", "finite"]),
]


@pytest.mark.parametrize("name, call, error, words", API_CASES, ids=[c[0] for c in API_CASES])
def test_python_api(paths, name, call, error, words):
    before = folder_hash(paths["root"])
    with pytest.raises(error) as raised:
        call(paths)
    message = str(raised.value)
    assert "\n" not in message, message  # one line
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert folder_hash(paths["root"]) == before
