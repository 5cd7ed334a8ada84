"""What the data-constrained study reports, as pure functions of study.json (so a cut study reports what finished, and
`data_constrained_study.py --report DIR` regenerates every table and figure from the committed file).

- Per arm: parameters (and per unique token), the best cool-down branch (chosen on the selection blocks) and its
  loss on the report blocks.
- Verdicts: per budget and seed, each objective's best size against the other's, and each size against itself, by
  the paired per-block difference on the report blocks with a standard error clustered by document plus the
  NELBO's Monte-Carlo error. "Better" needs more than 2 SE; an overall claim needs it in every seed run.
- Crossover: per budget, each objective's lower envelope over sizes and branches of selection loss against training
  FLOPs; the measured crossover is the compute from which diffusion's envelope stays below AR's by more than 2 of its
  Monte-Carlo SE, set beside Prabhudesai et al.'s C_crit(U) = 2.12e15 * U^2.174 FLOPs (U in millions of unique
  tokens; the constants as the study issue gives them, not checked against the paper offline).
- Data reuse: R* from the reuse fit of each objective's best-size envelopes, only where every curve has flattened
  (the arm stopped on its patience rule); otherwise "not identified".
"""

import json
import math
import os
from pathlib import Path

from .reuse import fit_reuse
from .statistics import paired_difference

Z = 2.0
C_CRIT_SCALE, C_CRIT_EXPONENT = 2.12e15, 2.174


def critical_compute(unique_tokens: int) -> float:
    """Prabhudesai et al.'s predicted compute (FLOPs) beyond which diffusion's loss is below AR's."""
    return C_CRIT_SCALE * (unique_tokens / 1e6) ** C_CRIT_EXPONENT


def tokens_label(tokens: int) -> str:
    return f"{tokens / 1e6:.3g}M" if tokens >= 1e6 else f"{tokens / 1e3:.3g}k"


def _plain(arms, budget, seed=0):
    return [a for a in arms if a["budget"] == budget and a["seed"] == seed and not a["dropout"]]


def best_of(arms: list[dict], objective: str) -> dict | None:
    """The arm of `objective` with the lowest selection loss."""
    return min((a for a in arms if a["objective"] == objective), key=lambda a: a["best"]["eval_loss"], default=None)


def challengers(arms: list[dict]) -> list[str]:
    """The objectives compared against AR, in the order they appear."""
    return [o for o in dict.fromkeys(a["objective"] for a in arms) if o != "ar"]


def compare_arms(a: dict, b: dict, documents) -> dict:
    """a - b on the report blocks: paired, clustered by document, plus Monte-Carlo variance."""
    result = paired_difference(a["report_losses"], b["report_losses"], documents, a["report_variance"],
                               b["report_variance"])
    verdict = a["objective"] if result["difference"] < -Z * result["standard_error"] else \
        b["objective"] if result["difference"] > Z * result["standard_error"] else "tie (within 2 SE)"
    return {**result, "winner": verdict}


def verdicts(arms: list[dict], documents) -> list[dict]:
    """Per (budget, seed, objective other than AR): its best size vs AR's best size, then size by size (seed 0)."""
    rows = []
    for budget in sorted({a["budget"] for a in arms}):
        for seed in sorted({a["seed"] for a in arms if a["budget"] == budget}):
            plain = _plain(arms, budget, seed)
            ar = best_of(plain, "ar")
            for objective in challengers(plain):
                best = best_of(plain, objective)
                if ar and best:
                    rows.append({"budget": budget, "seed": seed, "objective": objective,
                                 "comparison": "best size vs best size", "challenger": best["name"], "ar": ar["name"],
                                 **compare_arms(best, ar, documents)})
                for size in sorted({a["size"] for a in plain}, key=_size_key):
                    pair = {a["objective"]: a for a in plain if a["size"] == size}
                    if {"ar", objective} <= set(pair) and seed == 0:
                        rows.append({"budget": budget, "seed": seed, "objective": objective,
                                     "comparison": f"same size {size}", "challenger": pair[objective]["name"],
                                     "ar": pair["ar"]["name"], **compare_arms(pair[objective], pair["ar"], documents)})
    return rows


def claims(verdict_rows: list[dict]) -> list[dict]:
    """Per (budget, objective against AR): a winner only where every seed's best-vs-best comparison names it beyond
    2 SE."""
    rows = []
    for key in dict.fromkeys((v["budget"], v.get("objective", "diffusion")) for v in verdict_rows):
        runs = [v for v in verdict_rows if (v["budget"], v.get("objective", "diffusion")) == key
                and v["comparison"] == "best size vs best size"]
        winners = [v["winner"] for v in runs]
        agreed = len(runs) >= 2 and len(set(winners)) == 1 and not winners[0].startswith("tie")
        rows.append({"budget": key[0], "objective": key[1], "seeds": len(runs),
                     "claim": winners[0] if agreed else None, "winners": winners})
    return rows


def _size_key(size: str):
    hidden, layers = size.split("x")
    return int(hidden), int(layers)


def envelope(arms: list[dict]) -> list[tuple[float, float, float]]:
    """(FLOPs, best selection loss so far over all the arms' branches, its SE), by compute."""
    points = sorted((p["train_flops"], p["eval_loss"], p["standard_error"]) for a in arms for p in a["points"])
    out, best = [], (math.inf, 0.0)
    for flops, loss, se in points:
        if loss < best[0]:
            best = (loss, se)
        out.append((flops, *best))
    return out


def crossover(arms: list[dict], budget: int, objective: str = "diffusion") -> dict:
    """Measured crossover (the compute from which the objective's envelope stays below AR's by > 2 of its SE, to the
    end of what was trained) beside the predicted C_crit."""
    plain = _plain(arms, budget)
    ar, challenger = envelope([a for a in plain if a["objective"] == "ar"]), \
        envelope([a for a in plain if a["objective"] == objective])
    measured = None
    for flops, loss, se in challenger:
        reference = [loss_ar for f, loss_ar, _ in ar if f <= flops]
        below = bool(reference) and loss < reference[-1] - Z * se
        measured = (measured or flops) if below else None
    largest = max([f for f, _, _ in ar + challenger], default=None)
    return {"budget": budget, "objective": objective, "predicted_flops": critical_compute(budget),
            "measured_flops": measured, "largest_flops_trained": largest}


def reuse(arms: list[dict]) -> dict:
    """Per objective: R* over its best-size arms at two or more budgets, each curve flattened; "identified" only when
    the fit's 95% interval is finite."""
    out = {}
    for objective in sorted({a["objective"] for a in arms}):
        chosen = [best_of(_plain(arms, b), objective) for b in sorted({a["budget"] for a in arms})]
        chosen = [a for a in chosen if a]
        flattened = all(a["points"][-1].get("worse_than_best") for a in chosen)
        fit = fit_reuse([(a["unique_tokens"], a["points"]) for a in chosen]) \
            if len(chosen) >= 2 and flattened else None
        identified = fit is not None and 0 < fit["r_star_low"] and math.isfinite(fit["r_star_high"])
        out[objective] = {"arms": [a["name"] for a in chosen], "flattened": flattened, "fit": fit,
                          "identified": identified}
    return out


def summarize(study: dict) -> dict:
    arms = study["arms"]
    documents = study["settings"].get("report_block_documents")
    rows = verdicts(arms, documents) if documents else []
    return {"verdicts": rows, "claims": claims(rows),
            "crossovers": [crossover(arms, b, o) for b in sorted({a["budget"] for a in arms})
                           for o in challengers(_plain(arms, b))],
            "reuse": reuse(arms)}


# ---- markdown --------------------------------------------------------------------------------------
def _f(value, digits=3):
    return "-" if value is None else f"{value:.{digits}f}"


def format_markdown(study: dict) -> str:
    settings, arms = study["settings"], study["arms"]
    summary = study.get("summary") or summarize(study)
    env = study.get("environment", {})
    lines = ["# Data-constrained study", "",
             f"Command: `{env.get('command', '?')}`; commit {env.get('git_commit', '?')}"
             f"{' (dirty)' if env.get('git_dirty') else ''}; {env.get('processor', '?')}, {env.get('cpu_count', '?')} "
             f"CPUs, torch {env.get('torch', '?')} ({env.get('torch_threads', '?')} threads), transformers "
             f"{env.get('transformers', '?')}.", "",
             "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items() if k != "report_block_documents"), "",
             "## Arms", "",
             "| budget | objective | size | seed | dropout | params | params / token | best epoch (selection loss) "
             "| report loss ± MC SE | stopped at | FLOPs at best |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in sorted(arms, key=lambda a: (a["budget"], a["seed"], a["dropout"], _size_key(a["size"]), a["objective"])):
        lines.append(f"| {tokens_label(a['budget'])} | {a['objective']} | {a['size']} | {a['seed']} | "
                     f"{a['dropout']:g} | {a['num_parameters']:,} | {a['num_parameters'] / a['unique_tokens']:.1f} | "
                     f"{a['best']['epoch']} ({a['best']['eval_loss']:.3f}) | {a['report_loss']:.3f} ± "
                     f"{a['report_standard_error_mc']:.3f} | {a['stopped_at_epoch']} | "
                     f"{a['best']['train_flops']:.2e} |")
    lines += ["", "## Against AR on the report blocks (paired; SE clustered by document + Monte-Carlo)", "",
              "| budget | seed | comparison | arm | AR arm | arm - AR | SE (cluster, MC) | winner |",
              "|---|---|---|---|---|---|---|---|"]
    for v in summary["verdicts"]:
        lines.append(f"| {tokens_label(v['budget'])} | {v['seed']} | {v['comparison']} | {v['challenger']} | "
                     f"{v['ar']} | {v['difference']:+.3f} | {v['standard_error']:.3f} "
                     f"({v['cluster_standard_error']:.3f}, {v['monte_carlo_standard_error']:.3f}) | {v['winner']} |")
    lines += ["", "Claims (a winner needs > 2 SE in every seed run, and at least two seeds):", ""]
    lines += [f"- {tokens_label(c['budget'])}, {c['objective']} vs AR: {c['claim'] or 'no claim'} ({c['seeds']} seed "
              f"run(s): {', '.join(c['winners'])})" for c in summary["claims"]]
    lines += ["", "## Crossover: measured vs predicted", "",
              "| budget | objective vs AR | predicted C_crit (FLOPs) | measured crossover (FLOPs) | largest compute "
              "trained |", "|---|---|---|---|---|"]
    for c in summary["crossovers"]:
        measured = f"{c['measured_flops']:.2e}" if c["measured_flops"] else "none"
        lines.append(f"| {tokens_label(c['budget'])} | {c['objective']} | {c['predicted_flops']:.2e} | {measured} | "
                     f"{c['largest_flops_trained']:.2e} |")
    lines += ["", "## Data-reuse half-life R*", "", "| objective | arms | R* [95% CI] |", "|---|---|---|"]
    for objective, r in summary["reuse"].items():
        fit = r["fit"]
        value = f"{fit['r_star']:.3g} [{fit['r_star_low']:.3g}, {fit['r_star_high']:.3g}]" if r["identified"] else \
            "not identified (" + ("a curve has not flattened" if not r["flattened"] else "fewer than two budgets"
                                  if len(r["arms"]) < 2 else "the fit's interval is open") + ")"
        lines.append(f"| {objective} | {', '.join(r['arms'])} | {value} |")
    quality = study.get("sample_quality")
    if quality:
        lines += ["", f"## Sample quality (scorer: {quality['scorer']})", "",
                  "| sampled | sampler | gen-PPL | unigram entropy (nats) | samples x tokens |",
                  "|---|---|---|---|---|"]
        lines += [f"| {q['name']} | {q.get('sampler', '-')} | {q['gen_ppl']:.2f} | {q['unigram_entropy']:.3f} | "
                  f"{q['num_samples']} x {q['num_tokens'] // max(q['num_samples'], 1)} |" for q in quality["rows"]]
    return "\n".join(lines) + "\n"


# ---- figures -----------------------------------------------------------------------------------------
def plot_study(study: dict, path: Path) -> None:
    """Per budget: selection loss of every branch vs training FLOPs (one line per arm, C_crit dashed), and the
    best report loss vs parameters for each objective (error bars: 2 MC SE)."""
    from ..evaluation.plots import pyplot, save_figure

    plt = pyplot()
    arms = study["arms"]
    budgets = sorted({a["budget"] for a in arms})
    figure, axes = plt.subplots(2, len(budgets), figsize=(5.5 * len(budgets), 8), squeeze=False)
    objectives = list(dict.fromkeys(a["objective"] for a in arms))
    colours = {o: f"C{i}" for i, o in enumerate(objectives)}
    for column, budget in enumerate(budgets):
        top, bottom = axes[0][column], axes[1][column]
        plain = sorted(_plain(arms, budget), key=lambda a: _size_key(a["size"]))
        sizes = list(dict.fromkeys(a["size"] for a in plain))
        for arm in plain:  # colour: objective; line style: model size
            style = ("-", "--", ":", "-.")[sizes.index(arm["size"]) % 4]
            top.plot([p["train_flops"] for p in arm["points"]], [p["eval_loss"] for p in arm["points"]], style,
                     marker="o", markersize=2, color=colours.get(arm["objective"]),
                     label=f"{arm['objective']} {arm['size']}")
        top.axvline(critical_compute(budget), color="grey", linestyle="--", linewidth=1, label="predicted C_crit")
        top.set_xscale("log")
        top.set_title(f"{tokens_label(budget)} unique tokens")
        top.set_xlabel("training FLOPs (6 N D)")
        top.set_ylabel("selection loss after cool-down (nats/token)")
        top.legend(fontsize=7)
        for objective, colour in colours.items():
            rows = [a for a in plain if a["objective"] == objective]
            bottom.errorbar([a["num_parameters"] for a in rows], [a["report_loss"] for a in rows],
                            yerr=[Z * a["report_standard_error_mc"] for a in rows], marker="o", capsize=3,
                            color=colour, label=objective)
        bottom.set_xscale("log")
        bottom.set_xlabel("parameters")
        bottom.set_ylabel("best report loss (nats/token)")
        bottom.legend(fontsize=8)
    save_figure(figure, path, dpi=110)


def write_report(output_dir: Path, study: dict) -> dict:
    """study.json (atomically), study.md and study.png from the study so far."""
    output_dir = Path(output_dir)
    study = {**study, "summary": summarize(study)}
    staging = output_dir / "study.json.tmp"
    staging.write_text(json.dumps(study, indent=1))
    os.replace(staging, output_dir / "study.json")
    (output_dir / "study.md").write_text(format_markdown(study))
    if study["arms"]:
        plot_study(study, output_dir / "study.png")
    return study


def regenerate(output_dir) -> dict:
    """Every table and figure again from output_dir/study.json."""
    output_dir = Path(output_dir)
    path = output_dir / "study.json"
    if not path.is_file():
        raise FileNotFoundError(f"--report: no study.json in {output_dir}")
    study = json.loads(path.read_text())
    study.pop("summary", None)
    return write_report(output_dir, study)
