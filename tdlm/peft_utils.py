"""LoRA fine-tuning of a pretrained TDLM (diffusion or AR) with PEFT, and merging an adapter back.

The training YAML's `peft` section drives `apply_lora`:

    peft:
      enabled: true
      base_model: experiments/<id>          # experiment folder or checkpoint folder (or a Hub id)
      r: 8
      alpha: 16
      dropout: 0.05
      target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]

`peft` is an optional extra, imported where used.
"""

import os
from pathlib import Path

from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.dynamic_module_utils import get_class_from_dynamic_module

from .config import SCHEMA
from .model_card import is_local_path
from .objectives import objective_for
from .runs import final_location, pretrained_source

PEFT_DEFAULTS = {key: default for key, (default, _) in SCHEMA["peft"].items()}
DEFAULT_LORA_TARGETS = tuple(PEFT_DEFAULTS["target_modules"])


def peft_settings(peft_section: dict | None) -> dict:
    """The `peft` section with defaults filled in; unknown keys and bad values raise naming the key."""
    section = dict(peft_section or {})
    unknown = sorted(set(section) - set(PEFT_DEFAULTS))
    if unknown:
        raise ValueError(f"peft: unknown keys {unknown}; expected some of {sorted(PEFT_DEFAULTS)}")
    settings = {**PEFT_DEFAULTS, **section}
    if not isinstance(settings["r"], int) or settings["r"] < 1:
        raise ValueError(f"peft.r must be a positive integer, got {settings['r']!r}")
    if not isinstance(settings["alpha"], (int, float)) or settings["alpha"] <= 0:
        raise ValueError(f"peft.alpha must be positive, got {settings['alpha']!r}")
    if not 0.0 <= settings["dropout"] < 1.0:
        raise ValueError(f"peft.dropout must lie in [0, 1), got {settings['dropout']!r}")
    if isinstance(settings["target_modules"], str):
        settings["target_modules"] = [settings["target_modules"]]
    if not settings["target_modules"]:
        raise ValueError("peft.target_modules must name at least one module")
    return settings


def apply_lora(model, peft_section: dict):
    """Wrap `model` (a TDLM loaded from `peft_section["base_model"]`) in a LoRA `PeftModel`.

    Only the adapter weights are trainable. The adapter config records the base model (`base_model_reference`)
    so that `AutoPeftModel` / `PeftModel.from_pretrained` and `merge_adapter` find it again. An AR model gets
    the CAUSAL_LM task type (PEFT's `generate()` wrapper; load it with AutoPeftModelForCausalLM); a diffusion
    model a plain `PeftModel` (AutoPeftModel; diffusion_generate reaches the LoRA-injected base model through
    attribute forwarding).
    """
    from peft import (  # an optional extra (tdlm[peft])
        LoraConfig,
        TaskType,
        get_peft_model,
    )

    settings = peft_settings(peft_section)
    missing = [name for name in settings["target_modules"]
               if not any(module_name.split(".")[-1] == name for module_name, _ in model.named_modules())]
    if missing:
        raise ValueError(f"peft.target_modules {missing} match no module of {type(model).__name__}")
    task_type = objective_for(model.config).peft_task_type
    lora_config = LoraConfig(
        r=settings["r"], lora_alpha=settings["alpha"], lora_dropout=settings["dropout"],
        target_modules=list(settings["target_modules"]), bias="none",
        task_type=getattr(TaskType, task_type) if task_type else None,
    )
    peft_model = get_peft_model(model, lora_config)
    # PEFT saves the base's class module (tdlm.modeling_tdlm) as adapter_config.json's `auto_mapping`, which
    # AutoPeftModel imports: name transformers' AutoModel instead, which builds the same head from the base's
    # remote code, so that adapters load where tdlm is not installed
    peft_model._get_base_model_class = lambda is_prompt_tuning=False: AutoModel
    base_model = settings["base_model"] or getattr(model, "name_or_path", None)
    if base_model:
        _save_shareable(peft_model, str(base_model))
    return peft_model


def base_model_reference(base_model: str, adapter_dir) -> str:
    """How adapter_config.json names the base: a Hub id as given; a local experiment or checkpoint folder as its
    model folder relative to the adapter folder, so that the two can move together (never an absolute path, which
    would name this machine's layout)."""
    source = pretrained_source(base_model)
    return os.path.relpath(source, final_location(adapter_dir)) if Path(source).exists() else source


def _save_shareable(peft_model, base_model: str) -> None:
    """Make `peft_model.save_pretrained` write folders fit for sharing: adapter_config.json names the base by
    `base_model_reference` relative to the folder being written, and the README.md PEFT writes names the base
    (`base_model`, a `base_model:adapter:` tag) only when it is a Hub id, not by the path it was loaded from."""
    save = peft_model.save_pretrained
    config = peft_model.peft_config["default"]
    embedding_targeted = "embed_tokens" in (config.target_modules or ())

    def save_pretrained(save_directory, *args, **kwargs):
        reference = base_model_reference(base_model, save_directory)
        config.base_model_name_or_path = reference
        # PEFT's "auto" looks for the base's config.json from the working directory (then on the Hub) to see whether
        # the vocabulary grew, and warns when it cannot find it; a TDLM LoRA never resizes the vocabulary
        kwargs.setdefault("save_embedding_layers", embedding_targeted)
        save(save_directory, *args, **kwargs)
        card_path = Path(save_directory) / "README.md"
        if card_path.is_file():
            from huggingface_hub import ModelCard

            card = ModelCard.load(card_path)
            hub_id = None if is_local_path(reference) else reference
            card.data.base_model = hub_id
            card.data.tags = [tag for tag in card.data.tags or [] if not tag.startswith("base_model:")] + (
                [f"base_model:adapter:{hub_id}"] if hub_id else [])
            card.save(card_path)

    peft_model.save_pretrained = save_pretrained


def adapter_base(adapter_dir, base_model: str | None = None) -> str:
    """The base model of an adapter folder: `base_model` when given; else adapter_config.json's, a local one found
    relative to the adapter folder (or, as PEFT looks for it, to the working directory), a Hub id as is."""
    from peft import PeftConfig  # an optional extra (tdlm[peft])

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir} has no adapter_config.json: not a PEFT adapter folder")
    if base_model is not None:
        return pretrained_source(base_model)
    reference = PeftConfig.from_pretrained(adapter_dir).base_model_name_or_path
    if not reference:
        raise ValueError(f"{adapter_dir}/adapter_config.json has no base_model_name_or_path; pass the base model")
    for candidate in (adapter_dir / reference, Path(reference)):
        if candidate.is_dir():
            return str(candidate)
    if is_local_path(reference):
        raise FileNotFoundError(f"{adapter_dir}/adapter_config.json names the base model {reference!r}, found neither "
                                f"relative to the adapter folder nor here; pass the base model (--base-model)")
    return reference


def load_merged(adapter_dir, dtype=None, base_model: str | None = None):
    """(model with the LoRA weights merged in, tokenizer): the adapter's base (`adapter_base`) loaded with its
    remote code, the tokenizer from the adapter folder when it has one, else from the base."""
    from peft import PeftModel  # an optional extra (tdlm[peft])

    adapter_dir = Path(adapter_dir)
    base = adapter_base(adapter_dir, base_model)
    # the head class named by the base's own auto_map, not AutoModel: with remote code AutoModel registers the first
    # head class it loads for the config class, so a second checkpoint of another objective in the same process
    # would get the wrong head
    config = AutoConfig.from_pretrained(base, trust_remote_code=True)
    head_class = get_class_from_dynamic_module(config.auto_map[objective_for(config).auto_class], base)
    model = head_class.from_pretrained(base, **({"dtype": dtype} if dtype else {}))
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    tokenizer_source = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base
    return merged, AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=True)


def merge_adapter(adapter_dir, output_dir, dtype=None, base_model: str | None = None) -> Path:
    """Merge the adapter into its base (`load_merged`) and save a full, self-sufficient model folder: weights,
    config with auto_map, remote code, generation config, tokenizer."""
    merged, tokenizer = load_merged(adapter_dir, dtype, base_model)
    merged.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return Path(output_dir)
