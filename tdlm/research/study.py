"""The data-constrained study: AR vs masked diffusion trained for many epochs on a fixed unique-token budget.

For each budget (a fraction of the training blocks) and each mode, one model is trained with the same
backbone, optimizer, schedule and data through `DiffusionTrainer`; every `eval_every` epochs it is scored
on the same held-out blocks:
- `ar`, `ar_regularized`: exact per-token NLL (`evaluation.likelihood.ar_nll`);
- `diffusion`: the NELBO (an upper bound on the NLL) with fixed-seed stratified Monte-Carlo over t and its
  standard error (`evaluation.likelihood.diffusion_nelbo`).
`ar_regularized` adds dropout and weight decay to AR (Gao et al. 2025 argue regularisation closes part of
the gap). Results: study.json (every curve point), study.md (summary table) and study.png. Each arm is a run
folder, runs/<mode>_<budget>pct (config.yaml, logs/metrics.jsonl, tracker logs), trained with the Trainer's progress
bar and logging to the configured trackers (training.report_to), its held-out points included.
"""

import copy
import json
import time
from pathlib import Path

import torch
from transformers import TrainerCallback, set_seed

from ..data import DataCollatorForTDLM, build_datasets
from ..evaluation.likelihood import held_out_loss
from ..runs import Experiment
from ..training import DiffusionTrainer, build_model, build_tokenizer, training_arguments
from ..training.metrics import MetricsJsonlCallback

MODES = ("ar", "diffusion", "ar_regularized")


def parse_budgets(text: str) -> list[float]:
    """"25%,50%,100%" or "0.25,1" -> fractions in (0, 1]."""
    budgets = []
    for part in text.split(","):
        part = part.strip()
        value = float(part[:-1]) / 100 if part.endswith("%") else float(part)
        if not 0 < value <= 1:
            raise ValueError(f"--unique-tokens: {part!r} is not a fraction in (0, 1] (or a percentage)")
        budgets.append(value)
    return budgets


def mode_config(config: dict, mode: str, epochs: int, dropout: float, weight_decay: float) -> dict:
    """The experiment config of one study arm: only the objective (and AR's regularisation) differ."""
    if mode not in MODES:
        raise ValueError(f"--modes: unknown mode {mode!r}; expected some of {MODES}")
    variant = copy.deepcopy(config)
    variant["model"]["training_mode"] = "diffusion" if mode == "diffusion" else "autoregressive"
    if mode == "ar_regularized":
        variant["model"]["hidden_dropout"] = dropout
        variant["model"]["attention_dropout"] = dropout
        variant["training"]["weight_decay"] = weight_decay
    t = variant["training"]
    t.update(epochs=epochs, max_steps=None, save_every_n_steps=None, save_every_n_epochs=None, eval_steps=None,
             detailed_metrics_steps=None, attention_analysis_steps=None)
    return variant


class HeldOutLikelihood(TrainerCallback):
    """Scores the model on held-out blocks every `eval_every` epochs (and after the last epoch) and hands each
    point to `log` (the Trainer's: metrics.jsonl and the configured trackers)."""

    def __init__(self, blocks, eval_every, num_samples, seed, batch_size, log):
        self.blocks, self.eval_every, self.num_samples = blocks, eval_every, num_samples
        self.seed, self.batch_size, self.log, self.points = seed, batch_size, log, []
        self.model = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.model = model

    def on_epoch_end(self, args, state, control, **kwargs):
        epoch = round(state.epoch)
        if epoch % self.eval_every == 0 or epoch >= args.num_train_epochs:
            point = self.score()
            self.points.append({"epoch": epoch, "step": state.global_step, **point})
            self.log({"eval_loss": point["eval_loss"], "eval_standard_error": point["standard_error"]})

    @torch.no_grad()
    def score(self) -> dict:
        model = self.model
        was_training = model.training
        model.eval()
        result = held_out_loss(model, self.blocks, self.num_samples, self.seed, self.batch_size)
        model.train(was_training)
        return {"eval_loss": result["loss"], "standard_error": result["standard_error"],
                "kind": result["kind"]}


def train_arm(config: dict, tokenizer, train_blocks, eval_blocks, eval_every: int, num_samples: int,
              output_dir: Path) -> dict:
    """Train one (mode, budget) arm on `train_blocks` (a ShardedBlocks prefix) and return its curve."""

    set_seed(config["training"]["seed"])
    model = build_model(config, tokenizer)
    experiment = Experiment(output_dir)  # its folders appear as they are written: none is left empty
    experiment.write_config(config)
    # the Trainer's progress bar (with ETA) and its logging to the configured trackers, one run per arm; an arm saves
    # no checkpoint, so the Trainer's output folder is the run folder (no empty checkpoints/)
    args = training_arguments(config, experiment, output_dir=str(experiment.root))
    trainer = DiffusionTrainer(model=model, args=args, train_dataset=train_blocks,
                               data_collator=DataCollatorForTDLM(tokenizer.pad_token_id),
                               callbacks=[MetricsJsonlCallback(experiment)])
    callback = HeldOutLikelihood(eval_blocks, eval_every, num_samples, config["training"]["seed"],
                                 config["training"]["eval_batch_size"] or config["training"]["batch_size"], trainer.log)
    trainer.add_callback(callback)
    start = time.perf_counter()
    trainer.train()
    runtime = time.perf_counter() - start
    steps = trainer.state.global_step
    return {"points": callback.points, "train_runtime_s": runtime, "global_step": steps,
            "tokens_per_second": steps * config["training"]["batch_size"] * train_blocks.block_size / runtime}


def summarize(arms: list[dict]) -> list[dict]:
    """Per (budget, mode): best loss and its epoch, loss at 10x AR's best epoch, crossover epoch vs AR."""
    rows = []
    by_key = {(a["budget"], a["mode"]): a for a in arms}
    for arm in arms:
        points = arm["points"]
        best = min(points, key=lambda p: p["eval_loss"])
        ar = by_key.get((arm["budget"], "ar"))
        row = {"budget": arm["budget"], "unique_tokens": arm["unique_tokens"], "mode": arm["mode"],
               "best_eval_loss": best["eval_loss"], "best_epoch": best["epoch"],
               "final_eval_loss": points[-1]["eval_loss"], "loss_at_10x_ar_best_epoch": None, "crossover_epoch": None}
        if ar is not None:
            ar_best_epoch = min(ar["points"], key=lambda p: p["eval_loss"])["epoch"]
            target = 10 * ar_best_epoch
            at = [p for p in points if p["epoch"] >= target]
            row["loss_at_10x_ar_best_epoch"] = at[0]["eval_loss"] if at else None
            if arm["mode"] != "ar":
                ar_loss = {p["epoch"]: p["eval_loss"] for p in ar["points"]}
                below = [p["epoch"] for p in points if p["epoch"] in ar_loss and p["eval_loss"] < ar_loss[p["epoch"]]]
                # crossover: first epoch from which this arm stays below AR until the end
                common = [p["epoch"] for p in points if p["epoch"] in ar_loss]
                for epoch in below:
                    if all(e in below for e in common if e >= epoch):
                        row["crossover_epoch"] = epoch
                        break
        rows.append(row)
    return rows


def format_markdown(summary: list[dict], settings: dict) -> str:
    def fmt(value):
        return "-" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))

    lines = ["# Data-constrained study", "",
             "Eval loss: AR = exact NLL per token; diffusion = NELBO per token (an upper bound on its NLL).", "",
             "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), "",
             "| unique tokens | mode | best eval loss | best epoch | final eval loss | loss at 10x AR best epoch "
             "| crossover epoch |",
             "|---|---|---|---|---|---|---|"]
    for row in summary:
        lines.append(f"| {row['unique_tokens']:,} | {row['mode']} | {fmt(row['best_eval_loss'])} | "
                     f"{row['best_epoch']} | "
                     f"{fmt(row['final_eval_loss'])} | {fmt(row['loss_at_10x_ar_best_epoch'])} | "
                     f"{fmt(row['crossover_epoch'])} |")
    return "\n".join(lines) + "\n"


def plot_curves(arms: list[dict], path: Path) -> None:
    import matplotlib  # an optional extra (tdlm[eval])

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted({a["budget"] for a in arms})
    figure, axes = plt.subplots(1, len(budgets), figsize=(5 * len(budgets), 4), squeeze=False)
    for axis, budget in zip(axes[0], budgets):
        for arm in (a for a in arms if a["budget"] == budget):
            epochs = [p["epoch"] for p in arm["points"]]
            losses = [p["eval_loss"] for p in arm["points"]]
            errors = [p["standard_error"] for p in arm["points"]]
            axis.errorbar(epochs, losses, yerr=errors, label=arm["mode"], marker="o", markersize=2, capsize=2)
        axis.set_title(f"{arm['unique_tokens']:,} unique tokens ({budget:.0%})")
        axis.set_xlabel("epoch")
        axis.set_ylabel("eval loss (nats/token; diffusion: NELBO)")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run_study(config: dict, epochs: int, budgets: list[float], eval_every: int, modes: list[str],
              output_dir: str | Path, num_samples: int = 8, max_eval_blocks: int | None = 64,
              ar_dropout: float = 0.1, ar_weight_decay: float = 0.5) -> dict:
    """Run every (budget, mode) arm; write study.json, study.md and study.png to `output_dir`."""

    if eval_every < 1 or epochs < 1:
        raise ValueError(f"--epochs ({epochs}) and --eval-every ({eval_every}) must be >= 1")
    for mode in modes:
        mode_config(config, mode, epochs, ar_dropout, ar_weight_decay)  # validates the mode names early
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(config)
    vocab = build_model(config, tokenizer).config.vocab_size
    train, evaluation = build_datasets(config["data"], tokenizer, vocab, max_eval_blocks)
    if evaluation is None:
        raise ValueError("the study needs held-out data: set data.eval_files, data.eval_split or data.eval_fraction")
    eval_blocks = evaluation.tensor()  # small, and scored every few epochs
    settings = {"epochs": epochs, "eval_every": eval_every, "nelbo_samples": num_samples,
                "eval_tokens": evaluation.num_tokens, "block_size": train.block_size,
                "batch_size": config["training"]["batch_size"], "learning_rate": config["training"]["learning_rate"],
                "ar_regularized": f"dropout {ar_dropout}, weight decay {ar_weight_decay}",
                "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    arms = []
    for budget in budgets:
        blocks = train.prefix(max(1, round(budget * len(train))))  # a budget is a prefix of the corpus
        for mode in modes:
            variant = mode_config(config, mode, epochs, ar_dropout, ar_weight_decay)
            print(f"[study] {mode} on {blocks.num_tokens:,} unique tokens for {epochs} epochs", flush=True)
            curve = train_arm(variant, tokenizer, blocks, eval_blocks, eval_every, num_samples,
                              output_dir / "runs" / f"{mode}_{int(round(budget * 100))}pct")
            arms.append({"mode": mode, "budget": budget, "unique_tokens": blocks.num_tokens, **curve})
            # rewritten after every arm: a run stopped early (a GPU time limit) keeps the arms it finished
            summary = summarize(arms)
            result = {"settings": settings, "arms": arms, "summary": summary}
            (output_dir / "study.json").write_text(json.dumps(result, indent=2))
            (output_dir / "study.md").write_text(format_markdown(summary, settings))
            plot_curves(arms, output_dir / "study.png")
    return result


