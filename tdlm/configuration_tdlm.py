"""TDLM configuration: model shape, special token ids, objective and diffusion defaults.

Shipped as remote code next to the weights: imports only transformers and relative siblings.
"""

import inspect

from transformers import PretrainedConfig

from .schedules import NOISE_SCHEDULES

# The one declaration of the objectives: training_mode -> its head class in modeling_tdlm.py (AutoModel of a saved
# checkpoint points at it; modeling_tdlm.MODEL_CLASSES and tdlm/objectives.py are keyed by it).
HEAD_CLASSES = {"diffusion": "TDLMForMaskedDiffusion", "autoregressive": "TDLMForCausalLM",
                "block_diffusion": "TDLMForBlockDiffusion"}
TRAINING_MODES = tuple(HEAD_CLASSES)
HEAD_IMPLEMENTATIONS = ("chunked", "triton")  # fused_cross_entropy.py
GPT2_VOCAB_SIZE = 50257  # GPT-2 BPE; TDLM appends <|mask|> as id 50257
SPECIAL_TOKEN_IDS = ("mask_token_id", "pad_token_id", "bos_token_id", "eos_token_id")  # the tokenizer's


class InvalidConfigValue(ValueError):
    """A config field holds a value the model cannot use: `owner`.`field`, and `message` saying what is allowed. The
    field is data, so the YAML schema names its own key (`sampling.top_k`) without parsing the text."""

    def __init__(self, owner: str, field: str, message: str):
        super().__init__(f"{owner}.{field}: {message}")
        self.owner, self.field, self.message = owner, field, message


class TDLMConfig(PretrainedConfig):
    r"""Configuration of a TDLM model.

    The defaults give the 7.0M-parameter model of Prabhudesai et al. (2025): hidden 128, 3 layers, 4 heads,
    SwiGLU 320, GPT-2 vocabulary plus one mask token, tied input/output embeddings.

    Args:
        vocab_size: number of token ids, including the mask token.
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: backbone shape.
        max_position_embeddings: longest sequence the model accepts (RoPE has no learned table, but
            samplers and data loaders use this as the block length limit).
        rope_theta, rms_norm_eps, attention_dropout, hidden_dropout, initializer_range: as in Llama.
        mask_token_id: id of the absorbing `<|mask|>` state; its logit is always -inf.
        training_mode: "diffusion" (bidirectional attention, masked-diffusion ELBO), "autoregressive" (causal
            attention, next-token loss) or "block_diffusion" (BD3-LM, Arriola et al. 2025: autoregressive over
            blocks of `bd_block_size` tokens, masked diffusion within a block).
        bd_block_size: block length B of "block_diffusion" (B = 1 is AR, B = sequence length is diffusion).
        ar_context_token: "autoregressive" only: every block is trained and scored with a context token (BOS, else
            EOS) in front, so all L tokens of a block are predicted, as the diffusion objectives score them. True for
            new models; a saved config without the key (older checkpoints) reads False: L - 1 tokens per block.
        noise_schedule: forward-process schedule a_t ("linear", "cosine", "loglinear").
        single_ratio_per_sequence: one t per sequence (True) or one per token (False).
        min_mask_ratio, max_mask_ratio: range of the masking ratio 1 - a_t drawn during training.
        antithetic_sampling: low-discrepancy t across a batch (t_i = (u + i/B) mod 1).
        time_epsilon: t is never below this, so the ELBO weight -a'_t/(1-a_t) stays finite.
        head_implementation: how the LM head and its cross-entropy are fused: "triton" (default; Triton kernels
            that keep logits on chip, on CUDA with hidden_size <= 256; elsewhere, or without Triton, "chunked" runs)
            or "chunked" (torch ops over row chunks, any device). Both give the same loss within bf16 rounding;
            the kernels train faster on a GPU (measured in docs/benchmarks.md).
    """

    model_type = "tdlm"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    def __init__(
        self,
        vocab_size: int = GPT2_VOCAB_SIZE + 1,
        hidden_size: int = 128,
        num_hidden_layers: int = 3,
        num_attention_heads: int = 4,
        intermediate_size: int = 320,
        max_position_embeddings: int = 256,
        rope_theta: float = 10000.0,
        rms_norm_eps: float = 1e-6,
        attention_dropout: float = 0.0,
        hidden_dropout: float = 0.0,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = True,
        mask_token_id: int | None = GPT2_VOCAB_SIZE,
        pad_token_id: int | None = GPT2_VOCAB_SIZE - 1,
        bos_token_id: int | None = GPT2_VOCAB_SIZE - 1,
        eos_token_id: int | None = GPT2_VOCAB_SIZE - 1,
        training_mode: str = "diffusion",
        noise_schedule: str = "linear",
        single_ratio_per_sequence: bool = True,
        min_mask_ratio: float = 0.0,
        max_mask_ratio: float = 1.0,
        antithetic_sampling: bool = True,
        time_epsilon: float = 1e-3,
        head_implementation: str = "triton",
        bd_block_size: int | None = None,
        ar_context_token: bool = True,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.attention_dropout = attention_dropout
        self.hidden_dropout = hidden_dropout
        self.initializer_range = initializer_range
        self.mask_token_id = mask_token_id
        self.training_mode = training_mode
        self.noise_schedule = noise_schedule
        self.single_ratio_per_sequence = single_ratio_per_sequence
        self.min_mask_ratio = min_mask_ratio
        self.max_mask_ratio = max_mask_ratio
        self.antithetic_sampling = antithetic_sampling
        self.time_epsilon = time_epsilon
        self.head_implementation = head_implementation
        self.bd_block_size = bd_block_size
        self.ar_context_token = ar_context_token
        # Auto classes of the remote code shipped with every checkpoint; AutoModel gives the model that
        # matches the checkpoint's objective.
        kwargs.setdefault("auto_map", {
            "AutoConfig": "configuration_tdlm.TDLMConfig",
            "AutoModel": f"modeling_tdlm.{HEAD_CLASSES.get(training_mode, HEAD_CLASSES['diffusion'])}",
            "AutoModelForMaskedLM": "modeling_tdlm.TDLMForMaskedDiffusion",
            "AutoModelForCausalLM": "modeling_tdlm.TDLMForCausalLM",
        })
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self._validate()

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        # a checkpoint saved before ar_context_token existed was trained and scored without the context token
        config_dict = {"ar_context_token": False, **config_dict}
        # from_pretrained(..., field=value) sets overrides after __init__: validate the result again
        result = super().from_dict(config_dict, **kwargs)
        (result[0] if isinstance(result, tuple) else result)._validate()
        return result

    def to_dict(self):
        # AutoModel follows training_mode even when it was changed after construction (for example
        # `from_pretrained(diffusion_ckpt, training_mode="autoregressive")`), so a saved checkpoint never
        # points AutoModel at the head class that rejects its own config.
        output = super().to_dict()
        auto_map = output.get("auto_map")
        if auto_map and "AutoModel" in auto_map:
            module = auto_map["AutoModel"].rpartition(".")[0]
            output["auto_map"] = {**auto_map, "AutoModel": f"{module}.{HEAD_CLASSES[self.training_mode]}"}
        return output

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def is_diffusion(self) -> bool:
        return self.training_mode == "diffusion"

    @property
    def causal_attention(self) -> bool:
        """Causal attention in the backbone (AR); the diffusion heads attend bidirectionally, or pass their own mask."""
        return self.training_mode == "autoregressive"

    @property
    def uses_mask_token(self) -> bool:
        """Both diffusion objectives corrupt with (and sample from) the mask token."""
        return self.training_mode != "autoregressive"

    @property
    def context_token_id(self) -> int | None:
        """The token AR puts in front of every block (BOS, else EOS), or None when this model has none."""
        if self.training_mode != "autoregressive" or not self.ar_context_token:
            return None
        return self.bos_token_id if self.bos_token_id is not None else self.eos_token_id

    @classmethod
    def check_values(cls, **values) -> None:
        """The value rules of `__init__` for `values` (its arguments; the others at their defaults) before a tokenizer
        has given the special token ids, which are checked when the config is built. Raises `InvalidConfigValue`."""
        parameters = inspect.signature(cls.__init__).parameters.values()
        candidate = cls.__new__(cls)  # the rules read attributes; nothing is built or kept
        candidate.__dict__.update({p.name: p.default for p in parameters if p.default is not p.empty}, **values)
        candidate._validate(special_ids=False)

    def _validate(self, special_ids: bool = True) -> None:
        def fail(field, message):
            raise InvalidConfigValue("TDLMConfig", field, message)

        for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                      "intermediate_size", "max_position_embeddings"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                fail(field, f"must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            fail("num_attention_heads", f"{self.num_attention_heads} does not divide hidden_size {self.hidden_size}")
        if self.head_dim % 2:
            fail("hidden_size", f"head dim {self.head_dim} must be even for RoPE")
        if self.training_mode not in TRAINING_MODES:
            fail("training_mode", f"unknown mode {self.training_mode!r}; expected one of {TRAINING_MODES}")
        if self.noise_schedule not in NOISE_SCHEDULES:
            fail("noise_schedule",
                 f"unknown schedule {self.noise_schedule!r}; expected one of {tuple(NOISE_SCHEDULES)}")
        for field in SPECIAL_TOKEN_IDS if special_ids else ():
            value = getattr(self, field, None)
            if value is not None and not 0 <= value < self.vocab_size:
                fail(field, f"id {value} is outside the vocabulary [0, {self.vocab_size})")
        if special_ids and self.uses_mask_token and self.mask_token_id is None:
            fail("mask_token_id", f"a {self.training_mode} model needs a mask token")
        if self.training_mode == "block_diffusion":
            size = self.bd_block_size
            if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= self.max_position_embeddings:
                fail("bd_block_size", f"block_diffusion needs an integer block size in [1, max_position_embeddings="
                                      f"{self.max_position_embeddings}], got {size!r}")
        if not isinstance(self.ar_context_token, bool):
            fail("ar_context_token", f"must be true or false, got {self.ar_context_token!r}")
        if (special_ids and self.training_mode == "autoregressive" and self.ar_context_token
                and self.bos_token_id is None and self.eos_token_id is None):
            fail("ar_context_token", "needs a bos_token_id or eos_token_id to put in front of each block")
        if not 0.0 <= self.min_mask_ratio < self.max_mask_ratio <= 1.0:
            fail("min_mask_ratio", f"need 0 <= min_mask_ratio < max_mask_ratio <= 1, got "
                                   f"{self.min_mask_ratio} and {self.max_mask_ratio}")
        if self.head_implementation not in HEAD_IMPLEMENTATIONS:
            fail("head_implementation", f"unknown {self.head_implementation!r}; expected one of {HEAD_IMPLEMENTATIONS}")
        if not 0.0 < self.time_epsilon < 1.0:
            fail("time_epsilon", f"must lie in (0, 1), got {self.time_epsilon}")
        for field in ("attention_dropout", "hidden_dropout"):
            if not 0.0 <= getattr(self, field) < 1.0:
                fail(field, f"must lie in [0, 1), got {getattr(self, field)}")
        for field in ("rope_theta", "rms_norm_eps", "initializer_range"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < float("inf"):
                fail(field, f"must be a finite number > 0, got {value!r}")
