"""Loss curves read from experiments' metrics logs (logs/metrics.jsonl): the one home of the runs' line plots.

matplotlib is an optional extra (tdlm[eval]), imported only when plotting.
"""

from pathlib import Path

from ..runs import Experiment

LOSS_LABEL = "loss (nats/token; NELBO for diffusion)"


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path, dpi: int = 120) -> Path:
    """Write `figure` to `path` (its folder made if needed) and release it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    pyplot().close(figure)
    return path


def metric_points(experiment: Experiment, split: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of `key` in the experiment's `split` ("train" / "eval") records, by step."""
    return sorted((row["step"], row[key]) for row in experiment.read_metrics()
                  if row.get("split") == split and row.get(key) is not None)


def plot_curves(curves: dict[str, list[tuple[int, float]]], path, title: str, ylabel: str = LOSS_LABEL) -> Path:
    """A PNG of value vs step, one line per non-empty curve."""
    figure, axis = pyplot().subplots(figsize=(7, 4))
    for label, points in curves.items():
        if points:
            steps, values = zip(*points)
            axis.plot(steps, values, marker="o", markersize=3, label=label)
    axis.set_xlabel("step")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    if axis.lines:
        axis.legend()
    return save_figure(figure, path)


def plot_run_losses(experiment: Experiment) -> Path:
    """Train and eval loss vs step of one run, written to the experiment's loss_curves_path. An eval curve of
    one point says so in its legend (a run shorter than training.eval_steps evaluates only at its end)."""
    evals = metric_points(experiment, "eval", "eval_loss")
    eval_label = "eval loss" if len(evals) != 1 else "eval loss (1 point: evaluated at the end only)"
    curves = {"train loss": metric_points(experiment, "train", "loss"), eval_label: evals}
    return plot_curves(curves, experiment.loss_curves_path, f"{experiment.experiment_id}: loss during training")


def plot_eval_curves(experiment_dirs: dict, path) -> Path:
    """Eval loss vs step of several experiments ({label: folder}) in one PNG."""
    curves = {f"{label} ({Path(folder).name})": metric_points(Experiment(folder), "eval", "eval_loss")
              for label, folder in experiment_dirs.items()}
    return plot_curves(curves, path, "Eval loss during training")
