"""Empirical check of the sampling step schedules (cosine vs linear) on held-out text.

For each step count and schedule, held-out blocks are masked (the second half, or everything) and sampled
greedily with `diffusion_generate`. Two numbers per run:

- recovered: fraction of masked tokens whose sample equals the held-out text;
- path NLL: mean -log p(x_0^i | x_t) of the held-out token at each masked position, under the canvas the
  sampler stood on when it decided that position (the ground truth's NLL along the sampling path);
  lower is better, and it equals the model's one-shot masked NLL when num_steps = 1.

Results go to JSON, a Markdown table and a PNG plot (matplotlib, imported only when plotting).
"""

import json
import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data import load_blocks
from ..runs import (
    Experiment,
    experiment_of,
    experiment_of_config,
    find_experiment,
    is_model_folder,
    load_checkpoint,
    read_json,
)
from ..runs import list_experiments as experiments_under
from ..schedules import STEP_SCHEDULES

DEFAULT_EVAL_FILE = "../shared/data/wikitext-2-raw/wiki.test.raw"
MASK_MODES = ("second_half", "all")


def mask_blocks(blocks: torch.LongTensor, mask_token_id: int, mode: str = "second_half") -> torch.LongTensor:
    """Canvas to infill: the second half of every block masked, or the whole block."""
    if mode not in MASK_MODES:
        raise ValueError(f"mask mode must be one of {MASK_MODES}, got {mode!r}")
    canvas = blocks.clone()
    start = blocks.shape[1] // 2 if mode == "second_half" else 0
    canvas[:, start:] = mask_token_id
    return canvas


@torch.no_grad()
def path_nll(model, canvas, targets, history, commit_step) -> torch.Tensor:
    """Per-row sum of -log p(target) at each generated position, scored on the canvas before the step that
    decided it. `history[s]` is the canvas after step s; `commit_step` [B, L] the deciding step."""
    total = torch.zeros(canvas.shape[0], dtype=torch.float64, device=canvas.device)
    before = canvas
    for step, after in enumerate(history):
        decided = commit_step == step
        if decided.any():
            logits = model(input_ids=before).logits.float()
            log_probs = logits.log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)
            total -= (log_probs.double() * decided).sum(-1)
        before = after
    return total


def validate_schedules(model, blocks, steps=(8, 16, 32, 64), schedules=STEP_SCHEDULES, mask_mode="second_half",
                       batch_size=16, show_progress=True) -> list[dict]:
    """One row per (schedule, num_steps): recovered fraction, path NLL/perplexity, model calls per block."""
    model.eval()
    device = model.device
    mask_id = model.config.mask_token_id
    blocks = blocks.to(device)
    settings = [(schedule, k) for k in steps for schedule in schedules]
    rows = []
    for schedule, num_steps in tqdm(settings, desc="schedule validation", disable=not show_progress):
        correct = nll = masked = calls = 0.0
        for start in range(0, blocks.shape[0], batch_size):
            targets = blocks[start:start + batch_size]
            canvas = mask_blocks(targets, mask_id, mask_mode)
            out = model.diffusion_generate(canvas, num_steps=num_steps, step_schedule=schedule, temperature=0.0,
                                           remasking="low_confidence", confidence_threshold=None, block_length=None,
                                           stop_at_eos=False, output_history=True, return_dict_in_generate=True)
            generated = canvas == mask_id
            correct += float(((out.sequences == targets) & generated).sum())
            nll += float(path_nll(model, canvas, targets, out.history, out.commit_step).sum())
            masked += float(generated.sum())
            calls += out.num_model_calls * targets.shape[0]
        rows.append({"step_schedule": schedule, "num_steps": num_steps, "mask_mode": mask_mode,
                     "num_blocks": int(blocks.shape[0]), "block_length": int(blocks.shape[1]),
                     "masked_tokens": int(masked), "recovered": correct / masked, "path_nll": nll / masked,
                     "path_perplexity": math.exp(min(nll / masked, 700.0)),
                     "model_calls_per_block": calls / blocks.shape[0]})
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| steps | schedule | recovered | path NLL | path PPL | model calls |", "|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['num_steps']} | {r['step_schedule']} | {r['recovered']:.4f} | {r['path_nll']:.4f} | "
                     f"{r['path_perplexity']:.2f} | {r['model_calls_per_block']:.1f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path) -> None:
    import matplotlib  # an optional extra (tdlm[eval])

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for schedule in sorted({r["step_schedule"] for r in rows}):
        mine = sorted((r for r in rows if r["step_schedule"] == schedule), key=lambda r: r["num_steps"])
        steps = [r["num_steps"] for r in mine]
        axes[0].plot(steps, [r["recovered"] for r in mine], marker="o", label=schedule)
        axes[1].plot(steps, [r["path_nll"] for r in mine], marker="o", label=schedule)
    for ax, label in zip(axes, ("fraction of masked tokens recovered", "ground-truth NLL along the sampling path")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sampling steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(title="step schedule")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(rows: list[dict], output_dir, meta: dict) -> dict:
    """schedule_validation.json / .md / .png in `output_dir`; returns their paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: output_dir / f"schedule_validation.{kind}" for kind in ("json", "md", "png")}
    paths["json"].write_text(json.dumps({**meta, "results": rows}, indent=2))
    header = "\n".join(f"- {k}: {v}" for k, v in meta.items())
    paths["md"].write_text(f"# Step schedule validation\n\n{header}\n\n{markdown_table(rows)}\n")
    plot(rows, paths["png"])
    return paths


# ---------------------------------------------------------------------------------------------
# Locating what to validate
# ---------------------------------------------------------------------------------------------
def list_experiments(experiments_dir="experiments") -> list[dict]:
    """Experiments under `experiments_dir` that have a checkpoint: id, best checkpoint, training_mode."""
    found = []
    for run in experiments_under(experiments_dir):
        try:
            checkpoint = run.best_checkpoint()
        except FileNotFoundError:
            continue
        mode = read_json(checkpoint / "config.json").get("training_mode", "diffusion")
        found.append({"experiment_id": run.experiment_id, "checkpoint": str(checkpoint), "training_mode": mode})
    return found


def resolve_target(test, experiments_dir="experiments") -> tuple[Path, Experiment | None]:
    """(checkpoint folder, experiment or None) for a checkpoint folder, an experiment folder or id, or an
    experiment's configs/config.yaml."""
    path = Path(test)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        experiment = experiment_of_config(path)
        if experiment is None:
            raise ValueError(f"{test} is a config without weights; pass an experiment (or its "
                             "configs/config.yaml) or a checkpoint folder. `--list` shows what can be validated.")
        path = experiment.root
    if is_model_folder(path):
        return path, experiment_of(path)
    experiment = find_experiment(test, experiments_dir)
    return experiment.best_checkpoint(), experiment


def held_out_blocks(tokenizer, length: int, num_samples: int, experiment=None, eval_file=None):
    """(`num_samples` blocks of `length` tokens, the file they came from): `eval_file`, else the experiment's
    data.eval_files, else the WikiText-2 test split."""
    if eval_file is None and experiment is not None:
        files = ((experiment.read_raw_config() or {}).get("data") or {}).get("eval_files")
        eval_file = files[0] if isinstance(files, list) else files
    eval_file = eval_file or DEFAULT_EVAL_FILE
    blocks = load_blocks(str(eval_file), tokenizer, length)
    if blocks.shape[0] < num_samples:
        raise ValueError(f"{eval_file} has only {blocks.shape[0]} blocks of {length} tokens; asked for {num_samples}")
    # spread the samples over the file rather than taking its first paragraphs
    index = torch.linspace(0, blocks.shape[0] - 1, num_samples).round().long()
    return blocks[index], str(eval_file)


def run_validation(test, steps=(8, 16, 32, 64), num_samples=64, output_dir=None, mask_mode="second_half",
                   length=None, eval_file=None, batch_size=16, device=None, experiments_dir="experiments") -> dict:
    """Load the checkpoint behind `test`, validate both step schedules, write the report; returns its paths."""
    checkpoint, experiment = resolve_target(test, experiments_dir)
    model, tokenizer = load_checkpoint(checkpoint, device)
    if not model.config.is_diffusion:
        raise ValueError(f"{checkpoint} is an autoregressive checkpoint; step schedules apply to diffusion models")
    length = length or model.config.max_position_embeddings
    blocks, eval_file = held_out_blocks(tokenizer, length, num_samples, experiment, eval_file)
    rows = validate_schedules(model, blocks, steps, mask_mode=mask_mode, batch_size=batch_size)
    if output_dir is None:
        output_dir = experiment.results_dir if experiment is not None else Path(checkpoint) / "schedule_validation"
    meta = {"checkpoint": str(checkpoint), "eval_file": eval_file, "mask_mode": mask_mode,
            "block_length": length, "num_samples": num_samples, "noise_schedule": model.config.noise_schedule,
            "remasking": "low_confidence", "temperature": 0.0}
    paths = write_report(rows, output_dir, meta)
    return {"rows": rows, "paths": {k: str(v) for k, v in paths.items()}}
