"""The experiment YAML: sections, defaults, `section.key=value` overrides and validation.

A config is a nested dict with the sections of `SCHEMA`. Every key a user writes must exist in the schema and
have the right type; errors name the key ("training.learnig_rate: unknown key").

Defaults are not restated here; they come from the classes that own them:
- `model` and `diffusion`: `TDLMConfig`'s constructor defaults (the 7M model of Prabhudesai et al.);
- `sampling`: `DiffusionGenerationConfig()`;
- `training`: `TrainingArguments`' field defaults, except the few where this project deliberately differs
  (`TRAINING_DEFAULTS`, each with its reason).
Keys that exist only in this platform (tokenizer, data files, checkpoint cadence, ...) are listed with their
defaults below. The resolved config is saved in each experiment folder (see runs.py).

A validated config hands out what it describes, built in one place each: `model_config` (TDLMConfig, given the
tokenizer's ids), `generation_config` (DiffusionGenerationConfig) and `training_arguments` (TrainingArguments).
Validation runs the owners' own rules (`TDLMConfig.check_values`, `DiffusionGenerationConfig.validate`), whose
errors carry the offending field; the precision that runs (`running_precision`) is resolved here too.
"""

import contextlib
import copy
import dataclasses
import inspect
import io
import math
import os
import re
import typing
from pathlib import Path

import torch
import yaml
from transformers import TrainingArguments
from transformers.trainer_utils import SchedulerType

from .configuration_tdlm import InvalidConfigValue, TDLMConfig
from .generation_tdlm import DiffusionGenerationConfig

# transformers prints "[INFO] Running in WANDB offline mode" when this module is first imported with
# WANDB_MODE=offline: on every command, --help included, before anything ran
with contextlib.redirect_stdout(io.StringIO()):
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK


def _types_of(default, annotation=None) -> tuple:
    """Allowed YAML types of a key: its annotation when it names plain types, else its default's type."""
    args = typing.get_args(annotation) if annotation is not None else ()
    if args or annotation in (int, float, str, bool):
        types = tuple(None if a is type(None) else a for a in (args or (annotation,)))
        return types + ((None,) if default is None and None not in types else ())
    return (type(default),) if default is not None else (None,)


_MODEL_ARGUMENTS = inspect.signature(TDLMConfig.__init__).parameters


def _from_model_config(keys) -> dict:
    return {k: (_MODEL_ARGUMENTS[k].default, _types_of(_MODEL_ARGUMENTS[k].default, _MODEL_ARGUMENTS[k].annotation))
            for k in keys}


_GENERATION = DiffusionGenerationConfig()
_SAMPLING_NULLABLE = {"top_k": int, "top_p": float, "confidence_threshold": float, "block_length": int,
                      "max_new_tokens": int}  # None by default: their type when set
_ARGS = {f.name: f.default for f in dataclasses.fields(TrainingArguments)}
# YAML key -> TrainingArguments field, where the names differ
TRAINING_ARGUMENT_NAMES = {"batch_size": "per_device_train_batch_size", "epochs": "num_train_epochs"}
TRAINING_DEFAULTS = {  # where this project deliberately differs from TrainingArguments
    "batch_size": 32,  # per device; global batch = batch_size * grad accumulation * processes
    "learning_rate": 3e-4, "weight_decay": 0.1, "adam_beta2": 0.95,  # small-LM settings (nanoGPT, MDLM)
    "lr_scheduler_type": "cosine",
    "epochs": 1.0,
    "max_steps": None,  # overrides epochs (TrainingArguments' -1)
    "logging_steps": 10,  # research metrics are aggregated per logging step
}


def _training_key(key):
    default = TRAINING_DEFAULTS[key] if key in TRAINING_DEFAULTS else _ARGS[TRAINING_ARGUMENT_NAMES.get(key, key)]
    return default, ((int, None) if default is None else _types_of(default))


# section -> key -> (default, allowed types). `None` in the types means the key may be null.
SCHEMA = {
    "model": {
        **_from_model_config(("training_mode", "hidden_size", "num_hidden_layers", "num_attention_heads",
                              "intermediate_size")),
        "bd_block_size": (None, (int, None)),  # block_diffusion's block length B; must divide data.block_size
        **_from_model_config(("ar_context_token",)),  # AR: a BOS/EOS context token in front of every block
        "max_position_embeddings": (None, (int, None)),  # default: data.block_size (+ 1 for AR's context token)
        "vocab_size": (None, (int, None)),  # default: len(tokenizer); larger values pad the embedding
        **_from_model_config(("rope_theta", "attention_dropout", "hidden_dropout", "initializer_range")),
        "tokenizer": (None, (str, None)),  # a folder or Hub name; or use train_bpe
        "train_bpe": (None, (dict, None)),  # {files: [...], vocab_size: 1024, min_frequency: 2}
        "init_from": (None, (str, None)),  # start from a from_pretrained folder instead of random weights
        **_from_model_config(("head_implementation",)),
    },
    "diffusion": _from_model_config(("noise_schedule", "single_ratio_per_sequence", "min_mask_ratio",
                                     "max_mask_ratio", "antithetic_sampling", "time_epsilon")),
    "sampling": {k: (getattr(_GENERATION, k), (_SAMPLING_NULLABLE[k], None) if k in _SAMPLING_NULLABLE
                     else _types_of(getattr(_GENERATION, k)))
                 for k in ("num_steps", "step_schedule", "remasking", "temperature", "top_k", "top_p",
                           "confidence_threshold", "block_length", "cfg_scale", "max_new_tokens")},
    "training": {
        **{k: _training_key(k) for k in ("batch_size",)},
        "eval_batch_size": (None, (int, None)),  # default: batch_size
        **{k: _training_key(k) for k in ("gradient_accumulation_steps", "learning_rate", "weight_decay", "adam_beta1",
                                         "adam_beta2", "max_grad_norm")},
        "warmup_steps": (_ARGS["warmup_steps"], (int, float)),  # int: steps; float < 1: fraction of training
        **{k: _training_key(k) for k in ("lr_scheduler_type", "epochs", "max_steps", "logging_steps")},
        "detailed_metrics_steps": (None, (int, None)),  # tier 2 research metrics; null = off
        "attention_analysis_steps": (None, (int, None)),  # tier 3 research metrics; null = off
        "eval_steps": (None, (int, None)),  # null: evaluate at each save and at the end
        "save_every_n_steps": (None, (int, None)),
        "save_every_n_epochs": (1, (int, None)),
        "cleanup_checkpoints": (True, (bool,)),
        "checkpoint_map_location": ("auto", (str,)),
        **{k: _training_key(k) for k in ("seed",)},
        "mixed_precision": ("no", (str,)),
        "torch_compile": (False, (bool,)),  # compiles the backbone (static shapes); the head is fused already
        "torch_compile_mode": (None, (str, None)),  # torch.compile mode, e.g. reduce-overhead (CUDA graphs)
        **{k: _training_key(k) for k in ("dataloader_num_workers", "push_to_hub")},
        "hub_model_id": (None, (str, None)),
        # trackers, as TrainingArguments.report_to ("tensorboard", ["wandb", "trackio"], "none", ...); null: wandb
        # when monitoring.wandb.enabled, else none (wandb is added to any list when it is enabled)
        "report_to": (None, (str, list, None)),
    },
    "enhanced_evaluation": {
        "include_downstream": (False, (bool,)),
        "max_eval_batches": (None, (int, None)),
        "tasks": ([], (list,)),
        "limit": (None, (int, None)),  # documents per task
        "mc_num": (128, (int,)),  # Monte-Carlo samples per diffusion log-likelihood
    },
    "monitoring": {
        "wandb": ({"enabled": False, "project": "tdlm", "tags": []}, (dict,)),
    },
    "data": {
        "train_files": (None, (str, list, None)),
        "eval_files": (None, (str, list, None)),
        "hub_dataset": (None, (str, None)),  # e.g. Salesforce/wikitext
        "hub_config": (None, (str, None)),  # e.g. wikitext-2-raw-v1
        "hub_revision": (None, (str, None)),  # a branch, tag or commit of the Hub dataset
        "streaming": (False, (bool,)),  # read the Hub dataset as it downloads (large corpora)
        "train_split": ("train", (str,)),
        "eval_split": ("validation", (str, None)),
        "prepared": (None, (str, None)),  # a folder written by tdlm-prepare, instead of the sources above
        "text_field": ("text", (str,)),
        "append_eos": (None, (bool, None)),  # EOS after each document; null: yes, except between text-file lines
        "eval_fraction": (0.0, (float,)),  # documents held out for evaluation when there is no eval source
        "split_seed": (0, (int,)),  # which documents eval_fraction holds out
        "num_proc": (1, (int,)),  # tokenising processes while preparing
        "block_size": (256, (int,)),
        "cache_dir": (".cache/tdlm", (str,)),  # prepared token shards, keyed by source, options and tokenizer
    },
    "peft": {
        "enabled": (False, (bool,)),
        "r": (8, (int,)),
        "alpha": (16, (int,)),
        "dropout": (0.05, (float,)),
        "target_modules": (["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], (list,)),
        "base_model": (None, (str, None)),
    },
}
WANDB_KEYS = {"enabled": bool, "project": str, "tags": list}
# model, diffusion and sampling values are checked by TDLMConfig / DiffusionGenerationConfig themselves
CHOICES = {
    "training.mixed_precision": ("no", "fp16", "bf16"),
    "training.torch_compile_mode": (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    # every transformers schedule that needs no metric (reduce_lr_on_plateau) and no extra model (greedy)
    "training.lr_scheduler_type": tuple(s.value for s in SchedulerType if s.value not in ("reduce_lr_on_plateau",
                                                                                          "greedy")),
}
POSITIVE = ("training.batch_size", "training.gradient_accumulation_steps", "training.logging_steps", "data.block_size",
            "peft.r", "enhanced_evaluation.mc_num")
RANGES = {  # key -> (allowed, the range as the error message states it)
    "training.learning_rate": (lambda v: v > 0, "> 0"),
    "training.weight_decay": (lambda v: v >= 0, ">= 0"),
    "training.adam_beta1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "training.adam_beta2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "training.max_grad_norm": (lambda v: v >= 0, ">= 0 (0 turns clipping off)"),
    "training.warmup_steps": (lambda v: v >= 0, ">= 0"),
    "training.seed": (lambda v: 0 <= v < 2**32, "in [0, 2**32)"),
    "training.dataloader_num_workers": (lambda v: v >= 0, ">= 0"),
    "data.split_seed": (lambda v: 0 <= v < 2**32, "in [0, 2**32)"),
    "peft.alpha": (lambda v: v > 0, "> 0"),
    "peft.dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
}


class ConfigError(ValueError):
    """A config key is unknown or has a bad value; the message starts with the dotted key."""


def default_config() -> dict:
    return {section: {key: copy.deepcopy(spec[0]) for key, spec in keys.items()} for section, keys in SCHEMA.items()}


def _merge(base: dict, update: dict, prefix: str = "") -> None:
    for key, value in update.items():
        name = f"{prefix}{key}"
        if not prefix and key not in SCHEMA:
            raise ConfigError(f"{key}: unknown section; expected one of {sorted(SCHEMA)}")
        if prefix and key not in base:
            raise ConfigError(f"{name}: unknown key")
        if not prefix:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: a section must be a mapping, got {type(value).__name__}")
            _merge(base[key], value, f"{key}.")
        elif name == "monitoring.wandb":
            if not isinstance(value, dict):
                raise ConfigError(f"{name}: must be a mapping with keys {sorted(WANDB_KEYS)}")
            for sub in value:
                if sub not in WANDB_KEYS:
                    raise ConfigError(f"{name}.{sub}: unknown key")
            base[key] = {**base[key], **value}
        else:
            base[key] = value


def set_override(config: dict, assignment: str) -> None:
    """Apply one `section.key=value` (value parsed as YAML: 3e-4, true, null, [a, b])."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like section.key=value")
    dotted, raw = assignment.split("=", 1)
    parts = dotted.strip().split(".")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"{dotted}: {raw!r} is not a valid YAML value") from None
    if len(parts) == 3 and parts[:2] == ["monitoring", "wandb"]:
        update = {"monitoring": {"wandb": {parts[2]: value}}}
    elif len(parts) == 2:
        update = {parts[0]: {parts[1]: value}}
    else:
        raise ConfigError(f"{dotted}: overrides name a key as section.key")
    _merge(config, update)


def _check_type(name: str, value, types) -> object:
    value = _normalise_type(name, value, types)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name}: must be a finite number, got {value}")
    return value


def _normalise_type(name: str, value, types) -> object:
    if value is None:
        if None in types:
            return None
        raise ConfigError(f"{name}: must not be null")
    allowed = tuple(t for t in types if t is not None)
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value) if int not in allowed else value
    if isinstance(value, str) and float in allowed and re.fullmatch(r"[-+]?[\d.]+(e[-+]?\d+)?", value.strip(), re.I):
        return float(value)  # YAML 1.1 reads 3e-4 (no dot) as a string
    if isinstance(value, bool) and bool not in allowed:
        raise ConfigError(f"{name}: expected {'/'.join(t.__name__ for t in allowed)}, got {value!r}")
    if not isinstance(value, allowed):
        raise ConfigError(f"{name}: expected {'/'.join(t.__name__ for t in allowed)}, got {value!r}")
    return value


def default_positions(config: dict) -> int:
    """max_position_embeddings when model.max_position_embeddings is unset: data.block_size, plus one for AR's
    context token (model.ar_context_token)."""
    m = config["model"]
    return config["data"]["block_size"] + int(m["training_mode"] == "autoregressive" and bool(m["ar_context_token"]))


def _model_values(config: dict) -> dict:
    """The TDLMConfig arguments the model and diffusion sections set (vocab_size and the special ids come from the
    tokenizer); max_position_embeddings defaults to `default_positions`."""
    values = {k: v for k, v in config["model"].items() if k in _MODEL_ARGUMENTS and k != "vocab_size"}
    values["max_position_embeddings"] = values["max_position_embeddings"] or default_positions(config)
    return {**values, **config["diffusion"]}


def _check_model_and_sampling(config: dict) -> None:
    """The model, diffusion and sampling sections through TDLMConfig's and DiffusionGenerationConfig's own rules: one
    set of rules for YAML and Python. Their errors name the field; the section is the one that holds it."""
    vocab = {"vocab_size": config["model"]["vocab_size"]} if config["model"]["vocab_size"] is not None else {}
    try:
        TDLMConfig.check_values(**_model_values(config), **vocab)
        DiffusionGenerationConfig(**_sampling_options(config)).validate()
    except InvalidConfigValue as error:
        section = "sampling" if error.owner == "DiffusionGenerationConfig" else (
            "diffusion" if error.field in SCHEMA["diffusion"] else "model")
        raise ConfigError(f"{section}.{error.field}: {error.message}") from None


def _sampling_options(config: dict) -> dict:
    return {k: v for k, v in config["sampling"].items() if v is not None}


# ---------------------------------------------------------------------------------------------
# What a validated config hands out: the model config, the generation config, the TrainingArguments
# ---------------------------------------------------------------------------------------------
def model_config(config: dict, tokenizer_values: dict) -> TDLMConfig:
    """The TDLMConfig of a new model: the model and diffusion sections, with the tokenizer's vocab_size and special
    ids (`tokenization.config_kwargs_for_tokenizer`); model.vocab_size, when set, pads the vocabulary."""
    values = dict(tokenizer_values)
    chosen = config["model"]["vocab_size"]
    if chosen is not None:
        if chosen < values["vocab_size"]:
            raise ConfigError(f"model.vocab_size {chosen} is smaller than the tokenizer's {values['vocab_size']} "
                              "tokens")
        values["vocab_size"] = chosen
    return TDLMConfig(**_model_values(config), **values)


def generation_config(config: dict, model: TDLMConfig) -> DiffusionGenerationConfig:
    """The sampling section as the generation config of a model with config `model` (its ids and length)."""
    return DiffusionGenerationConfig.for_model(model, **_sampling_options(config))


def training_arguments(config: dict, output_dir: str, run_name: str | None = None, **extra) -> TrainingArguments:
    """The training section as TrainingArguments (`extra` overrides fields). Trackers are `trackers(config)`;
    checkpoints and evaluation are left to the platform's callbacks (save and eval strategies "no")."""
    t = config["training"]
    kwargs = dict(
        output_dir=output_dir,
        per_device_train_batch_size=t["batch_size"],
        per_device_eval_batch_size=t["eval_batch_size"] or t["batch_size"],
        gradient_accumulation_steps=t["gradient_accumulation_steps"],
        learning_rate=t["learning_rate"], weight_decay=t["weight_decay"],
        adam_beta1=t["adam_beta1"], adam_beta2=t["adam_beta2"], max_grad_norm=t["max_grad_norm"],
        warmup_steps=t["warmup_steps"], lr_scheduler_type=t["lr_scheduler_type"],
        num_train_epochs=t["epochs"], max_steps=t["max_steps"] if t["max_steps"] is not None else -1,
        logging_steps=t["logging_steps"], logging_nan_inf_filter=False,
        eval_strategy="no", save_strategy="no",  # CheckpointScheduleCallback decides
        seed=t["seed"], data_seed=t["seed"],
        bf16=t["mixed_precision"] == "bf16", fp16=t["mixed_precision"] == "fp16",
        dataloader_num_workers=t["dataloader_num_workers"],  # training.torch_compile: see training.build
        dataloader_drop_last=True, remove_unused_columns=False, prediction_loss_only=True,
        report_to=trackers(config) or "none", run_name=run_name,
        ddp_find_unused_parameters=False, save_only_model=False,
        # without a GPU, multi-process runs (torchrun / accelerate launch) need accelerate's CPU (gloo) mode
        use_cpu=not torch.cuda.is_available(),
    )
    kwargs.update(extra)
    return TrainingArguments(**kwargs)


def validate_config(config: dict) -> dict:
    """Type and range checks for every key; returns the config with numbers normalised. Raises ConfigError."""
    if config["training"]["mixed_precision"] is False:  # YAML 1.1 reads a bare `no` (accelerate's name) as false
        config["training"]["mixed_precision"] = "no"
    config["training"]["mixed_precision"] = running_precision(config)
    for section, keys in SCHEMA.items():
        for key, (_, types) in keys.items():
            config[section][key] = _check_type(f"{section}.{key}", config[section][key], types)
    wandb = config["monitoring"]["wandb"]
    for key, kind in WANDB_KEYS.items():
        if not isinstance(wandb.get(key), kind):
            raise ConfigError(f"monitoring.wandb.{key}: expected {kind.__name__}, got {wandb.get(key)!r}")

    def get(dotted):
        section, key = dotted.split(".")
        return config[section][key]

    def fail(dotted, message):
        raise ConfigError(f"{dotted}: {message}")

    for dotted, choices in CHOICES.items():
        if get(dotted) not in choices:
            fail(dotted, f"{get(dotted)!r} is not one of {choices}")
    for dotted in POSITIVE:
        if get(dotted) < 1:
            fail(dotted, f"must be >= 1, got {get(dotted)}")
    for dotted in ("training.max_steps", "training.eval_steps", "training.save_every_n_steps",
                   "training.save_every_n_epochs", "training.detailed_metrics_steps",
                   "training.attention_analysis_steps", "training.eval_batch_size",
                   "enhanced_evaluation.max_eval_batches", "enhanced_evaluation.limit"):
        if get(dotted) is not None and get(dotted) < 1:
            fail(dotted, f"must be >= 1 or null, got {get(dotted)}")
    for dotted, (allowed, description) in RANGES.items():
        if not allowed(get(dotted)):
            fail(dotted, f"must be {description}, got {get(dotted)}")
    _check_model_and_sampling(config)
    trackers(config)
    if get("training.push_to_hub") and not get("training.hub_model_id"):
        fail("training.hub_model_id", "training.push_to_hub is true but no repo id (user/name) is set")
    if get("training.epochs") <= 0 and get("training.max_steps") is None:
        fail("training.epochs", "must be > 0 (or set training.max_steps)")
    if isinstance(get("training.warmup_steps"), float) and get("training.warmup_steps") >= 1:
        fail("training.warmup_steps", "a float is a fraction of training and must be < 1; use an int for steps")
    m = config["model"]
    if m["tokenizer"] is None and m["train_bpe"] is None and m["init_from"] is None and not config["peft"]["enabled"]:
        fail("model.tokenizer", "set a tokenizer folder/name, or a model.train_bpe block")
    if m["tokenizer"] is not None and m["train_bpe"] is not None:
        fail("model.train_bpe", "set either model.tokenizer or model.train_bpe, not both")
    if m["train_bpe"] is not None and (m["init_from"] is not None or config["peft"]["enabled"]):
        fail("model.train_bpe", "a pretrained start (model.init_from / peft.base_model) brings its own tokenizer")
    if m["train_bpe"] is not None:
        unknown = set(m["train_bpe"]) - {"files", "vocab_size", "min_frequency"}
        if unknown:
            fail(f"model.train_bpe.{sorted(unknown)[0]}", "unknown key")
        if not m["train_bpe"].get("files"):
            fail("model.train_bpe.files", "list the text files to train the tokenizer on")
    block = get("data.block_size")
    if m["max_position_embeddings"] is not None and m["max_position_embeddings"] < default_positions(config):
        fail("model.max_position_embeddings", f"{m['max_position_embeddings']} is shorter than data.block_size {block}"
                                              + (" + 1 (AR's context token, model.ar_context_token)"
                                                 if default_positions(config) > block else ""))
    if m["training_mode"] == "block_diffusion" and block % m["bd_block_size"]:
        fail("model.bd_block_size", f"{m['bd_block_size']} does not divide data.block_size {block}")
    if m["training_mode"] != "block_diffusion" and m["bd_block_size"] is not None:
        fail("model.bd_block_size", f"only training_mode block_diffusion has blocks; unset it for {m['training_mode']}")
    _check_data(config["data"], fail)
    if config["peft"]["enabled"] and config["peft"]["base_model"] is None and m["init_from"] is None:
        fail("peft.base_model", "LoRA needs a pretrained base model folder")
    for dotted in ("model.tokenizer", "model.init_from", "peft.base_model"):
        if _is_missing_local_path(get(dotted)):
            fail(dotted, f"no such folder: {get(dotted)}")
    return config


def running_precision(config: dict) -> str:
    """The precision a run uses: training.mixed_precision, else accelerate's (`accelerate launch --mixed_precision
    bf16` or `accelerate config`, passed on as ACCELERATE_MIXED_PRECISION), as TrainingArguments resolves it.
    Resolved when the config is validated, so the saved config says what ran."""
    chosen = config["training"]["mixed_precision"]
    return chosen if chosen != "no" else os.environ.get("ACCELERATE_MIXED_PRECISION", "no")


def trackers(config: dict) -> list[str]:
    """training.report_to as a list (any TrainingArguments.report_to names), with wandb added when
    monitoring.wandb.enabled; names transformers does not know fail (at validation), naming the key."""
    chosen = config["training"]["report_to"]
    chosen = [] if chosen in (None, "none") else [chosen] if isinstance(chosen, str) else list(chosen)
    if config["monitoring"]["wandb"]["enabled"] and "wandb" not in chosen:
        chosen.append("wandb")
    unknown = sorted(set(chosen) - set(INTEGRATION_TO_CALLBACK) - {"all"})
    if unknown:
        raise ConfigError(f"training.report_to: unknown trackers {unknown}; expected some of "
                          f"{sorted(INTEGRATION_TO_CALLBACK)}, 'all' or 'none'")
    return chosen


def _is_missing_local_path(name: str | None) -> bool:
    """A name that can only be a local path (not a Hub id `name` or `org/name`) and does not exist."""
    if name is None or Path(name).expanduser().exists():
        return False
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _check_data(data: dict, fail) -> None:
    if sum(data[key] is not None for key in ("train_files", "hub_dataset", "prepared")) != 1:
        fail("data.train_files", "set exactly one of data.train_files, data.hub_dataset or data.prepared")
    if data["prepared"] is not None and data["eval_files"] is not None:
        fail("data.eval_files", "a prepared folder brings its own eval split (tdlm-prepare --eval ...)")
    if not 0.0 <= data["eval_fraction"] < 1.0:
        fail("data.eval_fraction", f"must lie in [0, 1), got {data['eval_fraction']}")
    has_eval_source = data["eval_files"] is not None or (data["hub_dataset"] is not None and data["eval_split"])
    if data["eval_fraction"] and (has_eval_source or data["prepared"] is not None):
        fail("data.eval_fraction", "holds out training documents only when there is no eval source (unset "
                                   "data.eval_files / data.eval_split) and nothing is prepared yet")
    if data["prepared"] is not None and not Path(data["prepared"]).expanduser().is_dir():
        fail("data.prepared", f"no such folder: {data['prepared']} (make one with tdlm-prepare)")
    if data["num_proc"] < 1:
        fail("data.num_proc", f"must be >= 1, got {data['num_proc']}")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> dict:
    """Defaults <- YAML file <- `key=value` overrides, validated."""
    config = default_config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: not a valid YAML file ({' '.join(str(error).split())})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        _merge(config, loaded)
    for assignment in overrides:
        set_override(config, assignment)
    return validate_config(config)


def save_config(config: dict, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(config, sort_keys=False))
