"""`DiffusionTrainer(transformers.Trainer)` and the experiment runner behind `scripts/train.py`.

Data flow of one optimizer step (diffusion mode):

    packed blocks --collator--> input_ids, attention_mask, labels (x_0 at real tokens)
        Trainer.get_batch_samples: num_items_in_batch = real tokens of the whole accumulated (and, across
            processes, global) batch
        compute_loss: x_t, labels, ELBO weights = schedules.diffusion_targets(...)  (generator seeded from
            (seed, global_step): exact on resume and the same for any split of the global batch)
            model(x_t, labels, loss_weights, num_items_in_batch).loss = sum w*CE / num_items_in_batch
        summing micro-batches gives the large-batch loss, so `loss_is_scaled_for_ga` holds (Trainer does not
        divide by the accumulation steps again)

AR mode runs the causal model on the clean input with the same data, optimizer, schedule and logging.
Evaluation loss is the ELBO over the full mask-ratio range with stratified t and a fixed seed per eval
batch, so numbers are comparable across checkpoints.
"""

import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from .experiment import Experiment, default_experiment_id, list_checkpoints, resolve_checkpoint, save_config
from .metrics import (MetricsJsonlCallback, attention_metrics, corruption_levels, level_gradient_norms,
                      level_statistics, prediction_metrics, summarize_level_statistics, token_frequency_kl,
                      truncate_metrics)
from .schedules import diffusion_targets, get_noise_schedule

STAGING_PREFIX = ".tmp-"


def derive_seed(seed: int, kind: str, index: int) -> int:
    """A 63-bit seed from (seed, kind, index): the corruption RNG is a function of the step, not of history."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{kind}/{index}".encode()).digest()[:8], "little") >> 1


class DiffusionTrainer(Trainer):
    """Trainer for both TDLM heads. Diffusion: corruption + weighted ELBO in `compute_loss`; AR: next-token loss.

    Extra keyword arguments: `detailed_metrics_steps` and `attention_analysis_steps` (tier 2/3 research
    metrics; None = off), `cleanup_checkpoints` (keep only the best and the latest checkpoint).
    """

    # compute_loss divides by num_items_in_batch of the whole accumulated batch when the Trainer gives it,
    # which is the Trainer's default rule for models that accept loss kwargs; said explicitly here.
    loss_is_scaled_for_ga = None

    def __init__(self, *args, detailed_metrics_steps=None, attention_analysis_steps=None,
                 cleanup_checkpoints=False, **kwargs):
        super().__init__(*args, **kwargs)
        config = self.model_config = self.accelerator.unwrap_model(self.model).config
        self.is_diffusion = config.training_mode == "diffusion"
        self.schedule = get_noise_schedule(config.noise_schedule) if self.is_diffusion else None
        self.detailed_metrics_steps = detailed_metrics_steps
        self.attention_analysis_steps = attention_analysis_steps
        self.cleanup_checkpoints = cleanup_checkpoints
        self._micro_step = (-1, 0)  # (global_step, micro-batches seen in it)
        self._eval_batch = 0
        self._level_stats = None  # tier-1 sums for the current logging step (device tensor)
        self._pending_metrics = {}  # tier 2/3 numbers waiting for the next log
        self._finite = None  # device bool: every training loss so far was finite
        self._last_train_log = None  # (time, global_step)
        self._tokens_per_step = None
        self._saved_steps = set()

    # ---- counting the targets of a batch ------------------------------------------------------
    def _num_targets(self, batch) -> torch.Tensor:
        """Real tokens (diffusion: every real token can be masked) or next-token targets (AR); the collator's
        labels are the input ids at real tokens and -100 at padding."""
        labels = batch["labels"]
        return (labels if self.is_diffusion else labels[:, 1:]).ne(-100).sum()

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples = []
        for _ in range(num_batches):
            try:
                batch_samples.append(next(epoch_iterator))
            except StopIteration:
                break
        if not batch_samples:
            return batch_samples, None
        num_items = sum(self._num_targets(batch).to(device) for batch in batch_samples)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            num_items = self.accelerator.gather(num_items.reshape(1)).sum()
        return batch_samples, num_items

    # ---- corruption ----------------------------------------------------------------------------
    def _corrupt(self, inputs: dict, training: bool) -> dict:
        """Diffusion targets for this micro-batch, drawn as rows of the whole global batch of the step.

        The generator is seeded from (seed, global_step) in training and (seed, global eval batch index) in
        evaluation; the draw covers all gradient-accumulation micro-batches of all processes and this
        micro-batch takes its own rows, so 1 process x 8 rows, 2 processes x 4 rows and 4 rows x 2
        accumulation steps corrupt the same rows identically (same t, same masks)."""
        input_ids, attention_mask = inputs["input_ids"], inputs.get("attention_mask")
        config = self.model_config
        world, rank = self.args.world_size, self.args.process_index
        if training:
            step, micro = self._micro_step
            if step != self.state.global_step:
                step, micro = self.state.global_step, 0
            self._micro_step = (step, micro + 1)
            slot, num_slots = micro * world + rank, self.args.gradient_accumulation_steps * world
            seed = derive_seed(self.args.seed, "train", step)
            ratio_range = (config.min_mask_ratio, config.max_mask_ratio)
            antithetic = config.antithetic_sampling
        else:  # the ELBO: full mask-ratio range, stratified t, a fixed seed per global eval batch
            slot, num_slots = 0, 1
            seed = derive_seed(self.args.seed, "eval", self._eval_batch * world + rank)
            self._eval_batch += 1
            ratio_range, antithetic = (0.0, 1.0), True
        rows = input_ids.shape[0]
        if num_slots > 1:
            full_ids = input_ids.new_zeros((rows * num_slots, input_ids.shape[1]))
            full_ids[slot * rows:(slot + 1) * rows] = input_ids
            full_mask = None  # rows of other slots are dropped below, masked or not
            if attention_mask is not None:
                full_mask = attention_mask.new_zeros(full_ids.shape)
                full_mask[slot * rows:(slot + 1) * rows] = attention_mask
        else:
            full_ids, full_mask = input_ids, attention_mask
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)
        targets = diffusion_targets(full_ids, full_mask, self.schedule, config.mask_token_id,
                                    single_ratio_per_sequence=config.single_ratio_per_sequence,
                                    min_mask_ratio=ratio_range[0], max_mask_ratio=ratio_range[1],
                                    time_epsilon=config.time_epsilon, antithetic=antithetic, generator=generator)
        if num_slots > 1:
            own = slice(slot * rows, (slot + 1) * rows)
            targets = {k: v[own] if torch.is_tensor(v) and v.dim() > 0 else v for k, v in targets.items()}
        return targets

    def model_inputs(self, inputs: dict, training: bool) -> tuple[dict, dict]:
        """(kwargs for the model, extras for metrics)."""
        if not self.is_diffusion:
            return ({"input_ids": inputs["input_ids"], "attention_mask": inputs.get("attention_mask"),
                     "labels": inputs["labels"]}, {})
        targets = self._corrupt(inputs, training)
        model_inputs = {"input_ids": targets["input_ids"], "attention_mask": inputs.get("attention_mask"),
                        "labels": targets["labels"], "loss_weights": targets["loss_weights"]}
        return model_inputs, {"t": targets["t"], "masked": targets["masked"]}

    # ---- loss ----------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        training = model.training
        global_items = num_items_in_batch is not None
        if num_items_in_batch is None:
            num_items_in_batch = self._num_targets(inputs)
        model_inputs, extras = self.model_inputs(inputs, training)
        outputs = model(**model_inputs, num_items_in_batch=num_items_in_batch)
        loss = outputs.loss
        if training and global_items and self.args.average_tokens_across_devices and self.args.world_size > 1:
            loss = loss * self.args.world_size  # DDP averages gradients over processes; the count was global
        if training:
            self._research_metrics(model, model_inputs, extras, outputs, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        finite = torch.isfinite(loss)  # stays on the device; read at logging and saving steps
        self._finite = finite if self._finite is None else self._finite & finite
        return loss

    def _check_finite(self):
        if self._finite is not None and not bool(self._finite):
            checkpoints = list_checkpoints(self.args.output_dir)
            last = checkpoints[-1] if checkpoints else "none saved yet"
            raise FloatingPointError(
                f"non-finite training loss (NaN/inf) by step {self.state.global_step}; training stopped without "
                f"saving. Last good checkpoint: {last}. Try a lower training.learning_rate, more warmup, "
                f"training.max_grad_norm, or mixed_precision: bf16 instead of fp16.")

    # ---- research metrics ----------------------------------------------------------------------
    def _is_due(self, every, step) -> bool:
        return bool(every) and step % every == 0

    def _research_metrics(self, model, model_inputs, extras, outputs, num_items):
        step = self.state.global_step + 1  # the step this micro-batch belongs to
        if self._tokens_per_step is None:
            self._tokens_per_step = (model_inputs["input_ids"].numel() * self.args.gradient_accumulation_steps
                                     * self.args.world_size)
            self._last_train_log = (time.perf_counter(), self.state.global_step)
        first_micro = self._micro_step[1] <= 1 if self.is_diffusion else True
        labels = model_inputs["labels"]
        if self._is_due(self.args.logging_steps, step) or (step == 1 and self.args.logging_first_step):
            if self.is_diffusion:
                supervised = extras["masked"]
                ratio = self.schedule.mask_ratio(extras["t"].double()).expand(supervised.shape)[supervised]
                levels = corruption_levels(ratio)
                weights = model_inputs["loss_weights"][supervised]
                targets = labels[supervised]
            else:
                shifted = labels[:, 1:]
                targets, levels, weights = shifted[shifted != -100], None, None
            stats = level_statistics(outputs.token_losses, outputs.token_predictions, targets, levels, weights)
            self._level_stats = stats if self._level_stats is None else self._level_stats + stats
        tier2 = self._is_due(self.detailed_metrics_steps, step) and first_micro
        tier3 = self._is_due(self.attention_analysis_steps, step) and first_micro
        if tier2 or tier3:
            self._pending_metrics.update(self._analysis_metrics(model_inputs, extras, num_items, tier2, tier3))

    def _analysis_metrics(self, model_inputs, extras, num_items, tier2, tier3) -> dict:
        """Tier 2/3: one extra forward with attention maps and full logits (no grad), and per-level gradients."""
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        metrics = {}
        labels = model_inputs["labels"]
        supervised = labels != -100
        if not self.is_diffusion:
            supervised = torch.nn.functional.pad(labels[:, 1:] != -100, (0, 1), value=False)
        with torch.no_grad(), self.compute_loss_context_manager():
            out = model(input_ids=model_inputs["input_ids"], attention_mask=model_inputs["attention_mask"],
                        output_attentions=True)
        logits = out.logits[supervised]
        if tier2:
            metrics.update(attention_metrics(out.attentions, model_inputs["attention_mask"]))
            metrics.update(prediction_metrics(logits))
        if tier3:
            targets = labels[supervised] if self.is_diffusion else labels[:, 1:][labels[:, 1:] != -100]
            metrics["token_frequency_kl"] = token_frequency_kl(logits, targets)
            levels = None
            if self.is_diffusion:
                levels = corruption_levels(self.schedule.mask_ratio(extras["t"].double()).expand(labels.shape))
            with self.compute_loss_context_manager():
                metrics.update(level_gradient_norms(model, model_inputs, levels, num_items))
        model.train(was_training)
        return metrics

    # ---- logging -------------------------------------------------------------------------------
    def log(self, logs, start_time=None):
        if "loss" in logs:
            if not math.isfinite(logs["loss"]):
                self._finite = torch.tensor(False)
            self._check_finite()
            if self._level_stats is not None:
                stats = self._level_stats
                if self.args.world_size > 1:
                    stats = self.accelerator.reduce(stats, reduction="sum")
                logs.update(summarize_level_statistics(stats.cpu(), by_level=self.is_diffusion))
                self._level_stats = None
            logs.update(self._pending_metrics)
            self._pending_metrics = {}
            now, step = time.perf_counter(), self.state.global_step
            if self._last_train_log is not None and self._tokens_per_step and step > self._last_train_log[1]:
                elapsed = now - self._last_train_log[0]
                logs["tokens_per_second"] = (step - self._last_train_log[1]) * self._tokens_per_step / elapsed
            self._last_train_log = (now, step)
        if "eval_loss" in logs:
            logs["eval_perplexity"] = math.exp(min(logs["eval_loss"], 700.0))
        super().log(logs, start_time)

    # ---- evaluation ----------------------------------------------------------------------------
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        self._eval_batch = 0
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        loss = metrics.get(f"{metric_key_prefix}_loss")
        if self.is_in_train and loss is not None and metric_key_prefix == "eval":
            if self.state.best_metric is None or loss < self.state.best_metric:
                self.state.best_metric = loss
                self.state.best_global_step = self.state.global_step
        if self._last_train_log is not None:  # evaluation time does not count as training throughput
            self._last_train_log = (time.perf_counter(), self._last_train_log[1])
        return metrics

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ---- crash-safe checkpoints ----------------------------------------------------------------
    def _save_checkpoint(self, model, trial):
        """Write the checkpoint into a hidden staging folder, then rename it into place: a crash (even
        SIGKILL) during the save leaves at most a stale staging folder, never a broken checkpoint-N."""
        self._check_finite()
        step = self.state.global_step
        if step in self._saved_steps:
            return
        run_dir = Path(self.args.output_dir)
        staging_root = run_dir / f"{STAGING_PREFIX}{step}"
        final = run_dir / f"checkpoint-{step}"
        if self.args.should_save and staging_root.exists():
            shutil.rmtree(staging_root)
        self.accelerator.wait_for_everyone()
        best_step = self.state.best_global_step
        output_dir = self.args.output_dir
        self.args.output_dir = str(staging_root)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir = output_dir
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            staged = staging_root / f"checkpoint-{step}"
            if best_step:
                self.state.best_model_checkpoint = str(run_dir / f"checkpoint-{best_step}")
                self.state.save_to_json(str(staged / "trainer_state.json"))
            if final.exists():  # re-saving the same step (e.g. an eval-only run's folder): swap
                shutil.rmtree(final)
            os.replace(staged, final)
            shutil.rmtree(staging_root, ignore_errors=True)
            if self.cleanup_checkpoints:
                keep = {final, Path(self.state.best_model_checkpoint) if self.state.best_model_checkpoint else None}
                for checkpoint in list_checkpoints(run_dir):
                    if checkpoint not in keep:
                        shutil.rmtree(checkpoint, ignore_errors=True)
        self._saved_steps.add(step)
        self.accelerator.wait_for_everyone()


class CheckpointScheduleCallback(TrainerCallback):
    """Evaluate/save every N steps and every N epochs, and always at the end; evaluate before each save so
    the best checkpoint is known."""

    def __init__(self, save_steps=None, save_epochs=None, eval_steps=None, has_eval=True):
        self.save_steps, self.save_epochs, self.eval_steps, self.has_eval = save_steps, save_epochs, eval_steps, has_eval
        self.last_eval = self.last_save = None

    def _request(self, state, control, save, evaluate):
        step = state.global_step
        if save and self.last_save != step:
            control.should_save = True
            self.last_save = step
            evaluate = True
        if evaluate and self.has_eval and self.last_eval != step:
            control.should_evaluate = True
            self.last_eval = step

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        end = step >= state.max_steps
        save = end or bool(self.save_steps and step % self.save_steps == 0)
        evaluate = bool(self.eval_steps and step % self.eval_steps == 0)
        self._request(state, control, save, evaluate)

    def on_epoch_end(self, args, state, control, **kwargs):
        epoch = round(state.epoch or 0)
        if self.save_epochs and epoch > 0 and epoch % self.save_epochs == 0:
            self._request(state, control, True, False)


# ---------------------------------------------------------------------------------------------
# The experiment runner (scripts/train.py calls these)
# ---------------------------------------------------------------------------------------------
def build_tokenizer(config: dict, checkpoint: Path | None = None):
    from .tokenization import load_tokenizer, train_bpe_tokenizer

    model = config["model"]
    if checkpoint is not None:
        return load_tokenizer(str(checkpoint), trust_remote_code=True)
    if model["tokenizer"] is None and _pretrained_source(config) is not None:
        return load_tokenizer(_pretrained_source(config), trust_remote_code=True)
    if model["train_bpe"] is not None:
        spec = model["train_bpe"]
        return train_bpe_tokenizer(spec["files"], vocab_size=spec.get("vocab_size", 1024),
                                   min_frequency=spec.get("min_frequency", 2))
    source = model["tokenizer"] or _pretrained_source(config)
    return load_tokenizer(source)


def _pretrained_source(config: dict) -> str | None:
    """The model folder a run starts from (peft.base_model or model.init_from); an experiment folder means
    its latest checkpoint; a name that is not a local path is kept (a Hub id)."""
    source = config["peft"]["base_model"] if config["peft"]["enabled"] else config["model"]["init_from"]
    if source is not None and Path(source).exists():
        return str(resolve_checkpoint(source)[0])
    return source


def build_model(config: dict, tokenizer):
    """A fresh TDLM model from the config (or init_from / a LoRA-wrapped base), checked against the tokenizer."""
    from . import model_class_for
    from .configuration_tdlm import TDLMConfig
    from .generation_tdlm import DiffusionGenerationConfig
    from .tokenization import check_tokenizer_matches, config_kwargs_for_tokenizer

    m, d = config["model"], config["diffusion"]
    pretrained = _pretrained_source(config)
    if pretrained:
        model_config = TDLMConfig.from_pretrained(pretrained)
        model = model_class_for(model_config).from_pretrained(pretrained)
    else:
        token_kwargs = config_kwargs_for_tokenizer(tokenizer)
        if m["vocab_size"] is not None:
            if m["vocab_size"] < token_kwargs["vocab_size"]:
                raise ValueError(f"model.vocab_size {m['vocab_size']} is smaller than the tokenizer's "
                                 f"{token_kwargs['vocab_size']} tokens")
            token_kwargs["vocab_size"] = m["vocab_size"]
        shape = {k: m[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                                   "rope_theta", "attention_dropout", "hidden_dropout", "initializer_range")}
        model_config = TDLMConfig(
            **shape, **token_kwargs, **d, training_mode=m["training_mode"],
            max_position_embeddings=m["max_position_embeddings"] or config["data"]["block_size"])
        model = model_class_for(model_config)(model_config)
    if model.config.training_mode != m["training_mode"]:
        raise ValueError(f"model.training_mode is {m['training_mode']!r} but the pretrained model {pretrained} is "
                         f"{model.config.training_mode!r}")
    model.config.head_implementation = m["head_implementation"]  # a training choice: also for pretrained models
    check_tokenizer_matches(tokenizer, model.config)
    if model.config.training_mode == "diffusion":
        sampling = {k: v for k, v in config["sampling"].items() if v is not None}
        model.generation_config = DiffusionGenerationConfig(
            **sampling, bos_token_id=model.config.bos_token_id, eos_token_id=model.config.eos_token_id,
            pad_token_id=model.config.pad_token_id, max_length=model.config.max_position_embeddings)
    if config["peft"]["enabled"]:
        from .peft_utils import apply_lora

        model = apply_lora(model, config["peft"])
    if config["training"]["torch_compile"] or config["training"]["torch_compile_mode"]:  # a mode implies compile, as in HF
        compile_backbone(model, config["training"]["torch_compile_mode"])
    return model


def compile_backbone(model, mode: str | None = None):
    """torch.compile the backbone in place (its [batch, length] shapes are static, so it compiles once); the head
    runs eagerly: its masked-row gather has data-dependent shapes and its kernels are fused already. Compiling the
    whole model (TrainingArguments.torch_compile) recompiled at that gather and gained 3% on an H100."""
    from .modeling_tdlm import TDLMModel

    for module in model.modules():
        if isinstance(module, TDLMModel):
            module.compile(mode=mode)
    return model


def training_arguments(config: dict, experiment: Experiment, **extra) -> TrainingArguments:
    t = config["training"]
    wandb = config["monitoring"]["wandb"]
    if wandb["enabled"]:
        os.environ.setdefault("WANDB_PROJECT", wandb["project"])
        if wandb["tags"]:
            os.environ.setdefault("WANDB_TAGS", ",".join(map(str, wandb["tags"])))
        os.environ.setdefault("WANDB_DIR", str(experiment.logs_dir))
    kwargs = dict(
        output_dir=str(experiment.checkpoints_dir),
        per_device_train_batch_size=t["batch_size"],
        per_device_eval_batch_size=t["eval_batch_size"] or t["batch_size"],
        gradient_accumulation_steps=t["gradient_accumulation_steps"],
        learning_rate=t["learning_rate"], weight_decay=t["weight_decay"],
        adam_beta1=t["adam_beta1"], adam_beta2=t["adam_beta2"], max_grad_norm=t["max_grad_norm"],
        warmup_steps=t["warmup_steps"], lr_scheduler_type=t["lr_scheduler_type"],
        num_train_epochs=t["epochs"], max_steps=t["max_steps"] if t["max_steps"] is not None else -1,
        logging_steps=t["logging_steps"], logging_nan_inf_filter=False,
        eval_strategy="no", save_strategy="no",  # CheckpointScheduleCallback decides
        seed=t["seed"], data_seed=t["seed"],
        bf16=t["mixed_precision"] == "bf16", fp16=t["mixed_precision"] == "fp16",
        dataloader_num_workers=t["dataloader_num_workers"],  # training.torch_compile: see compile_backbone
        dataloader_drop_last=True, remove_unused_columns=False, prediction_loss_only=True,
        report_to=["wandb"] if wandb["enabled"] else "none", run_name=experiment.experiment_id,
        ddp_find_unused_parameters=False, save_only_model=False,
        # without a GPU, multi-process runs (torchrun / accelerate launch) need accelerate's CPU (gloo) mode
        use_cpu=not torch.cuda.is_available(),
    )
    kwargs.update(extra)
    return TrainingArguments(**kwargs)


def _prepare_data(config, tokenizer, model):
    from .data import DataCollatorForTDLM, build_datasets

    t, e = config["training"], config["enhanced_evaluation"]
    eval_rows = e["max_eval_batches"] * (t["eval_batch_size"] or t["batch_size"]) if e["max_eval_batches"] else None
    train, evaluation = build_datasets(config["data"], tokenizer, model.config.vocab_size, eval_rows)
    return train, evaluation, DataCollatorForTDLM(tokenizer.pad_token_id)


def _num_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _best_epoch(state) -> float | None:
    for record in state.log_history:
        if record.get("step") == state.best_global_step and "eval_loss" in record:
            return record.get("epoch")
    return None


def write_summary(experiment: Experiment, trainer: DiffusionTrainer, train_output, runtime: float,
                  start_step: int = 0) -> dict:
    """results/summary.json; tokens/s counts this session's steps (a resumed run started at `start_step`)."""
    state = trainer.state
    checkpoints = list_checkpoints(experiment.checkpoints_dir)
    tokens = state.global_step * (trainer._tokens_per_step or 0)
    session_tokens = (state.global_step - start_step) * (trainer._tokens_per_step or 0)
    summary = {
        "experiment_id": experiment.experiment_id,
        "training_mode": "diffusion" if trainer.is_diffusion else "autoregressive",
        "best_checkpoint": state.best_model_checkpoint,
        "best_eval_loss": state.best_metric,
        "best_epoch": _best_epoch(state),
        "final_checkpoint": str(checkpoints[-1]) if checkpoints else None,
        "train_tokens": tokens,
        "epochs": state.epoch,
        "train_runtime_s": runtime,
        "tokens_per_second": session_tokens / runtime if runtime else None,  # wall time incl. evals and saves
        "num_parameters": _num_parameters(trainer.model),
        "global_step": state.global_step,
        "train_loss": train_output.training_loss,
    }
    experiment.summary_path.write_text(json.dumps(summary, indent=2))
    return summary


def format_summary(summary: dict) -> str:
    best = summary["best_eval_loss"]
    lines = [f"Experiment {summary['experiment_id']} ({summary['training_mode']}) finished",
             f"  steps {summary['global_step']}, epochs {summary['epochs']:.2f}, "
             f"time {summary['train_runtime_s']:.1f}s, {summary['tokens_per_second'] or 0:,.0f} tokens/s",
             f"  parameters {summary['num_parameters']:,}, train tokens {summary['train_tokens']:,}"]
    if best is not None:
        lines.append(f"  best eval loss {best:.4f} (perplexity bound {math.exp(min(best, 700)):.2f}) at epoch "
                     f"{summary['best_epoch'] or 0:.2f}: {summary['best_checkpoint']}")
    lines.append(f"  final checkpoint: {summary['final_checkpoint']}")
    return "\n".join(lines)


def run_training(config: dict, experiment_id: str | None = None, output_dir: str = "experiments",
                 resume: str | None = None, callbacks=()) -> dict:
    """Train (or resume) an experiment described by a validated config; returns results/summary.json's dict."""
    from transformers import set_seed

    checkpoint = experiment = None
    if resume is not None:
        checkpoint, experiment = resolve_checkpoint(resume)
    if experiment is None:
        experiment = Experiment(Path(output_dir) / (experiment_id or default_experiment_id()))
    experiment.create()
    set_seed(config["training"]["seed"])
    tokenizer = build_tokenizer(config, checkpoint)
    model = build_model(config, tokenizer)
    train, evaluation, collator = _prepare_data(config, tokenizer, model)
    is_main = int(os.environ.get("RANK", "0")) == 0
    start_step = 0
    if is_main:
        save_config(config, experiment.config_path)
        for stale in experiment.checkpoints_dir.glob(f"{STAGING_PREFIX}*"):  # a save killed mid-way
            shutil.rmtree(stale, ignore_errors=True)
        if checkpoint is not None:
            state = json.loads((checkpoint / "trainer_state.json").read_text())
            truncate_metrics(experiment.metrics_path, state["global_step"])
            start_step = state["global_step"]
    t = config["training"]
    trainer = DiffusionTrainer(
        model=model, args=training_arguments(config, experiment), train_dataset=train, eval_dataset=evaluation,
        data_collator=collator, processing_class=tokenizer,
        callbacks=[CheckpointScheduleCallback(t["save_every_n_steps"], t["save_every_n_epochs"], t["eval_steps"],
                                              evaluation is not None),
                   MetricsJsonlCallback(experiment.metrics_path), *callbacks],
        detailed_metrics_steps=t["detailed_metrics_steps"], attention_analysis_steps=t["attention_analysis_steps"],
        cleanup_checkpoints=t["cleanup_checkpoints"])
    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    runtime = time.perf_counter() - start
    summary = None
    if trainer.is_world_process_zero():
        summary = write_summary(experiment, trainer, output, runtime, start_step)
        print(format_summary(summary), flush=True)
        if config["training"]["push_to_hub"]:  # best checkpoint + model card (tdlm.hub), not Trainer's raw folder
            from .hub import push_to_hub

            push_to_hub(experiment.root, repo_id=config["training"]["hub_model_id"])
    return summary


def run_evaluation(config: dict | None, resume: str, output_dir: str = "experiments") -> dict:
    """`--eval-only`: the eval-set ELBO (and downstream tasks when enabled) of one checkpoint, written to
    results/eval_<checkpoint>.json and logs/metrics.jsonl."""
    from . import model_class_for
    from .configuration_tdlm import TDLMConfig
    from .experiment import load_config
    from .tokenization import check_tokenizer_matches, load_tokenizer

    checkpoint, experiment = resolve_checkpoint(resume)
    if config is None:
        if experiment is None or not experiment.config_path.is_file():
            raise ValueError(f"--eval-only on {checkpoint}: pass --config (no experiment config found)")
        config = load_config(experiment.config_path)
    if experiment is None:
        experiment = Experiment(Path(output_dir) / f"eval_{checkpoint.name}")
    experiment.create()
    tokenizer = load_tokenizer(str(checkpoint), trust_remote_code=True)
    model_config = TDLMConfig.from_pretrained(checkpoint)
    location = config["training"]["checkpoint_map_location"]
    device = ("cuda" if torch.cuda.is_available() else "cpu") if location == "auto" else location
    model = model_class_for(model_config).from_pretrained(checkpoint).to(device)
    check_tokenizer_matches(tokenizer, model.config)
    _, evaluation, collator = _prepare_data(config, tokenizer, model)
    if evaluation is None:
        raise ValueError("--eval-only needs evaluation data: set data.eval_files or data.eval_split")
    args = training_arguments(config, experiment, report_to="none", use_cpu=device == "cpu")
    trainer = DiffusionTrainer(model=model, args=args, eval_dataset=evaluation, data_collator=collator,
                               processing_class=tokenizer, callbacks=[MetricsJsonlCallback(experiment.metrics_path)])
    state_file = checkpoint / "trainer_state.json"
    if state_file.is_file():
        saved = json.loads(state_file.read_text())
        trainer.state.global_step, trainer.state.epoch = saved["global_step"], saved.get("epoch")
    results = {"checkpoint": str(checkpoint), **trainer.evaluate()}
    e = config["enhanced_evaluation"]
    if e["include_downstream"]:
        from .evaluation import run_downstream

        results["downstream"] = run_downstream(model, tokenizer, e["tasks"], limit=e["limit"], mc_num=e["mc_num"])
    if trainer.is_world_process_zero():
        path = experiment.results_dir / f"eval_{checkpoint.name}.json"
        path.write_text(json.dumps(results, indent=2))
        print(f"eval loss {results['eval_loss']:.4f}, perplexity bound {results['eval_perplexity']:.2f} -> {path}")
    return results
