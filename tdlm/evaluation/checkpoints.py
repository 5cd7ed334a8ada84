"""Loading TDLM checkpoints and locating an experiment's best checkpoint (experiment folder contract)."""

import json
from pathlib import Path

from ..experiment import list_checkpoints


def load_checkpoint(path, device: str | None = None):
    """(model in eval mode, tokenizer) from an HF checkpoint folder whose config.json has `training_mode`."""
    import torch

    from .. import TDLMConfig, model_class_for
    from ..tokenization import check_tokenizer_matches, load_tokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in checkpoint folder {path}")
    config = TDLMConfig.from_pretrained(path)
    model = model_class_for(config).from_pretrained(path)
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
    tokenizer = load_tokenizer(str(path), trust_remote_code=True)
    check_tokenizer_matches(tokenizer, config)
    return model, tokenizer


def resolve_experiment(experiment, experiments_dir="experiments") -> Path:
    """An experiment id under `experiments_dir`, or a folder path."""
    path = Path(experiment)
    if path.is_dir():
        return path
    candidate = Path(experiments_dir) / experiment
    if candidate.is_dir():
        return candidate
    raise FileNotFoundError(f"experiment {experiment!r} is neither a folder nor an id under {experiments_dir}/")


def best_checkpoint(experiment_dir) -> Path:
    """results/summary.json's best_checkpoint, else the checkpoint with the lowest eval loss recorded in the
    latest trainer_state.json, else the latest checkpoint."""
    experiment_dir = Path(experiment_dir)
    summary = experiment_dir / "results" / "summary.json"
    if summary.is_file():
        best = json.loads(summary.read_text()).get("best_checkpoint")
        if best:
            for candidate in (Path(best), experiment_dir / best, experiment_dir / "checkpoints" / Path(best).name):
                if (candidate / "config.json").is_file():
                    return candidate
    checkpoints = list_checkpoints(experiment_dir / "checkpoints", complete=False)
    if not checkpoints:
        raise FileNotFoundError(f"no checkpoints/checkpoint-<step> folders in {experiment_dir}")
    state_file = checkpoints[-1] / "trainer_state.json"
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        if state.get("best_model_checkpoint") and Path(state["best_model_checkpoint"]).is_dir():
            return Path(state["best_model_checkpoint"])
        evals = [e for e in state.get("log_history", []) if "eval_loss" in e]
        by_step = {int(p.name.split("-")[1]): p for p in checkpoints}
        evals = [e for e in evals if e.get("step") in by_step]
        if evals:
            return by_step[min(evals, key=lambda e: e["eval_loss"])["step"]]
    return checkpoints[-1]


def read_metrics(experiment_dir) -> list[dict]:
    """Rows of logs/metrics.jsonl (empty list when the file is missing)."""
    path = Path(experiment_dir) / "logs" / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
