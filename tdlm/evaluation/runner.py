"""Evaluate one checkpoint end to end (likelihood + downstream tasks) into a JSON-ready dict."""

import math
import platform
import time
from importlib.metadata import PackageNotFoundError, version

import torch

from ..data import ShardedBlocks, TokenShards, load_blocks, prepared_folder, read_index
from ..runs import load_checkpoint
from .likelihood import diffusion_ordered_nll
from .multiple_choice import run_downstream
from .scoring import held_out_loss


def environment_info() -> dict:
    """Package versions (and device) recorded with every result."""
    versions = {}
    for package in ("tdlm", "torch", "transformers", "accelerate", "datasets", "lm_eval", "tokenizers", "numpy"):
        try:
            versions[package] = version(package.replace("_", "-"))
        except PackageNotFoundError:
            versions[package] = None
    return {"python": platform.python_version(), "packages": versions,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}


def eval_blocks(tokenizer, block_size: int, eval_file=None, data_config: dict | None = None,
                max_blocks: int | None = None):
    """Token blocks of an eval file (any format tdlm.data reads), or the eval split of a config's `data` section
    (eval_files, hub_dataset + eval_split, eval_fraction or a prepared folder), tokenized with `tokenizer`."""
    if eval_file is None and data_config and data_config.get("eval_files"):
        eval_file = data_config["eval_files"]  # the eval files alone: no need to prepare the training data
    if eval_file is not None:
        files = [str(f) for f in eval_file] if isinstance(eval_file, (list, tuple)) else str(eval_file)
        blocks = load_blocks(files, tokenizer, block_size, text_field=(data_config or {}).get("text_field", "text"))
        return blocks[:max_blocks] if max_blocks is not None else blocks
    if data_config:
        folder = prepared_folder(data_config, tokenizer)
        if "eval" in read_index(folder)["splits"]:
            return ShardedBlocks(TokenShards(folder, "eval"), block_size, max_blocks).tensor()
    raise ValueError("no eval data: pass --eval-file or use a config whose data section has eval_files, "
                     "hub_dataset + eval_split, eval_fraction, or a prepared folder with an eval split")


def _check_counts(**counts) -> None:
    """Integer settings that must be >= 1 (None = default/all where the signature allows it)."""
    for name, value in counts.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def evaluate_checkpoint(path, tasks=(), limit=None, mc_num: int = 128, seed: int = 0, likelihood: bool = False,
                        eval_file=None, data_config=None, num_samples: int = 32, block_size: int | None = None,
                        max_blocks: int | None = None, exact_ordered: bool = False, backend: str = "native",
                        data_dir=None, batch_size: int = 32, device: str | None = None, model=None,
                        tokenizer=None) -> dict:
    """{"checkpoint", "training_mode", "num_parameters", "likelihood", "downstream", "settings", "environment"}.

    backend "native" scores tasks with tdlm.evaluation.multiple_choice (no lm-eval); "lm-eval" runs the same
    local tasks through lm-eval with the registered "tdlm" model.
    """
    _check_counts(mc_num=mc_num, num_samples=num_samples, batch_size=batch_size, limit=limit, max_blocks=max_blocks,
                  block_size=block_size)
    if model is None:
        model, tokenizer = load_checkpoint(path, device)
    if block_size is not None and block_size > model.config.max_position_embeddings:
        raise ValueError(f"block_size {block_size} is larger than {path}'s max_position_embeddings="
                         f"{model.config.max_position_embeddings}")
    result = {"checkpoint": str(path), "training_mode": model.config.training_mode,
              "num_parameters": sum(p.numel() for p in model.parameters()),
              "settings": {"tasks": list(tasks), "limit": limit, "mc_num": mc_num, "seed": seed,
                           "nelbo_samples": num_samples, "backend": backend, "max_blocks": max_blocks},
              "environment": environment_info()}
    started = time.perf_counter()
    if likelihood:
        block_size = block_size or min(model.config.max_position_embeddings,
                                       (data_config or {}).get("block_size") or model.config.max_position_embeddings)
        blocks = eval_blocks(tokenizer, block_size, eval_file, data_config, max_blocks)
        result["likelihood"] = held_out_loss(model, blocks, num_samples, seed, batch_size, show_progress=True)
        if exact_ordered and model.config.is_diffusion:
            result["likelihood"]["ordered"] = diffusion_ordered_nll(model, blocks, show_progress=True)
        result["likelihood"]["eval_data"] = str(eval_file) if eval_file else (data_config or {}).get("eval_files")
        if not all(math.isfinite(v) for v in result["likelihood"].values() if isinstance(v, float)):
            raise FloatingPointError(f"{path}: non-finite likelihood {result['likelihood']}; the checkpoint's "
                                     f"outputs are NaN/inf")
    if tasks:
        if backend == "lm-eval":
            from .lm_eval_adapter import TDLMLM, evaluate_with_lm_eval  # lm-eval is an optional extra

            lm = TDLMLM(model=model, tokenizer=tokenizer, mc_num=mc_num, seed=seed, batch_size=batch_size)
            raw = evaluate_with_lm_eval(lm, None, list(tasks), limit=limit, data_dir=data_dir, seed=seed)
            result["downstream"] = {name.removeprefix("tdlm_"): {k.split(",")[0]: v for k, v in metrics.items()
                                                                 if "," in k and "stderr" not in k}
                                    for name, metrics in raw["results"].items()}
        elif backend == "native":
            result["downstream"] = run_downstream(model, tokenizer, list(tasks), limit=limit, mc_num=mc_num,
                                                  seed=seed, data_dir=data_dir, batch_size=batch_size,
                                                  show_progress=True)
        else:
            raise ValueError(f"unknown backend {backend!r}; expected 'native' or 'lm-eval'")
    result["runtime_s"] = time.perf_counter() - started
    return result
