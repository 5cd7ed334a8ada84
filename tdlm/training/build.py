"""From a validated config to the pieces a Trainer needs: tokenizer, model, data, TrainingArguments."""

import os
from contextlib import contextmanager

import torch
from transformers import TrainingArguments

from .. import config as schema
from ..data import build_datasets
from ..modeling_tdlm import TDLMModel, model_class_for
from ..objectives import objective_for
from ..peft_utils import apply_lora
from ..runs import Experiment, load_model, pretrained_source
from ..tokenization import check_tokenizer_matches, config_kwargs_for_tokenizer, load_tokenizer, train_bpe_tokenizer


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
        fresh = schema.model_config(config, config_kwargs_for_tokenizer(tokenizer))
        model = model_class_for(fresh)(fresh)
    if model.config.training_mode != m["training_mode"]:
        raise ValueError(f"model.training_mode is {m['training_mode']!r} but the pretrained model {pretrained} is "
                         f"{model.config.training_mode!r}")
    # a training choice, also for pretrained models; recorded as the head that runs here, so that the saved config
    # (and a model card built from it) does not claim Triton kernels for a run on a CPU
    m["head_implementation"] = model.config.head_implementation = head_that_runs(m["head_implementation"])
    check_tokenizer_matches(tokenizer, model.config)
    if model.config.uses_mask_token:
        model.generation_config = schema.generation_config(config, model.config)
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
    whole model (TrainingArguments.torch_compile) recompiles at that gather (docs/benchmarks.md)."""
    for module in model.modules():
        if isinstance(module, TDLMModel):
            module.compile(mode=mode)
    return model


def build_data(config: dict, tokenizer, model):
    """(train dataset, eval dataset or None, collator): the collator is the model's objective's."""
    t, e = config["training"], config["enhanced_evaluation"]
    block, context = config["data"]["block_size"], model.config.context_token_id is not None
    if block + context > model.config.max_position_embeddings:
        raise ValueError(f"data.block_size: {block} tokens{' plus the AR context token' if context else ''} need "
                         f"max_position_embeddings >= {block + context}; the model has "
                         f"{model.config.max_position_embeddings}")
    eval_rows = e["max_eval_batches"] * (t["eval_batch_size"] or t["batch_size"]) if e["max_eval_batches"] else None
    train, evaluation = build_datasets(config["data"], tokenizer, model.config.vocab_size, eval_rows)
    return train, evaluation, objective_for(model.config).collator(model.config, tokenizer.pad_token_id)


def training_arguments(config: dict, experiment: Experiment, **extra) -> TrainingArguments:
    """TrainingArguments of a run in `experiment` (`config.training_arguments`), with the trackers' environment:
    wandb's project, tags and folder, tensorboard's event files next to metrics.jsonl."""
    report_to = schema.trackers(config)
    wandb = config["monitoring"]["wandb"]
    if "wandb" in report_to:
        os.environ.setdefault("WANDB_PROJECT", wandb["project"])
        if wandb["tags"]:
            os.environ.setdefault("WANDB_TAGS", ",".join(map(str, wandb["tags"])))
        os.environ.setdefault("WANDB_DIR", str(experiment.logs_dir))
    if "tensorboard" in report_to:  # event files next to metrics.jsonl, per experiment (default: checkpoints/runs)
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(experiment.logs_dir / "tensorboard")
    fields = {"output_dir": str(experiment.checkpoints_dir), "run_name": experiment.experiment_id, **extra}
    return schema.training_arguments(config, **fields)
