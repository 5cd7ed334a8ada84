"""Training through `accelerate launch` with the shipped configs/accelerate/fsdp.yaml, on 2 CPU processes (gloo): FSDP2
gives the one-process losses and weights, its checkpoints load with from_pretrained and resume exactly. DDP against one
process: tests/test_trainer.py::test_two_processes_match_one_process_with_the_same_global_batch."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from training_helpers import REPO, tiny_config, train_losses

from tdlm import TDLMForMaskedDiffusion
from tdlm.config import save_config
from tdlm.hub import REMOTE_CODE_FILES
from tdlm.runs import Experiment

FSDP_ON_CPU = REPO / "tests" / "accelerate_fsdp_on_cpu.py"
TRAIN = str(REPO / "scripts" / "train.py")


def accelerate_config(name, folder, port):
    """The shipped config with `use_cpu: true` (gloo) and a port of its own."""
    config = yaml.safe_load((REPO / "configs" / "accelerate" / name).read_text())
    config.update(use_cpu=True, num_processes=2, main_process_port=port)
    path = folder / f"cpu_{name}"
    path.write_text(yaml.safe_dump(config))
    return path


def run(*command):
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):  # noqa: F811  (the fixture imported above)
    """The same 4 steps (global batch 8, a checkpoint every 2 steps) in one process and under FSDP on 2 processes."""
    folder = tmp_path_factory.mktemp("fsdp")
    config = tiny_config(corpus, "training.max_steps=4", "training.save_every_n_steps=2", "data.eval_files=null",
                         "training.warmup_steps=0")
    save_config(config, folder / "config.yaml")
    common = ["--config", str(folder / "config.yaml"), "--output-dir", str(folder)]
    run(sys.executable, TRAIN, *common, "--experiment-id", "one", "training.batch_size=8")
    launch = ["accelerate", "launch", "--config_file", str(accelerate_config("fsdp.yaml", folder, 29531))]
    run(*launch, str(FSDP_ON_CPU), TRAIN, *common, "--experiment-id", "fsdp", "training.batch_size=4")
    return folder, launch


def test_fsdp_config_shards_decoder_layers_with_full_state_dict_checkpoints():
    config = yaml.safe_load((REPO / "configs" / "accelerate" / "fsdp.yaml").read_text())
    assert config["distributed_type"] == "FSDP" and config["use_cpu"] is False
    fsdp = config["fsdp_config"]
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == "TDLMDecoderLayer"
    assert yaml.safe_load((REPO / "configs" / "accelerate" / "ddp.yaml").read_text())["distributed_type"] == "MULTI_GPU"


@pytest.mark.slow
def test_fsdp_on_two_processes_matches_one_process(runs):
    folder, _ = runs
    single, sharded = train_losses(folder / "one"), train_losses(folder / "fsdp")
    assert sorted(single) == sorted(sharded) == [1, 2, 3, 4]
    for step in single:  # the global batch is split, the gradient reduce-scattered: summation order only
        assert sharded[step] == pytest.approx(single[step], rel=1e-5), step
    a = TDLMForMaskedDiffusion.from_pretrained(folder / "one" / "checkpoints" / "checkpoint-4")
    b = TDLMForMaskedDiffusion.from_pretrained(folder / "fsdp" / "checkpoints" / "checkpoint-4")  # full state dict
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5), name
    assert b.lm_head.weight is b.model.embed_tokens.weight  # still tied after the sharded save


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_exactly_under_fsdp(runs):
    folder, launch = runs
    straight = train_losses(folder / "fsdp")
    # the Trainer writes FSDP optimizer state as optimizer.bin: an exact resume needs no --allow-inexact-resume
    run(*launch, str(FSDP_ON_CPU), TRAIN, "--resume", str(folder / "fsdp" / "checkpoints" / "checkpoint-2"))
    resumed = train_losses(folder / "fsdp")
    assert json.loads((folder / "fsdp" / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())[
        "global_step"] == 4
    assert sorted(resumed) == [1, 2, 3, 4]
    for step in (3, 4):
        assert resumed[step] == pytest.approx(straight[step], abs=1e-6), step
    assert Experiment(folder / "fsdp").read_metrics()  # the experiment folder is still readable



@pytest.mark.slow
def test_fsdp_checkpoint_carries_the_remote_code(runs):
    checkpoint = runs[0] / "fsdp" / "checkpoints" / "checkpoint-4"
    assert [name for name in REMOTE_CODE_FILES if not (checkpoint / name).is_file()] == []
