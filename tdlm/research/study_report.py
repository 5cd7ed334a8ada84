"""What the data-constrained study reports: per-arm summaries, the AR-vs-diffusion verdict per budget (beyond two
standard errors only), the data-reuse fits, the markdown table and the figures. Pure functions of the arms' curves,
so a partial run reports what finished."""

import json
import math
from pathlib import Path

from .reuse import TOKENS_UNIT, best_so_far, fit_reuse, reuse_loss

Z = 2.0  # "better" means better by more than Z standard errors of the difference
AR_ARMS, DIFFUSION_ARMS = ("ar", "ar_regularized"), ("diffusion", "diffusion_regularized")


def compare(loss_a: float, se_a: float, loss_b: float, se_b: float) -> dict:
    """a - b with the standard error of the difference; verdict "a", "b" (lower beyond Z SE) or "tie"."""
    difference, se = loss_a - loss_b, math.hypot(se_a, se_b)
    verdict = "a" if difference < -Z * se else "b" if difference > Z * se else "tie"
    return {"difference": difference, "standard_error": se, "verdict": verdict}


def best_point(points: list[dict]) -> dict:
    return min(points, key=lambda p: p["eval_loss"])


def crossover_epoch(points: list[dict], reference: list[dict]) -> int | None:
    """First evaluated epoch from which `points` stay below `reference` beyond Z SE at every later common epoch."""
    ref = {p["epoch"]: p for p in reference}
    common = [p for p in points if p["epoch"] in ref]
    below = [compare(p["eval_loss"], p["standard_error"], ref[p["epoch"]]["eval_loss"],
                     ref[p["epoch"]]["standard_error"])["verdict"] == "a" for p in common]
    for i, point in enumerate(common):
        if all(below[i:]):
            return point["epoch"]
    return None


def summarize(arms: list[dict]) -> list[dict]:
    """Per (budget, arm): best loss (its SE and epoch), final loss, crossover epoch vs plain AR, reuse fit."""
    by_key = {(a["unique_tokens"], a["arm"]): a for a in arms}
    rows = []
    for arm in arms:
        points, best = arm["points"], best_point(arm["points"])
        ar = by_key.get((arm["unique_tokens"], "ar"))
        rows.append({"unique_tokens": arm["unique_tokens"], "arm": arm["arm"], "best_eval_loss": best["eval_loss"],
                     "best_standard_error": best["standard_error"], "best_epoch": best["epoch"],
                     "best_train_flops": best["train_flops"], "final_eval_loss": points[-1]["eval_loss"],
                     "final_epoch": points[-1]["epoch"],
                     "crossover_epoch": crossover_epoch(points, ar["points"]) if ar and arm is not ar else None,
                     "reuse_fit": fit_reuse([(arm["unique_tokens"], points)])})
    return rows


def verdicts(summary: list[dict]) -> list[dict]:
    """Per budget: the best AR arm vs the best diffusion arm (and plain vs plain), beyond Z SE."""
    rows = []
    for tokens in sorted({r["unique_tokens"] for r in summary}):
        at = {r["arm"]: r for r in summary if r["unique_tokens"] == tokens}
        pairs = [("best", min((at[a] for a in AR_ARMS if a in at), key=lambda r: r["best_eval_loss"], default=None),
                  min((at[a] for a in DIFFUSION_ARMS if a in at), key=lambda r: r["best_eval_loss"], default=None)),
                 ("plain", at.get("ar"), at.get("diffusion"))]
        for kind, ar, diffusion in pairs:
            if ar is None or diffusion is None:
                continue
            result = compare(diffusion["best_eval_loss"], diffusion["best_standard_error"], ar["best_eval_loss"],
                             ar["best_standard_error"])
            winner = {"a": "diffusion", "b": "AR", "tie": "tie (within 2 SE)"}[result["verdict"]]
            rows.append({"unique_tokens": tokens, "comparison": kind, "ar_arm": ar["arm"],
                         "diffusion_arm": diffusion["arm"], **result, "winner": winner})
    return rows


def reuse_fits(arms: list[dict]) -> dict:
    """One reuse fit per arm over all its budgets (E, B, beta shared): each objective's R*."""
    names = dict.fromkeys(a["arm"] for a in arms)
    return {name: fit_reuse([(a["unique_tokens"], a["points"]) for a in arms if a["arm"] == name]) for name in names}


def tokens_label(tokens: int) -> str:
    """249,984 -> "250k" (a budget rounded to whole blocks keeps its round name)."""
    return f"{tokens / 1e6:.3g}M" if tokens >= 1e6 else f"{tokens / 1e3:.3g}k"


def _fmt(value, digits=3):
    if value is None:
        return "-"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.{digits}f}"
    return str(value)


def _fmt_r_star(fit) -> str:
    return "-" if fit is None else f"{fit['r_star']:.3g} [{fit['r_star_low']:.3g}, {fit['r_star_high']:.3g}]"


def format_markdown(result: dict) -> str:
    settings, summary = result["settings"], result["summary"]
    lines = ["# Data-constrained study", "", "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), "",
             "## Per budget and arm", "",
             "| unique tokens | arm | best eval loss ± SE | best epoch | FLOPs at best | final loss (epoch) "
             "| crossover vs ar | R* [95% CI] |", "|---|---|---|---|---|---|---|---|"]
    for r in summary:
        lines.append(f"| {tokens_label(r['unique_tokens'])} | {r['arm']} | {_fmt(r['best_eval_loss'])} ± "
                     f"{_fmt(r['best_standard_error'])} | {r['best_epoch']} | {r['best_train_flops']:.2e} | "
                     f"{_fmt(r['final_eval_loss'])} ({r['final_epoch']}) | {_fmt(r['crossover_epoch'])} | "
                     f"{_fmt_r_star(r['reuse_fit'])} |")
    lines += ["", "## Diffusion's best vs AR's best (beyond 2 SE)", "",
              "| unique tokens | comparison | AR arm | diffusion arm | diffusion - AR ± SE | winner |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {tokens_label(v['unique_tokens'])} | {v['comparison']} | {v['ar_arm']} | {v['diffusion_arm']} | "
              f"{v['difference']:+.3f} ± {v['standard_error']:.3f} | {v['winner']} |" for v in result["verdicts"]]
    lines += ["", "## Data-reuse half-life R* per arm (all budgets, shared E, B, beta)", "",
              "| arm | R* [95% CI] | E | B | beta | RMSE | points |", "|---|---|---|---|---|---|---|"]
    for name, fit in result["reuse_fits"].items():
        lines.append(f"| {name} | - | | | | | |" if fit is None else
                     f"| {name} | {_fmt_r_star(fit)} | {fit['e']:.3f} | {fit['b']:.3f} | {fit['beta']:.3f} | "
                     f"{fit['rmse']:.3f} | {fit['num_points']} |")
    if result["sample_quality"]:
        lines += ["", f"## Sample quality (scored by {result['scorer']})", "",
                  "| unique tokens | arm | steps | gen-PPL | unigram entropy (nats) | samples | tokens |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {tokens_label(q['unique_tokens'])} | {q['arm']} | {_fmt(q['steps'])} | {q['gen_ppl']:.2f} | "
                  f"{q['unigram_entropy']:.3f} | {q['num_samples']} | {q['num_tokens']} |"
                  for q in result["sample_quality"]]
    return "\n".join(lines) + "\n"


def write_results(output_dir: Path, settings: dict, arms: list[dict], sample_rows: list[dict],
                  scorer: str | None = None) -> dict:
    """study.json, study.md and the figures from what has finished so far."""
    summary = summarize(arms)
    result = {"settings": settings, "arms": arms, "summary": summary, "verdicts": verdicts(summary),
              "reuse_fits": reuse_fits(arms), "scorer": scorer, "sample_quality": sample_rows}
    (output_dir / "study.json").write_text(json.dumps(result, indent=2))
    (output_dir / "study.md").write_text(format_markdown(result))
    plot_curves(arms, output_dir / "study.png")
    plot_best_vs_budget(summary, output_dir / "best_vs_budget.png")
    plot_reuse(arms, result["reuse_fits"], output_dir / "reuse_fits.png")
    return result


def _pyplot():
    import matplotlib  # an optional extra (tdlm[eval])

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(arms: list[dict], path: Path) -> None:
    """Held-out loss vs epochs (top row) and vs training FLOPs (bottom row), one column per budget."""
    plt = _pyplot()
    budgets = sorted({a["unique_tokens"] for a in arms})
    figure, axes = plt.subplots(2, len(budgets), figsize=(5 * len(budgets), 8), squeeze=False)
    for column, tokens in enumerate(budgets):
        for arm in (a for a in arms if a["unique_tokens"] == tokens):
            losses = [p["eval_loss"] for p in arm["points"]]
            errors = [p["standard_error"] for p in arm["points"]]
            for row, key in enumerate(("epoch", "train_flops")):
                axes[row][column].errorbar([p[key] for p in arm["points"]], losses, yerr=errors, label=arm["arm"],
                                           marker="o", markersize=2, capsize=2)
        axes[0][column].set_title(f"{tokens_label(tokens)} unique tokens")
        axes[0][column].set_xlabel("epoch")
        axes[1][column].set_xlabel("training FLOPs (6 N D)")
        axes[1][column].set_xscale("log")
        for row in (0, 1):
            axes[row][column].set_ylabel("held-out loss (nats/token; diffusion: NELBO)")
            axes[row][column].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_best_vs_budget(summary: list[dict], path: Path) -> None:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["arm"] for r in summary):
        rows = [r for r in summary if r["arm"] == name]
        axis.errorbar([r["unique_tokens"] for r in rows], [r["best_eval_loss"] for r in rows],
                      yerr=[Z * r["best_standard_error"] for r in rows], label=name, marker="o", capsize=3)
    axis.set_xscale("log")
    axis.set_xlabel("unique training tokens")
    axis.set_ylabel("best held-out loss (error bars: 2 SE)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_reuse(arms: list[dict], fits: dict, path: Path) -> None:
    """Each arm's best-so-far envelopes (points) and its fitted reuse model (lines), one panel per arm."""
    plt = _pyplot()
    names = list(fits)
    figure, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 4), squeeze=False)
    for axis, name in zip(axes[0], names):
        fit = fits[name]
        for arm in (a for a in arms if a["arm"] == name):
            epochs, envelope = best_so_far(arm["points"])
            dots = axis.plot(epochs, envelope, "o", markersize=3, label=tokens_label(arm["unique_tokens"]))
            if fit is not None:
                params = (fit["e"], math.log(fit["b"]), fit["beta"], math.log(fit["r_star"]))
                line = reuse_loss(([arm["unique_tokens"] / TOKENS_UNIT] * len(epochs), epochs), *params)
                axis.plot(epochs, line, "-", color=dots[0].get_color())
        axis.set_title(f"{name}: R* = {_fmt_r_star(fit)}", fontsize=9)
        axis.set_xlabel("epoch")
        axis.set_ylabel("best-so-far held-out loss")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
