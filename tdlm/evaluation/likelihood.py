"""Likelihoods of text under TDLM checkpoints, on the same footing for every objective.

Scoring convention: an eval stream of token ids is cut into non-overlapping blocks of L tokens, and every objective
scores all L tokens of each block (the objective classes in tdlm/objectives.py pick the estimator).
* AR (`training_mode="autoregressive"`): exact per-token NLL; the model's context token (BOS, else EOS;
  `config.ar_context_token`) goes in front of each block, so the block's first token is predicted from it. A
  checkpoint saved before that convention (ar_context_token False) scores L - 1 tokens per block, as it was trained;
  `num_tokens` says which.
* Block diffusion: the same NELBO with one t per block of B tokens, each block scored given the clean blocks
  before it (one forward over x_t (+) x_0).
* Diffusion: the continuous-time NELBO, an *upper bound* on the NLL in expectation, estimated by Monte Carlo
  over t with `num_samples` stratified (antithetic) times per block and a fixed seed. The masks and ELBO
  weights come from `tdlm.schedules.diffusion_targets`. The reported standard error uses the iid formula over
  a block's K draws, which is conservative for stratified draws. `time_epsilon` truncates t away from 0,
  which drops a bias of order time_epsilon * (CE of one token) per block.
* Diffusion, exact ordered likelihood: -log p(x) under left-to-right unmasking (chain rule, one model call
  per position): a proper likelihood of the model, for small eval sets.
* Conditional log-likelihood of a continuation given a context: AR exact (lm-eval's tokenisation and left
  truncation, so our numbers equal lm-eval's `hf` backend); diffusion by LLaDA's Monte-Carlo estimator: the
  number l of masked continuation tokens is stratified over 1..L, weight L/l, `mc_num` draws. The random
  numbers are seeded by (seed, context), so all choices of one question share the same masks (paired).
* is_greedy (LAMBADA's `acc`): AR, every continuation token is the argmax given the tokens before it; diffusion,
  LLaDA's `suffix_greedy_prediction`: from the context and L masks, commit one token per step (the argmax at the
  masked position whose argmax is most probable) and compare the L committed tokens with the continuation.
"""

import logging
import math
import zlib

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..schedules import block_diffusion_targets, get_noise_schedule, sample_times

logger = logging.getLogger(__name__)


def _progress(iterable, desc, total=None, disable=False):
    return tqdm(iterable, desc=desc, total=total, leave=False, disable=disable)


# ---------------------------------------------------------------------------------------------
# AR: exact NLL
# ---------------------------------------------------------------------------------------------
def with_context(blocks: torch.LongTensor, token_id: int | None) -> torch.LongTensor:
    """[N, L] -> [N, L + 1] with `token_id` in front (an AR model then predicts all L tokens); unchanged for None."""
    if token_id is None:
        return blocks
    return torch.cat([blocks.new_full((blocks.shape[0], 1), token_id), blocks], dim=1)


@torch.no_grad()
def ar_nll(model, blocks: torch.LongTensor, batch_size: int = 16, show_progress: bool = False,
           context_token_id: int | None = None) -> dict:
    """Exact next-token NLL over `blocks` ([N, L]): L scored tokens per block with `context_token_id` in front of each,
    L - 1 without."""
    model.eval()
    block_size = blocks.shape[1]
    blocks = with_context(blocks, context_token_id)
    if blocks.shape[1] > model.config.max_position_embeddings:
        raise ValueError(f"block_size: blocks of {block_size} tokens plus the context token need "
                         f"max_position_embeddings >= {block_size + 1}, the model has "
                         f"{model.config.max_position_embeddings}")
    total, count = 0.0, 0
    for start in _progress(range(0, len(blocks), batch_size), "AR NLL", disable=not show_progress):
        batch = blocks[start:start + batch_size].to(model.device)
        out = model(input_ids=batch, labels=batch)
        total += float(out.token_losses.double().sum())
        count += out.token_losses.numel()
    nll = total / count
    return {"kind": "exact_nll", "nll": nll, "perplexity": math.exp(nll), "num_tokens": count,
            "num_blocks": len(blocks), "block_size": block_size, "context_token": context_token_id is not None}


# ---------------------------------------------------------------------------------------------
# Diffusion: Monte-Carlo NELBO
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def diffusion_nelbo_samples(model, blocks: torch.LongTensor, num_samples: int = 32, seed: int = 0,
                            time_epsilon: float | None = None, batch_size: int = 64, show_progress: bool = False,
                            noise_block_size: int | None = None) -> torch.Tensor:
    """[N, K] float64: the NELBO (nats, summed over the block) of each block under K stratified draws of t.

    `noise_block_size` B (block diffusion): one stratified t per sub-block of B tokens, each sub-block scored given
    the clean ones before it (the model gets x_0 as `clean_input_ids`); None: one t for the whole block. Block n
    uses its own generator seeded with (seed, n), so a block's estimate does not depend on the others.
    """
    model.eval()
    config = model.config
    schedule = get_noise_schedule(config.noise_schedule)
    eps = config.time_epsilon if time_epsilon is None else time_epsilon
    length = blocks.shape[1]
    size = noise_block_size or length
    values = torch.zeros(len(blocks), num_samples, dtype=torch.float64)
    for n, block in enumerate(_progress(blocks, "NELBO", disable=not show_progress)):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + n)
        t = sample_times((num_samples, -(-length // size)), schedule, time_epsilon=eps, antithetic=True,
                         generator=generator)
        repeated = block.unsqueeze(0).expand(num_samples, -1)
        targets = block_diffusion_targets(repeated, None, schedule, config.mask_token_id, size, generator=generator,
                                          t=t)
        for lo in range(0, num_samples, batch_size):
            part = slice(lo, lo + batch_size)
            clean = repeated[part] if noise_block_size else None
            values[n, part] = _weighted_masked_ce(model, targets["input_ids"][part], targets["labels"][part],
                                                  targets["loss_weights"][part].double(), clean)
    return values


def _weighted_masked_ce(model, inputs, labels, weights, clean=None) -> torch.Tensor:
    """Per row: sum over masked positions of w * CE (float64), using the model's token_losses; `clean` (x_0) goes to
    a block-diffusion model as `clean_input_ids`."""
    device = model.device
    extra = {} if clean is None else {"clean_input_ids": clean.to(device)}
    out = model(input_ids=inputs.to(device), labels=labels.to(device), **extra)
    supervised = labels != -100
    per_token = torch.zeros(labels.shape, dtype=torch.float64)
    per_token[supervised] = out.token_losses.double().cpu() * weights[supervised]
    return per_token.sum(-1)


def diffusion_nelbo(model, blocks: torch.LongTensor, num_samples: int = 32, seed: int = 0,
                    time_epsilon: float | None = None, batch_size: int = 64, show_progress: bool = False,
                    noise_block_size: int | None = None) -> dict:
    """NELBO per token (an upper bound on the NLL), its Monte-Carlo standard error, and exp(NELBO)."""
    samples = diffusion_nelbo_samples(model, blocks, num_samples, seed, time_epsilon, batch_size, show_progress,
                                      noise_block_size)
    num_tokens = blocks.numel()
    per_block = samples.mean(1)
    nelbo = float(per_block.sum()) / num_tokens
    if num_samples > 1:
        variance_of_means = samples.var(1, unbiased=True) / num_samples
        standard_error = float(variance_of_means.sum().sqrt()) / num_tokens
    else:
        standard_error = float("nan")
    return {"kind": "nelbo_upper_bound", "nelbo": nelbo, "nll_upper_bound": nelbo, "standard_error": standard_error,
            "perplexity_upper_bound": math.exp(nelbo), "num_tokens": num_tokens, "num_blocks": len(blocks),
            "block_size": blocks.shape[1], "num_samples": num_samples, "seed": seed}


@torch.no_grad()
def diffusion_ordered_nll(model, blocks: torch.LongTensor, order: torch.LongTensor | None = None,
                          show_progress: bool = False) -> dict:
    """Exact -log p(x) under one unmasking order (default left to right), by the chain rule.

    Step k reveals the positions order[:k], masks the rest and scores the token at order[k]: L model
    calls per block, batched over k.
    """
    model.eval()
    length = blocks.shape[1]
    order = torch.arange(length) if order is None else torch.as_tensor(order)
    total = 0.0
    for block in _progress(blocks, "ordered NLL", disable=not show_progress):
        total += float(_ordered_nll_one(model, block, order))
    nll = total / blocks.numel()
    return {"kind": "exact_ordered_nll", "nll": nll, "perplexity": math.exp(nll), "num_tokens": blocks.numel(),
            "num_blocks": len(blocks), "block_size": length}


@torch.no_grad()
def _ordered_nll_one(model, block: torch.LongTensor, order: torch.LongTensor) -> torch.Tensor:
    length = block.numel()
    revealed = torch.zeros(length, length, dtype=torch.bool)  # row k: positions order[:k] visible
    for k in range(1, length):
        revealed[k, order[:k]] = True
    inputs = torch.where(revealed, block.unsqueeze(0), model.config.mask_token_id)
    labels = torch.full((length, length), -100, dtype=torch.long)
    labels[torch.arange(length), order] = block[order]
    out = model(input_ids=inputs.to(model.device), labels=labels.to(model.device))
    return out.token_losses.double().sum().cpu()


# ---------------------------------------------------------------------------------------------
# Conditional log-likelihood log p(continuation | context)
# ---------------------------------------------------------------------------------------------
def prefix_token_id(tokenizer) -> int:
    """Token that stands in for an empty context (lm-eval: BOS, else EOS)."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's causal tokenisation: trailing context spaces move to the continuation, the pair is encoded
    whole and split at the context's length; an empty context becomes the prefix token."""
    if not context:
        return [prefix_token_id(tokenizer)], tokenizer.encode(continuation, add_special_tokens=False)
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids):]


def fit_continuations(encoded, max_length: int):
    """A continuation longer than max_length - 1 tokens keeps only its last max_length - 1 tokens (scored after
    at least one context token); lm-eval's `hf` backend refuses such requests instead. Logged as a warning."""
    fitted, clipped = [], 0
    for context, continuation in encoded:
        if len(continuation) > max_length - 1:
            context, continuation = context + continuation[:-(max_length - 1)], continuation[-(max_length - 1):]
            clipped += 1
        fitted.append((context, continuation))
    if clipped:
        logger.warning("%d continuation(s) longer than max_position_embeddings - 1 = %d tokens: only their last %d "
                       "tokens are scored", clipped, max_length - 1, max_length - 1)
    return fitted


def context_key(seed: int, context: str) -> int:
    """The Monte-Carlo seed of one context: every continuation of it is scored on the same random masks (paired)."""
    return (seed * 1_000_003 + zlib.crc32(context.encode("utf-8"))) % (2 ** 63)


def _right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.LongTensor, torch.LongTensor]:
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


@torch.no_grad()
def ar_conditional_loglikelihood(model, encoded, batch_size: int = 32, show_progress: bool = False):
    """Exact AR scores; inputs are (context + continuation)[-(max_len + 1):][:-1] as in lm-eval's `hf`."""
    model.eval()
    max_length = model.config.max_position_embeddings
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    results = []
    for start in _progress(range(0, len(encoded), batch_size), "AR loglikelihood", disable=not show_progress):
        chunk = encoded[start:start + batch_size]
        rows = [(ctx + cont)[-(max_length + 1):][:-1] for ctx, cont in chunk]
        ids, mask = _right_pad(rows, pad_id)
        logprobs = F.log_softmax(model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)
                                       ).logits.double(), dim=-1).cpu()
        for i, (row, (_, cont)) in enumerate(zip(rows, chunk)):
            positions = torch.arange(len(row) - len(cont), len(row))
            target = torch.tensor(cont, dtype=torch.long)
            scores = logprobs[i, positions]
            results.append((float(scores.gather(-1, target[:, None]).sum()), bool((scores.argmax(-1) == target).all())))
    return results


def llada_masks(key: int, length: int, mc_num: int) -> tuple[torch.BoolTensor, torch.Tensor]:
    """mc_num masks over a continuation of `length` tokens and their weights L/l.

    Draw i masks l_i = floor(((u + i) / mc_num mod 1) * L) + 1 tokens (stratified uniform on 1..L): the l_i
    positions with the smallest keys r[i, :L]. r is drawn position-major, so for a fixed `key` the keys of
    the first L positions do not depend on L: choices of one question of different lengths stay paired.
    """
    generator = torch.Generator().manual_seed(key)
    u = torch.rand(1, generator=generator, dtype=torch.float64)
    fractions = (u + torch.arange(mc_num, dtype=torch.float64) / mc_num) % 1.0
    counts = (fractions * length).floor().long().clamp(max=length - 1) + 1
    keys = torch.rand(max(length, 1), mc_num, generator=generator, dtype=torch.float64).t()[:, :length]
    ranks = keys.argsort(-1).argsort(-1)
    masks = ranks < counts[:, None]
    return masks, length / counts.double()


@torch.no_grad()
def diffusion_conditional_loglikelihood(model, encoded, keys, mc_num: int = 128, batch_size: int = 32,
                                        show_progress: bool = False, check_greedy: bool = True):
    """LLaDA estimate of log p(continuation | context): -mean_i (L / l_i) * sum_{masked} CE; is_greedy by
    `diffusion_greedy_continuation` (False without `check_greedy`)."""
    model.eval()
    mask_id = model.config.mask_token_id
    max_length = model.config.max_position_embeddings
    results = []
    for (context, continuation), key in _progress(list(zip(encoded, keys)), "diffusion loglikelihood",
                                                  disable=not show_progress):
        context = context[-(max_length - len(continuation)):]
        sequence = torch.tensor(context + continuation, dtype=torch.long)
        start = len(context)
        masks, weights = llada_masks(key, len(continuation), mc_num)
        estimates = []
        for lo in range(0, mc_num, batch_size):
            part = masks[lo:lo + batch_size]
            inputs = sequence.repeat(len(part), 1)
            labels = torch.full_like(inputs, -100)
            cont_inputs = inputs[:, start:]
            labels[:, start:] = torch.where(part, cont_inputs, -100)
            inputs[:, start:] = cont_inputs.masked_fill(part, mask_id)
            out = model(input_ids=inputs.to(model.device), labels=labels.to(model.device))
            per_row = torch.zeros(part.shape, dtype=torch.float64)
            per_row[part] = out.token_losses.double().cpu()
            estimates.append(per_row.sum(-1) * weights[lo:lo + batch_size])
        loglikelihood = -float(torch.cat(estimates).mean())
        greedy = check_greedy and diffusion_greedy_continuation(model, context, len(continuation)) == continuation
        results.append((loglikelihood, greedy))
    return results


@torch.no_grad()
def block_conditional_loglikelihood(model, encoded, keys, mc_num: int = 128, batch_size: int = 32,
                                    show_progress: bool = False, check_greedy: bool = True):
    """Block-diffusion estimate of log p(continuation | context): the context stays clean (its blocks are the clean
    prefix); each draw masks the continuation's tokens with their block's ratio 1 - a_t (mc_num stratified t per
    block) and the estimate is minus the mean over draws of sum w(t) CE at the masks (an ELBO of the continuation).
    Draws are seeded by `keys` (equal keys share t). is_greedy: the continuation decoded with one token per step
    (`diffusion_generate`, low_confidence, temperature 0), compared token by token."""
    model.eval()
    config = model.config
    schedule = get_noise_schedule(config.noise_schedule)
    size, max_length = config.bd_block_size, config.max_position_embeddings
    results = []
    for (context, continuation), key in _progress(list(zip(encoded, keys)), "block-diffusion loglikelihood",
                                                  disable=not show_progress):
        context = context[-(max_length - len(continuation)):]
        sequence = torch.tensor(context + continuation, dtype=torch.long)
        generator = torch.Generator().manual_seed(key)
        t = sample_times((mc_num, -(-len(sequence) // size)), schedule, time_epsilon=config.time_epsilon,
                         antithetic=True, generator=generator)
        repeated = sequence.unsqueeze(0).expand(mc_num, -1)
        maskable = (torch.arange(len(sequence)) >= len(context)).long().expand(mc_num, -1)
        targets = block_diffusion_targets(repeated, maskable, schedule, config.mask_token_id, size,
                                          generator=generator, t=t)
        estimates = [_weighted_masked_ce(model, targets["input_ids"][lo:lo + batch_size],
                                         targets["labels"][lo:lo + batch_size],
                                         targets["loss_weights"][lo:lo + batch_size].double(),
                                         repeated[lo:lo + batch_size]) for lo in range(0, mc_num, batch_size)]
        greedy = check_greedy and model.diffusion_generate(
            input_ids=torch.tensor([context], device=model.device), max_new_tokens=len(continuation),
            num_steps=size, remasking="low_confidence", temperature=0.0, top_k=None, top_p=None,
            confidence_threshold=None, stop_at_eos=False)[0, len(context):].tolist() == continuation
        results.append((-float(torch.cat(estimates).mean()), greedy))
    return results


@torch.no_grad()
def diffusion_greedy_continuation(model, context: list[int], length: int) -> list[int]:
    """The `length` tokens LLaDA's `suffix_greedy_prediction` decodes after `context`: starting from all masks, each
    step takes the argmax at every undecided position and commits only the one whose argmax has the highest
    probability (ties to the leftmost), so later tokens see the earlier commits."""
    canvas = torch.tensor([context + [model.config.mask_token_id] * length], device=model.device)
    undecided = torch.arange(len(context), canvas.shape[1], device=model.device)
    for _ in range(length):
        probabilities = model(input_ids=canvas).logits[0, undecided].float().softmax(-1)
        confidence, tokens = probabilities.max(-1)
        best = int(confidence.argmax())
        canvas[0, undecided[best]] = tokens[best]
        undecided = torch.cat([undecided[:best], undecided[best + 1:]])
    return canvas[0, len(context):].tolist()
