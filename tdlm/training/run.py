"""The experiment runner behind `tdlm-train` / scripts/train.py: train or resume a run, or evaluate a checkpoint."""

import importlib.util
import math
import os
import time
from pathlib import Path

import torch
from transformers import set_seed
from transformers.trainer_callback import ProgressCallback

from ..evaluation.multiple_choice import run_downstream
from ..evaluation.plots import metric_points, plot_run_losses
from ..hub import push_to_hub
from ..runs import (
    Experiment,
    best_evaluation,
    default_experiment_id,
    load_checkpoint,
    missing_resume_state,
    read_json,
    resume_point,
)
from ..text_generation import generate_text
from .build import build_data, build_model, build_tokenizer, training_arguments
from .metrics import ConsoleProgressCallback, MetricsJsonlCallback
from .trainer import CheckpointScheduleCallback, TDLMTrainer, make_trainer


def summarize_run(experiment: Experiment, trainer: TDLMTrainer, train_output, runtime: float,
                  start_step: int = 0) -> dict:
    """results/summary.json's contents; tokens/s counts this session's steps (a resumed run started at
    `start_step`) over wall time including evaluations and saves."""
    state = trainer.state
    checkpoints = experiment.checkpoints()
    tokens_per_step = trainer.tokens_per_step or 0
    best, record = best_evaluation(state.log_history, checkpoints) or (None, {})
    return {
        "experiment_id": experiment.experiment_id,
        "training_mode": trainer.model_config.training_mode,
        "best_checkpoint": str(best) if best is not None else None,
        "best_eval_loss": record.get("eval_loss"),
        "eval_tokens": eval_tokens(trainer),
        "best_epoch": record.get("epoch"),
        "final_checkpoint": str(checkpoints[-1]) if checkpoints else None,
        "train_tokens": state.global_step * tokens_per_step,
        "epochs": state.epoch,
        "train_runtime_s": runtime,
        "tokens_per_second": (state.global_step - start_step) * tokens_per_step / runtime if runtime else None,
        "num_parameters": sum(p.numel() for p in trainer.model.parameters()),
        "mixed_precision": "bf16" if trainer.args.bf16 else "fp16" if trainer.args.fp16 else "no",  # what ran
        "global_step": state.global_step,
        "train_loss": train_output.training_loss,
    }


def eval_tokens(trainer: TDLMTrainer) -> int | None:
    """How many tokens the Trainer's eval loss averages over: the blocks its eval dataloaders yield (the last
    partial batch is dropped) times the tokens scored per block (all L; AR without a context token all but the
    first)."""
    if trainer.eval_dataset is None:
        return None
    args = trainer.args
    blocks = len(trainer.get_eval_dataloader()) * args.per_device_eval_batch_size * args.world_size
    block_size = trainer.eval_dataset.block_size
    config = trainer.model_config
    scores_all = config.uses_mask_token or getattr(config, "context_token_id", None) is not None
    return blocks * (block_size if scores_all else block_size - 1)


def loss_label(training_mode: str, loss: float) -> str:
    """What an eval loss is: a (block) diffusion run's is the NELBO, so exp() bounds the perplexity; an AR run's is
    the exact NLL, so exp() is the perplexity."""
    perplexity = math.exp(min(loss, 700))
    if training_mode != "autoregressive":
        return f"NELBO per token, perplexity bound {perplexity:.2f}"
    return f"exact NLL per token, perplexity {perplexity:.2f}"


def format_summary(summary: dict) -> str:
    best = summary["best_eval_loss"]
    lines = [f"Experiment {summary['experiment_id']} ({summary['training_mode']}) finished",
             f"  steps {summary['global_step']}, epochs {summary['epochs']:.2f}, "
             f"time {summary['train_runtime_s']:.1f}s, {summary['tokens_per_second'] or 0:,.0f} tokens/s",
             f"  parameters {summary['num_parameters']:,}, train tokens {summary['train_tokens']:,}"]
    if best is not None:
        lines.append(f"  best eval loss {best:.4f} ({loss_label(summary['training_mode'], best)}) at epoch "
                     f"{summary['best_epoch'] or 0:.2f}: {summary['best_checkpoint']}")
    lines.append(f"  final checkpoint: {summary['final_checkpoint']}")
    return "\n".join(lines)


def _write_loss_curves(experiment: Experiment, eval_steps: int | None) -> None:
    """The run's loss curves PNG; matplotlib is an optional extra (tdlm[eval]): without it the run says so."""
    if importlib.util.find_spec("matplotlib") is None:
        print("no loss curves PNG: matplotlib is not installed (pip install 'tdlm[eval]')", flush=True)
        return
    print(f"  loss curves: {plot_run_losses(experiment)}", flush=True)
    evals = len(metric_points(experiment, "eval", "eval_loss"))
    if evals == 1:
        print(f"  (one eval point: the run evaluates every training.eval_steps={eval_steps} steps and at its end; "
              f"set training.eval_steps below the run's steps for an eval curve)", flush=True)


# greedy (temperature 0) samples of a small, briefly trained model collapse into one repeated token
END_SAMPLE_OPTIONS = {"temperature": 1.0, "top_p": 0.9}


def _print_sample(trainer: TDLMTrainer, config: dict) -> None:
    """One unconditional sample of the trained model, so that a run ends with text one can read."""
    if trainer.args.world_size > 1:  # a sharded (FSDP) model cannot sample on rank 0 alone
        return
    model = trainer.model.eval()
    text = generate_text(model, trainer.processing_class, [""], seed=config["training"]["seed"],
                         **END_SAMPLE_OPTIONS)[0]
    settings = ", ".join(f"{key} {value}" for key, value in END_SAMPLE_OPTIONS.items())
    print(f"  sample ({settings}; more with tdlm-generate --model <checkpoint>):\n{text.strip()}", flush=True)


def _is_first_process() -> bool:
    # before TrainingArguments exists (torchrun / accelerate launch set RANK): only one process may delete folders
    return os.environ.get("RANK", "0") == "0"


def _new_experiment(root: Path, overwrite: bool) -> Experiment:
    """The folder of a new run: an existing run there is kept unless `overwrite` (then it is deleted first)."""
    experiment = Experiment(root)
    if experiment.has_files():
        if not overwrite:
            raise FileExistsError(f"experiment {root} already exists; continue it with --resume {root}, choose a new "
                                  f"--experiment-id, or pass --overwrite to delete it")
        if _is_first_process():
            experiment.remove()
    return experiment


def _check_resume(checkpoint: Path, config: dict, allow_inexact: bool) -> None:
    """A resume continues the checkpoint's own run: the same objective, with all of its training state."""
    saved = read_json(checkpoint / "config.json") if (checkpoint / "config.json").is_file() else {}
    mode = config["model"]["training_mode"]
    if saved.get("training_mode", mode) != mode:
        raise ValueError(f"model.training_mode is {mode!r} but {checkpoint} is a {saved['training_mode']!r} "
                         f"checkpoint")
    missing = missing_resume_state(checkpoint)
    if missing and not allow_inexact:
        raise FileNotFoundError(f"{checkpoint} lacks {', '.join(missing)}: resuming would restart them and differ "
                                f"from the original run; pass --allow-inexact-resume to resume anyway")


def _build_trainer(config: dict, experiment: Experiment, checkpoint: Path | None, callbacks) -> TDLMTrainer:
    set_seed(config["training"]["seed"])
    tokenizer = build_tokenizer(config, checkpoint)
    model = build_model(config, tokenizer)
    train, evaluation, collator = build_data(config, tokenizer, model)
    t = config["training"]
    trainer = make_trainer(
        model, training_arguments(config, experiment), tokenizer.pad_token_id, train_dataset=train,
        eval_dataset=evaluation, data_collator=collator, processing_class=tokenizer,
        callbacks=[CheckpointScheduleCallback(t["save_every_n_steps"], t["save_every_n_epochs"], t["eval_steps"],
                                              evaluation is not None),
                   MetricsJsonlCallback(experiment), *callbacks],
        detailed_metrics_steps=t["detailed_metrics_steps"], attention_analysis_steps=t["attention_analysis_steps"],
        cleanup_checkpoints=t["cleanup_checkpoints"])
    if trainer.pop_callback(ProgressCallback) is not None:  # not in notebooks, nor with disable_tqdm
        trainer.add_callback(ConsoleProgressCallback())
    return trainer


def run_training(config: dict, experiment_id: str | None = None, output_dir: str = "experiments",
                 resume: str | None = None, callbacks=(), overwrite: bool = False,
                 allow_inexact_resume: bool = False) -> dict:
    """Train (or resume) an experiment described by a validated config; returns results/summary.json's dict.
    A new run refuses an `experiment_id` that holds a run unless `overwrite`; a resume refuses a checkpoint without
    optimizer / scheduler / RNG state unless `allow_inexact_resume`."""
    checkpoint = experiment = None
    if resume is not None:
        checkpoint, experiment = resume_point(resume)
        _check_resume(checkpoint, config, allow_inexact_resume)
    if experiment is None:
        experiment = _new_experiment(Path(output_dir) / (experiment_id or default_experiment_id()), overwrite)
    created = not experiment.has_files()
    experiment.create()
    try:
        trainer = _build_trainer(config, experiment, checkpoint, callbacks)
    except BaseException:
        if created and _is_first_process():  # a failed start leaves no empty experiment folder behind
            experiment.remove()
        raise
    start_step = 0
    if trainer.is_world_process_zero():
        experiment.write_config(config)
        experiment.remove_staging_folders()  # saves killed mid-way
        if checkpoint is not None:
            start_step = read_json(checkpoint / "trainer_state.json")["global_step"]
            experiment.truncate_metrics(start_step)
    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    runtime = time.perf_counter() - start
    summary = None
    if trainer.is_world_process_zero():
        summary = summarize_run(experiment, trainer, output, runtime, start_step)
        experiment.write_summary(summary)
        print(format_summary(summary), flush=True)
        print(f"  metrics: {experiment.metrics_path}", flush=True)
        _write_loss_curves(experiment, config["training"]["eval_steps"])
        _print_sample(trainer, config)
        if config["training"]["push_to_hub"]:  # best checkpoint + model card (tdlm.hub), not Trainer's raw folder
            push_to_hub(experiment.root, repo_id=config["training"]["hub_model_id"])
    return summary


def run_evaluation(config: dict | None, resume: str, output_dir: str = "experiments") -> dict:
    """`--eval-only`: the eval-set ELBO (and downstream tasks when enabled) of one checkpoint, written to
    results/eval_<checkpoint>.json and logs/metrics.jsonl."""
    checkpoint, experiment = resume_point(resume)
    if config is None:
        config = experiment.read_config() if experiment is not None else None
        if config is None:
            raise ValueError(f"--eval-only on {checkpoint}: pass --config (no experiment config found)")
    if experiment is None:
        experiment = Experiment(Path(output_dir) / f"eval_{checkpoint.name}")
    experiment.create()
    location = config["training"]["checkpoint_map_location"]
    device = ("cuda" if torch.cuda.is_available() else "cpu") if location == "auto" else location
    model, tokenizer = load_checkpoint(checkpoint, device)
    _, evaluation, collator = build_data(config, tokenizer, model)
    if evaluation is None:
        raise ValueError("--eval-only needs evaluation data: set data.eval_files or data.eval_split")
    args = training_arguments(config, experiment, report_to="none", use_cpu=device == "cpu")
    trainer = make_trainer(model, args, tokenizer.pad_token_id, eval_dataset=evaluation, data_collator=collator,
                           processing_class=tokenizer, callbacks=[MetricsJsonlCallback(experiment)])
    state_file = checkpoint / "trainer_state.json"
    if state_file.is_file():
        saved = read_json(state_file)
        trainer.state.global_step, trainer.state.epoch = saved["global_step"], saved.get("epoch")
    results = {"checkpoint": str(checkpoint), **trainer.evaluate(), "eval_tokens": eval_tokens(trainer)}
    e = config["enhanced_evaluation"]
    if e["include_downstream"]:
        results["downstream"] = run_downstream(model, tokenizer, e["tasks"], limit=e["limit"], mc_num=e["mc_num"])
    if trainer.is_world_process_zero():
        path = experiment.write_result(f"eval_{checkpoint.name}", results)
        print(f"eval loss {results['eval_loss']:.4f} ({loss_label(model.config.training_mode, results['eval_loss'])})"
              f" -> {path}")
    return results
