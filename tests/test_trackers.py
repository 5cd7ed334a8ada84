"""Trackers: `training.report_to` takes any TrainingArguments.report_to value (monitoring.wandb.enabled adds wandb);
TensorBoard, offline, gets event files under the experiment's logs/ with the loss and the research metrics; the
mixed precision that ran (here chosen by accelerate's environment) is what the saved config records."""

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from training_helpers import tiny_config

from tdlm.config import ConfigError, trackers
from tdlm.runs import Experiment
from tdlm.training import run_training


def test_report_to_takes_trackers_and_keeps_the_wandb_switch(corpus):  # noqa: F811
    assert trackers(tiny_config(corpus)) == []
    assert trackers(tiny_config(corpus, "training.report_to=tensorboard")) == ["tensorboard"]
    assert trackers(tiny_config(corpus, "training.report_to=[trackio, mlflow]", "monitoring.wandb.enabled=true")) == [
        "trackio", "mlflow", "wandb"]
    assert trackers(tiny_config(corpus, "training.report_to=none", "monitoring.wandb.enabled=true")) == ["wandb"]
    with pytest.raises(ConfigError, match="training.report_to: unknown trackers \\['tensorbord'\\]"):
        trackers(tiny_config(corpus, "training.report_to=tensorbord"))


def test_tensorboard_event_files_and_the_precision_that_ran(corpus, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch --mixed_precision bf16` sets
    config = tiny_config(corpus, "training.report_to=tensorboard", "training.max_steps=4",
                         "training.save_every_n_steps=null", "training.detailed_metrics_steps=2")
    assert config["training"]["mixed_precision"] == "bf16"  # resolved when the config is loaded
    run_training(config, "tb", str(tmp_path))
    experiment = Experiment(tmp_path / "tb")
    (events,) = {path.parent for path in experiment.logs_dir.rglob("events.out.tfevents.*")}
    scalars = EventAccumulator(str(events)).Reload().Tags()["scalars"]
    assert "train/loss" in scalars and "eval/loss" in scalars
    research = {key for row in experiment.read_metrics() for key in row if "/" in key}  # e.g. masked accuracy
    assert research and {f"train/{key}" for key in research} <= set(scalars)
    assert experiment.read_raw_config()["training"]["mixed_precision"] == "bf16"
    assert experiment.read_summary()["mixed_precision"] == "bf16"  # trainer.args: what ran
    assert experiment.loss_curves_path.stat().st_size > 1000  # the run's loss curves PNG
