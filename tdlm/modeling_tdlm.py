"""TDLM: a Llama-style backbone (RoPE, SwiGLU, RMSNorm, no biases, tied embeddings) with three heads.

- `TDLMForMaskedDiffusion`: bidirectional attention, predicts x_0 at masked positions (never the mask token).
- `TDLMForCausalLM`: the same backbone with causal attention; the autoregressive baseline, stock `generate()`.
- `TDLMForBlockDiffusion`: BD3-LM, AR over blocks and masked diffusion within one (block_diffusion_tdlm.py).

Shipped as remote code next to the weights: imports only torch, transformers and relative siblings
(fused_cross_entropy.py imports Triton when it is installed).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast, ModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .block_diffusion_tdlm import BlockDiffusionGenerationMixin, block_causal_mask, training_mask
from .configuration_tdlm import HEAD_CLASSES, TDLMConfig
from .fused_cross_entropy import HEAD_CHUNK_SIZE, linear_cross_entropy
from .generation_tdlm import DiffusionGenerationConfig, DiffusionGenerationMixin, check_token_ids

try:  # transformers >= 5: initialisers that respect already-loaded weights
    from transformers import initialization as init
except ImportError:  # pragma: no cover - older 5.x releases
    init = None

# transformers renamed the cache field of model outputs from `past_key_values` to `cache` during 5.x
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def _as_requested(output: ModelOutput, return_dict: bool | None, config: TDLMConfig):
    """`output`, or its non-None fields as a tuple when `return_dict` (default: `config.return_dict`) is False."""
    return output if (config.return_dict if return_dict is None else return_dict) else output.to_tuple()


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------
class TDLMRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states):
        return F.rms_norm(hidden_states, (hidden_states.shape[-1],), self.weight, self.eps)


class TDLMRotaryEmbedding(nn.Module):
    """RoPE cos/sin for given position ids. `inv_freq` is a non-persistent buffer: `_init_weights`
    recomputes it after `from_pretrained` (which builds the model on the meta device)."""

    def __init__(self, config: TDLMConfig):
        super().__init__()
        self.config = config
        self.register_buffer("inv_freq", self.compute_inv_freq(config), persistent=False)

    @staticmethod
    def compute_inv_freq(config: TDLMConfig) -> torch.Tensor:
        dim = config.head_dim
        return 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))

    def forward(self, hidden_states, position_ids):
        freqs = position_ids[..., None].float() * self.inv_freq.to(hidden_states.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(hidden_states.dtype), emb.sin().to(hidden_states.dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [B, 1, L, D] broadcast over heads
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class TDLMMLP(nn.Module):
    """SwiGLU feed-forward."""

    def __init__(self, config: TDLMConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, is_causal=False,
                            **kwargs):
    """Attention written out, returning its weights (the maps of `output_attentions`): query/key/value [B, H, L, D],
    `attention_mask` a boolean [B, 1, Lq, Lk] mask (True = attend) or None (full attention, or causal when
    `is_causal`). Returns (output [B, Lq, H, D], weights [B, H, Lq, Lk]), as transformers' attention functions do."""
    scores = (query @ key.transpose(-1, -2)) * scaling
    if attention_mask is None and is_causal:
        attention_mask = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool, device=query.device).tril()
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    weights = F.dropout(scores.softmax(-1, dtype=torch.float32).to(query.dtype), dropout, module.training)
    return (weights @ value).transpose(1, 2).contiguous(), weights


class TDLMAttention(nn.Module):
    """Multi-head self-attention. `config._attn_implementation` picks the kernel: "eager" (`eager_attention_forward`,
    also used whenever attention maps are requested) or one of transformers' `ALL_ATTENTION_FUNCTIONS` ("sdpa" by
    default)."""

    def __init__(self, config: TDLMConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.scaling = 1.0 / math.sqrt(self.head_dim)  # sdpa's own default, bit for bit
        self.is_causal = config.causal_attention
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, hidden_states, position_embeddings, attention_mask=None, cache=None, output_attentions=False):
        batch, length, _ = hidden_states.shape
        shape = (batch, length, self.num_heads, self.head_dim)
        q = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        k = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, *position_embeddings)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        implementation = self.config._attn_implementation
        if output_attentions or implementation == "eager":
            attention = eager_attention_forward
        else:
            attention = ALL_ATTENTION_FUNCTIONS[implementation]
        # attention_mask is None (no padding, no cache offset: sdpa's fused causal/full kernels) or a boolean
        # [B, 1, Lq, Lk] mask built by TDLMModel. is_causal is always passed: sdpa would otherwise fall back to
        # `module.is_causal` with no mask.
        out, weights = attention(self, q, k, v, attention_mask, scaling=self.scaling,
                                 dropout=self.config.attention_dropout if self.training else 0.0,
                                 is_causal=self.is_causal and attention_mask is None)
        return self.o_proj(out.reshape(batch, length, -1)), weights


class TDLMDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: TDLMConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = TDLMRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = TDLMAttention(config, layer_idx)
        self.post_attention_layernorm = TDLMRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = TDLMMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states, position_embeddings, attention_mask=None, cache=None, output_attentions=False):
        attn_out, weights = self.self_attn(self.input_layernorm(hidden_states), position_embeddings,
                                           attention_mask, cache, output_attentions)
        hidden_states = hidden_states + self.dropout(attn_out)
        hidden_states = hidden_states + self.dropout(self.mlp(self.post_attention_layernorm(hidden_states)))
        return hidden_states, weights


# ---------------------------------------------------------------------------------------------
# Pretrained base and backbone
# ---------------------------------------------------------------------------------------------
class TDLMPreTrainedModel(PreTrainedModel):
    config_class = TDLMConfig
    config: TDLMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TDLMDecoderLayer"]
    _supports_sdpa = True

    @property
    def is_gradient_checkpointing(self) -> bool:
        # PEFT reads this alias, which transformers 5 deprecates with a FutureWarning on every LoRA wrap and load
        return any(getattr(module, "gradient_checkpointing", False) for module in self.modules())

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, TDLMRotaryEmbedding):
            inv_freq = module.compute_inv_freq(module.config)
            if init is not None:
                init.copy_(module.inv_freq, inv_freq)
            else:
                with torch.no_grad():
                    module.inv_freq.copy_(inv_freq)


class TDLMModel(TDLMPreTrainedModel):
    """The backbone: embeddings, decoder layers, final norm. Attention is causal iff training_mode is AR; a head may
    pass its own boolean [B, 1, Lq, Lk] `attention_mask` instead (block diffusion)."""

    def __init__(self, config: TDLMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(TDLMDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = TDLMRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = TDLMRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast | tuple:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        batch, length, _ = inputs_embeds.shape
        full_mask = attention_mask is not None and attention_mask.dim() == 4 and attention_mask.dtype == torch.bool
        if attention_mask is not None and attention_mask.dim() != 2 and not full_mask:
            raise ValueError(f"attention_mask must have shape [batch, seq_len] (or be a boolean [batch, 1, q, k] "
                             f"mask), got {tuple(attention_mask.shape)}")
        causal = self.config.causal_attention
        if use_cache and cache is None:
            if not causal:
                raise ValueError("a KV cache is only meaningful for the causal (autoregressive) model")
            cache = DynamicCache(config=self.config)
        past = cache.get_seq_length() if cache is not None else 0
        if full_mask:
            if position_ids is None:
                position_ids = torch.arange(past, past + length, device=inputs_embeds.device).unsqueeze(0)
            attention_mask, mask = None, attention_mask
        if attention_mask is not None and attention_mask.shape[-1] != past + length:
            raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} positions, but the input has "
                             f"{past} cached + {length} new tokens")
        if position_ids is None:
            if attention_mask is not None:
                # padding-aware positions: the first real token of each row is position 0
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
            else:
                position_ids = torch.arange(past, past + length, device=inputs_embeds.device).unsqueeze(0)
        if not full_mask:
            mask = self._attention_mask(attention_mask, batch, length, past, causal, inputs_embeds.device)

        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)
        hidden_states = inputs_embeds
        all_hidden, all_attn = [], []
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden_states)
            hidden_states, weights = layer(hidden_states, position_embeddings, mask, cache, bool(output_attentions))
            if output_attentions:
                all_attn.append(weights)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden.append(hidden_states)
        output = BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_attn) if output_attentions else None,
            **{_CACHE_FIELD: cache},
        )
        return _as_requested(output, return_dict, self.config)

    @staticmethod
    def _attention_mask(attention_mask, batch, length, past, causal, device):
        """Boolean [B, 1, Lq, Lk] mask (True = attend), or None when sdpa's fused path applies."""
        if attention_mask is None and (past == 0 or not causal):
            return None
        total = past + length
        if attention_mask is None:
            keys = torch.ones(batch, total, dtype=torch.bool, device=device)
        else:
            keys = attention_mask.bool()
        mask = keys[:, None, None, :].expand(batch, 1, length, total)
        if causal:
            q_pos = torch.arange(past, total, device=device)[:, None]
            k_pos = torch.arange(total, device=device)[None, :]
            mask = mask & (k_pos <= q_pos)
            # a left-padding query sees no real key; let it see itself so softmax stays finite
            mask = mask | (k_pos == q_pos)
        return mask


# ---------------------------------------------------------------------------------------------
# Heads and loss
# ---------------------------------------------------------------------------------------------
def supervised_loss(
    hidden_states: torch.Tensor,
    head_weight: torch.Tensor,
    labels: torch.LongTensor,
    loss_weights: torch.Tensor | None = None,
    num_items_in_batch: torch.Tensor | int | None = None,
    mask_token_id: int | None = None,
    head_implementation: str = "chunked",
    chunk_size: int = HEAD_CHUNK_SIZE,
):
    """loss = sum_i w_i * CE_i / normaliser over supervised positions (labels != -100) only.

    The normaliser is `num_items_in_batch` (real tokens, for the NELBO) or the number of supervised
    positions. The LM head runs only on supervised rows, fused with its cross-entropy (fused_cross_entropy.py),
    so the [N, vocab] fp32 logits never exist at once: they are ~89% of this model's FLOPs and most of its
    memory traffic.
    Returns (loss, token_losses [N] detached unweighted CE, token_predictions [N] argmax), rows in
    row-major order of the supervised positions.
    """
    positions = labels != -100
    rows = hidden_states[positions]
    targets = labels[positions]
    if loss_weights is not None:
        coefficients = loss_weights[positions].float()
    else:
        coefficients = rows.new_ones(rows.shape[0], dtype=torch.float32)
    denominator = num_items_in_batch if num_items_in_batch is not None else max(rows.shape[0], 1)
    if torch.is_tensor(denominator):
        denominator = denominator.to(rows.device)
    return linear_cross_entropy(rows, head_weight, targets, coefficients / denominator, mask_token_id,
                                head_implementation, chunk_size)


@dataclass
class TDLMOutput(ModelOutput):
    """Output of both TDLM heads.

    loss: weighted sum of cross-entropies / normaliser (present when `labels` are given).
    logits: full [B, L, V] logits; only computed when no labels are given or `return_logits=True`.
    token_losses / token_predictions: unweighted CE and argmax at the supervised positions (row-major),
        for metrics such as accuracy by corruption level.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    token_losses: torch.Tensor | None = None
    token_predictions: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class _TDLMHeadModel(TDLMPreTrainedModel):
    """Backbone + tied LM head shared by the diffusion and causal models."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: TDLMConfig):
        expected = HEAD_CLASSES.get(config.training_mode)
        if expected not in {cls.__name__ for cls in type(self).__mro__}:
            modes = [mode for mode, name in HEAD_CLASSES.items() if name in {c.__name__ for c in type(self).__mro__}]
            raise ValueError(f"{type(self).__name__} needs config.training_mode={modes[0]!r}, "
                             f"got {config.training_mode!r}")
        super().__init__(config)
        self.model = TDLMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def _logits(self, hidden_states):
        logits = self.lm_head(hidden_states)
        if self.config.mask_token_id is not None:
            logits[..., self.config.mask_token_id] = float("-inf")
        return logits

    @staticmethod
    def prediction_targets(labels: torch.LongTensor) -> torch.LongTensor:
        """[B, L]: the token each position's logits are scored against (-100: none). The one place the two
        objectives differ in what a position predicts; metrics and the trainer count and select through it."""
        return labels

    def _supervised(self, hidden_states, labels, loss_weights, num_items_in_batch):
        return supervised_loss(hidden_states, self.lm_head.weight, self.prediction_targets(labels), loss_weights,
                               num_items_in_batch, self.config.mask_token_id, self.config.head_implementation)

    def _masked_output(self, outputs, hidden, labels, loss_weights, num_items_in_batch, return_logits, return_dict):
        """The masked-prediction heads' output: the weighted loss at supervised positions, logits when asked."""
        loss = token_losses = predictions = logits = None
        if labels is not None:
            loss, token_losses, predictions = self._supervised(hidden, labels, loss_weights, num_items_in_batch)
        if labels is None or return_logits:
            logits = self._logits(hidden)
        output = TDLMOutput(loss=loss, logits=logits, token_losses=token_losses, token_predictions=predictions,
                            hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        return _as_requested(output, return_dict, self.config)


class TDLMForMaskedDiffusion(_TDLMHeadModel, DiffusionGenerationMixin):
    """Bidirectional masked-diffusion LM. Given x_t, predicts x_0 at every position; the mask token's
    logit is -inf. With `labels` (x_0 at masked positions, -100 elsewhere) and `loss_weights` (the ELBO
    weight per position) it returns the NELBO term without computing logits for unsupervised positions."""

    def __init__(self, config: TDLMConfig):
        super().__init__(config)
        # sampling defaults saved as generation_config.json next to the weights
        self.generation_config = DiffusionGenerationConfig.for_model(config)

    def forward(
        self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None, inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None, loss_weights: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None, return_logits: bool | None = None,
        output_attentions: bool | None = None, output_hidden_states: bool | None = None,
        return_dict: bool | None = None, **kwargs,
    ) -> TDLMOutput | tuple:
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             inputs_embeds=inputs_embeds, output_attentions=output_attentions,
                             output_hidden_states=output_hidden_states, return_dict=True)
        return self._masked_output(outputs, outputs.last_hidden_state, labels, loss_weights, num_items_in_batch,
                                   return_logits, return_dict)

    def generate(self, *args, **kwargs):
        # without this, PreTrainedModel's attribute lookup fails with a bare AttributeError
        raise TypeError(f"{type(self).__name__} is a masked-diffusion model: sample with "
                        f"model.diffusion_generate(...), not generate()")


@dataclass
class TDLMCausalLMOutput(CausalLMOutputWithPast):
    token_losses: torch.Tensor | None = None
    token_predictions: torch.Tensor | None = None


class TDLMForCausalLM(_TDLMHeadModel, GenerationMixin):
    """Causal LM on the same backbone: next-token loss, KV cache, stock `generate()`."""

    @staticmethod
    def prediction_targets(labels: torch.LongTensor) -> torch.LongTensor:
        """Position i predicts token i+1: `labels` are the input ids themselves, shifted here as in HF causal LMs."""
        return F.pad(labels[:, 1:], (0, 1), value=-100)

    def forward(
        self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None, inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None, num_items_in_batch: torch.Tensor | int | None = None,
        cache: Cache | None = None, past_key_values: Cache | None = None, use_cache: bool | None = None,
        logits_to_keep: int = 0, return_logits: bool | None = None, output_attentions: bool | None = None,
        output_hidden_states: bool | None = None, return_dict: bool | None = None, **kwargs,
    ) -> TDLMCausalLMOutput | tuple:
        """`labels` are the input ids themselves (-100 to ignore); they are shifted here, as in HF causal LMs. The
        loss is their plain (unweighted) cross-entropy over `num_items_in_batch` or the number of targets."""
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             inputs_embeds=inputs_embeds, cache=cache if cache is not None else past_key_values,
                             use_cache=use_cache, output_attentions=output_attentions,
                             output_hidden_states=output_hidden_states, return_dict=True)
        hidden = outputs.last_hidden_state
        loss = token_losses = predictions = logits = None
        if labels is not None:
            loss, token_losses, predictions = self._supervised(hidden, labels, None, num_items_in_batch)
        if labels is None or return_logits:
            logits = self._logits(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        output = TDLMCausalLMOutput(loss=loss, logits=logits, token_losses=token_losses, token_predictions=predictions,
                                    hidden_states=outputs.hidden_states, attentions=outputs.attentions,
                                    **{_CACHE_FIELD: getattr(outputs, _CACHE_FIELD)})
        return _as_requested(output, return_dict, self.config)

    def generate(self, inputs=None, generation_config=None, **kwargs):
        """The stock `generate()`, refusing up front what the model cannot do: ids outside the vocabulary, or a
        prompt plus new tokens longer than `max_position_embeddings` (RoPE would extrapolate silently)."""
        input_ids = inputs if inputs is not None else kwargs.get("input_ids")
        config = generation_config if generation_config is not None else self.generation_config
        prompt_length = 0
        if input_ids is not None:
            check_token_ids(torch.as_tensor(input_ids), self.config.vocab_size)
            prompt_length = torch.as_tensor(input_ids).shape[-1]
        new_tokens = kwargs.get("max_new_tokens", config.max_new_tokens)
        if new_tokens is not None and (isinstance(new_tokens, bool) or not isinstance(new_tokens, int)
                                       or new_tokens < 1):
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {new_tokens!r}")
        total = prompt_length + new_tokens if new_tokens is not None else kwargs.get("max_length", config.max_length)
        limit = self.config.max_position_embeddings
        if total is not None and total > limit:
            raise ValueError(f"prompt ({prompt_length} tokens) plus new tokens is {total} tokens, more than the "
                             f"model's max_position_embeddings={limit}")
        return super().generate(inputs, generation_config, **kwargs)


class TDLMForBlockDiffusion(_TDLMHeadModel, BlockDiffusionGenerationMixin):
    """Block diffusion (BD3-LM): AR over blocks of `config.bd_block_size` tokens, masked diffusion within a block.

    Training / scoring: `input_ids` is x_t and `clean_input_ids` x_0; one forward runs over x_t (+) x_0 under
    `block_diffusion_tdlm.training_mask` (both halves at positions 0..L-1) and the loss is read at x_t's masked
    positions (`labels`, `loss_weights` as for `TDLMForMaskedDiffusion`). Without `clean_input_ids` the input is
    one sequence under the block-causal mask (clean blocks, then the block being denoised), or, with `cache` (a
    `BlockPrefixCache`), one block after the cached ones. Sampling: `diffusion_generate`, block by block.
    """

    def __init__(self, config: TDLMConfig):
        super().__init__(config)
        self.generation_config = DiffusionGenerationConfig(
            bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
            max_length=config.max_position_embeddings)

    def forward(
        self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None, inputs_embeds: torch.Tensor | None = None,
        clean_input_ids: torch.LongTensor | None = None, labels: torch.LongTensor | None = None,
        loss_weights: torch.Tensor | None = None, num_items_in_batch: torch.Tensor | int | None = None,
        cache=None, return_logits: bool | None = None, output_attentions: bool | None = None,
        output_hidden_states: bool | None = None, return_dict: bool | None = None, **kwargs,
    ) -> TDLMOutput | tuple:
        padding = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
        reference = input_ids if input_ids is not None else inputs_embeds
        length = reference.shape[1]
        if clean_input_ids is not None:
            if clean_input_ids.shape != reference.shape[:2]:
                raise ValueError(f"clean_input_ids shape {tuple(clean_input_ids.shape)} does not match the input's "
                                 f"{tuple(reference.shape[:2])}")
            if inputs_embeds is not None:
                inputs_embeds = torch.cat([inputs_embeds, self.model.embed_tokens(clean_input_ids)], dim=1)
            else:
                input_ids = torch.cat([input_ids, clean_input_ids], dim=1)
            if position_ids is None:
                position_ids = torch.arange(length, device=reference.device)[None]
            position_ids = position_ids.repeat(1, 2)  # x_t and x_0 share positions
            attention_mask = training_mask(length, self.config.bd_block_size, reference.device, padding)
        elif cache is None and (attention_mask is None or padding is not None):
            attention_mask = block_causal_mask(length, self.config.bd_block_size, reference.device, padding)
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             inputs_embeds=inputs_embeds, cache=cache, output_attentions=output_attentions,
                             output_hidden_states=output_hidden_states, return_dict=True)
        hidden = outputs.last_hidden_state[:, :length]  # x_t's half: the loss and logits are read there
        return self._masked_output(outputs, hidden, labels, loss_weights, num_items_in_batch, return_logits,
                                   return_dict)

    def generate(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} is a block-diffusion model: sample with "
                        f"model.diffusion_generate(...), not generate()")


# save_pretrained copies these files (and their relative imports) next to the weights
TDLMConfig.register_for_auto_class()
TDLMForMaskedDiffusion.register_for_auto_class("AutoModelForMaskedLM")
TDLMForCausalLM.register_for_auto_class("AutoModelForCausalLM")
TDLMForBlockDiffusion.register_for_auto_class("AutoModel")  # no task-specific Auto class fits block diffusion

MODEL_CLASSES = {mode: globals()[name] for mode, name in HEAD_CLASSES.items()}


def model_class_for(config: TDLMConfig):
    """The head class that matches `config.training_mode`."""
    return MODEL_CLASSES[config.training_mode]


__all__ = ["TDLMPreTrainedModel", "TDLMModel", "TDLMForMaskedDiffusion", "TDLMForCausalLM", "TDLMForBlockDiffusion",
           "TDLMOutput",
           "MODEL_CLASSES", "model_class_for"]
