"""Experiment configuration: YAML schema, loading, `key=value` overrides, validation, experiment folders.

A config is a nested dict with the sections of `DEFAULTS`. Every key a user writes must exist in the schema
and have the right type; errors name the key ("training.learnig_rate: unknown key"). The resolved config
(defaults + file + overrides) is saved as `experiments/<id>/configs/config.yaml`.

Experiment folder (shared contract with evaluation, comparison, heatmaps and publishing):

    experiments/<id>/configs/config.yaml
    experiments/<id>/checkpoints/checkpoint-<step>/
    experiments/<id>/logs/metrics.jsonl
    experiments/<id>/results/summary.json
"""

import copy
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .configuration_tdlm import HEAD_IMPLEMENTATIONS, TRAINING_MODES
from .generation_tdlm import REMASKING_RULES
from .schedules import NOISE_SCHEDULES, STEP_SCHEDULES

ANY = object()  # marker: no type check (lists of files, tags, ...)

# section -> key -> (default, allowed types). `None` in the types means the key may be null.
SCHEMA = {
    "model": {
        "training_mode": ("diffusion", (str,)),
        "hidden_size": (128, (int,)),
        "num_hidden_layers": (3, (int,)),
        "num_attention_heads": (4, (int,)),
        "intermediate_size": (320, (int,)),
        "max_position_embeddings": (None, (int, None)),  # default: data.block_size
        "vocab_size": (None, (int, None)),  # default: len(tokenizer); larger values pad the embedding
        "rope_theta": (10000.0, (float,)),
        "attention_dropout": (0.0, (float,)),
        "hidden_dropout": (0.0, (float,)),
        "initializer_range": (0.02, (float,)),
        "tokenizer": (None, (str, None)),  # a folder or Hub name; or use train_bpe
        "train_bpe": (None, (dict, None)),  # {files: [...], vocab_size: 1024, min_frequency: 2}
        "init_from": (None, (str, None)),  # start from a from_pretrained folder instead of random weights
        "head_implementation": ("triton", (str,)),  # fused LM head + CE: triton (CUDA; else chunked) or chunked
    },
    "diffusion": {
        "noise_schedule": ("linear", (str,)),
        "single_ratio_per_sequence": (True, (bool,)),
        "min_mask_ratio": (0.0, (float,)),
        "max_mask_ratio": (1.0, (float,)),
        "antithetic_sampling": (True, (bool,)),
        "time_epsilon": (1e-3, (float,)),
    },
    "sampling": {
        "num_steps": (64, (int,)),
        "step_schedule": ("cosine", (str,)),
        "remasking": ("low_confidence", (str,)),
        "temperature": (0.0, (float,)),
        "top_k": (None, (int, None)),
        "top_p": (None, (float, None)),
        "confidence_threshold": (None, (float, None)),
        "block_length": (None, (int, None)),
        "cfg_scale": (0.0, (float,)),
        "max_new_tokens": (None, (int, None)),
    },
    "training": {
        "batch_size": (32, (int,)),  # per device; global batch = batch_size * grad accumulation * processes
        "eval_batch_size": (None, (int, None)),
        "gradient_accumulation_steps": (1, (int,)),
        "learning_rate": (3e-4, (float,)),
        "weight_decay": (0.1, (float,)),
        "adam_beta1": (0.9, (float,)),
        "adam_beta2": (0.95, (float,)),
        "max_grad_norm": (1.0, (float,)),
        "warmup_steps": (0, (int, float)),  # int: steps; float < 1: fraction of training
        "lr_scheduler_type": ("cosine", (str,)),
        "epochs": (1.0, (float,)),
        "max_steps": (None, (int, None)),  # overrides epochs
        "logging_steps": (10, (int,)),
        "detailed_metrics_steps": (None, (int, None)),  # tier 2 research metrics; null = off
        "attention_analysis_steps": (None, (int, None)),  # tier 3 research metrics; null = off
        "eval_steps": (None, (int, None)),  # null: evaluate at each save and at the end
        "save_every_n_steps": (None, (int, None)),
        "save_every_n_epochs": (1, (int, None)),
        "cleanup_checkpoints": (True, (bool,)),
        "checkpoint_map_location": ("auto", (str,)),
        "seed": (42, (int,)),
        "mixed_precision": ("no", (str,)),
        "torch_compile": (False, (bool,)),  # compiles the backbone (static shapes); the head is fused already
        "torch_compile_mode": (None, (str, None)),  # torch.compile mode, e.g. reduce-overhead (CUDA graphs)
        "dataloader_num_workers": (0, (int,)),
        "push_to_hub": (False, (bool,)),
        "hub_model_id": (None, (str, None)),
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
        "train_split": ("train", (str,)),
        "eval_split": ("validation", (str,)),
        "text_field": ("text", (str,)),
        "block_size": (256, (int,)),
        "cache_dir": (".cache/tdlm", (str,)),
    },
    "peft": {
        "enabled": (False, (bool,)),
        "r": (8, (int,)),
        "alpha": (16, (int,)),
        "dropout": (0.0, (float,)),
        "target_modules": (["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], (list,)),
        "base_model": (None, (str, None)),
    },
}
WANDB_KEYS = {"enabled": bool, "project": str, "tags": list}
CHOICES = {  # the model package defines the names; the YAML schema checks them before anything is built
    "model.training_mode": TRAINING_MODES,
    "model.head_implementation": HEAD_IMPLEMENTATIONS,
    "diffusion.noise_schedule": tuple(NOISE_SCHEDULES),
    "sampling.step_schedule": STEP_SCHEDULES,
    "sampling.remasking": REMASKING_RULES,
    "training.mixed_precision": ("no", "fp16", "bf16"),
    "training.torch_compile_mode": (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    "training.lr_scheduler_type": ("linear", "cosine", "constant", "constant_with_warmup",
                                   "cosine_with_min_lr", "inverse_sqrt", "warmup_stable_decay"),
}
POSITIVE = ("model.hidden_size", "model.num_hidden_layers", "model.num_attention_heads", "model.intermediate_size",
            "sampling.num_steps", "training.batch_size", "training.gradient_accumulation_steps",
            "training.logging_steps", "data.block_size", "peft.r")


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
    import yaml

    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like section.key=value")
    dotted, raw = assignment.split("=", 1)
    parts = dotted.strip().split(".")
    value = yaml.safe_load(raw) if raw.strip() else None
    if len(parts) == 3 and parts[:2] == ["monitoring", "wandb"]:
        update = {"monitoring": {"wandb": {parts[2]: value}}}
    elif len(parts) == 2:
        update = {parts[0]: {parts[1]: value}}
    else:
        raise ConfigError(f"{dotted}: overrides name a key as section.key")
    _merge(config, update)


def _check_type(name: str, value, types) -> object:
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


def validate_config(config: dict) -> dict:
    """Type and range checks for every key; returns the config with numbers normalised. Raises ConfigError."""
    if config["training"]["mixed_precision"] is False:  # YAML 1.1 reads a bare `no` (accelerate's name) as false
        config["training"]["mixed_precision"] = "no"
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
                   "enhanced_evaluation.max_eval_batches", "model.max_position_embeddings", "model.vocab_size"):
        if get(dotted) is not None and get(dotted) < 1:
            fail(dotted, f"must be >= 1 or null, got {get(dotted)}")
    if get("training.learning_rate") <= 0:
        fail("training.learning_rate", f"must be > 0, got {get('training.learning_rate')}")
    if get("training.push_to_hub") and not get("training.hub_model_id"):
        fail("training.hub_model_id", "training.push_to_hub is true but no repo id (user/name) is set")
    if get("training.weight_decay") < 0:
        fail("training.weight_decay", "must be >= 0")
    if get("training.epochs") <= 0 and get("training.max_steps") is None:
        fail("training.epochs", "must be > 0 (or set training.max_steps)")
    if get("training.warmup_steps") < 0:
        fail("training.warmup_steps", "must be >= 0")
    if isinstance(get("training.warmup_steps"), float) and get("training.warmup_steps") >= 1:
        fail("training.warmup_steps", "a float is a fraction of training and must be < 1; use an int for steps")
    d = config["diffusion"]
    if not 0.0 <= d["min_mask_ratio"] < d["max_mask_ratio"] <= 1.0:
        fail("diffusion.min_mask_ratio", f"need 0 <= min_mask_ratio < max_mask_ratio <= 1, got "
                                         f"{d['min_mask_ratio']} and {d['max_mask_ratio']}")
    if not 0.0 < d["time_epsilon"] < 1.0:
        fail("diffusion.time_epsilon", f"must lie in (0, 1), got {d['time_epsilon']}")
    m = config["model"]
    if m["hidden_size"] % m["num_attention_heads"] or (m["hidden_size"] // m["num_attention_heads"]) % 2:
        fail("model.num_attention_heads", f"must divide hidden_size {m['hidden_size']} into even head dims")
    for key in ("attention_dropout", "hidden_dropout"):
        if not 0.0 <= m[key] < 1.0:
            fail(f"model.{key}", f"must lie in [0, 1), got {m[key]}")
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
    if m["max_position_embeddings"] is not None and m["max_position_embeddings"] < block:
        fail("model.max_position_embeddings", f"{m['max_position_embeddings']} is shorter than data.block_size {block}")
    data = config["data"]
    if (data["train_files"] is None) == (data["hub_dataset"] is None):
        fail("data.train_files", "set exactly one of data.train_files or data.hub_dataset")
    if get("sampling.top_p") is not None and not 0.0 < get("sampling.top_p") <= 1.0:
        fail("sampling.top_p", "must lie in (0, 1]")
    if get("sampling.temperature") < 0:
        fail("sampling.temperature", "must be >= 0")
    if get("sampling.cfg_scale") < 0:
        fail("sampling.cfg_scale", "must be >= 0")
    if config["peft"]["enabled"] and config["peft"]["base_model"] is None and m["init_from"] is None:
        fail("peft.base_model", "LoRA needs a pretrained base model folder")
    return config


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> dict:
    """Defaults <- YAML file <- `key=value` overrides, validated."""
    import yaml

    config = default_config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        _merge(config, loaded)
    for assignment in overrides:
        set_override(config, assignment)
    return validate_config(config)


def save_config(config: dict, path: str | Path) -> None:
    import yaml

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(config, sort_keys=False))


# ---------------------------------------------------------------------------------------------
# Experiment folders
# ---------------------------------------------------------------------------------------------
@dataclass
class Experiment:
    root: Path

    @property
    def experiment_id(self) -> str:
        return self.root.name

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def configs_dir(self) -> Path:
        return self.root / "configs"

    @property
    def results_dir(self) -> Path:
        return self.root / "results"

    @property
    def config_path(self) -> Path:
        return self.configs_dir / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.logs_dir / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.results_dir / "summary.json"

    def create(self) -> "Experiment":
        for folder in (self.checkpoints_dir, self.logs_dir, self.configs_dir, self.results_dir):
            folder.mkdir(parents=True, exist_ok=True)
        return self


def default_experiment_id() -> str:
    return time.strftime("tdlm_%Y%m%d_%H%M%S")


CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(checkpoints_dir: str | Path, complete: bool = True) -> list[Path]:
    """`checkpoint-<step>` folders, oldest step first; `complete` keeps only those with trainer_state.json
    (a finished Trainer save), otherwise every folder of that name."""
    folder = Path(checkpoints_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if (m := CHECKPOINT_PATTERN.match(p.name)) and (not complete or (p / "trainer_state.json").is_file())]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(path: str | Path) -> tuple[Path, Experiment | None]:
    """A checkpoint folder, or an experiment folder (meaning its latest checkpoint) -> (checkpoint, experiment)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--resume path not found: {path}")
    if (path / "checkpoints").is_dir():
        checkpoints = list_checkpoints(path / "checkpoints")
        if not checkpoints:
            raise FileNotFoundError(f"experiment {path} has no complete checkpoint under {path / 'checkpoints'}")
        return checkpoints[-1], Experiment(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is neither a checkpoint (no config.json) nor an experiment folder")
    experiment = Experiment(path.parent.parent) if path.parent.name == "checkpoints" else None
    return path, experiment
