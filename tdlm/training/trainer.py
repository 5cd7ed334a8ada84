"""`TDLMTrainer(transformers.Trainer)` (also importable as `DiffusionTrainer`), for every objective, and
`make_trainer`, the one place it is assembled.

Data flow of one optimizer step (diffusion mode; block diffusion alike, with one t per block and x_0 passed along):

    packed blocks --collator--> input_ids, attention_mask, labels (x_0 at real tokens)
        Trainer.get_batch_samples: num_items_in_batch = real tokens of the whole accumulated (and, across
            processes, global) batch
        compute_loss: x_t, labels, ELBO weights = schedules.diffusion_targets(...)  (generator seeded from
            (seed, global_step): exact on resume and the same for any split of the global batch)
            model(x_t, labels, loss_weights, num_items_in_batch).loss = sum w*CE / num_items_in_batch
        summing micro-batches gives the large-batch loss, so `loss_is_scaled_for_ga` holds (Trainer does not
        divide by the accumulation steps again)

AR mode runs the causal model on the clean input (with the context token the objective's collator puts in front)
with the same data, optimizer, schedule and logging. What differs per objective is asked of `tdlm.objectives`.
Evaluation loss is the ELBO over the full mask-ratio range with stratified t and a fixed seed per eval
batch, so numbers are comparable across checkpoints.
"""

import hashlib
import math
import shutil
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback
from transformers.dynamic_module_utils import custom_object_save

from ..modeling_tdlm import TDLMPreTrainedModel
from ..objectives import objective_for
from ..runs import (
    best_evaluation,
    commit_checkpoint,
    delete_checkpoint,
    last_good_checkpoint,
    list_checkpoints,
    staging_folder,
)
from ..schedules import corruption_levels, get_noise_schedule
from .metrics import (
    attention_metrics,
    level_gradient_norms,
    level_statistics,
    prediction_metrics,
    summarize_level_statistics,
    token_frequency_kl,
)


def derive_seed(seed: int, kind: str, index: int) -> int:
    """A 63-bit seed from (seed, kind, index): the corruption RNG is a function of the step, not of history."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{kind}/{index}".encode()).digest()[:8], "little") >> 1


class TDLMTrainer(Trainer):
    """Trainer for every TDLM head. The diffusion objectives: corruption + weighted ELBO in `compute_loss`; AR:
    next-token loss. The head's objective (`tdlm.objectives`) prepares each batch.

    Extra keyword arguments: `detailed_metrics_steps` and `attention_analysis_steps` (tier 2/3 research
    metrics; None = off), `cleanup_checkpoints` (keep only the best and the latest checkpoint).
    """

    # compute_loss divides by num_items_in_batch of the whole accumulated batch when the Trainer gives it,
    # which is the Trainer's default rule for models that accept loss kwargs; said explicitly here.
    loss_is_scaled_for_ga = None

    def __init__(self, *args, detailed_metrics_steps=None, attention_analysis_steps=None,
                 cleanup_checkpoints=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.head = self.accelerator.unwrap_model(self.model)
        if hasattr(self.head, "get_base_model"):  # a PEFT wrapper
            self.head = self.head.get_base_model()
        config = self.model_config = self.head.config
        self.objective = objective_for(config)
        self.schedule = get_noise_schedule(config.noise_schedule) if self.objective.corrupts else None
        self.detailed_metrics_steps = detailed_metrics_steps
        self.attention_analysis_steps = attention_analysis_steps
        self.cleanup_checkpoints = cleanup_checkpoints
        self._micro_step = (-1, 0)  # (global_step, micro-batches seen in it)
        self._eval_batch = 0
        self._level_stats = None  # tier-1 sums for the current logging step (device tensor)
        self._pending_metrics = {}  # tier 2/3 numbers waiting for the next log
        self._finite = None  # device bool: every training loss so far was finite
        self._last_train_log = None  # (time, global_step)
        self._analysis_due = None  # (model_inputs, extras, num_items, tier2, tier3): run after the backward
        self.tokens_per_step = None
        self._saved_steps = set()

    # ---- counting the targets of a batch ------------------------------------------------------
    def _num_targets(self, batch) -> torch.Tensor:
        """Positions with a target: every real token (diffusion: each can be masked) or each next token (AR);
        the collator's labels are the input ids at real tokens and -100 at padding."""
        return self.head.prediction_targets(batch["labels"]).ne(-100).sum()

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
            step, micro = self._micro_step[0], self._micro_step[1] - 1
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
        targets = self.objective.training_targets(full_ids, full_mask, config, self.schedule, generator, ratio_range,
                                                  antithetic)
        if num_slots > 1:
            own = slice(slot * rows, (slot + 1) * rows)
            targets = {k: v[own] if torch.is_tensor(v) and v.dim() > 0 else v for k, v in targets.items()}
        return targets

    def model_inputs(self, inputs: dict, training: bool) -> tuple[dict, dict]:
        """(kwargs for the model, extras for metrics: the corruption's t and mask, for the diffusion objectives)."""
        if not self.objective.corrupts:
            return self.objective.model_inputs(inputs, None), {}
        targets = self._corrupt(inputs, training)
        return self.objective.model_inputs(inputs, targets), {"t": targets["t"], "masked": targets["masked"]}

    # ---- loss ----------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        training = model.training
        if training:  # count the micro-batches of each optimizer step
            step, micro = self._micro_step
            self._micro_step = (self.state.global_step, micro + 1 if step == self.state.global_step else 1)
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
        if self._analysis_due is not None:
            # After the backward, never between a forward and its backward: with CUDA graphs (torch.compile
            # mode reduce-overhead) an extra forward there overwrites memory the backward still reads.
            loss = loss.clone()  # the analysis forward may reuse the graph's output buffers
            if hasattr(torch.compiler, "cudagraph_mark_step_begin"):
                torch.compiler.cudagraph_mark_step_begin()
            self._pending_metrics.update(self._analysis_metrics(*self._analysis_due))
            self._analysis_due = None
        finite = torch.isfinite(loss)  # stays on the device; read at logging and saving steps
        self._finite = finite if self._finite is None else self._finite & finite
        return loss

    def _check_finite(self):
        if self._finite is not None and not bool(self._finite):
            self._stop("non-finite training loss (NaN/inf)")

    def _check_finite_weights(self):
        """A finite loss does not prove finite weights (a NaN gradient reaches them one step before the loss)."""
        if not bool(torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all()):
            self._stop("non-finite model weights (NaN/inf)")

    def _stop(self, problem: str):
        last = last_good_checkpoint(self.args.output_dir) or "none saved yet"  # its weights checked, not assumed
        raise FloatingPointError(
            f"{problem} by step {self.state.global_step}; training stopped without saving. Last good checkpoint: "
            f"{last}. Try a lower training.learning_rate, more warmup, training.max_grad_norm, or mixed_precision: "
            f"bf16 instead of fp16.")

    # ---- research metrics ----------------------------------------------------------------------
    def _is_due(self, every, step) -> bool:
        return bool(every) and step % every == 0

    def _research_metrics(self, model, model_inputs, extras, outputs, num_items):
        step = self.state.global_step + 1  # the step this micro-batch belongs to
        if self.tokens_per_step is None:
            self.tokens_per_step = (model_inputs["input_ids"].numel() * self.args.gradient_accumulation_steps
                                    * self.args.world_size)
            self._last_train_log = (time.perf_counter(), self.state.global_step)
        first_micro = self._micro_step[1] <= 1
        if self._is_due(self.args.logging_steps, step) or (step == 1 and self.args.logging_first_step):
            targets = self.head.prediction_targets(model_inputs["labels"])
            supervised = targets != -100
            levels = self._corruption_levels(extras, supervised.shape)
            weights = model_inputs.get("loss_weights")
            stats = level_statistics(outputs.token_losses, outputs.token_predictions, targets[supervised],
                                     None if levels is None else levels[supervised],
                                     None if weights is None else weights[supervised])
            self._level_stats = stats if self._level_stats is None else self._level_stats + stats
        tier2 = self._is_due(self.detailed_metrics_steps, step) and first_micro
        tier3 = self._is_due(self.attention_analysis_steps, step) and first_micro
        if tier2 or tier3:  # runs in training_step, after this micro-batch's backward
            self._analysis_due = (model_inputs, extras, num_items, tier2, tier3)

    def _corruption_levels(self, extras, shape) -> torch.LongTensor | None:
        """[B, L] corruption level of each position (diffusion), None without corruption (AR)."""
        if "t" not in extras:
            return None
        return corruption_levels(self.schedule.mask_ratio(extras["t"].double()).expand(shape))

    def _analysis_metrics(self, model_inputs, extras, num_items, tier2, tier3) -> dict:
        """Tier 2/3: one extra forward with attention maps and full logits (no grad), and per-level gradients."""
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        metrics = {}
        targets = self.head.prediction_targets(model_inputs["labels"])
        supervised = targets != -100
        with torch.no_grad(), self.compute_loss_context_manager():
            out = model(**{k: v for k, v in model_inputs.items() if k not in ("labels", "loss_weights")},
                        output_attentions=True)
        logits = out.logits[supervised]
        if tier2:
            metrics.update(attention_metrics(out.attentions, model_inputs["attention_mask"]))
            metrics.update(prediction_metrics(logits))
        if tier3:
            metrics["token_frequency_kl"] = token_frequency_kl(logits, targets[supervised])
            levels = self._corruption_levels(extras, supervised.shape)
            with self.compute_loss_context_manager():
                metrics.update(level_gradient_norms(model, model_inputs, levels, num_items))
        model.train(was_training)
        return metrics

    # ---- logging -------------------------------------------------------------------------------
    def log(self, logs, start_time=None):
        if "loss" in logs:
            if not math.isfinite(logs["loss"]) or not math.isfinite(logs.get("grad_norm", 0.0)):
                self._finite = torch.tensor(False)
            self._check_finite()
            if self._level_stats is not None:
                stats = self._level_stats
                if self.args.world_size > 1:
                    stats = self.accelerator.reduce(stats, reduction="sum")
                logs.update(summarize_level_statistics(stats.cpu(), by_level=self.objective.corrupts))
                self._level_stats = None
            logs.update(self._pending_metrics)
            self._pending_metrics = {}
            now, step = time.perf_counter(), self.state.global_step
            if self._last_train_log is not None and self.tokens_per_step and step > self._last_train_log[1]:
                elapsed = now - self._last_train_log[0]
                logs["tokens_per_second"] = (step - self._last_train_log[1]) * self.tokens_per_step / elapsed
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
        self._check_finite_weights()
        step = self.state.global_step
        if step in self._saved_steps:
            return
        run_dir = Path(self.args.output_dir)
        staging_root = staging_folder(run_dir, step)
        final = run_dir / f"checkpoint-{step}"
        if self.args.should_save and staging_root.exists():
            shutil.rmtree(staging_root)
        self.accelerator.wait_for_everyone()
        output_dir = self.args.output_dir
        self.args.output_dir = str(staging_root)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir = output_dir
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            staged = staging_root / f"checkpoint-{step}"
            best = best_evaluation(self.state.log_history, [*list_checkpoints(run_dir), final])
            if best is not None:  # the folder it will have (Trainer recorded the staging folder, or none)
                self.state.best_model_checkpoint = str(best[0])
                self.state.save_to_json(str(staged / "trainer_state.json"))
            if (staged / "config.json").is_file():  # a full model (a LoRA run saves only its adapter)
                self._write_remote_code(staged)
            commit_checkpoint(staged, final)
            shutil.rmtree(staging_root, ignore_errors=True)
            if self.cleanup_checkpoints:
                keep = {final, Path(self.state.best_model_checkpoint) if self.state.best_model_checkpoint else None}
                for checkpoint in list_checkpoints(run_dir):
                    if checkpoint not in keep:
                        delete_checkpoint(checkpoint)
        self._saved_steps.add(step)
        self.accelerator.wait_for_everyone()


    def _write_remote_code(self, folder: Path) -> None:
        """save_pretrained copies the module of the model's class (and its relative imports) next to the weights.
        Under FSDP2 that class is torch's FSDP<class> wrapper, whose files get copied instead: copy from the TDLM class
        in its MRO, and drop any other module file."""
        model_class = next(c for c in type(self.head).__mro__ if c.__module__ == TDLMPreTrainedModel.__module__)
        written = {Path(f).name for f in custom_object_save(model_class, folder)}
        for stray in folder.glob("*.py"):
            if stray.name not in written:
                stray.unlink()


DiffusionTrainer = TDLMTrainer  # the name before block diffusion and AR shared it


def make_trainer(model, args, pad_token_id: int, train_dataset=None, eval_dataset=None, data_collator=None,
                 **kwargs) -> TDLMTrainer:
    """The one place a TDLMTrainer is assembled: the collator is the model's objective's (AR puts its context token
    in front of every block) unless `data_collator` is given; other keyword arguments go to TDLMTrainer."""
    config = model.config
    if data_collator is None:
        data_collator = objective_for(config).collator(config, pad_token_id)
    return TDLMTrainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                       data_collator=data_collator, **kwargs)


class CheckpointScheduleCallback(TrainerCallback):
    """Evaluate/save every N steps and every N epochs, and always at the end; evaluate before each save so
    the best checkpoint is known."""

    def __init__(self, save_steps=None, save_epochs=None, eval_steps=None, has_eval=True):
        self.save_steps, self.save_epochs, self.eval_steps = save_steps, save_epochs, eval_steps
        self.has_eval = has_eval
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
