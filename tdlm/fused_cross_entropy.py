"""The LM head fused with its cross-entropy: sum_i c_i * CE(rows_i @ W^T, target_i) without the [N, vocab] logits.

The 128 x 50258 head is ~89% of the 7M model's FLOPs, and materialised fp32 logits are most of its memory traffic.
Two implementations, chosen by `TDLMConfig.head_implementation`:

- "chunked" (any device): torch ops over 8192-row chunks; with gradients enabled each chunk's gradients are
  computed right away (as Liger-Kernel's fused linear cross-entropy does), so at most one chunk of fp32 logits exists.
- "triton" (CUDA): Triton kernels in the style of Cut Cross-Entropy (Wijmans et al. 2025) that keep each
  [BLOCK_M, BLOCK_V] logits tile on chip, accumulating it over hidden slices as a matmul's K-loop does, so any width
  runs: a forward pass (online log-sum-exp, target logit, argmax), then the gradient, recomputing its logits tiles.
  Up to FUSED_BACKWARD_MAX_HIDDEN one kernel gives d rows and one d W with nothing but tiles leaving the chip; wider
  heads write the logits gradient of one row chunk at a time (at most GRAD_LOGITS_CHUNK_BYTES) and multiply it out
  with two matmuls. Logits accumulate in fp32; the logits gradient is rounded to the matmul dtype (bf16 under
  autocast), as in the chunked path. Tile shapes are autotuned per shape and GPU; the fused d W kernel sums row
  shares with atomics, so its last fp32 bits can differ between runs. Off CUDA it falls back to "chunked".

Both return (loss, token_losses [N] fp32 detached, predictions [N] argmax); the mask token's logit is -inf.
Shipped as remote code next to the weights: imports torch, a relative sibling, and Triton only if it is installed.
"""

import warnings

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the chunked head serves every device
    triton = None

from .configuration_tdlm import HEAD_IMPLEMENTATIONS

HEAD_CHUNK_SIZE = 8192  # rows of the LM head computed at once: bounds the [rows, vocab] fp32 buffer
FUSED_BACKWARD_MAX_HIDDEN = 256  # the fused gradient kernels hold [BLOCK, hidden] operands and accumulators on chip
GRAD_LOGITS_CHUNK_BYTES = 2**28  # wider heads: the largest logits-gradient buffer (~2.6k rows of a 50k vocab, bf16)


def linear_cross_entropy(rows, head_weight, targets, coefficients, mask_token_id=None, implementation="chunked",
                         chunk_size=HEAD_CHUNK_SIZE):
    """Weighted CE of rows @ head_weight^T against targets; `coefficients` already hold weight / normaliser."""
    if implementation not in HEAD_IMPLEMENTATIONS:
        raise ValueError(f"head_implementation: unknown {implementation!r}; expected one of {HEAD_IMPLEMENTATIONS}")
    if implementation == "triton" and triton_head_applies(rows):
        return _TritonLinearCrossEntropy.apply(rows, head_weight, targets, coefficients, mask_token_id)
    if torch.is_grad_enabled() and (rows.requires_grad or head_weight.requires_grad):
        return _ChunkedLinearCrossEntropy.apply(rows, head_weight, targets, coefficients, mask_token_id, chunk_size)
    token_losses, predictions = [], []
    for start in range(0, rows.shape[0], chunk_size):
        logits = _chunk_logits(rows[start:start + chunk_size], head_weight, mask_token_id)
        token_losses.append(F.cross_entropy(logits, targets[start:start + chunk_size], reduction="none"))
        predictions.append(logits.argmax(-1))
    token_losses = torch.cat(token_losses) if token_losses else rows.new_zeros(0, dtype=torch.float32)
    predictions = torch.cat(predictions) if predictions else targets.clone()
    return (token_losses * coefficients).sum(), token_losses, predictions


def triton_head_applies(rows) -> bool:
    """Where the Triton kernels run: CUDA tensors, Triton installed."""
    if not rows.is_cuda:
        return False
    if triton is None:  # the default head: CUDA without Triton (Windows, say) trains with the chunked one
        warnings.warn("TDLMConfig.head_implementation='triton' needs the `triton` package (pip install triton); "
                      "using the chunked head", stacklevel=2)
        return False
    return True


def _compute_dtype(rows):
    device = rows.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else rows.dtype


# ---------------------------------------------------------------------------------------------
# Chunked torch implementation
# ---------------------------------------------------------------------------------------------
def _chunk_logits(rows, head_weight, mask_token_id):
    logits = (rows @ head_weight.to(rows.dtype).t()).float()
    if mask_token_id is not None:
        logits[:, mask_token_id] = float("-inf")
    return logits


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Computes d/d rows and d/d W chunk by chunk in the forward pass; backward only scales them by the
    output gradient."""

    @staticmethod
    def forward(ctx, rows, head_weight, targets, coefficients, mask_token_id, chunk_size):
        compute_dtype = _compute_dtype(rows)
        weight = head_weight.to(compute_dtype)
        grad_rows = torch.empty_like(rows)
        grad_weight = torch.zeros_like(head_weight, dtype=torch.float32)
        token_losses = rows.new_empty(rows.shape[0], dtype=torch.float32)
        predictions = targets.new_empty(rows.shape[0])
        for start in range(0, rows.shape[0], chunk_size):
            stop = start + chunk_size
            chunk = rows[start:stop].to(compute_dtype)
            logits = _chunk_logits(chunk, weight, mask_token_id)
            log_z = torch.logsumexp(logits, dim=-1)
            target = targets[start:stop]
            token_losses[start:stop] = log_z - logits.gather(-1, target[:, None]).squeeze(-1)
            predictions[start:stop] = logits.argmax(-1)
            # d CE / d logits = softmax - onehot, scaled by this row's coefficient (in place: logits -> grad)
            grad_logits = logits.sub_(log_z[:, None]).exp_()
            grad_logits.scatter_add_(-1, target[:, None], -torch.ones_like(log_z)[:, None])
            grad_logits = (grad_logits * coefficients[start:stop, None]).to(compute_dtype)
            grad_rows[start:stop] = (grad_logits @ weight).to(rows.dtype)
            grad_weight += (grad_logits.t() @ chunk).float()
        ctx.save_for_backward(grad_rows, grad_weight.to(head_weight.dtype))
        ctx.mark_non_differentiable(token_losses, predictions)
        loss = (token_losses * coefficients).sum()
        return loss, token_losses, predictions

    @staticmethod
    def backward(ctx, grad_loss, _grad_token_losses, _grad_predictions):
        grad_rows, grad_weight = ctx.saved_tensors
        return grad_rows * grad_loss.to(grad_rows.dtype), grad_weight * grad_loss.to(grad_weight.dtype), \
            None, None, None, None


# ---------------------------------------------------------------------------------------------
# Triton kernels (Cut Cross-Entropy style: logits tiles never leave the chip)
# ---------------------------------------------------------------------------------------------
class _TritonLinearCrossEntropy(torch.autograd.Function):
    """Forward: one kernel for log-sum-exp, target logit and argmax. Backward: `_fused_backward` up to
    FUSED_BACKWARD_MAX_HIDDEN, `_grad_logits_backward` above."""

    @staticmethod
    def forward(ctx, rows, head_weight, targets, coefficients, mask_token_id):
        compute_dtype = _compute_dtype(rows)
        hidden = rows.to(compute_dtype).contiguous()
        weight = head_weight.to(compute_dtype).contiguous()
        targets = targets.contiguous()
        log_z, target_logit, predictions = _triton_forward(hidden, weight, targets, mask_token_id)
        token_losses = log_z - target_logit
        ctx.save_for_backward(hidden, weight, targets, coefficients, log_z)
        ctx.mask_token_id, ctx.rows_dtype, ctx.weight_dtype = mask_token_id, rows.dtype, head_weight.dtype
        ctx.mark_non_differentiable(token_losses, predictions)
        return (token_losses * coefficients).sum(), token_losses, predictions

    @staticmethod
    def backward(ctx, grad_loss, _grad_token_losses, _grad_predictions):
        hidden, weight, targets, coefficients, log_z = ctx.saved_tensors
        scale = (coefficients * grad_loss.float()).contiguous()
        backward = _fused_backward if hidden.shape[1] <= FUSED_BACKWARD_MAX_HIDDEN else _grad_logits_backward
        grad_rows, grad_weight = backward(hidden, weight, targets, scale, log_z, ctx.mask_token_id)
        return grad_rows.to(ctx.rows_dtype), grad_weight.to(ctx.weight_dtype), None, None, None


def _common_args(hidden, weight, mask_token_id):
    n_rows, hidden_size = hidden.shape
    return dict(n_rows=n_rows, vocab_size=weight.shape[0], hidden_size=hidden_size,
                mask_token_id=-1 if mask_token_id is None else mask_token_id,
                DOT_PRECISION="ieee" if hidden.dtype == torch.float32 else "tf32")


def _triton_forward(hidden, weight, targets, mask_token_id):
    n_rows = hidden.shape[0]
    log_z = hidden.new_empty(n_rows, dtype=torch.float32)
    target_logit = torch.empty_like(log_z)
    predictions = torch.empty(n_rows, dtype=torch.int32, device=hidden.device)
    if n_rows:
        _forward_kernel[lambda meta: (triton.cdiv(n_rows, meta["BLOCK_M"]),)](
            hidden, weight, targets, log_z, target_logit, predictions, **_common_args(hidden, weight, mask_token_id))
    return log_z, target_logit, predictions.long()


def _fused_backward(hidden, weight, targets, scale, log_z, mask_token_id):
    """Narrow heads: d rows (a program per row block, looping over the vocabulary) and d W (programs per vocabulary
    block, each looping over a share of the rows; the shares meet in fp32 atomic adds), each recomputing its logits
    tiles with the whole [BLOCK, hidden] operands and accumulators on chip."""
    n_rows, vocab_size = hidden.shape[0], weight.shape[0]
    grad_rows = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
    if n_rows:
        common = dict(_common_args(hidden, weight, mask_token_id),
                      BLOCK_D=max(16, triton.next_power_of_2(hidden.shape[1])))
        _grad_rows_kernel[lambda meta: (triton.cdiv(n_rows, meta["BLOCK_M"]),)](
            hidden, weight, targets, scale, log_z, grad_rows, **common)
        _grad_weight_kernel[lambda meta: (triton.cdiv(vocab_size, meta["BLOCK_V"]), meta["ROW_SPLITS"])](
            hidden, weight, targets, scale, log_z, grad_weight, **common)
    return grad_rows, grad_weight


def _grad_logits_backward(hidden, weight, targets, scale, log_z, mask_token_id):
    """Wide heads: per chunk of rows, a kernel writes the logits gradient (fp32 on chip, rounded to the matmul dtype as
    in the chunked path) and two cuBLAS matmuls take d rows and d W from it. Keeping d rows on chip instead would mean
    recomputing the logits once per 256-wide hidden slice: hidden / 256 extra head matmuls per gradient."""
    n_rows, vocab_size = hidden.shape[0], weight.shape[0]
    chunk = max(1, GRAD_LOGITS_CHUNK_BYTES // (vocab_size * hidden.element_size()))
    grad_rows = torch.empty_like(hidden)
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
    grad_logits = hidden.new_empty(min(chunk, n_rows), vocab_size)
    for start in range(0, n_rows, chunk):
        rows = hidden[start:start + chunk]
        block = grad_logits[:rows.shape[0]]
        _grad_logits_kernel[_tile_grid(rows.shape[0], vocab_size)](
            rows, weight, targets[start:start + chunk], scale[start:start + chunk], log_z[start:start + chunk], block,
            **_common_args(rows, weight, mask_token_id))
        torch.mm(block, weight, out=grad_rows[start:start + chunk])
        grad_weight += block.t() @ rows  # rounded to the matmul dtype per chunk, summed in fp32
    return grad_rows, grad_weight


def _tile_grid(n_rows, vocab_size):
    """One program per [BLOCK_M, BLOCK_V] tile of the logits."""
    return lambda meta: (triton.cdiv(n_rows, meta["BLOCK_M"]), triton.cdiv(vocab_size, meta["BLOCK_V"]))


# Tile shapes are tuned once per (vocab, hidden, dtype) and process on the GPU at hand (triton.autotune compiles and
# times each candidate at the first call, so that call is slow; docs/benchmarks.md). Candidates are (BLOCK_M, BLOCK_V,
# [BLOCK_K,] num_warps, num_stages[, ROW_SPLITS]), the first being the hand-picked shape used before tuning.
# The logits kernels (forward, wide-head logits gradient) tile the hidden size by BLOCK_K like a matmul's K-loop, so
# any width runs with tiles of a fixed size. The fused backward kernels hold the whole hidden size (BLOCK_D); their d W
# kernel also splits the rows over ROW_SPLITS programs per vocabulary tile (more programs in flight). On an H100 in
# bf16 at width 128 the tuner picked (64, 128, 4, 3) for d rows and (64, 64, 4, 4, 4) for d W.
_LOGITS_TILES = ((64, 128, 128, 8, 3), (128, 128, 64, 8, 3), (64, 128, 64, 4, 3), (128, 64, 64, 4, 3),
                 (64, 64, 128, 4, 4), (128, 128, 32, 4, 4), (64, 256, 64, 8, 3), (128, 256, 64, 8, 3))
_ROW_BLOCK_TILES = ((64, 128, 8, 3), (128, 128, 8, 3), (64, 128, 4, 3), (128, 64, 4, 3), (64, 64, 4, 4),
                    (128, 128, 8, 4), (64, 256, 8, 3))
_VOCAB_BLOCK_TILES = ((64, 128, 8, 3, 1), (64, 128, 8, 3, 4), (128, 128, 8, 3, 4), (64, 64, 4, 4, 4),
                      (64, 256, 8, 3, 2), (128, 64, 4, 3, 4), (64, 128, 4, 4, 8))


def _configs(tiles, names):
    """(block sizes..., num_warps, num_stages[, ROW_SPLITS]) tuples -> triton.Config, block sizes named by `names`."""
    blocks = len(names)
    return [triton.Config(dict(zip((*names, "ROW_SPLITS"), tile[:blocks] + tile[blocks + 2:], strict=False)),
                          num_warps=tile[blocks], num_stages=tile[blocks + 1]) for tile in tiles]


def _k_tile_within_hidden(configs, named_args, **kwargs):
    """A K slice wider than the (power-of-2 padded) hidden size would only load padding: cap it."""
    widest = max(16, triton.next_power_of_2(kwargs["hidden_size"]))
    return [triton.Config({**c.kwargs, "BLOCK_K": min(c.kwargs["BLOCK_K"], widest)}, num_warps=c.num_warps,
                          num_stages=c.num_stages) for c in configs]


def _fits_on_chip(configs, named_args, **kwargs):
    """Fused backward at hidden sizes above 128 (up to FUSED_BACKWARD_MAX_HIDDEN): only [32, 64] tiles keep the
    [BLOCK, hidden] operands and the fp32 logits tile on chip."""
    if kwargs["BLOCK_D"] <= 128:
        return configs
    return [triton.Config({**c.kwargs, "BLOCK_M": 32}, num_warps=c.num_warps, num_stages=c.num_stages)
            for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_V"] <= 64 * 64]


def _tuned(tiles, names, prune, reset_to_zero=None):
    """Autotune over `tiles`, pruned by `prune`; a single surviving candidate runs without timing (Triton's CPU
    interpreter cannot time, so tests/test_fused_cross_entropy.py replaces the pruning with one fixed tile)."""
    return triton.autotune(_configs(tiles, names), key=["vocab_size", "hidden_size"], reset_to_zero=reset_to_zero,
                           prune_configs_by={"early_config_prune": prune})


if triton is not None:
    @triton.jit
    def _valid_logits(logits, vocab_offsets, vocab_size, mask_token_id):
        """-inf outside the vocabulary and at the mask token."""
        valid = (vocab_offsets < vocab_size) & (vocab_offsets != mask_token_id)
        return tl.where(valid[None, :], logits, float("-inf"))

    @triton.jit
    def _k_looped_logits_tile(hidden_ptr, weight_ptr, row_offsets, vocab_offsets, n_rows, vocab_size, hidden_size,
                              mask_token_id, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
                              DOT_PRECISION: tl.constexpr):
        """[BLOCK_M, BLOCK_V] fp32 logits, accumulated over [*, BLOCK_K] slices of the hidden size (a matmul's
        K-loop), so that any width fits on chip."""
        logits = tl.zeros([BLOCK_M, BLOCK_V], tl.float32)
        for k_start in range(0, hidden_size, BLOCK_K):
            dim_offsets = k_start + tl.arange(0, BLOCK_K)
            dim_valid = dim_offsets[None, :] < hidden_size
            hidden_tile = tl.load(hidden_ptr + row_offsets[:, None] * hidden_size + dim_offsets[None, :],
                                  mask=(row_offsets[:, None] < n_rows) & dim_valid, other=0.0)
            weight_tile = tl.load(weight_ptr + vocab_offsets[:, None] * hidden_size + dim_offsets[None, :],
                                  mask=(vocab_offsets[:, None] < vocab_size) & dim_valid, other=0.0)
            logits = tl.dot(hidden_tile, tl.trans(weight_tile), logits, input_precision=DOT_PRECISION)
        return _valid_logits(logits, vocab_offsets, vocab_size, mask_token_id)

    @triton.jit
    def _resident_logits_tile(hidden_tile, weight_ptr, vocab_offsets, dim_offsets, vocab_size, hidden_size,
                              mask_token_id, DOT_PRECISION: tl.constexpr):
        """Fused backward: logits of a row tile held on chip with its whole hidden size; also returns the head tile."""
        weight_tile = tl.load(weight_ptr + vocab_offsets[:, None] * hidden_size + dim_offsets[None, :],
                              mask=(vocab_offsets[:, None] < vocab_size) & (dim_offsets[None, :] < hidden_size),
                              other=0.0)
        logits = tl.dot(hidden_tile, tl.trans(weight_tile), input_precision=DOT_PRECISION)
        return _valid_logits(logits, vocab_offsets, vocab_size, mask_token_id), weight_tile

    @triton.jit
    def _load_rows(hidden_ptr, targets_ptr, row_offsets, dim_offsets, n_rows, hidden_size):
        row_valid = row_offsets < n_rows
        hidden_tile = tl.load(hidden_ptr + row_offsets[:, None] * hidden_size + dim_offsets[None, :],
                              mask=row_valid[:, None] & (dim_offsets[None, :] < hidden_size), other=0.0)
        targets = tl.load(targets_ptr + row_offsets, mask=row_valid, other=-1)
        return hidden_tile, targets, row_valid

    @triton.jit
    def _load_row_statistics(log_z_ptr, scale_ptr, row_offsets, row_valid):
        """log-sum-exp and gradient scale of a row block; 0 beyond n_rows, so padding rows get no gradient."""
        log_z = tl.load(log_z_ptr + row_offsets, mask=row_valid, other=0.0)
        scale = tl.load(scale_ptr + row_offsets, mask=row_valid, other=0.0)
        return log_z, scale

    @triton.jit
    def _logits_grad(logits, vocab_offsets, targets, log_z, scale):
        """d (scale * CE) / d logits = scale * (softmax - onehot); exp(-inf) = 0 at masked columns."""
        probabilities = tl.exp(logits - log_z[:, None])
        onehot = tl.where(vocab_offsets[None, :] == targets[:, None], 1.0, 0.0)
        return (probabilities - onehot) * scale[:, None]

    @_tuned(_LOGITS_TILES, ("BLOCK_M", "BLOCK_V", "BLOCK_K"), _k_tile_within_hidden)
    @triton.jit
    def _forward_kernel(hidden_ptr, weight_ptr, targets_ptr, log_z_ptr, target_logit_ptr, predictions_ptr,
                        n_rows, vocab_size, hidden_size, mask_token_id,
                        BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
                        DOT_PRECISION: tl.constexpr):
        row_offsets = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_valid = row_offsets < n_rows
        targets = tl.load(targets_ptr + row_offsets, mask=row_valid, other=-1)
        running_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
        running_sum = tl.zeros([BLOCK_M], tl.float32)
        target_logit = tl.zeros([BLOCK_M], tl.float32)
        prediction = tl.zeros([BLOCK_M], tl.int32)
        for vocab_start in range(0, vocab_size, BLOCK_V):
            vocab_offsets = vocab_start + tl.arange(0, BLOCK_V)
            logits = _k_looped_logits_tile(hidden_ptr, weight_ptr, row_offsets, vocab_offsets, n_rows, vocab_size,
                                           hidden_size, mask_token_id, BLOCK_M, BLOCK_V, BLOCK_K, DOT_PRECISION)
            tile_max = tl.max(logits, 1)
            # strict >: the first maximum wins, as torch.argmax
            prediction = tl.where(tile_max > running_max, vocab_start + tl.argmax(logits, 1), prediction)
            new_max = tl.maximum(running_max, tile_max)
            running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), 1)
            running_max = new_max
            target_logit += tl.sum(tl.where(vocab_offsets[None, :] == targets[:, None], logits, 0.0), 1)
        tl.store(log_z_ptr + row_offsets, running_max + tl.log(running_sum), mask=row_valid)
        tl.store(target_logit_ptr + row_offsets, target_logit, mask=row_valid)
        tl.store(predictions_ptr + row_offsets, prediction, mask=row_valid)

    @_tuned(_LOGITS_TILES, ("BLOCK_M", "BLOCK_V", "BLOCK_K"), _k_tile_within_hidden)
    @triton.jit
    def _grad_logits_kernel(hidden_ptr, weight_ptr, targets_ptr, scale_ptr, log_z_ptr, grad_logits_ptr,
                            n_rows, vocab_size, hidden_size, mask_token_id,
                            BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
                            DOT_PRECISION: tl.constexpr):
        """Program (row tile, vocabulary tile): that tile of scale * (softmax - onehot), stored in the rows' dtype."""
        row_offsets = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        vocab_offsets = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
        row_valid = row_offsets < n_rows
        targets = tl.load(targets_ptr + row_offsets, mask=row_valid, other=-1)
        log_z, scale = _load_row_statistics(log_z_ptr, scale_ptr, row_offsets, row_valid)
        logits = _k_looped_logits_tile(hidden_ptr, weight_ptr, row_offsets, vocab_offsets, n_rows, vocab_size,
                                       hidden_size, mask_token_id, BLOCK_M, BLOCK_V, BLOCK_K, DOT_PRECISION)
        grad_logits = _logits_grad(logits, vocab_offsets, targets, log_z, scale)
        tl.store(grad_logits_ptr + row_offsets[:, None] * vocab_size + vocab_offsets[None, :],
                 grad_logits.to(grad_logits_ptr.dtype.element_ty),
                 mask=row_valid[:, None] & (vocab_offsets[None, :] < vocab_size))

    @_tuned(_ROW_BLOCK_TILES, ("BLOCK_M", "BLOCK_V"), _fits_on_chip)
    @triton.jit
    def _grad_rows_kernel(hidden_ptr, weight_ptr, targets_ptr, scale_ptr, log_z_ptr, grad_rows_ptr,
                          n_rows, vocab_size, hidden_size, mask_token_id,
                          BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                          DOT_PRECISION: tl.constexpr):
        row_offsets = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        dim_offsets = tl.arange(0, BLOCK_D)
        hidden_tile, targets, row_valid = _load_rows(hidden_ptr, targets_ptr, row_offsets, dim_offsets, n_rows,
                                                     hidden_size)
        log_z, scale = _load_row_statistics(log_z_ptr, scale_ptr, row_offsets, row_valid)
        grad_rows = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for vocab_start in range(0, vocab_size, BLOCK_V):
            vocab_offsets = vocab_start + tl.arange(0, BLOCK_V)
            logits, weight_tile = _resident_logits_tile(hidden_tile, weight_ptr, vocab_offsets, dim_offsets,
                                                        vocab_size, hidden_size, mask_token_id, DOT_PRECISION)
            grad_logits = _logits_grad(logits, vocab_offsets, targets, log_z, scale)
            grad_rows += tl.dot(grad_logits.to(weight_tile.dtype), weight_tile, input_precision=DOT_PRECISION)
        tl.store(grad_rows_ptr + row_offsets[:, None] * hidden_size + dim_offsets[None, :], grad_rows,
                 mask=row_valid[:, None] & (dim_offsets[None, :] < hidden_size))

    @_tuned(_VOCAB_BLOCK_TILES, ("BLOCK_M", "BLOCK_V"), _fits_on_chip, reset_to_zero=["grad_weight_ptr"])
    @triton.jit
    def _grad_weight_kernel(hidden_ptr, weight_ptr, targets_ptr, scale_ptr, log_z_ptr, grad_weight_ptr,
                            n_rows, vocab_size, hidden_size, mask_token_id,
                            BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                            DOT_PRECISION: tl.constexpr, ROW_SPLITS: tl.constexpr):
        """Program (vocabulary tile, row split): d W of its tile from its share of the rows."""
        vocab_offsets = tl.program_id(0) * BLOCK_V + tl.arange(0, BLOCK_V)
        dim_offsets = tl.arange(0, BLOCK_D)
        vocab_valid = vocab_offsets < vocab_size
        weight_tile = tl.load(weight_ptr + vocab_offsets[:, None] * hidden_size + dim_offsets[None, :],
                              mask=vocab_valid[:, None] & (dim_offsets[None, :] < hidden_size), other=0.0)
        rows_per_split = tl.cdiv(tl.cdiv(n_rows, ROW_SPLITS), BLOCK_M) * BLOCK_M
        first_row = tl.program_id(1) * rows_per_split
        grad_weight = tl.zeros([BLOCK_V, BLOCK_D], tl.float32)
        for row_start in range(first_row, tl.minimum(first_row + rows_per_split, n_rows), BLOCK_M):
            row_offsets = row_start + tl.arange(0, BLOCK_M)
            hidden_tile, targets, row_valid = _load_rows(hidden_ptr, targets_ptr, row_offsets, dim_offsets, n_rows,
                                                         hidden_size)
            log_z, scale = _load_row_statistics(log_z_ptr, scale_ptr, row_offsets, row_valid)
            logits = tl.dot(hidden_tile, tl.trans(weight_tile), input_precision=DOT_PRECISION)
            logits = _valid_logits(logits, vocab_offsets, vocab_size, mask_token_id)
            grad_logits = _logits_grad(logits, vocab_offsets, targets, log_z, scale)
            grad_weight += tl.dot(tl.trans(grad_logits.to(hidden_tile.dtype)), hidden_tile,
                                  input_precision=DOT_PRECISION)
        tl.atomic_add(grad_weight_ptr + vocab_offsets[:, None] * hidden_size + dim_offsets[None, :], grad_weight,
                      mask=vocab_valid[:, None] & (dim_offsets[None, :] < hidden_size), sem="relaxed")
