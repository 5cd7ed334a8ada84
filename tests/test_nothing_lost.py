"""Issue 15, part 2: nothing is lost. Reused experiment ids, non-finite weights, torn logs and trainer states,
checkpoints without optimizer state, half-deleted checkpoints and failed starts, each against one finished run
(4 steps, checkpoints at 2 and 4) copied per case."""

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_bad_input import folder_hash
from training_helpers import tiny_config
from transformers import TrainerCallback

from tdlm.cli.train import cli as train_cli
from tdlm.runs import Experiment, delete_checkpoint, last_good_checkpoint, list_checkpoints, resume_point
from tdlm.training import run_training

OVERRIDES = ("training.max_steps=4", "training.save_every_n_steps=2", "data.eval_files=null")


@pytest.fixture(scope="module")
def finished(corpus, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("runs")
    run_training(tiny_config(corpus, *OVERRIDES), "run", str(root))
    return root / "run"


@pytest.fixture
def run(finished, tmp_path):
    """A private copy of the finished run, and its config file."""
    return Experiment(shutil.copytree(finished, tmp_path / "run"))


def checkpoint(run, step):
    return run.checkpoints_dir / f"checkpoint-{step}"


def resume(run, corpus, *argv):  # noqa: F811
    return train_cli(["--resume", str(run.root), *argv])


@pytest.mark.parametrize("argv, words", [
    ([], ["already exists", "--resume", "--experiment-id", "--overwrite"]),
    (["training.max_steps=1"], ["already exists"]),
])
def test_reusing_an_experiment_id_is_refused(run, capsys, argv, words):
    before = folder_hash(run.root)
    code = train_cli(["--config", str(run.config_path), "--output-dir", str(run.root.parent), "--experiment-id",
                      "run", *argv])
    err = capsys.readouterr().err
    assert code == 1 and all(w in err for w in words), err
    assert folder_hash(run.root) == before


def test_overwrite_replaces_the_old_run(run):
    code = train_cli(["--config", str(run.config_path), "--output-dir", str(run.root.parent), "--experiment-id",
                      "run", "--overwrite", "training.max_steps=1", "training.save_every_n_steps=null"])
    assert code == 0
    assert [p.name for p in run.checkpoints()] == ["checkpoint-1"]  # the old run's checkpoints are gone
    assert [r["step"] for r in run.read_metrics() if r["split"] == "train"] == [1]


class PoisonWeights(TrainerCallback):
    """Finite loss, NaN weights: what a NaN gradient does one step before the loss shows it."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 3:
            with torch.no_grad():
                next(model.parameters()).fill_(math.nan)


def test_non_finite_weights_are_never_saved(corpus, tmp_path):  # noqa: F811
    config = tiny_config(corpus, "training.max_steps=4", "training.save_every_n_steps=1", "data.eval_files=null")
    with pytest.raises(FloatingPointError, match=r"non-finite model weights.*step 3.*checkpoint-2"):
        run_training(config, "poisoned", str(tmp_path), callbacks=[PoisonWeights()])
    assert [p.name for p in list_checkpoints(tmp_path / "poisoned" / "checkpoints")] == ["checkpoint-1",
                                                                                       "checkpoint-2"]


def test_last_good_checkpoint_is_checked_not_assumed(run):
    weights = load_file(checkpoint(run, 4) / "model.safetensors")
    save_file({k: v * math.nan for k, v in weights.items()}, checkpoint(run, 4) / "model.safetensors")
    assert last_good_checkpoint(run.checkpoints_dir) == checkpoint(run, 2)


def test_torn_last_metrics_line_is_dropped_with_a_warning_and_resume_works(run):
    with run.metrics_path.open("a") as f:
        f.write('{"step": 5, "split": "tra')  # killed mid-write
    with pytest.warns(UserWarning, match="torn last line"):
        assert [r["step"] for r in run.read_metrics()][-1] == 4
    with pytest.warns(UserWarning, match="torn last line"):
        assert train_cli(["--resume", str(checkpoint(run, 2))]) == 0
    assert [r["step"] for r in run.read_metrics() if r["split"] == "train"] == [1, 2, 3, 4]


def test_broken_metrics_line_in_the_middle_names_file_and_line(run):
    lines = run.metrics_path.read_text().splitlines()
    run.metrics_path.write_text("\n".join([lines[0][:-3], *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 1: not valid JSON"):
        run.read_metrics()


def test_broken_trainer_state_falls_back_to_the_previous_checkpoint(run, capsys):
    (checkpoint(run, 4) / "trainer_state.json").write_text('{"global_step": 4, "log_hist')
    with pytest.warns(UserWarning, match=r"skipping .*checkpoint-4.*trainer_state\.json is not valid JSON"):
        assert resume_point(run.root)[0] == checkpoint(run, 2)
    # named directly, it is an error naming the file
    code = train_cli(["--resume", str(checkpoint(run, 4))])
    assert code == 1 and "checkpoint-4/trainer_state.json is not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize("missing", ["optimizer.pt", "scheduler.pt", "rng_state.pth"])
def test_resume_without_training_state_is_refused_unless_asked(run, corpus, capsys, missing):  # noqa: F811
    (checkpoint(run, 2) / missing).unlink()
    before = folder_hash(run.root)
    code = train_cli(["--resume", str(checkpoint(run, 2))])
    err = capsys.readouterr().err
    assert code == 1 and missing.replace(".pth", "*.pth") in err and "--allow-inexact-resume" in err, err
    assert folder_hash(run.root) == before
    assert train_cli(["--resume", str(checkpoint(run, 2)), "--allow-inexact-resume"]) == 0
    assert run.checkpoints()[-1].name == "checkpoint-4"


def test_staging_folders_are_never_checkpoints_and_are_cleaned_at_start(run, corpus, monkeypatch):  # noqa: F811
    staged = shutil.copytree(checkpoint(run, 4), run.checkpoints_dir / ".tmp-6" / "checkpoint-6")
    half_deleted = shutil.copytree(checkpoint(run, 2), run.checkpoints_dir / ".tmp-deleting-checkpoint-2")
    assert [p.name for p in run.checkpoints(complete=False)] == ["checkpoint-2", "checkpoint-4"]
    # deleting checkpoint-2 again (the leftover is cleared first), killed this time after the rename
    real_rmtree, calls = shutil.rmtree, []

    def killed_after_rename(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 1:  # the leftover of the earlier deletion
            real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", killed_after_rename)
    delete_checkpoint(checkpoint(run, 2))
    monkeypatch.undo()
    assert half_deleted.exists() and not checkpoint(run, 2).exists()
    assert [p.name for p in run.checkpoints(complete=False)] == ["checkpoint-4"]
    assert resume_point(run.root)[0] == checkpoint(run, 4)
    assert resume(run, corpus, "training.max_steps=5") == 0
    assert not staged.parent.exists() and not half_deleted.exists()
    assert not list(run.checkpoints_dir.glob(".tmp-*"))


def test_failed_start_leaves_no_experiment_folder(corpus, tmp_path):  # noqa: F811
    config = tiny_config(corpus, "data.eval_files=null", f"data.train_files={tmp_path / 'missing.txt'}")
    with pytest.raises(FileNotFoundError):
        run_training(config, "failed", str(tmp_path))
    assert not (tmp_path / "failed").exists()


def test_metrics_and_summary_of_the_finished_run_are_intact(finished):
    """The fixture run itself: every file these tests copy is readable JSON."""
    run = Experiment(finished)
    assert [r["step"] for r in run.read_metrics() if r["split"] == "train"] == [1, 2, 3, 4]
    assert json.loads(run.summary_path.read_text())["global_step"] == 4
