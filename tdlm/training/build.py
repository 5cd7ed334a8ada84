"""From a validated config to the pieces a Trainer needs: tokenizer, model, data, TrainingArguments."""

import os
from contextlib import contextmanager

import torch
from transformers import TrainingArguments

from ..config import trackers
from ..configuration_tdlm import TDLMConfig
from ..data import DataCollatorForTDLM, build_datasets
from ..generation_tdlm import DiffusionGenerationConfig
from ..modeling_tdlm import TDLMModel, model_class_for
from ..peft_utils import apply_lora
from ..runs import Experiment, load_model, pretrained_source
from ..tokenization import check_tokenizer_matches, config_kwargs_for_tokenizer, load_tokenizer, train_bpe_tokenizer

MODEL_SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "rope_theta",
                    "attention_dropout", "hidden_dropout", "initializer_range")


def starting_point(config: dict) -> str | None:
    """The model folder a run starts from (peft.base_model or model.init_from): an experiment folder means its
    best checkpoint; a name that is not a local path is kept (a Hub id)."""
    section, key = _pretrained_key(config).split(".")
    return pretrained_source(config[section][key])


def _pretrained_key(config: dict) -> str:
    return "peft.base_model" if config["peft"]["enabled"] else "model.init_from"


@contextmanager
def _loading(key: str, name: str):
    """A start that cannot be loaded (not a local folder, and offline or no such Hub repo; a folder without the
    files it needs) names its config key."""
    try:
        yield
    except OSError as error:
        raise ValueError(f"{key}: cannot load {name!r}: not a local folder, and the Hub gave: "
                         f"{str(error).splitlines()[0]}") from None
    except ValueError as error:
        raise ValueError(f"{key}: {str(error).splitlines()[0]}") from None


def build_tokenizer(config: dict, checkpoint=None):
    """The checkpoint's tokenizer on resume; else the pretrained start's, model.tokenizer, or a new BPE."""
    model, pretrained = config["model"], starting_point(config)
    if checkpoint is not None:
        return load_tokenizer(str(checkpoint), trust_remote_code=True)
    if model["tokenizer"] is None and pretrained is not None:
        with _loading(_pretrained_key(config), pretrained):
            return load_tokenizer(pretrained, trust_remote_code=True)
    if model["train_bpe"] is not None:
        spec = model["train_bpe"]
        return train_bpe_tokenizer(spec["files"], vocab_size=spec.get("vocab_size", 1024),
                                   min_frequency=spec.get("min_frequency", 2))
    with _loading("model.tokenizer", model["tokenizer"]):
        return load_tokenizer(model["tokenizer"])


def build_model(config: dict, tokenizer):
    """A fresh TDLM model from the config (or init_from / a LoRA-wrapped base), checked against the tokenizer."""
    m = config["model"]
    pretrained = starting_point(config)
    if pretrained:
        with _loading(_pretrained_key(config), pretrained):
            model = load_model(pretrained)
    else:
        token_kwargs = config_kwargs_for_tokenizer(tokenizer)
        if m["vocab_size"] is not None:
            if m["vocab_size"] < token_kwargs["vocab_size"]:
                raise ValueError(f"model.vocab_size {m['vocab_size']} is smaller than the tokenizer's "
                                 f"{token_kwargs['vocab_size']} tokens")
            token_kwargs["vocab_size"] = m["vocab_size"]
        model_config = TDLMConfig(
            **{k: m[k] for k in MODEL_SHAPE_KEYS}, **token_kwargs, **config["diffusion"],
            training_mode=m["training_mode"],
            max_position_embeddings=m["max_position_embeddings"] or config["data"]["block_size"])
        model = model_class_for(model_config)(model_config)
    if model.config.training_mode != m["training_mode"]:
        raise ValueError(f"model.training_mode is {m['training_mode']!r} but the pretrained model {pretrained} is "
                         f"{model.config.training_mode!r}")
    # a training choice, also for pretrained models; recorded as the head that runs here, so that the saved config
    # (and a model card built from it) does not claim Triton kernels for a run on a CPU
    m["head_implementation"] = model.config.head_implementation = head_that_runs(m["head_implementation"])
    check_tokenizer_matches(tokenizer, model.config)
    if model.config.is_diffusion:
        sampling = {k: v for k, v in config["sampling"].items() if v is not None}
        model.generation_config = DiffusionGenerationConfig(
            **sampling, bos_token_id=model.config.bos_token_id, eos_token_id=model.config.eos_token_id,
            pad_token_id=model.config.pad_token_id, max_length=model.config.max_position_embeddings)
    if config["peft"]["enabled"]:
        model = apply_lora(model, {**config["peft"], "base_model": pretrained})
    if config["training"]["torch_compile"] or config["training"]["torch_compile_mode"]:  # a mode implies compile
        compile_backbone(model, config["training"]["torch_compile_mode"])
    return model


def head_that_runs(requested: str) -> str:
    """The LM head a run uses: the Triton kernels need CUDA and the triton package, else the chunked head runs."""
    from ..fused_cross_entropy import triton

    return "chunked" if requested == "triton" and (triton is None or not torch.cuda.is_available()) else requested


def compile_backbone(model, mode: str | None = None):
    """torch.compile the backbone in place (its [batch, length] shapes are static, so it compiles once); the head
    runs eagerly: its masked-row gather has data-dependent shapes and its kernels are fused already. Compiling the
    whole model (TrainingArguments.torch_compile) recompiled at that gather and gained 3% on an H100."""
    for module in model.modules():
        if isinstance(module, TDLMModel):
            module.compile(mode=mode)
    return model


def build_data(config: dict, tokenizer, model):
    """(train dataset, eval dataset or None, collator)."""
    t, e = config["training"], config["enhanced_evaluation"]
    eval_rows = e["max_eval_batches"] * (t["eval_batch_size"] or t["batch_size"]) if e["max_eval_batches"] else None
    train, evaluation = build_datasets(config["data"], tokenizer, model.config.vocab_size, eval_rows)
    return train, evaluation, DataCollatorForTDLM(tokenizer.pad_token_id)


def mixed_precision(config: dict) -> str:
    """The precision a run uses: the YAML's training.mixed_precision, else accelerate's (`accelerate launch
    --mixed_precision bf16` or `accelerate config`, passed on as ACCELERATE_MIXED_PRECISION), as TrainingArguments
    resolves it."""
    chosen = config["training"]["mixed_precision"]
    return chosen if chosen != "no" else os.environ.get("ACCELERATE_MIXED_PRECISION", "no")


def training_arguments(config: dict, experiment: Experiment, **extra) -> TrainingArguments:
    """TrainingArguments of a run. Records the precision that will actually run (`mixed_precision`) in
    config["training"], so that the saved config.yaml and training_args.bin say what ran."""
    t = config["training"]
    t["mixed_precision"] = mixed_precision(config)
    report_to = trackers(config)
    wandb = config["monitoring"]["wandb"]
    if "wandb" in report_to:
        os.environ.setdefault("WANDB_PROJECT", wandb["project"])
        if wandb["tags"]:
            os.environ.setdefault("WANDB_TAGS", ",".join(map(str, wandb["tags"])))
        os.environ.setdefault("WANDB_DIR", str(experiment.logs_dir))
    if "tensorboard" in report_to:  # event files next to metrics.jsonl, per experiment (default: checkpoints/runs)
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(experiment.logs_dir / "tensorboard")
    kwargs = dict(
        output_dir=str(experiment.checkpoints_dir),
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
        dataloader_num_workers=t["dataloader_num_workers"],  # training.torch_compile: see compile_backbone
        dataloader_drop_last=True, remove_unused_columns=False, prediction_loss_only=True,
        report_to=report_to or "none", run_name=experiment.experiment_id,
        ddp_find_unused_parameters=False, save_only_model=False,
        # without a GPU, multi-process runs (torchrun / accelerate launch) need accelerate's CPU (gloo) mode
        use_cpu=not torch.cuda.is_available(),
    )
    kwargs.update(extra)
    return TrainingArguments(**kwargs)
