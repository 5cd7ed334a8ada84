"""Research metrics for TDLM training, in three tiers, and the callback that writes them.

Tier 1 (every `logging_steps`, from the training forward pass itself): masked-token accuracy; loss and
    accuracy by corruption level (mask ratio 1 - a_t: low 0-30%, medium 30-70%, high 70-100%); weighted
    vs unweighted loss and each level's share of the weighted loss.
Tier 2 (every `detailed_metrics_steps`, one extra no-grad forward with attention maps): attention entropy
    per layer/head, self-attention ratio (mass on the diagonal), prediction confidence and entropy at
    supervised positions.
Tier 3 (every `attention_analysis_steps`): token frequency KL (data vs predicted unigram distribution) and
    the gradient norm of the loss restricted to each corruption level (the gradient heatmaps' input).

Names follow the experiment-folder contract; everything is written to logs/metrics.jsonl (one JSON object
per line with "step", "epoch", "split") and every configured tracker (transformers' callbacks); the console shows
a short line of the main ones (`ConsoleProgressCallback`).
"""


import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback
from transformers.utils import logging as hf_logging

from ..schedules import LEVELS

# ---------------------------------------------------------------------------------------------
# Tier 1: sums on the device, turned into numbers only at logging time
# ---------------------------------------------------------------------------------------------
STAT_FIELDS = ("count", "correct", "loss", "weighted_loss")


def level_statistics(token_losses, token_predictions, targets, levels=None, weights=None) -> torch.Tensor:
    """[4, 4] float64 sums (rows: low, medium, high, all; columns: STAT_FIELDS) at supervised positions.
    No host sync: callers accumulate these over micro-batches and read them at logging steps."""
    losses = token_losses.detach().double()
    correct = (token_predictions == targets).double()
    weighted = losses * weights.detach().double() if weights is not None else losses
    values = torch.stack([torch.ones_like(losses), correct, losses, weighted], dim=1)  # [N, 4]
    stats = torch.zeros(4, 4, dtype=torch.float64, device=losses.device)
    if levels is not None:
        stats[:3].index_add_(0, levels, values)
    stats[3] = values.sum(0)
    return stats


def summarize_level_statistics(stats: torch.Tensor, by_level: bool = True) -> dict:
    """Tier-1 metric dict from summed statistics (a CPU tensor)."""
    stats = stats.tolist()
    count, correct, loss, weighted = stats[3]
    if count == 0:
        return {}
    metrics = {"masked_accuracy": correct / count, "unweighted_loss": loss / count}
    if by_level:
        for name, (n, c, level_loss, w) in zip(LEVELS, stats[:3]):
            if n > 0:
                metrics[f"loss/{name}"] = level_loss / n
                metrics[f"accuracy/{name}"] = c / n
            metrics[f"loss_share/{name}"] = w / weighted if weighted > 0 else 0.0
    return metrics


# ---------------------------------------------------------------------------------------------
# Tier 2: attention maps and predictive distributions
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def attention_metrics(attentions, attention_mask=None) -> dict:
    """Entropy (nats) of each head's attention distribution, averaged over real queries, and the
    attention mass on the diagonal (a token attending to itself)."""
    metrics, diagonal = {}, []
    for layer, weights in enumerate(attentions):
        p = weights.float()  # [B, H, L, L]
        entropy = -(p * p.clamp_min(1e-12).log()).sum(-1)  # [B, H, L]
        self_mass = p.diagonal(dim1=-2, dim2=-1)  # [B, H, L]
        if attention_mask is not None:
            real = attention_mask[:, None, :].to(p.dtype).expand_as(entropy)
            per_head = (entropy * real).sum((0, 2)) / real.sum((0, 2)).clamp_min(1)
            diagonal.append(((self_mass * real).sum() / real.sum().clamp_min(1)).item())
        else:
            per_head = entropy.mean((0, 2))
            diagonal.append(self_mass.mean().item())
        metrics[f"attention_entropy/layer{layer}"] = per_head.mean().item()
        for head, value in enumerate(per_head.tolist()):
            metrics[f"attention_entropy/layer{layer}/head{head}"] = value
    metrics["self_attention_ratio"] = sum(diagonal) / len(diagonal)
    return metrics


@torch.no_grad()
def prediction_metrics(logits: torch.Tensor) -> dict:
    """Mean max-probability and mean entropy of the predictive distributions [N, V] at supervised positions."""
    if logits.numel() == 0:
        return {}
    log_p = logits.float().log_softmax(-1)
    p = log_p.exp()
    entropy = -(p * log_p.nan_to_num(neginf=0.0)).sum(-1)
    return {"prediction_confidence": p.max(-1).values.mean().item(), "prediction_entropy": entropy.mean().item()}


# ---------------------------------------------------------------------------------------------
# Tier 3: frequency bias and per-level gradient norms
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def token_frequency_kl(logits: torch.Tensor, targets: torch.LongTensor, smoothing: float = 1e-6) -> float:
    """KL(data unigram || model unigram) in nats: the target-token histogram at supervised positions vs the
    model's mean predictive distribution there. 0 when the model's marginal matches the data's."""
    vocab = logits.shape[-1]
    data = torch.bincount(targets, minlength=vocab).double()
    data = data / data.sum()
    model = logits.float().softmax(-1).double().mean(0)
    model = (model + smoothing) / (1 + smoothing * vocab)
    support = data > 0
    return float((data[support] * (data[support] / model[support]).log()).sum())


def level_gradient_norms(model, model_inputs: dict, position_levels: torch.LongTensor | None, num_items) -> dict:
    """L2 norm of d loss / d parameters for the loss restricted to each corruption level, and in total.

    `model_inputs` are the training forward's inputs (input_ids, attention_mask, labels, loss_weights);
    `position_levels` [B, L] is the corruption level of each position (None for AR, which only has a
    total). The restricted loss keeps the full normaliser, so the levels' losses sum to the total.
    Uses torch.autograd.grad: the optimizer's .grad buffers are untouched."""
    params = [p for p in model.parameters() if p.requires_grad]
    labels = model_inputs["labels"]
    restrictions = {"total": None}
    if position_levels is not None:
        restrictions.update({name: index for index, name in enumerate(LEVELS)})
    metrics = {}
    for name, index in restrictions.items():
        level_labels = labels if index is None else labels.masked_fill(position_levels != index, -100)
        loss = model(**{**model_inputs, "labels": level_labels}, num_items_in_batch=num_items).loss
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))
        metrics[f"grad_norm/{name}"] = float(norm)
    return metrics


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
class MetricsJsonlCallback(TrainerCallback):
    """Appends every training and evaluation log to the experiment's metrics log (main process only)."""

    def __init__(self, experiment):
        self.experiment = experiment

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "eval_loss" in logs:
            split = "eval"
        elif "loss" in logs:
            split = "train"
        else:
            return  # the end-of-training runtime summary goes to results/summary.json
        record = {"step": int(state.global_step), "epoch": float(state.epoch or 0.0), "split": split}
        record.update({k: v for k, v in logs.items() if k not in ("epoch", "step")})
        self.experiment.append_metrics(record)


# the metrics a console line shows; the research metrics stay in logs/metrics.jsonl and the trackers
CONSOLE_KEYS = ("loss", "eval_loss", "masked_accuracy", "grad_norm", "learning_rate", "train_loss", "train_runtime")


class ConsoleProgressCallback(ProgressCallback):
    """transformers' progress bar with one short line per log (CONSOLE_KEYS) and no second bar: the nested
    evaluation bar and the checkpoint-writing bar, drawn under the training bar, left cursor-up escape codes
    (`[A`) in logs and narrow terminals."""

    def on_train_begin(self, args, state, control, **kwargs):
        self._bars_were_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # "Writing model shards" at each save
        super().on_train_begin(args, state, control, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        super().on_train_end(args, state, control, **kwargs)
        if self._bars_were_on:
            hf_logging.enable_progress_bar()

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if self.training_bar is None:  # an evaluation on its own keeps its bar
            super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            shown = [f"{key} {logs[key]:.4g}" for key in CONSOLE_KEYS if isinstance(logs.get(key), (int, float))]
            if shown:
                self.training_bar.write(f"step {state.global_step}: " + ", ".join(shown))
