"""Side-by-side comparison of a diffusion (masked or block) and an AR experiment on the same eval data and tasks.

Each experiment's best checkpoint is evaluated with its own tokenizer on the diffusion experiment's eval data
(`data` section of configs/config.yaml, or an explicit file): exact NLL for AR, NELBO (an upper bound) with
its standard error for diffusion. When the two tokenizers differ, per-token numbers are not comparable and
the table says so.
"""

import math
from pathlib import Path

from ..runs import find_experiment, load_checkpoint, write_json
from .plots import plot_eval_curves
from .runner import evaluate_checkpoint
from .sampling_speed import sampling_speed


def evaluate_experiment(experiment, experiments_dir="experiments", data_config=None, eval_file=None, tasks=(),
                        limit=None, max_blocks=None, mc_num=32, nelbo_samples=16, seed=0, block_size=None,
                        sampling_tokens=64, device=None) -> dict:
    run = find_experiment(experiment, experiments_dir)
    checkpoint = run.best_checkpoint()
    model, tokenizer = load_checkpoint(checkpoint, device)
    summary = run.read_summary()
    result = evaluate_checkpoint(checkpoint, tasks, limit, mc_num, seed, likelihood=True, eval_file=eval_file,
                                 data_config=data_config, num_samples=nelbo_samples, block_size=block_size,
                                 max_blocks=max_blocks, model=model, tokenizer=tokenizer)
    length = min(sampling_tokens, model.config.max_position_embeddings)
    result.update({"experiment": run.experiment_id, "experiment_dir": str(run.root),
                   "train_tokens": summary.get("train_tokens"), "epochs": summary.get("epochs"),
                   "best_eval_loss_in_training": summary.get("best_eval_loss"),
                   "sampling": sampling_speed(model, batch_size=1, length=length, repeats=1, seed=seed),
                   "tokenizer_vocab": tokenizer.get_vocab()})
    return result


ROLES = {"diffusion": ("diffusion", "block_diffusion"), "autoregressive": ("autoregressive",)}  # training modes


def compare_experiments(dd, ar, experiments_dir="experiments", eval_file=None, tasks=(), limit=None,
                        max_batches=None, batch_size=16, mc_num=32, nelbo_samples=16, seed=0,
                        sampling_tokens=64, device=None) -> dict:
    data_config = (find_experiment(dd, experiments_dir).read_raw_config() or {}).get("data") or {}
    max_blocks = max_batches * batch_size if max_batches else None
    runs = {}
    for role, experiment in (("diffusion", dd), ("autoregressive", ar)):
        runs[role] = evaluate_experiment(experiment, experiments_dir, data_config, eval_file, tasks, limit, max_blocks,
                                         mc_num, nelbo_samples, seed, data_config.get("block_size"), sampling_tokens,
                                         device)
        if runs[role]["training_mode"] not in ROLES[role]:
            raise ValueError(f"--{'dd' if role == 'diffusion' else 'ar'} {experiment}: best checkpoint has "
                             f"training_mode={runs[role]['training_mode']!r}, expected one of {ROLES[role]}")
    same_tokenizer = runs["diffusion"].pop("tokenizer_vocab") == runs["autoregressive"].pop("tokenizer_vocab")
    return {"diffusion": runs["diffusion"], "autoregressive": runs["autoregressive"],
            "same_tokenizer": same_tokenizer, "eval_data": eval_file or data_config.get("eval_files")
            or data_config.get("hub_dataset"), "settings": {"seed": seed, "mc_num": mc_num,
                                                            "nelbo_samples": nelbo_samples, "limit": limit,
                                                            "max_blocks": max_blocks}}


def _fmt(value) -> str:
    """The one number format of the table: integers with thousands separators, floats to 4 significant digits
    (never in exponent notation), None as "-"."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0 or not math.isfinite(value):
            return str(value)
        decimals = max(0, 3 - math.floor(math.log10(abs(value))))
        return f"{value:,.{decimals}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def comparison_rows(comparison: dict) -> list[tuple[str, str, str]]:
    """(metric, diffusion, AR) rows of the side-by-side table."""
    dd, ar = comparison["diffusion"], comparison["autoregressive"]
    dl, al = dd["likelihood"], ar["likelihood"]
    rows = [("experiment", dd["experiment"], ar["experiment"]),
            ("checkpoint", Path(dd["checkpoint"]).name, Path(ar["checkpoint"]).name),
            ("eval NLL per token (nats)", f"<= {_fmt(dl['nelbo'])} +- {_fmt(dl['standard_error'])} (NELBO)",
             f"{_fmt(al['nll'])} (exact)"),
            ("perplexity", f"<= {_fmt(dl['perplexity_upper_bound'])}", _fmt(al["perplexity"])),
            ("eval tokens", _fmt(dl["num_tokens"]), _fmt(al["num_tokens"]))]
    tasks = sorted(set(dd.get("downstream", {})) | set(ar.get("downstream", {})))
    for task in tasks:
        for metric in ("acc", "acc_norm", "perplexity"):
            a, b = dd.get("downstream", {}).get(task, {}), ar.get("downstream", {}).get(task, {})
            if metric in a or metric in b:
                rows.append((f"{task} {metric}", _fmt(a.get(metric)), _fmt(b.get(metric))))
    rows += [("parameters", _fmt(dd["num_parameters"]), _fmt(ar["num_parameters"])),
             ("training tokens", _fmt(dd["train_tokens"]), _fmt(ar["train_tokens"])),
             ("epochs", _fmt(dd["epochs"]), _fmt(ar["epochs"])),
             ("sampling tokens/s (batch 1)", _fmt(dd["sampling"]["tokens_per_second"]),
              _fmt(ar["sampling"]["tokens_per_second"])),
             ("sampling model calls", _fmt(dd["sampling"]["model_calls"]), _fmt(ar["sampling"]["model_calls"]))]
    return rows


def format_table(comparison: dict, markdown: bool = False) -> str:
    rows = [("metric", "diffusion", "autoregressive")] + comparison_rows(comparison)
    notes = [f"eval data: {comparison['eval_data']}"]
    if not comparison["same_tokenizer"]:
        notes.append("the two checkpoints use different tokenizers: per-token NLL/perplexity are not comparable")
    notes.append("diffusion NLL is the Monte-Carlo NELBO, an upper bound on the NLL in expectation (+- standard error)")
    if markdown:
        lines = ["| " + " | ".join(rows[0]) + " |", "|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n" + "\n".join(f"note: {n}" for n in notes)


def save_comparison(comparison: dict, output_dir, name: str) -> dict:
    output_dir = Path(output_dir)
    json_path = write_json(comparison, output_dir / f"{name}.json")
    md_path = output_dir / f"{name}.md"
    md_path.write_text(f"# {comparison['diffusion']['experiment']} (diffusion) vs "
                       f"{comparison['autoregressive']['experiment']} (AR)\n\n" + format_table(comparison, True))
    png_path = plot_eval_curves({"diffusion": comparison["diffusion"]["experiment_dir"],
                                 "autoregressive": comparison["autoregressive"]["experiment_dir"]},
                                output_dir / f"{name}_eval_loss.png")
    return {"json": json_path, "markdown": md_path, "png": png_path}
