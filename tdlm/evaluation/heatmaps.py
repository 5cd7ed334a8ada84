"""Gradient heatmaps by corruption level (mask ratio 0-30 / 30-70 / 70-100%) over training.

Reads `grad_norm/low|medium|high|total` and `loss/low|medium|high` from an experiment's logs/metrics.jsonl
(or a W&B run's history when online) and writes four PNGs to research/heatmaps/<run>/:
  corruption_vs_time.png   gradient norm (and loss) per corruption level over steps
  gradient_ratios.png      each level's gradient norm / the total gradient norm over steps
  gradient_health.png      per level: mean, CV, spike ratio (max/median), trend (last/first quarter), loss mean
  summary_dashboard.png    the above condensed on one page
"""

from pathlib import Path

import numpy as np

from ..runs import Experiment
from ..schedules import LEVEL_BOUNDARIES, LEVELS


class NoGradientMetricsError(ValueError):
    pass


def load_run_metrics(run, experiments_dir="experiments") -> tuple[str, list[dict]]:
    """(run name, metric rows) from an experiment id/folder, or a W&B run path "entity/project/run_id"."""
    path = Path(run)
    for folder in (path, Path(experiments_dir) / run):
        if folder.is_dir():
            experiment = Experiment(folder)
            if not experiment.metrics_path.is_file():
                raise FileNotFoundError(f"{folder} has no {experiment.metrics_path.relative_to(folder)}")
            return experiment.experiment_id, experiment.read_metrics()
    if run.count("/") == 2:
        try:
            import wandb  # an optional extra (tdlm[wandb])

            history = wandb.Api().run(run).history(samples=100_000, pandas=False)
        except Exception as error:  # offline, unknown run, no credentials
            raise RuntimeError(f"could not read W&B run {run!r} ({error}); pass a local experiment instead") from error
        rows = [{"step": r.get("_step", r.get("train/global_step")), **{k.removeprefix("train/"): v
                 for k, v in r.items()}} for r in history]
        return run.split("/")[-1], rows
    raise FileNotFoundError(f"run {run!r} is not an experiment folder, an id under {experiments_dir}/, "
                            "or a W&B run path entity/project/run_id")


def gradient_table(rows: list[dict], run: str = "run") -> dict:
    """{"steps": [S], "grad": {level: [S]}, "total": [S], "loss": {level: [S]}} over rows with gradient metrics."""
    keys = [f"grad_norm/{level}" for level in LEVELS]
    useful = sorted((r for r in rows if any(r.get(k) is not None for k in keys)), key=lambda r: r["step"])
    if not useful:
        raise NoGradientMetricsError(
            f"run {run} has no grad_norm/low|medium|high metrics: an autoregressive run logs none, and a diffusion "
            "run logs them every training.attention_analysis_steps (off when null); nothing to plot")

    def series(key):
        return np.array([np.nan if r.get(key) is None else float(r[key]) for r in useful])

    grad = {level: series(f"grad_norm/{level}") for level in LEVELS}
    total = series("grad_norm/total")
    if np.all(np.isnan(total)):
        total = np.sqrt(sum(np.nan_to_num(g) ** 2 for g in grad.values()))
    return {"steps": np.array([r["step"] for r in useful]), "grad": grad, "total": total,
            "loss": {level: series(f"loss/{level}") for level in LEVELS}}


def health_matrix(table: dict) -> tuple[list[str], np.ndarray]:
    """(indicator names, [levels, indicators]) gradient-health statistics."""
    names = ["mean grad", "CV", "spike (max/median)", "trend (last/first 25%)", "share of total", "mean loss"]
    values = np.zeros((len(LEVELS), len(names)))
    for i, level in enumerate(LEVELS):
        g = table["grad"][level]
        g = g[~np.isnan(g)]
        quarter = max(1, len(g) // 4)
        ratio = table["grad"][level] / table["total"]
        values[i] = [g.mean() if len(g) else np.nan, g.std() / g.mean() if len(g) and g.mean() else np.nan,
                     g.max() / np.median(g) if len(g) and np.median(g) else np.nan,
                     g[-quarter:].mean() / g[:quarter].mean() if len(g) and g[:quarter].mean() else np.nan,
                     np.nanmean(ratio), np.nanmean(table["loss"][level])]
    return names, values


def _heat(axis, matrix, steps, title, colorbar_label, figure, cmap="viridis"):
    image = axis.imshow(matrix, aspect="auto", cmap=cmap, interpolation="nearest")
    edges = [round(100 * edge) for edge in (0.0, *LEVEL_BOUNDARIES, 1.0)]
    labels = [f"{level}\n({low}-{high}%)" for level, low, high in zip(LEVELS, edges, edges[1:])]
    axis.set_yticks(range(len(LEVELS)), labels)
    ticks = np.linspace(0, len(steps) - 1, min(len(steps), 8)).astype(int)
    axis.set_xticks(ticks, [str(steps[t]) for t in ticks])
    axis.set_xlabel("step")
    axis.set_title(title)
    figure.colorbar(image, ax=axis, label=colorbar_label)


def _annotated_matrix(axis, names, values, figure):
    spread = np.nanmax(values, 0) - np.nanmin(values, 0)
    normalised = (values - np.nanmin(values, 0)) / np.where(spread > 0, spread, 1)
    image = axis.imshow(normalised, cmap="RdYlGn_r", vmin=0, vmax=1, aspect="auto")
    axis.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axis.set_yticks(range(len(LEVELS)), LEVELS)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            axis.text(j, i, f"{values[i, j]:.3g}", ha="center", va="center", fontsize=8)
    axis.set_title("gradient health (colour: column-normalised)")
    figure.colorbar(image, ax=axis, label="relative (per column)")


def generate_heatmaps(run, experiments_dir="experiments", output_root="research/heatmaps") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name, rows = load_run_metrics(str(run), experiments_dir)
    table = gradient_table(rows, name)
    steps = table["steps"]
    grad = np.vstack([table["grad"][level] for level in LEVELS])
    ratios = grad / table["total"][None, :]
    loss = np.vstack([table["loss"][level] for level in LEVELS])
    names, health = health_matrix(table)
    out = Path(output_root) / name
    out.mkdir(parents=True, exist_ok=True)
    paths = []

    def save(figure, filename):
        figure.suptitle(f"run {name}")
        figure.tight_layout()
        figure.savefig(out / filename, dpi=110)
        plt.close(figure)
        paths.append(out / filename)

    figure, axes = plt.subplots(2, 1, figsize=(10, 6))
    _heat(axes[0], grad, steps, "gradient norm by corruption level", "||grad||", figure, "magma")
    _heat(axes[1], loss, steps, "loss by corruption level", "loss (nats)", figure)
    save(figure, "corruption_vs_time.png")

    figure, axis = plt.subplots(figsize=(10, 3.5))
    _heat(axis, ratios, steps, "gradient norm of level / total gradient norm", "ratio", figure, "coolwarm")
    save(figure, "gradient_ratios.png")

    figure, axis = plt.subplots(figsize=(9, 3.8))
    _annotated_matrix(axis, names, health, figure)
    save(figure, "gradient_health.png")

    figure, axes = plt.subplots(2, 2, figsize=(13, 8))
    for level in LEVELS:
        axes[0, 0].plot(steps, table["grad"][level], marker="o", label=level)
        axes[0, 1].plot(steps, table["loss"][level], marker="o", label=level)
    axes[0, 0].plot(steps, table["total"], "k--", marker=".", label="total")
    axes[0, 0].set(title="gradient norm", xlabel="step", yscale="log")
    axes[0, 1].set(title="loss by corruption level", xlabel="step")
    for axis in axes[0]:
        axis.legend()
        axis.grid(alpha=0.3)
    _heat(axes[1, 0], ratios, steps, "gradient ratio to total", "ratio", figure, "coolwarm")
    _annotated_matrix(axes[1, 1], names, health, figure)
    save(figure, "summary_dashboard.png")
    return paths
