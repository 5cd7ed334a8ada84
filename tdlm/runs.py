"""The experiment folder: the only module that knows its layout, reads it and writes it.

    experiments/<id>/configs/config.yaml             the resolved YAML config of the run
    experiments/<id>/checkpoints/checkpoint-<step>/   HF model folder + Trainer state (complete once
                                                      trainer_state.json exists; saved via a staging folder)
    experiments/<id>/logs/metrics.jsonl               one JSON record per training / evaluation log
    experiments/<id>/results/summary.json             the end-of-run summary (best checkpoint, loss, speed)
    experiments/<id>/results/<name>.json              evaluation results

Training, evaluation, comparison, heatmaps, schedule validation and publishing all find checkpoints,
metrics and results through the functions here.
"""

import json
import math
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from .config import load_config, save_config
from .configuration_tdlm import TDLMConfig
from .modeling_tdlm import model_class_for
from .tokenization import check_tokenizer_matches, load_tokenizer

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STAGING_PREFIX = ".tmp-"  # checkpoints are written here, then renamed into place
# what `Trainer.train(resume_from_checkpoint=...)` restores besides the weights; without them it silently restarts
# the optimizer, the schedule or the data order / corruption draws, and the resumed run differs from the original
# (alternative names: accelerate's FSDP saves the optimizer as optimizer.bin)
RESUME_STATE_FILES = (("optimizer.pt", "optimizer.bin"), ("scheduler.pt",), ("rng_state*.pth",))


@dataclass
class Experiment:
    root: Path

    def __post_init__(self):
        self.root = Path(self.root)

    @property
    def experiment_id(self) -> str:
        return self.root.name

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def configs_dir(self) -> Path:
        return self.root / "configs"

    @property
    def results_dir(self) -> Path:
        return self.root / "results"

    @property
    def config_path(self) -> Path:
        return self.configs_dir / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.logs_dir / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.results_dir / "summary.json"

    @property
    def loss_curves_path(self) -> Path:
        return self.results_dir / "loss_curves.png"

    def create(self) -> "Experiment":
        for folder in (self.checkpoints_dir, self.logs_dir, self.configs_dir, self.results_dir):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    def has_files(self) -> bool:
        """Whether anything was written here (a new run of other processes creates only empty folders)."""
        return self.root.is_dir() and any(p.is_file() for p in self.root.rglob("*"))

    def remove(self) -> None:
        """Delete the whole experiment folder: renamed out of the way first, like a checkpoint (a kill mid-way
        leaves a `.tmp-deleting-<id>` folder, never a half-deleted run under the old id)."""
        if self.root.exists():
            doomed = self.root.with_name(f"{STAGING_PREFIX}deleting-{self.root.name}")
            shutil.rmtree(doomed, ignore_errors=True)
            os.replace(self.root, doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    # ---- config, summary, results ------------------------------------------------------------
    def write_config(self, config: dict) -> None:
        save_config(config, self.config_path)

    def read_config(self) -> dict | None:
        """The saved config.yaml, validated (None when the run has none)."""
        return load_config(self.config_path) if self.config_path.is_file() else None

    def read_raw_config(self) -> dict | None:
        """config.yaml as written, without validation (for model cards of runs made by older versions)."""
        if not self.config_path.is_file():
            return None
        return yaml.safe_load(self.config_path.read_text()) or {}

    def write_summary(self, summary: dict) -> None:
        write_json(summary, self.summary_path)

    def read_summary(self) -> dict:
        return read_json(self.summary_path) if self.summary_path.is_file() else {}

    def write_result(self, name: str, result: dict) -> Path:
        return write_json(result, self.results_dir / f"{name}.json")

    def read_results(self) -> dict[str, dict]:
        """results/*.json, summary.json first: {file stem: contents}."""
        if not self.results_dir.is_dir():
            return {}
        files = sorted(self.results_dir.glob("*.json"), key=lambda p: (p.name != "summary.json", p.name))
        return {f.stem: read_json(f) for f in files}

    # ---- metrics log ---------------------------------------------------------------------------
    def append_metrics(self, record: dict) -> None:
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        with self.metrics_path.open("a") as f:
            f.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")

    def read_metrics(self) -> list[dict]:
        """Rows of logs/metrics.jsonl (empty when the file is missing). A torn last line (a kill mid-write) is
        dropped with a warning; a broken line elsewhere is an error naming the file and line."""
        path = self.metrics_path
        lines = [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
        rows = []
        for number, line in enumerate(lines, 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                if number < len(lines):
                    raise ValueError(f"{path}, line {number}: not valid JSON ({error})") from None
                warnings.warn(f"{path}: dropped its torn last line {number} (a write was interrupted)", stacklevel=2)
        return rows

    def truncate_metrics(self, after_step: int) -> None:
        """Drop records logged after `after_step` (a resumed run logs those steps again)."""
        kept = [row for row in self.read_metrics() if row["step"] <= after_step]
        if self.metrics_path.is_file():
            self.metrics_path.write_text("".join(json.dumps(row) + "\n" for row in kept))

    # ---- checkpoints ---------------------------------------------------------------------------
    def checkpoints(self, complete: bool = True) -> list[Path]:
        return list_checkpoints(self.checkpoints_dir, complete)

    def staging_folders(self) -> list[Path]:
        """Checkpoint saves killed mid-way."""
        return sorted(self.checkpoints_dir.glob(f"{STAGING_PREFIX}*")) if self.checkpoints_dir.is_dir() else []

    def remove_staging_folders(self) -> None:
        for stale in self.staging_folders():
            shutil.rmtree(stale, ignore_errors=True)

    def best_checkpoint(self) -> Path:
        """The saved checkpoint with the lowest eval loss (`best_evaluation` over the newest trainer_state.json's log);
        a run that never evaluated: its latest checkpoint."""
        checkpoints = [p for p in self.checkpoints(complete=False) if is_model_folder(p)]
        if not checkpoints:
            raise FileNotFoundError(f"no checkpoints/checkpoint-<step> model folders in {self.root}")
        states = self.checkpoints(complete=True)
        history = read_json(states[-1] / "trainer_state.json").get("log_history", []) if states else []
        best = best_evaluation(history, checkpoints)
        return best[0] if best is not None else checkpoints[-1]


def default_experiment_id() -> str:
    return time.strftime("tdlm_%Y%m%d_%H%M%S")


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_json(path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


def write_json(data: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


# ---------------------------------------------------------------------------------------------
# Finding runs and checkpoints
# ---------------------------------------------------------------------------------------------
def is_model_folder(path: Path) -> bool:
    path = Path(path)
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


def checkpoint_step(path: Path) -> int:
    return int(CHECKPOINT_PATTERN.match(Path(path).name).group(1))


def list_checkpoints(checkpoints_dir: str | Path, complete: bool = True) -> list[Path]:
    """`checkpoint-<step>` folders, oldest step first; `complete` keeps only those with trainer_state.json
    (a finished Trainer save), otherwise every folder of that name."""
    folder = Path(checkpoints_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if (m := CHECKPOINT_PATTERN.match(p.name)) and (not complete or (p / "trainer_state.json").is_file())]
    return [p for _, p in sorted(found)]


def best_evaluation(log_history: list[dict], checkpoints) -> tuple[Path, dict] | None:
    """(checkpoint, its evaluation's log record) of the saved checkpoint with the lowest eval loss: the one rule for
    "best", which the trainer keeps when it cleans up, summary.json reports and `Experiment.best_checkpoint` loads.
    Evaluations at steps without a checkpoint among `checkpoints` do not count; ties go to the earliest; None when
    no checkpoint was evaluated."""
    by_step = {checkpoint_step(p): Path(p) for p in checkpoints}
    evaluated = [record for record in log_history if "eval_loss" in record and record.get("step") in by_step]
    if not evaluated:
        return None
    best = min(evaluated, key=lambda record: record["eval_loss"])
    return by_step[best["step"]], best


def staging_folder(checkpoints_dir, step: int) -> Path:
    return Path(checkpoints_dir) / f"{STAGING_PREFIX}{step}"


def final_location(folder) -> Path:
    """Where a folder being written will live: a checkpoint written under a staging folder
    (checkpoints/.tmp-<step>/checkpoint-<step>) is renamed into checkpoints/ by `commit_checkpoint`."""
    folder = Path(folder).resolve()
    return folder.parent.parent / folder.name if folder.parent.name.startswith(STAGING_PREFIX) else folder


def commit_checkpoint(staged: Path, final: Path) -> None:
    """Move a fully written checkpoint into place (an atomic rename; an older folder of that step is replaced)."""
    if final.exists():  # re-saving the same step (e.g. an eval-only run's folder)
        delete_checkpoint(final)
    os.replace(staged, final)


def delete_checkpoint(checkpoint: Path) -> None:
    """Rename out of the checkpoint namespace first, then delete: a kill mid-way leaves a staging folder (cleaned
    up at the next start), never a half-deleted folder that still looks like a checkpoint."""
    doomed = checkpoint.with_name(f"{STAGING_PREFIX}deleting-{checkpoint.name}")
    shutil.rmtree(doomed, ignore_errors=True)  # left by a deletion killed before: os.replace cannot overwrite it
    os.replace(checkpoint, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def experiment_of(checkpoint: str | Path) -> Experiment | None:
    """The experiment that holds experiments/<id>/checkpoints/checkpoint-N, else None."""
    checkpoint = Path(checkpoint).resolve()
    return Experiment(checkpoint.parent.parent) if checkpoint.parent.name == "checkpoints" else None


def experiment_of_config(config_file: str | Path) -> Experiment | None:
    """The experiment whose saved config is `config_file` (experiments/<id>/configs/config.yaml), else None."""
    config_file = Path(config_file).resolve()
    experiment = Experiment(config_file.parent.parent)
    return experiment if experiment.config_path == config_file else None


def resume_point(path: str | Path) -> tuple[Path, Experiment | None]:
    """What `--resume` names: a checkpoint folder, or an experiment folder (meaning its latest complete
    checkpoint) -> (checkpoint, experiment)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--resume path not found: {path}")
    if (path / "checkpoints").is_dir():
        checkpoints = [c for c in list_checkpoints(path / "checkpoints") if _readable_trainer_state(c)]
        if not checkpoints:
            raise FileNotFoundError(f"experiment {path} has no complete checkpoint under {path / 'checkpoints'}")
        return checkpoints[-1], Experiment(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is neither a checkpoint (no config.json) nor an experiment folder")
    experiment = Experiment(path.parent.parent) if path.parent.name == "checkpoints" else None
    return path, experiment


def _readable_trainer_state(checkpoint: Path) -> bool:
    """Whether trainer_state.json parses; a broken one (a kill mid-write of an older version, a disk error) makes
    resume fall back to the previous checkpoint, with a warning."""
    try:
        read_json(checkpoint / "trainer_state.json")
        return True
    except ValueError as error:
        warnings.warn(f"skipping {checkpoint}: {error}", stacklevel=3)
        return False


def missing_resume_state(checkpoint: Path) -> list[str]:
    """Which of RESUME_STATE_FILES a checkpoint lacks (an exact resume needs all of them)."""
    return [" or ".join(names) for names in RESUME_STATE_FILES
            if not any(any(Path(checkpoint).glob(name)) for name in names)]


def weights_are_finite(checkpoint: Path) -> bool:
    """Whether every tensor in the checkpoint's *.safetensors files is finite (an unreadable file counts as not)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    files = sorted(Path(checkpoint).glob("*.safetensors"))
    try:
        return bool(files) and all(bool(torch.isfinite(t).all()) for f in files for t in load_file(f).values())
    except (SafetensorError, OSError):
        return False


def last_good_checkpoint(checkpoints_dir) -> Path | None:
    """The newest complete checkpoint whose weights are finite (checked, not assumed)."""
    return next((c for c in reversed(list_checkpoints(checkpoints_dir)) if weights_are_finite(c)), None)


def find_experiment(experiment, experiments_dir="experiments") -> Experiment:
    """An experiment id under `experiments_dir`, or a folder path."""
    path = Path(experiment)
    if path.is_dir():
        return Experiment(path)
    candidate = Path(experiments_dir) / str(experiment)
    if candidate.is_dir():
        return Experiment(candidate)
    raise FileNotFoundError(f"experiment {experiment!r} is neither a folder nor an id under {experiments_dir}/")


def list_experiments(experiments_dir="experiments") -> list[Experiment]:
    root = Path(experiments_dir)
    return [Experiment(p) for p in sorted(root.iterdir()) if (p / "checkpoints").is_dir()] if root.is_dir() else []


def model_folder(path) -> Path:
    """A model folder: `path` itself when it holds a model, else the experiment's best checkpoint."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no such experiment or checkpoint folder: {path}")
    if is_model_folder(path):
        return path
    try:
        return Experiment(path).best_checkpoint()
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{path} is neither a model folder (no config.json) nor an experiment with "
                                f"results/summary.json best_checkpoint or checkpoints/checkpoint-N ({error})") from None


def pretrained_source(source: str | None) -> str | None:
    """A run's starting point: a local experiment or checkpoint folder becomes its model folder (absolute);
    anything else (a Hub id) is kept."""
    if source is not None and Path(source).exists():
        return str(model_folder(source).resolve())
    return source


# ---------------------------------------------------------------------------------------------
# Loading a model
# ---------------------------------------------------------------------------------------------
def load_model(path, **kwargs):
    """The in-package head class matching the checkpoint's training_mode, from a model folder, experiment
    folder (its best checkpoint) or Hub id. kwargs go to from_pretrained (e.g. dtype)."""
    source = pretrained_source(str(path))
    return model_class_for(TDLMConfig.from_pretrained(source)).from_pretrained(source, **kwargs)


def load_checkpoint(path, device: str | None = None):
    """(model in eval mode, tokenizer) from a checkpoint folder whose config.json has `training_mode`."""
    from safetensors import SafetensorError

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in checkpoint folder {path}")
    try:
        model = load_model(path)
    except (OSError, SafetensorError) as error:  # a truncated or missing weights file: name it
        weights = sorted(path.glob("*.safetensors")) or [path / "model.safetensors"]
        raise ValueError(f"{', '.join(map(str, weights))}: cannot load the model weights "
                         f"({str(error).splitlines()[0]})") from None
    bad = sum(int((~torch.isfinite(p)).sum()) for p in model.parameters())
    if bad:
        raise FloatingPointError(f"{path}: {bad} model weights are NaN/inf; its outputs would be meaningless")
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
    tokenizer = load_tokenizer(str(path), trust_remote_code=True)
    check_tokenizer_matches(tokenizer, model.config)
    return model, tokenizer
