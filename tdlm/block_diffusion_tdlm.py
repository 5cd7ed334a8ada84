"""Block diffusion (BD3-LM, Arriola et al. 2025): attention masks, a KV cache of finished blocks, and the sampler.

A sequence is cut into blocks of B tokens (`config.bd_block_size`); the model is autoregressive over blocks and a
masked-diffusion model within a block. B = 1 is an AR model, B = L the bidirectional diffusion model.

    training:  x_t (+) x_0, 2L tokens, both halves at RoPE positions 0..L-1, one forward under `training_mask`
               (kuleshov-group/bd3lms `block_diff_mask`): a noisy block attends to itself (bidirectionally) and to
               the clean blocks before it; clean tokens attend block-causally. The loss is read at x_t's masks.
    sampling:  block by block; within a block the masked-diffusion steps of generation_tdlm.py (remasking rules,
               threshold, temperature / top-k / top-p); the finished blocks' keys and values are computed once, on
               the clean block, and kept in `BlockPrefixCache`.

Shipped as remote code next to the weights: imports only torch, transformers and relative siblings.
"""

import torch

from .generation_tdlm import (
    DiffusionGenerationMixin,
    DiffusionGenerationOutput,
    UnmaskPlan,
    most_confident,
    propose_tokens,
)
from .schedules import get_noise_schedule


# ---------------------------------------------------------------------------------------------
# Attention masks (boolean, True = attend)
# ---------------------------------------------------------------------------------------------
def _with_padding(mask: torch.Tensor, padding: torch.Tensor | None) -> torch.Tensor:
    """[Lq, Lk] mask -> [B, 1, Lq, Lk], padded keys (`padding` [B, Lk], 0 = pad) hidden; every query keeps itself
    when Lq == Lk so that a padded query's softmax stays finite."""
    mask = mask[None, None]
    if padding is None:
        return mask
    mask = mask & padding.bool()[:, None, None, :]
    if mask.shape[-1] == mask.shape[-2]:
        mask = mask | torch.eye(mask.shape[-1], dtype=torch.bool, device=mask.device)
    return mask


def training_mask(length: int, block_size: int, device=None, padding: torch.Tensor | None = None) -> torch.Tensor:
    """[1 or B, 1, 2L, 2L]: the x_t (+) x_0 mask, the union of bd3lms' three parts: block-diagonal (each half within
    its own block), offset block-causal (x_t block b sees x_0 blocks < b) and block-causal (x_0 block b sees x_0
    blocks <= b). `padding` ([B, L], 0 = pad) hides padded keys of both halves."""
    block = torch.arange(length, device=device) // block_size
    block = torch.cat([block, block])
    clean = torch.arange(2 * length, device=device) >= length
    bq, bk, cq, ck = block[:, None], block[None, :], clean[:, None], clean[None, :]
    mask = ((bq == bk) & (cq == ck)) | ((bq > bk) & ck & ~cq) | ((bq >= bk) & ck & cq)
    return _with_padding(mask, None if padding is None else padding.repeat(1, 2))


def block_causal_mask(length: int, block_size: int, device=None, padding: torch.Tensor | None = None) -> torch.Tensor:
    """[1 or B, 1, L, L]: position i sees position j iff block(j) <= block(i). A sequence of clean blocks with a
    partly masked last block under this mask is what the sampler sees (uncached)."""
    block = torch.arange(length, device=device) // block_size
    return _with_padding(block[None, :] <= block[:, None], padding)


# ---------------------------------------------------------------------------------------------
# KV cache of finished blocks
# ---------------------------------------------------------------------------------------------
class BlockPrefixCache:
    """Per-layer keys and values of the finished (clean) blocks, [B, H, P, D]. `update` (called by each attention
    layer) returns prefix + new keys/values; it keeps the new ones only while `storing` (the one forward of a
    finished clean block), so the denoising steps of the current block never enter the cache."""

    def __init__(self):
        self.keys, self.values = [], []
        self.storing = False
        self.rows = None  # a sub-batch's row indices while only those rows run

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.keys[layer_idx].shape[-2] if self.keys else 0

    def update(self, keys, values, layer_idx):
        if layer_idx >= len(self.keys):  # the first stored block
            if self.storing:
                self.keys.append(keys)
                self.values.append(values)
            return keys, values
        past_keys, past_values = self.keys[layer_idx], self.values[layer_idx]
        if self.rows is not None:
            past_keys, past_values = past_keys[self.rows], past_values[self.rows]
        keys, values = torch.cat([past_keys, keys], dim=-2), torch.cat([past_values, values], dim=-2)
        if self.storing:
            self.keys[layer_idx], self.values[layer_idx] = keys, values
        return keys, values


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------
class BlockDiffusionGenerationMixin(DiffusionGenerationMixin):
    """`diffusion_generate` for a block-diffusion model (`self.model` backbone, `self.lm_head`, config.bd_block_size):
    blocks left to right, each denoised by the masked-diffusion steps of `DiffusionGenerationConfig` (`num_steps` is
    the step budget of each block), given an exact KV cache of the blocks before it."""

    @torch.no_grad()
    def diffusion_generate(self, input_ids=None, attention_mask=None, generation_config=None, generator=None,
                           batch_size=None, use_cache: bool = True, **kwargs):
        """Generate block by block. Unconditional (`batch_size`, `max_length`), or after an unpadded prompt
        `input_ids` ([B, P], one length per batch) with `max_new_tokens` masks appended; masks inside `input_ids`
        are filled too (seeing only the blocks before them). Any length up to max_position_embeddings.
        `use_cache=False` recomputes the clean prefix at every step (same tokens, for checks and timing).
        Returns [B, T] ids, or a `DiffusionGenerationOutput` (`num_model_calls` counts denoising forwards, not the
        one forward that caches each finished block) when `return_dict_in_generate=True`."""
        config = self._diffusion_generation_config(generation_config, kwargs)
        if config.cfg_scale:
            raise ValueError("cfg_scale: classifier-free guidance is not implemented for block diffusion")
        if config.cache is not None:
            raise ValueError(f"cache={config.cache!r}: a block-diffusion model keeps an exact KV cache of its finished "
                             f"blocks (use_cache); the approximate prefix/dual caches are for masked diffusion")
        if config.block_length is not None:
            raise ValueError(f"block_length: a block-diffusion model samples in its own blocks of bd_block_size="
                             f"{self.config.bd_block_size}; leave block_length unset")
        x, attention_mask = self._prepare_canvas(input_ids, attention_mask, config, batch_size)
        if not attention_mask.bool().all():
            raise ValueError("attention_mask: block-diffusion sampling takes unpadded prompts (one length per batch)")
        mask_id, size = self.config.mask_token_id, self.config.bd_block_size
        generated = x == mask_id
        eos_id, pad_id = self._eos_and_pad(config) if config.stop_at_eos else (None, None)
        schedule = get_noise_schedule(self.config.noise_schedule)
        cache = BlockPrefixCache() if use_cache else None
        batch, total = x.shape
        commit_step = torch.full_like(x, -1)
        row_model_calls = torch.zeros(batch, dtype=torch.long, device=x.device)
        committed_per_step, history = [], []
        finished = torch.zeros(batch, dtype=torch.bool, device=x.device)  # rows past their first generated EOS
        num_model_calls = step = 0
        for lo in range(0, total, size):
            hi = min(lo + size, total)
            todo = generated[:, lo:hi] & ~finished[:, None]
            plan = UnmaskPlan(todo, config, schedule) if todo.any() else None
            while plan is not None:
                block = x[:, lo:hi]  # a view: commits write into x
                remaining = (block == mask_id) & todo
                if not remaining.any():
                    break
                candidates, k = plan.next_step(remaining)
                commit = torch.zeros_like(x, dtype=torch.bool)
                run = k > 0
                if run.any():  # rows whose schedule commits nothing this step skip the model call
                    rows = run.nonzero().squeeze(-1)
                    positions = candidates & run[:, None]
                    logits = self._block_logits(x, rows, lo, hi, positions[rows], cache)
                    proposals, confidence = propose_tokens(logits, config, generator)
                    chosen = torch.zeros_like(remaining)
                    chosen[rows] = most_confident(positions[rows], confidence, k[rows], config.confidence_threshold)
                    block[chosen] = proposals[chosen[positions]]
                    commit[:, lo:hi] = chosen
                    num_model_calls += 1
                    row_model_calls[rows] += 1
                commit_step[commit] = step
                committed_per_step.append(commit.sum(-1))
                if config.output_history:
                    history.append(x.clone())
                step += 1
            if eos_id is not None:
                finished = self._pad_after_eos(x, generated, finished, hi, eos_id, pad_id)
                if bool(finished.all()):
                    break
            if cache is not None and hi < total:
                self._cache_block(x[:, lo:hi], lo, cache)
        if eos_id is not None:  # blocks never reached by rows that stopped
            x[generated & (x == mask_id)] = pad_id
        if not config.return_dict_in_generate:
            return x
        per_step = torch.stack(committed_per_step, 1) if committed_per_step else x.new_zeros(batch, 0)
        return DiffusionGenerationOutput(
            sequences=x, commit_step=commit_step, committed_per_step=per_step, num_model_calls=num_model_calls,
            row_model_calls=row_model_calls, history=tuple(history) if config.output_history else None)

    def _block_logits(self, x, rows, lo, hi, positions, cache):
        """Float logits at `positions` (bool [b, hi - lo]) of block [lo, hi) of rows `rows`, mask token at -inf. With
        the cache, only the block runs (it sees every cached key, and itself); without, the whole prefix runs under
        the block-causal mask."""
        if cache is not None:
            cache.rows = None if len(rows) == x.shape[0] else rows
            hidden = self.model(input_ids=x[rows, lo:hi], cache=cache,
                                position_ids=torch.arange(lo, hi, device=x.device)[None]).last_hidden_state
            cache.rows = None
        else:
            mask = block_causal_mask(hi, self.config.bd_block_size, x.device)
            hidden = self.model(input_ids=x[rows, :hi], attention_mask=mask).last_hidden_state[:, lo:hi]
        logits = self.lm_head(hidden[positions]).float()
        logits[:, self.config.mask_token_id] = float("-inf")
        return logits

    def _cache_block(self, block, lo, cache):
        """The one forward of a finished clean block: its keys and values join the cache."""
        cache.storing = True
        self.model(input_ids=block, cache=cache, position_ids=torch.arange(lo, lo + block.shape[1],
                                                                             device=block.device)[None])
        cache.storing = False

    @staticmethod
    def _pad_after_eos(x, generated, finished, hi, eos_id, pad_id):
        """`stop_at_eos` up to position `hi`: generated positions after a row's first generated EOS become `pad_id`;
        returns the rows that now have one."""
        seen = x[:, :hi]
        is_eos = generated[:, :hi] & (seen == eos_id)
        positions = torch.arange(hi, device=x.device)
        first = torch.where(is_eos, positions, hi).min(-1).values
        seen[generated[:, :hi] & (positions[None, :] > first[:, None])] = pad_id
        return finished | is_eos.any(-1)
