"""Sampling from a masked-diffusion LM: `DiffusionGenerationConfig` + `DiffusionGenerationMixin`.

Start from the input with masks where text is wanted (appended new tokens, or masks anywhere for
infilling). Each step runs the model, proposes a token for every masked position, and commits the
most confident ones (the remasking rule); how many are committed at step k follows the step schedule
(`schedules.unmask_counts`), counted per row. Finished rows leave the batch; the LM head runs only at
positions still masked.

Shipped as remote code next to the weights: imports only torch, transformers and relative siblings.
"""

from dataclasses import dataclass

import torch
from transformers import GenerationConfig
from transformers.utils import ModelOutput

from .schedules import STEP_SCHEDULES, get_noise_schedule, unmask_counts

REMASKING_RULES = ("low_confidence", "margin", "entropy", "random")


class DiffusionGenerationConfig(GenerationConfig):
    """Sampling options of `diffusion_generate` (saved as `generation_config.json`).

    Args:
        num_steps: model calls budget; the sampler commits all masks within this many steps.
        step_schedule: "cosine" (few tokens first, many at the end; default) or "linear".
        remasking: which masked positions to commit: "low_confidence" (highest p of the proposal),
            "margin" (top-1 minus top-2 probability), "entropy" (lowest entropy) or "random".
        confidence_threshold: also commit every proposal whose confidence exceeds it (Fast-dLLM style
            parallel decoding); the step schedule still gives the minimum per step.
        block_length: semi-autoregressive decoding in blocks of this many masks, left to right.
        temperature: 0 for greedy proposals; otherwise Gumbel-max sampling (float64 noise) at this
            temperature, after `top_k` / `top_p` filtering.
        stop_at_eos: once a row has an EOS after which nothing is decided yet, the rest becomes padding.
        show_progress: tqdm bar over steps.
    """

    def __init__(self, **kwargs):
        self.num_steps = kwargs.pop("num_steps", 64)
        self.step_schedule = kwargs.pop("step_schedule", "cosine")
        self.remasking = kwargs.pop("remasking", "low_confidence")
        self.confidence_threshold = kwargs.pop("confidence_threshold", None)
        self.block_length = kwargs.pop("block_length", None)
        self.stop_at_eos = kwargs.pop("stop_at_eos", False)
        self.show_progress = kwargs.pop("show_progress", False)
        self.output_history = kwargs.pop("output_history", False)
        kwargs.setdefault("temperature", 0.0)
        kwargs.setdefault("top_k", None)
        kwargs.setdefault("top_p", None)
        super().__init__(**kwargs)

    def validate(self, strict: bool = False, **kwargs):
        # GenerationConfig's own checks assume autoregressive sampling (do_sample flags, beams); ours differ.
        if int(self.num_steps) < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.step_schedule not in STEP_SCHEDULES:
            raise ValueError(f"step_schedule must be one of {STEP_SCHEDULES}, got {self.step_schedule!r}")
        if self.remasking not in REMASKING_RULES:
            raise ValueError(f"remasking must be one of {REMASKING_RULES}, got {self.remasking!r}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.block_length is not None and self.block_length < 1:
            raise ValueError(f"block_length must be >= 1, got {self.block_length}")
        if self.confidence_threshold is not None and not 0.0 <= self.confidence_threshold <= 1.0:
            raise ValueError(f"confidence_threshold must lie in [0, 1], got {self.confidence_threshold}")


@dataclass
class DiffusionGenerationOutput(ModelOutput):
    """sequences: [B, L] final tokens. commit_step: [B, L] the step at which each position was decided
    (-1 for positions given in the input). committed_per_step: [K] tokens committed at each step (batch
    total). num_model_calls: forward passes run. history: per-step [B, L] states when requested."""

    sequences: torch.LongTensor | None = None
    commit_step: torch.LongTensor | None = None
    committed_per_step: torch.LongTensor | None = None
    num_model_calls: int | None = None
    history: tuple[torch.LongTensor, ...] | None = None


def _filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the smallest set reaching top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def propose_tokens(logits, config: DiffusionGenerationConfig, generator=None):
    """Proposed x_0 tokens and their confidence under `config.remasking` for rows of logits [N, V]."""
    logits = _filter_logits(logits.float(), config.top_k, config.top_p)
    probs = logits.softmax(-1)
    if config.temperature:
        uniform = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float64)
        gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-300)))
        tokens = (logits.double() / config.temperature + gumbel).argmax(-1)
    else:
        tokens = logits.argmax(-1)
    if config.remasking == "low_confidence":
        confidence = probs.gather(-1, tokens[:, None]).squeeze(-1)
    elif config.remasking == "margin":
        top2 = probs.topk(2, dim=-1).values
        confidence = top2[:, 0] - top2[:, 1]
    elif config.remasking == "entropy":
        confidence = (probs * probs.clamp_min(1e-30).log()).sum(-1)  # negative entropy
    else:
        confidence = torch.rand(tokens.shape, generator=generator, device=logits.device)
    return tokens, confidence.float()


class DiffusionGenerationMixin:
    """Adds `diffusion_generate` to a masked-diffusion model whose forward returns logits at every position."""

    def _diffusion_generation_config(self, generation_config, kwargs) -> DiffusionGenerationConfig:
        base = generation_config if generation_config is not None else getattr(self, "generation_config", None)
        values = base.to_dict() if base is not None else {}
        values.update(kwargs)
        for key in ("transformers_version", "_from_model_config"):
            values.pop(key, None)
        config = DiffusionGenerationConfig(**values)
        config.validate()
        return config

    def _prepare_canvas(self, input_ids, attention_mask, config):
        mask_id = self.config.mask_token_id
        if mask_id is None:
            raise ValueError("this model's config has no mask_token_id; diffusion sampling needs one")
        device = self.device
        if input_ids is None:
            batch = config.num_return_sequences or 1
            length = config.max_new_tokens or config.max_length
            if not length:
                raise ValueError("unconditional generation needs max_length or max_new_tokens")
            input_ids = torch.full((batch, length), mask_id, dtype=torch.long, device=device)
            attention_mask = None
        input_ids = input_ids.to(device)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape [batch, seq_len], got {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(device)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} does not match "
                             f"input_ids shape {tuple(input_ids.shape)}")
        new_tokens = config.max_new_tokens if (input_ids != mask_id).any() else 0
        if new_tokens:
            masks = torch.full((input_ids.shape[0], new_tokens), mask_id, dtype=torch.long, device=device)
            input_ids = torch.cat([input_ids, masks], dim=1)
            attention_mask = torch.cat([attention_mask, torch.ones_like(masks)], dim=1)
        elif not ((input_ids == mask_id) & attention_mask.bool()).any():
            raise ValueError("nothing to generate: set max_new_tokens or put mask tokens in input_ids")
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(f"prompt plus new tokens is {input_ids.shape[1]} tokens, more than the model's "
                             f"max_position_embeddings={self.config.max_position_embeddings}")
        return input_ids, attention_mask

    def _active_logits(self, tokens, attention_mask, positions):
        """Logits only at `positions` (bool [b, L]) of a sub-batch: the backbone runs on all tokens, the
        head only where a proposal is needed."""
        hidden = self.model(input_ids=tokens, attention_mask=attention_mask).last_hidden_state
        logits = self.lm_head(hidden[positions]).float()
        logits[:, self.config.mask_token_id] = float("-inf")
        return logits

    @torch.no_grad()
    def diffusion_generate(self, input_ids=None, attention_mask=None, generation_config=None, generator=None,
                           **kwargs):
        """Generate by iterative unmasking. Returns [B, L] token ids, or a `DiffusionGenerationOutput`
        when `return_dict_in_generate=True`. Keyword arguments override `generation_config` fields."""
        config = self._diffusion_generation_config(generation_config, kwargs)
        mask_id = self.config.mask_token_id
        x, attention_mask = self._prepare_canvas(input_ids, attention_mask, config)
        batch, length = x.shape
        masked = (x == mask_id) & attention_mask.bool()
        schedule = get_noise_schedule(self.config.noise_schedule)

        # block index of every masked position: its rank among the row's masks // block_length
        rank = masked.long().cumsum(-1) - 1
        block_of = torch.where(masked, rank // config.block_length if config.block_length else 0, -1)
        num_blocks = int(block_of.max().item()) + 1 if masked.any() else 0
        steps_per_block = max(1, -(-config.num_steps // max(num_blocks, 1)))

        commit_step = torch.full_like(x, -1)
        committed_per_step, history = [], []
        num_model_calls, step = 0, 0
        eos_id = self.config.eos_token_id
        pad_id = self.config.pad_token_id if self.config.pad_token_id is not None else eos_id
        progress = None
        if config.show_progress:
            from tqdm.auto import tqdm
            progress = tqdm(total=num_blocks * steps_per_block, desc="diffusion sampling", leave=False)

        for block in range(num_blocks):
            in_block = block_of == block
            counts = unmask_counts(in_block.sum(-1), steps_per_block, schedule, config.step_schedule)
            for block_step in range(steps_per_block):
                candidates = in_block & (x == mask_id)
                rows = candidates.any(-1).nonzero().squeeze(-1)
                if rows.numel() == 0:
                    break
                logits = self._active_logits(x[rows], attention_mask[rows], candidates[rows])
                num_model_calls += 1
                tokens, confidence = propose_tokens(logits, config, generator)
                # scatter proposals back to a [rows, L] grid; non-candidates get -inf confidence
                sub = candidates[rows]
                grid_conf = torch.full(sub.shape, float("-inf"), device=x.device)
                grid_conf[sub] = confidence
                grid_tok = x[rows].clone()
                grid_tok[sub] = tokens
                k = counts[rows, block_step]
                if block_step == steps_per_block - 1:
                    k = sub.sum(-1)  # last step of a block commits everything left in it
                if config.confidence_threshold is not None:
                    above = (grid_conf > config.confidence_threshold).sum(-1)
                    k = torch.maximum(torch.maximum(k, above), torch.ones_like(k))
                order = grid_conf.argsort(dim=-1, descending=True, stable=True)
                take = torch.arange(length, device=x.device)[None, :] < k[:, None]
                commit = torch.zeros_like(sub).scatter(-1, order, take) & sub
                x_rows = x[rows]
                x_rows[commit] = grid_tok[commit]
                x[rows] = x_rows
                cs = commit_step[rows]
                cs[commit] = step
                commit_step[rows] = cs
                committed_per_step.append(int(commit.sum()))
                if config.stop_at_eos and eos_id is not None:
                    self._finish_rows_at_eos(x, masked, eos_id, pad_id, mask_id, commit_step, step)
                if config.output_history:
                    history.append(x.clone())
                step += 1
                if progress is not None:
                    progress.update(1)
        if progress is not None:
            progress.close()

        if not config.return_dict_in_generate:
            return x
        return DiffusionGenerationOutput(
            sequences=x, commit_step=commit_step, num_model_calls=num_model_calls,
            committed_per_step=torch.tensor(committed_per_step, dtype=torch.long),
            history=tuple(history) if config.output_history else None)

    @staticmethod
    def _finish_rows_at_eos(x, generated, eos_id, pad_id, mask_id, commit_step, step):
        """Rows whose first generated EOS has no undecided position before it: pad everything after it."""
        is_eos = generated & (x == eos_id)
        has_eos = is_eos.any(-1)
        if not has_eos.any():
            return
        first_eos = torch.where(is_eos, torch.arange(x.shape[1], device=x.device), x.shape[1]).min(-1).values
        positions = torch.arange(x.shape[1], device=x.device)[None, :]
        undecided_before = ((x == mask_id) & (positions < first_eos[:, None])).any(-1)
        done = has_eos & ~undecided_before
        after = done[:, None] & generated & (positions > first_eos[:, None])
        fill = after & (x == mask_id)
        commit_step[fill] = step
        x[after] = pad_id
