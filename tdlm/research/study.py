"""The data-constrained study: AR vs masked diffusion trained for many epochs on a fixed unique-token budget.

For each budget (a prefix of the prepared training shards, given in tokens or as a fraction) and each arm, one model
is trained with the same backbone, optimizer, schedule and tokens through `DiffusionTrainer`; every `eval_every`
epochs it is scored on the same held-out blocks of L tokens:
- `ar`, `ar_regularized`: exact NLL of all L tokens of each block. AR sees a context token (BOS, else EOS) in front
  of every block, in training and in scoring, so it predicts the same L tokens the NELBO pays for (scoring only
  L - 1 tokens given the first would bias the comparison against diffusion by about (H(x_1) - h) / L nats/token);
- `diffusion`, `diffusion_regularized`: the NELBO per token (an upper bound on the NLL) with fixed-seed stratified
  Monte-Carlo over t and its standard error (`evaluation.likelihood.diffusion_nelbo`).
The `_regularized` arms add dropout (0.1, Prabhudesai et al. 2025) and nothing else. Each point records the training
FLOPs so far (6 N D over the positions processed). Each arm keeps its best checkpoint; after all arms, each best
checkpoint's samples are scored by the best AR model of the largest budget (`sample_quality`). study.json, study.md
and the figures (`study_report`) are rewritten after every arm and every sample-quality row, so a cut run keeps
what finished. Each arm is a run folder, runs/<arm>_<budget> (config.yaml, logs/metrics.jsonl, tracker logs, best/),
trained with the Trainer's progress bar and logging to the configured trackers (training.report_to), its held-out
points included.
"""

import copy
import re
import time
from pathlib import Path

import torch
from transformers import TrainerCallback, set_seed

from ..data import DataCollatorForTDLM, build_datasets
from ..evaluation.likelihood import ar_nll, diffusion_nelbo, prefix_token_id
from ..runs import Experiment, load_model
from ..training import DiffusionTrainer, build_model, build_tokenizer, training_arguments
from ..training.metrics import MetricsJsonlCallback
from .sample_quality import sample_quality, with_context
from .study_report import AR_ARMS, tokens_label, write_results

ARMS = ("ar", "diffusion", "ar_regularized", "diffusion_regularized")
SUFFIXES = {"k": 1e3, "m": 1e6, "b": 1e9}


def parse_budgets(text: str, available_tokens: int) -> list[int]:
    """"0.25M,1M,4M" (tokens; k/M/B suffixes or plain integers > 1), "25%" or "0.25" (fractions of the training
    split) -> unique-token budgets, each at most `available_tokens`."""
    budgets = []
    for part in (p.strip() for p in text.split(",")):
        match = re.fullmatch(r"([0-9.]+)\s*([kKmMbB%]?)", part)
        if not match:
            raise ValueError(f"--unique-tokens: {part!r} is not a token count (0.25M, 250k) or a fraction (25%, 0.25)")
        value, unit = float(match[1]), match[2].lower()
        if unit == "%" or (not unit and value <= 1):
            fraction = value / 100 if unit == "%" else value
            if not 0 < fraction <= 1:
                raise ValueError(f"--unique-tokens: {part!r} is not a fraction in (0, 1]")
            tokens = round(fraction * available_tokens)
        else:
            tokens = round(value * SUFFIXES.get(unit, 1))
        if not 0 < tokens <= available_tokens:
            raise ValueError(f"--unique-tokens: {part!r} = {tokens:,} tokens, but the training split has "
                             f"{available_tokens:,}")
        budgets.append(tokens)
    return budgets


def arm_config(config: dict, arm: str, epochs: int, dropout: float) -> dict:
    """The experiment config of one study arm: only the objective (and the regularised arms' dropout) differ."""
    if arm not in ARMS:
        raise ValueError(f"--arms: unknown arm {arm!r}; expected some of {ARMS}")
    variant = copy.deepcopy(config)
    model = variant["model"]
    model["training_mode"] = "autoregressive" if arm in AR_ARMS else "diffusion"
    # one position more than a block for every arm (AR's context token): identical backbones (RoPE adds no weights)
    model["max_position_embeddings"] = variant["data"]["block_size"] + 1
    if arm.endswith("_regularized"):
        model["hidden_dropout"] = model["attention_dropout"] = dropout
    variant["training"].update(epochs=epochs, max_steps=None, save_every_n_steps=None, save_every_n_epochs=None,
                               eval_steps=None, detailed_metrics_steps=None, attention_analysis_steps=None)
    return variant


class WithContextToken(torch.utils.data.Dataset):
    """Training blocks with `token_id` in front, for AR arms: position 0 learns to predict a block's first token
    from the context token alone, as it must when scored."""

    def __init__(self, blocks, token_id: int):
        self.blocks, self.token_id = blocks, token_id

    def __len__(self):
        return len(self.blocks)

    def __getitem__(self, index):
        ids = self.blocks[index]["input_ids"]
        return {"input_ids": torch.cat([ids.new_tensor([self.token_id]), ids])}


def score(model, blocks: torch.LongTensor, context_id: int, num_samples: int, seed: int, batch_size: int) -> dict:
    """Held-out loss per token over all L tokens of each block, and its standard error (0 for the exact AR NLL)."""
    if model.config.is_diffusion:
        result = diffusion_nelbo(model, blocks, num_samples, seed, batch_size=batch_size)
        return {"eval_loss": result["nelbo"], "standard_error": result["standard_error"]}
    result = ar_nll(model, with_context(blocks, context_id), batch_size)
    return {"eval_loss": result["nll"], "standard_error": 0.0}


class HeldOutLikelihood(TrainerCallback):
    """Scores the model on held-out blocks every `eval_every` epochs (and after the last epoch), hands each point to
    `log` (the Trainer's: metrics.jsonl and the configured trackers) and keeps the best weights seen."""

    def __init__(self, blocks, context_id, eval_every, num_samples, seed, batch_size, flops_per_step, log):
        self.blocks, self.context_id, self.eval_every, self.num_samples = blocks, context_id, eval_every, num_samples
        self.seed, self.batch_size, self.flops_per_step, self.log = seed, batch_size, flops_per_step, log
        self.points, self.model, self.best_state = [], None, None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.model = model

    def on_epoch_end(self, args, state, control, **kwargs):
        epoch = round(state.epoch)
        if epoch % self.eval_every and epoch < args.num_train_epochs:
            return
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            point = score(self.model, self.blocks, self.context_id, self.num_samples, self.seed, self.batch_size)
        self.model.train(was_training)
        if not self.points or point["eval_loss"] < min(p["eval_loss"] for p in self.points):
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.points.append({"epoch": epoch, "step": state.global_step,
                            "train_flops": state.global_step * self.flops_per_step, **point})
        self.log({"eval_loss": point["eval_loss"], "eval_standard_error": point["standard_error"]})


def train_arm(config: dict, tokenizer, train_blocks, eval_blocks, eval_every: int, num_samples: int,
              output_dir: Path) -> dict:
    """Train one (arm, budget) on `train_blocks` (a ShardedBlocks prefix); return its curve. The best checkpoint
    is saved to output_dir/best for the sample-quality stage."""
    set_seed(config["training"]["seed"])
    model = build_model(config, tokenizer)
    context_id = prefix_token_id(tokenizer)
    dataset = train_blocks if model.config.is_diffusion else WithContextToken(train_blocks, context_id)
    experiment = Experiment(output_dir)  # its folders appear as they are written: none is left empty
    experiment.write_config(config)
    # the Trainer's progress bar (with ETA) and its logging to the configured trackers, one run per arm; the
    # Trainer's own checkpointing is off, so its output folder is the run folder (no empty checkpoints/)
    args = training_arguments(config, experiment, output_dir=str(experiment.root))
    trainer = DiffusionTrainer(model=model, args=args, train_dataset=dataset,
                               data_collator=DataCollatorForTDLM(tokenizer.pad_token_id),
                               callbacks=[MetricsJsonlCallback(experiment)])
    t = config["training"]
    positions = t["batch_size"] * t["gradient_accumulation_steps"] * len(dataset[0]["input_ids"])
    callback = HeldOutLikelihood(eval_blocks, context_id, eval_every, num_samples, t["seed"],
                                 t["eval_batch_size"] or t["batch_size"], 6 * model.num_parameters() * positions,
                                 trainer.log)
    trainer.add_callback(callback)
    start = time.perf_counter()
    trainer.train()
    runtime = time.perf_counter() - start
    model.load_state_dict(callback.best_state)
    model.save_pretrained(output_dir / "best")
    steps = trainer.state.global_step
    return {"points": callback.points, "train_runtime_s": runtime, "global_step": steps,
            "num_parameters": model.num_parameters(), "tokens_per_second": steps * positions / runtime}


def run_study(config: dict, epochs: int, budgets: str, eval_every: int, arms: list[str], output_dir: str | Path,
              num_samples: int = 8, max_eval_blocks: int | None = None, dropout: float = 0.1,
              gen: dict | None = None) -> dict:
    """Run every (budget, arm); write study.json, study.md and the figures to `output_dir` after each arm.

    `gen` = {"num_samples", "length", "steps"} turns on the sample-quality stage (None or num_samples 0: off)."""
    if eval_every < 1 or epochs < 1:
        raise ValueError(f"--epochs ({epochs}) and --eval-every ({eval_every}) must be >= 1")
    for arm in arms:
        arm_config(config, arm, epochs, dropout)  # validates the arm names before any training
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(config)
    vocab = build_model(arm_config(config, arms[0], epochs, dropout), tokenizer).config.vocab_size
    train, evaluation = build_datasets(config["data"], tokenizer, vocab, max_eval_blocks)
    if evaluation is None:
        raise ValueError("the study needs held-out data: an eval split in data.prepared, data.eval_files, "
                         "data.eval_split or data.eval_fraction")
    token_budgets = parse_budgets(budgets, train.num_tokens)
    eval_blocks = evaluation.tensor()  # scored every few epochs: read once
    t = config["training"]
    settings = {"epochs": epochs, "eval_every": eval_every, "nelbo_samples": num_samples,
                "eval_tokens": evaluation.num_tokens, "block_size": train.block_size, "batch_size": t["batch_size"],
                "learning_rate": t["learning_rate"], "weight_decay": t["weight_decay"],
                "regularized": f"dropout {dropout}",
                "ar_context": "BOS/EOS token before each block: all L tokens scored",
                "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    results, quality = [], []
    for tokens in token_budgets:
        blocks = train.prefix(max(1, tokens // train.block_size))  # a budget is a prefix of the corpus
        for arm in arms:
            run = f"{arm}_{tokens_label(blocks.num_tokens)}"
            print(f"[study] {arm} on {blocks.num_tokens:,} unique tokens for {epochs} epochs", flush=True)
            curve = train_arm(arm_config(config, arm, epochs, dropout), tokenizer, blocks, eval_blocks, eval_every,
                              num_samples, output_dir / "runs" / run)
            results.append({"arm": arm, "run": run, "unique_tokens": blocks.num_tokens, **curve})
            result = write_results(output_dir, settings, results, quality)
    largest = max(a["unique_tokens"] for a in results)
    ar_arms = [a for a in results if a["arm"] in AR_ARMS and a["unique_tokens"] == largest]
    if gen and gen["num_samples"] and ar_arms:
        best = min(ar_arms, key=lambda a: min(p["eval_loss"] for p in a["points"]))
        scorer = load_model(str(output_dir / "runs" / best["run"] / "best"))
        settings["sampling"] = f"{gen['num_samples']} samples x {gen['length']} tokens, temperature 1"
        for arm in results:  # every arm's best checkpoint, scored by the best AR model of the largest budget
            model = load_model(str(output_dir / "runs" / arm["run"] / "best"))
            rows = sample_quality(model, scorer, tokenizer, gen["num_samples"], gen["length"], gen["steps"], t["seed"])
            quality += [{"unique_tokens": arm["unique_tokens"], "arm": arm["arm"], **row} for row in rows]
            result = write_results(output_dir, settings, results, quality, scorer=best["run"])
    return result
