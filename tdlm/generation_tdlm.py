"""Sampling from a masked-diffusion LM: `DiffusionGenerationConfig` + `DiffusionGenerationMixin`.

Start from the input with masks where text is wanted (appended new tokens, or masks anywhere for
infilling). Each step runs the model, proposes a token for every masked position of the row's current
block, and commits the most confident ones (the remasking rule); how many are committed at step k follows
the step schedule (`schedules.unmask_counts`), counted per row, so a row's output never depends on the
rest of its batch. Rows with nothing to commit at a step skip the model call, finished rows leave the
batch, and the LM head runs only where its output is used (`_commit_step`). With `cache`, the backbone reuses
keys/values outside the current block across its steps (`BlockKVCache`, Fast-dLLM).

As in Dream's generation utilities, `diffusion_generate` only sets up (options, canvas, hooks) and `_sample`
runs the loop, which calls per-step hooks: a logits hook before proposals are drawn and a tokens hook after
each step's commits. Classifier-free guidance (`ClassifierFreeGuidance`) and padding after EOS (`PadAfterEOS`)
are such hooks; callers can add their own.

Shipped as remote code next to the weights: imports only torch, transformers and relative siblings.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GenerationConfig
from transformers.utils import ModelOutput

from .configuration_tdlm import InvalidConfigValue
from .schedules import STEP_SCHEDULES, add_to_registry, get_noise_schedule, unmask_counts


# ---------------------------------------------------------------------------------------------
# Remasking rules: which masked positions to commit first
# ---------------------------------------------------------------------------------------------
def _low_confidence(logits, tokens, generator=None):
    """p(proposal); exp(logit - logsumexp) needs no [N, V] softmax."""
    return (logits.gather(-1, tokens[:, None]).squeeze(-1) - logits.logsumexp(-1)).exp()


def _margin(logits, tokens, generator=None):
    """Top-1 minus top-2 probability."""
    top2 = (logits.topk(2, dim=-1).values - logits.logsumexp(-1)[:, None]).exp()
    return top2[:, 0] - top2[:, 1]


def _entropy(logits, tokens, generator=None):
    """Minus the entropy of the proposal distribution."""
    probs = logits.softmax(-1)
    return (probs * probs.clamp_min(1e-30).log()).sum(-1)


def _random(logits, tokens, generator=None):
    """Uniform noise: a random order."""
    return torch.rand(tokens.shape, generator=generator, device=logits.device)


# name -> confidence(logits [N, V] float, after top-k/top-p and with the mask token at -inf; tokens [N], the
# proposals; generator) -> [N]; larger is committed first
REMASKING_RULES = {"low_confidence": _low_confidence, "margin": _margin, "entropy": _entropy, "random": _random}


def register_remasking_rule(name: str, confidence=None):
    """Add a remasking rule `confidence(logits, tokens, generator) -> [N]` (see `REMASKING_RULES`). Usable as
    `register_remasking_rule("name", fn)` or as a decorator `@register_remasking_rule("name")`; the name then
    works as `remasking` in `diffusion_generate`, the YAML's sampling section and `tdlm-generate --remasking`."""
    return add_to_registry(REMASKING_RULES, "remasking rule", name, confidence)


CACHE_MODES = ("prefix", "dual")
# the built-in rules whose proposals and confidence a chunked pass over the vocabulary gives (`streamed_proposals`);
# "entropy" is left out: its streamed sum differs from the softmax's by float rounding, enough to reorder near-equal
# entropies
STREAMED_RULES = {"low_confidence": _low_confidence, "margin": _margin}
PROPOSAL_CHUNK_SIZE = 8192  # vocabulary columns per chunk of `streamed_proposals`: bounds its [rows, chunk] buffer
# Hugging Face generation options that diffusion sampling reads; any other one set would be silently ignored, so
# `diffusion_generate` refuses it. (Older transformers saved these neutral values in generation_config.json.)
HF_OPTIONS_USED = ("max_new_tokens", "max_length", "num_return_sequences", "do_sample", "temperature", "top_k",
                   "top_p", "return_dict_in_generate", "eos_token_id", "pad_token_id", "bos_token_id")
HF_NEUTRAL_VALUES = {"num_beams": 1, "num_beam_groups": 1, "repetition_penalty": 1.0, "length_penalty": 1.0,
                     "min_length": 0, "no_repeat_ngram_size": 0, "typical_p": 1.0, "diversity_penalty": 0.0,
                     "encoder_repetition_penalty": 1.0, "encoder_no_repeat_ngram_size": 0, "epsilon_cutoff": 0.0,
                     "eta_cutoff": 0.0}


class DiffusionGenerationConfig(GenerationConfig):
    """Sampling options of `diffusion_generate` (saved as `generation_config.json`).

    Args:
        num_steps: budget of sampling steps (model calls); all masks are committed within it.
        step_schedule: "cosine" (few tokens first, many at the end; default), "linear", or any name added with
            `schedules.register_step_schedule`.
        remasking: which masked positions to commit: "low_confidence" (highest probability of the
            proposal), "margin" (top-1 minus top-2 probability), "entropy" (lowest entropy), "random", or any name
            added with `register_remasking_rule`.
        confidence_threshold: also commit every proposal whose confidence exceeds it, at least one per
            step (Fast-dLLM style parallel decoding); the step schedule still gives the minimum per step.
        block_length: semi-autoregressive decoding in blocks of this many masks, left to right; the
            step budget is split evenly over a row's blocks.
        temperature: 0 for greedy proposals; otherwise Gumbel-max sampling (float64 noise) at this
            temperature, after `top_k` / `top_p` filtering.
        stop_at_eos: once a row commits an EOS at a generated position, every generated position after
            its first such EOS becomes `pad_token_id` (EOS when there is no pad) and needs no more calls.
        cfg_scale: classifier-free guidance as in LLaDA (Nie et al. 2025): logits u + (1 + cfg_scale) (c - u),
            where c are the logits given the input and u those with every given (prompt) token masked; 0 (default)
            turns it off. Applied by the `ClassifierFreeGuidance` logits hook: each step runs the model a second
            time, on the same rows with their prompt masked.
        cache: Fast-dLLM's approximate KV caches (Wu et al. 2025) for semi-autoregressive decoding: "prefix" reuses
            the keys/values before the current block across its steps, "dual" also those after it; both are
            refreshed by a full forward whenever a row starts a new block. None (default): every step runs the
            whole canvas.
        show_progress: tqdm bar over steps.
        output_history: keep the canvas after every step (`history` of the output dict).
    Also used, with Hugging Face's meaning: `max_new_tokens`, `max_length` (unconditional length), `do_sample`
    (False: greedy, temperature 0; True: temperature 1 unless set), `num_return_sequences` (samples per prompt, or
    the unconditional batch size), `return_dict_in_generate`, `eos_token_id`, `pad_token_id`. Any other
    `GenerationConfig` option (beams, penalties, ...) is refused rather than ignored.
    """

    def __init__(self, **kwargs):
        self.num_steps = kwargs.pop("num_steps", 64)
        self.step_schedule = kwargs.pop("step_schedule", "cosine")
        self.remasking = kwargs.pop("remasking", "low_confidence")
        self.confidence_threshold = kwargs.pop("confidence_threshold", None)
        self.block_length = kwargs.pop("block_length", None)
        self.cfg_scale = kwargs.pop("cfg_scale", 0.0)
        self.stop_at_eos = kwargs.pop("stop_at_eos", False)
        self.cache = kwargs.pop("cache", None)
        self.show_progress = kwargs.pop("show_progress", False)
        self.output_history = kwargs.pop("output_history", False)
        kwargs.setdefault("temperature", 0.0)
        kwargs.setdefault("top_k", None)
        kwargs.setdefault("top_p", None)
        super().__init__(**kwargs)

    @classmethod
    def for_model(cls, model_config, **options) -> "DiffusionGenerationConfig":
        """Sampling options for a model: its special token ids, and its max_position_embeddings as max_length."""
        return cls(**options, bos_token_id=model_config.bos_token_id, eos_token_id=model_config.eos_token_id,
                   pad_token_id=model_config.pad_token_id, max_length=model_config.max_position_embeddings)

    def validate(self, strict: bool = False, **kwargs):
        # GenerationConfig's own checks assume autoregressive sampling (do_sample flags, beams); ours differ.
        # Non-finite numbers are refused: temperature=inf never finishes, nan silently proposes token 0.
        def fail(field, message):
            raise InvalidConfigValue("DiffusionGenerationConfig", field, f"{message}, got {getattr(self, field)!r}")

        def is_int(value):
            return isinstance(value, int) and not isinstance(value, bool)

        def is_number(value):
            return is_int(value) or (isinstance(value, float) and math.isfinite(value))

        for field in ("num_steps", "top_k", "block_length", "max_new_tokens"):
            value = getattr(self, field)
            if (value is not None or field == "num_steps") and not (is_int(value) and value >= 1):
                fail(field, "must be an integer >= 1")
        if self.step_schedule not in STEP_SCHEDULES:
            fail("step_schedule", f"must be one of {tuple(STEP_SCHEDULES)}")
        if self.remasking not in REMASKING_RULES:
            fail("remasking", f"must be one of {tuple(REMASKING_RULES)}")
        if self.cache not in (None, *CACHE_MODES):
            fail("cache", f"must be None or one of {CACHE_MODES}")
        if self.top_p is not None and not (is_number(self.top_p) and 0.0 < self.top_p <= 1.0):
            fail("top_p", "must lie in (0, 1]")
        if self.confidence_threshold is not None and not (is_number(self.confidence_threshold)
                                                          and 0.0 <= self.confidence_threshold <= 1.0):
            fail("confidence_threshold", "must lie in [0, 1]")
        for field in ("temperature", "cfg_scale"):
            value = getattr(self, field)
            if (value is not None or field == "cfg_scale") and not (is_number(value) and value >= 0):
                fail(field, "must be a finite number >= 0")


@dataclass
class DiffusionGenerationOutput(ModelOutput):
    """Result of `diffusion_generate(..., return_dict_in_generate=True)`.

    sequences: [B, L] final tokens.
    commit_step: [B, L] step at which each position was decided (-1 for positions given in the input):
        the denoising convergence of every position.
    committed_per_step: [B, K] proposals committed by each row at each of the K steps run (positions
        padded after EOS are not counted).
    num_model_calls: steps that ran the model (each on the sub-batch of rows that had something to commit; with
        guidance, each of them also ran the unconditional pass).
    row_model_calls: [B] such steps each row took part in.
    history: per-step [B, L] canvases when `output_history=True`.
    """

    sequences: torch.LongTensor | None = None
    commit_step: torch.LongTensor | None = None
    committed_per_step: torch.LongTensor | None = None
    num_model_calls: int | None = None
    row_model_calls: torch.LongTensor | None = None
    history: tuple[torch.LongTensor, ...] | None = None


def check_token_ids(input_ids: torch.Tensor, vocab_size: int) -> None:
    """Refuse ids outside [0, vocab_size) up front (the embedding would raise a bare IndexError, or on CUDA a
    device-side assert)."""
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab_size):
        raise ValueError(f"input_ids must lie in [0, vocab_size={vocab_size}), got ids from {int(input_ids.min())} "
                         f"to {int(input_ids.max())}")


def _filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        sorted_probs = sorted_logits.softmax(-1)
        drop_sorted = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # keep the smallest set reaching top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _gumbel(shape, generator, device):
    """Gumbel(0, 1) noise in float64 (float32 uniforms would cut off the tail of rare tokens)."""
    uniform = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
    return -torch.log(-torch.log(uniform.clamp(1e-300, 1.0 - 1e-16)))


def sample_proposals(logits, config: DiffusionGenerationConfig, generator=None):
    """(filtered float logits, proposed tokens) for rows of logits [N, V]: `top_k` / `top_p` filtering, then argmax
    (temperature 0) or Gumbel-max sampling at `config.temperature`."""
    logits = _filter_logits(logits.float(), config.top_k, config.top_p)
    if config.temperature:
        tokens = (logits.double() / config.temperature + _gumbel(logits.shape, generator, logits.device)).argmax(-1)
    else:
        tokens = logits.argmax(-1)
    return logits, tokens


def propose_tokens(logits, config: DiffusionGenerationConfig, generator=None):
    """Proposed x_0 tokens and their confidence under `config.remasking` (`REMASKING_RULES`) for rows of
    logits [N, V]."""
    logits, tokens = sample_proposals(logits, config, generator)
    return tokens, REMASKING_RULES[config.remasking](logits, tokens, generator).float()


def streamed_proposals(hidden, weight, config: DiffusionGenerationConfig, mask_id: int, generator=None,
                       chunk_size: int = PROPOSAL_CHUNK_SIZE):
    """`propose_tokens` of the logits `hidden [N, H] @ weight[V, H].T` (mask token at -inf) for the rules in
    `STREAMED_RULES` without top-k / top-p, computed over the vocabulary in chunks so that the [N, V] logits never
    exist at once: a running argmax (of logits / temperature + Gumbel noise when sampling), an online logsumexp
    and the top-2 logits ("margin").
    Greedy tokens equal `propose_tokens`'s (ties to the lowest id, as argmax); confidences agree to float rounding;
    sampled tokens are equal in distribution (the noise is drawn chunk by chunk)."""
    n, vocab = hidden.shape[0], weight.shape[0]
    float_kwargs = {"device": hidden.device, "dtype": torch.float32}
    best = torch.full((n,), float("-inf"), device=hidden.device,
                      dtype=torch.float64 if config.temperature else torch.float32)
    tokens = torch.zeros(n, dtype=torch.long, device=hidden.device)
    token_logit = torch.zeros(n, **float_kwargs)
    running_max = torch.full((n,), float("-inf"), **float_kwargs)
    exp_sum = torch.zeros(n, **float_kwargs)
    top2 = torch.full((n, 2), float("-inf"), **float_kwargs)
    for start in range(0, vocab, chunk_size):
        logits = F.linear(hidden, weight[start:start + chunk_size]).float()
        if start <= mask_id < start + logits.shape[1]:
            logits[:, mask_id - start] = float("-inf")
        score = logits
        if config.temperature:
            score = logits.double() / config.temperature + _gumbel(logits.shape, generator, logits.device)
        chunk_best, index = score.max(-1)
        better = chunk_best > best  # strict: an equal score later in the vocabulary loses, as in argmax
        best = torch.where(better, chunk_best, best)
        tokens = torch.where(better, index + start, tokens)
        token_logit = torch.where(better, logits.gather(-1, index[:, None]).squeeze(-1), token_logit)
        new_max = torch.maximum(running_max, logits.amax(-1))
        rescale = torch.where(torch.isinf(running_max), 0.0, (running_max - new_max).exp())
        exps = (logits - torch.where(torch.isinf(new_max), 0.0, new_max)[:, None]).exp()
        exp_sum = exp_sum * rescale + exps.sum(-1)
        if config.remasking == "margin":
            top2 = torch.cat([top2, logits.topk(min(2, logits.shape[1]), dim=-1).values], -1).topk(2, dim=-1).values
        running_max = new_max
    log_normaliser = running_max + exp_sum.log()
    if config.remasking == "margin":
        top2 = (top2 - log_normaliser[:, None]).exp()
        return tokens, top2[:, 0] - top2[:, 1]
    return tokens, (token_logit - log_normaliser).exp()


def _block_plan(masked, block_length, num_steps, schedule, step_schedule):
    """Per-row block layout and unmasking counts.

    Returns block_of [B, L] (block index of every masked position, -1 elsewhere; the r-th mask of a row
    is in block r // block_length), steps [B, NB] (steps allotted to each block: the row's budget split
    as evenly as possible, at least one per block) and counts [B, NB, S] (tokens to commit at each step
    of each block, from `unmask_counts`; rows and blocks are independent of each other).
    """
    rank = masked.long().cumsum(-1) - 1
    block_of = torch.where(masked, rank // block_length if block_length else torch.zeros_like(rank), -1)
    num_blocks_row = block_of.max(-1).values + 1  # [B], 0 for rows without masks
    num_blocks = max(int(num_blocks_row.max().item()), 1)
    block_ids = torch.arange(num_blocks, device=masked.device)
    sizes = (block_of[:, :, None] == block_ids).sum(1)  # [B, NB]
    blocks = num_blocks_row.clamp_min(1)[:, None]
    steps = num_steps // blocks + (block_ids[None, :] < num_steps % blocks).long()
    steps = torch.where(block_ids[None, :] < num_blocks_row[:, None], steps.clamp_min(1), 0)
    counts = torch.zeros(*sizes.shape, max(int(steps.max().item()), 1), dtype=torch.long, device=masked.device)
    for s in steps.unique().tolist():
        if s > 0:
            chosen = steps == s
            counts[chosen, :s] = unmask_counts(sizes[chosen], s, schedule, step_schedule)
    return block_of, steps, counts



class UnmaskPlan:
    """Which masks each row may commit at each step, and how many: a row works on its lowest block that still
    has masks and follows that block's share of the step schedule, counted per row (never per batch)."""

    def __init__(self, generated, config: DiffusionGenerationConfig, noise_schedule):
        self.block_of, self.block_steps, self.counts = _block_plan(generated, config.block_length, config.num_steps,
                                                                   noise_schedule, config.step_schedule)
        self.at_least_one = config.confidence_threshold is not None
        batch = generated.shape[0]
        self.rows = torch.arange(batch, device=generated.device)
        self.current_block = torch.full((batch,), -1, dtype=torch.long, device=generated.device)
        self.block_step = torch.zeros(batch, dtype=torch.long, device=generated.device)

    @property
    def max_steps(self) -> int:
        return int(self.block_steps.sum(-1).max())

    def next_step(self, remaining):
        """For the bool [B, L] masks still to decide: candidates [B, L] (the masks of each row's current block)
        and k [B] (how many of them to commit now; 0 for finished rows)."""
        block = torch.where(remaining, self.block_of, self.block_of.new_tensor(1 << 30)).min(-1).values
        unfinished = remaining.any(-1)
        block = torch.where(unfinished, block, -1)
        block_step = torch.where(block == self.current_block, self.block_step, 0)  # a new block restarts its schedule
        candidates = remaining & (self.block_of == block[:, None])
        safe_block = block.clamp_min(0)
        allotted = self.block_steps[self.rows, safe_block]
        k = self.counts[self.rows, safe_block, block_step.clamp_max(self.counts.shape[-1] - 1)]
        k = torch.where(block_step >= allotted - 1, candidates.sum(-1), k)  # a block's last step commits the rest
        if self.at_least_one:
            k = k.clamp_min(1)
        self.current_block, self.block_step = block, block_step + 1
        return candidates, torch.where(unfinished, k, 0)


def most_confident(positions, confidence, k, threshold=None):
    """Bool [b, L]: in each row, the k[row] `positions` with the highest `confidence` (given in row-major order of
    `positions`; ties to the leftmost), and also every one above `threshold`."""
    grid = torch.full(positions.shape, float("-inf"), device=positions.device)
    grid[positions] = confidence
    if threshold is not None:
        k = torch.maximum(k, (grid > threshold).sum(-1))
    order = grid.argsort(dim=-1, descending=True, stable=True)
    take = torch.arange(positions.shape[1], device=positions.device)[None, :] < k[:, None]
    return torch.zeros_like(positions).scatter(-1, order, take) & positions


class BlockKVCache:
    """Fast-dLLM's approximate KV caches (Wu et al. 2025, NVlabs/Fast-dLLM) for semi-autoregressive decoding.

    At the first step of a row's block (`prepare` sees a block other than the one its keys/values were computed for)
    the model runs on the whole canvas and every layer's keys/values are recorded. At the block's later steps only
    a window runs: "prefix" from the block's first position to the end of the canvas (the prefix's keys/values come
    from the cache), "dual" just the block (prefix and suffix from the cache). Cached keys/values are stale by the
    tokens committed since the refresh; that is the approximation.

    The attention layers see it as a cache: `get_seq_length()` (keys not recomputed) and `update(key, value,
    layer_idx)` (the keys/values to attend to, in canvas order). Holds [B, heads, L, head_dim] per layer.
    """

    def __init__(self, mode: str, batch: int, length: int, device):
        self.mode, self.length = mode, length
        self.keys, self.values = {}, {}
        self.built_for = torch.full((batch,), -1, dtype=torch.long, device=device)  # each row's cached block
        self.rows, self.window, self.refreshing = None, (0, length), True

    def prepare(self, rows, block, in_block):
        """Set up a step of the sub-batch `rows` [b] whose current blocks are `block` [b] and cover bool
        `in_block` [b, L]; returns the (start, end) window of canvas positions the model runs on."""
        self.rows = rows
        self.refreshing = bool((self.built_for[rows] != block).any())
        if self.refreshing:
            self.built_for[rows] = block
            self.window = (0, self.length)
        else:
            columns = in_block.any(0).nonzero().squeeze(-1)
            end = self.length if self.mode == "prefix" else int(columns.max()) + 1
            self.window = (int(columns.min()), end)
        return self.window

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length - (self.window[1] - self.window[0])

    def update(self, key, value, layer_idx: int):
        if self.refreshing:
            if layer_idx not in self.keys:
                shape = (self.built_for.shape[0], *key.shape[1:])
                self.keys[layer_idx] = key.new_zeros(shape)
                self.values[layer_idx] = value.new_zeros(shape)
            self.keys[layer_idx][self.rows] = key
            self.values[layer_idx][self.rows] = value
            return key, value
        start, end = self.window
        keys, values = self.keys[layer_idx][self.rows], self.values[layer_idx][self.rows]  # copies: the cache stays
        keys[:, :, start:end] = key
        values[:, :, start:end] = value
        return keys, values


# ---------------------------------------------------------------------------------------------
# Per-step hooks: logits_hook(step, tokens, logits, positions) -> logits, tokens_hook(step, tokens, committed) -> tokens
# ---------------------------------------------------------------------------------------------
class ClassifierFreeGuidance:
    """Logits hook of `cfg_scale`: guidance as in LLaDA (Nie et al. 2025), u + (1 + scale) (c - u), where c are the
    step's logits and u the model's logits at the same positions with every prompt token masked.

    Built for one batch: `attention_mask` and `prompt` (the given tokens, which guidance masks) are [B, L]. Each
    call runs the model once more, on the rows that have logits this step.
    """

    def __init__(self, model, attention_mask, prompt, scale: float):
        self.model, self.attention_mask, self.prompt, self.scale = model, attention_mask, prompt, scale

    def __call__(self, step, tokens, logits, positions):
        mask_id = self.model.config.mask_token_id
        rows = positions.any(-1)
        unconditional = self.model._active_logits(tokens[rows].masked_fill(self.prompt[rows], mask_id),
                                                  self.attention_mask[rows], positions[rows])
        guided = unconditional + (1.0 + self.scale) * (logits - unconditional)
        guided[:, mask_id] = float("-inf")  # -inf in both: inf - inf
        return guided


class PadAfterEOS:
    """Tokens hook of `stop_at_eos`: once a row has a generated EOS, every generated position after its first one
    becomes `pad_id`, decided at that step (no more model calls for them). `generated` is bool [B, L]."""

    def __init__(self, generated, eos_id: int, pad_id: int):
        self.generated, self.eos_id, self.pad_id = generated, eos_id, pad_id

    def __call__(self, step, tokens, committed):
        is_eos = self.generated & (tokens == self.eos_id)
        if not is_eos.any():
            return tokens
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        first_eos = torch.where(is_eos, positions, tokens.shape[1]).min(-1).values
        return tokens.masked_fill(self.generated & (positions[None, :] > first_eos[:, None]), self.pad_id)


def _resolve_do_sample(values: dict, explicit: dict) -> None:
    """Hugging Face's `do_sample` in terms of `temperature` (0 = greedy), in place: do_sample=True samples at
    temperature 1 unless one is set, do_sample=False is greedy; a temperature passed beside a contradicting do_sample
    is refused rather than ignored."""
    do_sample, temperature = values.get("do_sample"), values.get("temperature") or 0.0
    if do_sample is None or bool(temperature) == bool(do_sample):
        return
    if "temperature" in explicit:
        raise ValueError(f"do_sample={do_sample} contradicts temperature={explicit['temperature']!r} "
                         f"(temperature 0 is greedy); drop one of them")
    values["temperature"] = 1.0 if do_sample else 0.0


class DiffusionGenerationMixin:
    """Adds `diffusion_generate` to a masked-diffusion model (`self.model` backbone + `self.lm_head`)."""

    generation_config_class = DiffusionGenerationConfig

    def adjust_generation_fn(self, generation_config, from_auto_class, from_pipeline, pretrained_model_name_or_path,
                             *args, **kwargs):
        """Called by `from_pretrained`: restore the sampling defaults saved in `generation_config.json`.
        (Download keyword arguments vary across transformers 5.x releases: only the common ones are used.)"""
        if generation_config is not None:
            self.generation_config = DiffusionGenerationConfig.from_dict(generation_config.to_dict())
        elif pretrained_model_name_or_path is not None:
            download = {key: kwargs[key] for key in ("cache_dir", "force_download", "proxies", "local_files_only",
                                                     "token", "revision", "subfolder") if kwargs.get(key) is not None}
            try:
                self.generation_config = DiffusionGenerationConfig.from_pretrained(pretrained_model_name_or_path,
                                                                                   **download)
            except OSError:  # no generation_config.json: keep the defaults built in __init__
                pass

    def _diffusion_generation_config(self, generation_config, kwargs) -> DiffusionGenerationConfig:
        base = generation_config if generation_config is not None else getattr(self, "generation_config", None)
        if base is None:
            base = DiffusionGenerationConfig()
        known = set(DiffusionGenerationConfig().to_dict()) | set(base.to_dict())
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"diffusion_generate got unknown options {unknown}; see DiffusionGenerationConfig")
        values = base.to_dict()
        values.update(kwargs)
        for key in ("transformers_version", "_from_model_config"):
            values.pop(key, None)
        _resolve_do_sample(values, kwargs)
        config = DiffusionGenerationConfig(**values)
        config.validate()
        own = set(DiffusionGenerationConfig().to_dict()) - set(GenerationConfig().to_dict())
        for key, value in sorted(values.items()):
            if (key not in own and key not in HF_OPTIONS_USED and value is not None and value is not False
                    and HF_NEUTRAL_VALUES.get(key, object()) != value):
                raise ValueError(f"diffusion_generate does not support the generation option {key}={value!r} "
                                 f"(it would be ignored); see DiffusionGenerationConfig")
        return config

    def _prepare_canvas(self, input_ids, attention_mask, config, batch_size):
        """The [B, L] canvas (prompt + appended masks, or the given input for infilling) and its mask."""
        mask_id = self.config.mask_token_id
        if mask_id is None:
            raise ValueError("this model's config has no mask_token_id; diffusion sampling needs one")
        device = self.device
        if input_ids is None:
            if attention_mask is not None:
                raise ValueError("attention_mask was given without input_ids")
            batch = batch_size or 1  # times num_return_sequences below
            length = config.max_new_tokens or config.max_length
            if not length:
                raise ValueError("unconditional generation needs max_length or max_new_tokens")
            input_ids = torch.full((batch, length), mask_id, dtype=torch.long, device=device)
        elif batch_size is not None and batch_size != input_ids.shape[0]:
            raise ValueError(f"batch_size={batch_size} does not match input_ids batch {input_ids.shape[0]}")
        input_ids = torch.as_tensor(input_ids, device=device).clone()  # the sampler writes into it
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape [batch, seq_len], got {tuple(input_ids.shape)}")
        check_token_ids(input_ids, self.config.vocab_size)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = torch.as_tensor(attention_mask, device=device)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} does not match "
                             f"input_ids shape {tuple(input_ids.shape)}")
        if config.num_return_sequences and config.num_return_sequences > 1:  # as generate(): samples per prompt
            input_ids = input_ids.repeat_interleave(config.num_return_sequences, dim=0)
            attention_mask = attention_mask.repeat_interleave(config.num_return_sequences, dim=0)
        # an all-mask input is itself the canvas; an empty prompt ([B, 0]) is not: masks are appended to it
        is_canvas = input_ids.shape[1] > 0 and bool((input_ids == mask_id).all())
        new_tokens = 0 if is_canvas else (config.max_new_tokens or 0)
        if new_tokens:
            masks = torch.full((input_ids.shape[0], new_tokens), mask_id, dtype=torch.long, device=device)
            input_ids = torch.cat([input_ids, masks], dim=1)
            attention_mask = torch.cat([attention_mask, torch.ones_like(masks)], dim=1)
        elif not ((input_ids == mask_id) & attention_mask.bool()).any():
            raise ValueError("nothing to generate: set max_new_tokens or put mask tokens in input_ids")
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(f"prompt ({input_ids.shape[1] - new_tokens} tokens) plus max_new_tokens ({new_tokens}) "
                             f"is {input_ids.shape[1]} tokens, more than the model's "
                             f"max_position_embeddings={self.config.max_position_embeddings}")
        return input_ids, attention_mask

    def _eos_and_pad(self, config):
        """(eos id, pad id) of `stop_at_eos`: the generation config's, else the model config's; pad defaults to EOS."""
        eos_id = config.eos_token_id if config.eos_token_id is not None else self.config.eos_token_id
        if isinstance(eos_id, (list, tuple)):
            eos_id = eos_id[0]
        if eos_id is None:
            raise ValueError("stop_at_eos=True needs an eos_token_id in the generation config or model config")
        pad_id = config.pad_token_id if config.pad_token_id is not None else self.config.pad_token_id
        return eos_id, eos_id if pad_id is None else pad_id

    def _active_hidden(self, tokens, attention_mask, positions, cache=None):
        """Final hidden states [N, H] at `positions` (bool [b, L]) of a sub-batch, in row-major order. The backbone
        runs on all tokens, or with a `BlockKVCache` (prepared for this step) on its window only."""
        if cache is None:
            return self.model(input_ids=tokens, attention_mask=attention_mask).last_hidden_state[positions]
        start, end = cache.window
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, start:end]  # as the full forward's
        hidden = self.model(input_ids=tokens[:, start:end], attention_mask=attention_mask, position_ids=position_ids,
                            cache=cache).last_hidden_state
        return hidden[positions[:, start:end]]

    def _active_logits(self, tokens, attention_mask, positions, cache=None):
        """Float logits only at `positions` (bool [b, L]) of a sub-batch, in row-major order, the mask token's at -inf:
        the head runs only where a proposal is needed (`_active_hidden`)."""
        logits = self.lm_head(self._active_hidden(tokens, attention_mask, positions, cache)).float()
        logits[:, self.config.mask_token_id] = float("-inf")
        return logits

    @torch.no_grad()
    def diffusion_generate(self, input_ids=None, attention_mask=None, generation_config=None, generator=None,
                           batch_size=None, logits_hook=None, tokens_hook=None, **kwargs):
        """Generate by iterative unmasking.

        Unconditional: `diffusion_generate(batch_size=B, max_length=L)`. Prompted: a left- or
        right-padded `input_ids` + `attention_mask` and `max_new_tokens` masks appended. Infilling: mask
        tokens anywhere in `input_ids` are filled, every other token kept. Keyword arguments override
        `generation_config` (default: `self.generation_config`). Returns [B, L] token ids, or a
        `DiffusionGenerationOutput` when `return_dict_in_generate=True`.

        Per-step hooks (the shape of Dream's `generation_logits_hook_func` / `generation_tokens_hook_func`):
            logits_hook(step, tokens, logits, positions) -> logits: called once at every step that runs the model,
                before proposals are drawn. `step` counts from 0; `tokens` is the [B, L] canvas (mask_token_id where
                still undecided); `positions` (bool [B, L]) are the places with logits this step: the masks of each
                row's current block, none in rows that skip the step; `logits` are float [N, V] at those places, in
                row-major order of `positions`. Return logits of the same shape (the mask token stays at -inf).
                Guidance (`cfg_scale`, `ClassifierFreeGuidance`) is such a hook and runs first. A logits hook makes the
                head run at every candidate (the full-logits route of `_commit_step`).
            tokens_hook(step, tokens, committed) -> tokens: called after every step's commits with the [B, L]
                canvas and bool [B, L] `committed` (what this step committed); returns the canvas (it may edit it
                in place). Masks it fills count as decided at this step; masks it puts back are sampled again (so
                it must not put masks back forever). `stop_at_eos` (`PadAfterEOS`) is such a hook and runs first.
        Hooks see whole rows: a hook that treats each row on its own keeps a row's output independent of its batch.
        """
        config = self._diffusion_generation_config(generation_config, kwargs)
        if input_ids is not None and "max_length" in kwargs:
            raise ValueError("max_length sets the length of unconditional samples; with input_ids set max_new_tokens "
                             "(or put mask tokens in input_ids)")
        x, attention_mask = self._prepare_canvas(input_ids, attention_mask, config, batch_size)
        generated = (x == self.config.mask_token_id) & attention_mask.bool()
        logits_hooks, tokens_hooks = [], []
        if config.cfg_scale:
            prompt = attention_mask.bool() & ~generated
            logits_hooks.append(ClassifierFreeGuidance(self, attention_mask, prompt, config.cfg_scale))
        if config.stop_at_eos:
            tokens_hooks.append(PadAfterEOS(generated, *self._eos_and_pad(config)))
        for name, hook, hooks in (("logits_hook", logits_hook, logits_hooks),
                                  ("tokens_hook", tokens_hook, tokens_hooks)):
            if hook is not None:
                if not callable(hook):
                    raise TypeError(f"{name} must be callable, got {type(hook).__name__}")
                hooks.append(hook)
        return self._sample(x, attention_mask, generated, config, generator, logits_hooks, tokens_hooks)

    def _commit_step(self, step, x, attention_mask, rows, positions, k, config, generator, logits_hooks, cache):
        """One step of the sub-batch `rows`: (bool [b, L] what each of them commits, the committed tokens in row-major
        order). The LM head runs only where its output is used:
        - the built-in "random" order (no logits hooks): the order is noise, drawn first; the head runs at the
          committed rows only.
        - the built-in rules in `STREAMED_RULES` with a vocabulary above `PROPOSAL_CHUNK_SIZE`, no hooks and no
          top-k/top-p: the head streams over the vocabulary (`streamed_proposals`) without writing [rows, vocab]
          logits.
        - otherwise the logits at every candidate (`positions`), which the logits hooks may change.
        Greedy proposals are the same on every route; sampled ones equal in distribution."""
        inputs, candidates = (x[rows], attention_mask[rows]), positions[rows]
        threshold = config.confidence_threshold
        plain = not logits_hooks and config.top_k is None and config.top_p in (None, 1.0)
        rule = REMASKING_RULES[config.remasking]
        if rule is _random and not logits_hooks:
            confidence = torch.rand(int(candidates.sum()), generator=generator, device=x.device)
            commit = most_confident(candidates, confidence, k, threshold)
            return commit, sample_proposals(self._active_logits(*inputs, commit, cache=cache), config, generator)[1]
        head = self.lm_head
        if (plain and STREAMED_RULES.get(config.remasking) is rule and head.weight.shape[0] > PROPOSAL_CHUNK_SIZE
                and isinstance(head, torch.nn.Linear) and head.bias is None):
            hidden = self._active_hidden(*inputs, candidates, cache)
            proposals, confidence = streamed_proposals(hidden, head.weight, config, self.config.mask_token_id,
                                                       generator)
        else:
            logits = self._active_logits(*inputs, candidates, cache=cache)
            for hook in logits_hooks:
                logits = hook(step, x, logits, positions)
            logits[:, self.config.mask_token_id] = float("-inf")
            proposals, confidence = propose_tokens(logits, config, generator)
        commit = most_confident(candidates, confidence, k, threshold)
        return commit, proposals[commit[candidates]]

    def _sample(self, x, attention_mask, generated, config, generator=None, logits_hooks=(), tokens_hooks=()):
        """The denoising loop over the canvas `x` [B, L] (written in place): per step, the rows with something to
        commit run the model at their current block's masks, the logits hooks adjust the logits, the most confident
        proposals are committed, and the tokens hooks see the result."""
        plan = UnmaskPlan(generated, config, get_noise_schedule(self.config.noise_schedule))
        cache = BlockKVCache(config.cache, *x.shape, x.device) if config.cache else None
        mask_id = self.config.mask_token_id
        commit_step = torch.full_like(x, -1)
        row_model_calls = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        committed_per_step, history = [], []
        num_model_calls = 0
        progress = None
        if config.show_progress:
            from tqdm.auto import tqdm
            progress = tqdm(total=plan.max_steps, desc="diffusion sampling", leave=False)

        step = 0
        while True:
            remaining = (x == mask_id) & generated
            if not remaining.any():
                break
            candidates, k = plan.next_step(remaining)
            commit = torch.zeros_like(remaining)
            run = k > 0
            if run.any():  # rows whose schedule commits nothing this step skip the model call
                rows = run.nonzero().squeeze(-1)
                positions = candidates & run[:, None]
                if cache is not None:
                    block = plan.current_block[rows]
                    cache.prepare(rows, block, plan.block_of[rows] == block[:, None])
                commit[rows], proposals = self._commit_step(step, x, attention_mask, rows, positions, k[rows], config,
                                                            generator, logits_hooks, cache)
                x[commit] = proposals
                num_model_calls += 1
                row_model_calls[rows] += 1
            committed_per_step.append(commit.sum(-1))
            for hook in tokens_hooks:
                x = hook(step, x, commit)
                if x.shape != commit.shape:
                    raise ValueError(f"a tokens_hook returned shape {tuple(x.shape)}, expected {tuple(commit.shape)}")
            commit_step[remaining & (x != mask_id)] = step
            if config.output_history:
                history.append(x.clone())
            step += 1
            if progress is not None:
                progress.update(1)
        if progress is not None:
            progress.close()

        if not config.return_dict_in_generate:
            return x
        per_step = torch.stack(committed_per_step, 1) if committed_per_step else x.new_zeros(x.shape[0], 0)
        return DiffusionGenerationOutput(
            sequences=x, commit_step=commit_step, committed_per_step=per_step, num_model_calls=num_model_calls,
            row_model_calls=row_model_calls, history=tuple(history) if config.output_history else None)
