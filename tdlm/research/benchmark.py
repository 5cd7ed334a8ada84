"""Throughput benchmark behind `scripts/benchmark.py`: training (through the same Trainer path as
`scripts/train.py`, and a bare PyTorch loop of the same model for the overhead) and sampling.

Timings are medians over timed steps after warm-up, synchronised on CUDA. Training batches are random
token blocks: throughput does not depend on the text, and the GPU machine needs no data files.
"""

import json
import platform
import statistics
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from torch.autograd import DeviceType
from transformers import TrainerCallback

from ..config import CHOICES
from ..data import BlockDataset
from ..evaluation.sampling_speed import benchmark_sampling, timed
from ..objectives import objective_for
from ..runs import Experiment
from ..schedules import get_noise_schedule
from ..training import build_model, build_tokenizer, make_trainer, training_arguments

# dense bf16 peak FLOP/s used for model FLOPs utilisation (vendor datasheets)
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def training_flops_per_token(config, head_fraction: float) -> float:
    """6 x (backbone params + head params x fraction of positions that reach the head) + attention scores."""
    h, layers, length = config.hidden_size, config.num_hidden_layers, config.max_position_embeddings
    per_layer = 4 * h * h + 3 * h * config.intermediate_size
    attention = 2 * 2 * length * h  # QK^T and AV, per token per layer, forward
    return 6 * layers * per_layer + 3 * layers * attention + 6 * h * config.vocab_size * head_fraction


def _for_mode(config: dict, mode: str) -> dict:
    """A copy of the config with another objective (the caller's config is left alone); block_diffusion keeps the
    config's model.bd_block_size, else takes blocks of BD_BLOCK_SIZE tokens."""
    variant = json.loads(json.dumps(config))
    model = variant["model"]
    model["training_mode"] = mode
    if mode != "block_diffusion":
        model["bd_block_size"] = None
    elif model.get("bd_block_size") is None:
        model["bd_block_size"] = min(BD_BLOCK_SIZE, variant["data"]["block_size"])
    return variant


BD_BLOCK_SIZE = 16  # BD3-LM's common block length


def _autocast_dtype(config: dict):
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config["training"]["mixed_precision"])


def sync(device):
    """Wait for the device's queued work, so that a wall-clock timing covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step (CUDA-synchronised)."""

    def __init__(self, device):
        self.device, self.times, self._start = device, [], None

    def on_step_begin(self, args, state, control, **kwargs):
        sync(self.device)
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        sync(self.device)
        self.times.append(time.perf_counter() - self._start)


def _random_blocks(num_blocks, length, vocab_size, mask_token_id, seed=0):
    generator = torch.Generator().manual_seed(seed)
    high = mask_token_id if mask_token_id is not None else vocab_size
    return torch.randint(0, high, (num_blocks, length), generator=generator)


def _summary(times, warmup, tokens_per_step):
    timed = times[warmup:]
    median = statistics.median(timed)
    return {"median_step_s": median, "tokens_per_second": tokens_per_step / median, "timed_steps": len(timed)}


def benchmark_trainer(config: dict, tokenizer, mode: str, device: torch.device, steps: int, warmup: int) -> dict:
    """Tokens/s of `TDLMTrainer` exactly as `scripts/train.py` builds it (precision, compile, optimizer)."""

    config = _for_mode(config, mode)
    t = config["training"]
    model = build_model(config, tokenizer)
    length = config["data"]["block_size"]
    blocks = _random_blocks(t["batch_size"] * (steps + warmup), length, model.config.vocab_size,
                            model.config.mask_token_id)
    timer = StepTimer(device)
    with tempfile.TemporaryDirectory() as folder:
        experiment = Experiment(Path(folder) / "bench").create()
        args = training_arguments(config, experiment, max_steps=steps + warmup, logging_steps=10**9,
                                  report_to="none", use_cpu=device.type == "cpu", disable_tqdm=True,
                                  warmup_steps=0)
        trainer = make_trainer(model, args, tokenizer.pad_token_id, train_dataset=BlockDataset(blocks),
                               callbacks=[timer])
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        trainer.train()
    return _with_utilisation(_summary(timer.times, warmup, t["batch_size"] * length), model.config, mode, device)


def _with_utilisation(result: dict, model_config, mode: str, device: torch.device) -> dict:
    """Adds peak memory (CUDA, since the last reset), model FLOPs per token and MFU (where the peak is known)."""
    if device.type == "cuda":
        result["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    flops = training_flops_per_token(model_config, 0.5 if mode == "diffusion" else 1.0)
    peak = peak_flops(device)
    return {**result, "model_flops_per_token": flops,
            "mfu": result["tokens_per_second"] * flops / peak if peak else None}


def _objective_inputs(model, batch, schedule, generator) -> dict:
    """The model's keyword arguments for unpadded blocks, prepared by its objective as the Trainer prepares them
    (AR: the collator's context token; the diffusion objectives: one corruption over the full mask-ratio range)."""
    config = model.config
    objective = objective_for(config)
    collated = objective.collator(config, config.pad_token_id)([{"input_ids": row} for row in batch])
    if not objective.corrupts:
        return objective.model_inputs(collated, None)
    targets = objective.training_targets(collated["input_ids"], None, config, schedule, generator, (0.0, 1.0), True)
    return {**objective.model_inputs(collated, targets), "num_items_in_batch": targets["num_items_in_batch"]}


def _loss_fn(model, schedule, generator):
    def loss(batch):
        return model(**_objective_inputs(model, batch, schedule, generator)).loss
    return loss


def _bare_loop(config: dict, tokenizer, mode: str, device: torch.device, num_steps: int):
    """The same model, loss and AdamW in a plain PyTorch loop. Returns (step(i): one synchronised optimizer step on
    batch i, tokens per step, the model's config)."""

    config = _for_mode(config, mode)
    t = config["training"]
    model = build_model(config, tokenizer).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=t["learning_rate"], weight_decay=t["weight_decay"],
                                  fused=device.type == "cuda")
    length, batch_size = config["data"]["block_size"], t["batch_size"]
    blocks = _random_blocks(batch_size * num_steps, length, model.config.vocab_size,
                            model.config.mask_token_id).to(device)
    schedule = get_noise_schedule(model.config.noise_schedule)
    loss_fn = _loss_fn(model, schedule, torch.Generator(device=device).manual_seed(0))
    dtype = _autocast_dtype(config)

    def step(index):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(blocks[index * batch_size:(index + 1) * batch_size])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t["max_grad_norm"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
    return step, batch_size * length, model.config


def benchmark_bare_loop(config: dict, tokenizer, mode: str, device: torch.device, steps: int, warmup: int) -> dict:
    """Tokens/s of the bare loop: the floor the Trainer path is compared with."""
    step, tokens_per_step, model_config = _bare_loop(config, tokenizer, mode, device, steps + warmup)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for index in range(steps + warmup):
        sync(device)
        start = time.perf_counter()
        step(index)
        times.append(time.perf_counter() - start)
    return _with_utilisation(_summary(times, warmup, tokens_per_step), model_config, mode, device)


def profile_bare_loop(config: dict, tokenizer, mode: str, device: torch.device, steps: int = 3, warmup: int = 2,
                      top: int = 12) -> dict:
    """Where a bare-loop step's time goes (torch.profiler), per step: wall time, time the device is busy, aten ops
    dispatched by the host, kernels launched, and the `top` ops by their own device time (on CUDA also the `top`
    kernels). On CUDA busy << wall means the step is bound by the host (op dispatch, launches, syncs), not the GPU."""
    step, _, _ = _bare_loop(config, tokenizer, mode, device, steps + warmup)
    for index in range(warmup):
        step(index)
    on_gpu = device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_gpu else [])
    with torch.profiler.profile(activities=activities) as profiler:
        sync(device)
        start = time.perf_counter()
        for index in range(warmup, warmup + steps):
            step(index)
        wall = (time.perf_counter() - start) / steps
    averages = profiler.key_averages()
    host_ops = [e for e in averages if e.device_type == DeviceType.CPU]
    # self time on the device, so nothing is counted twice: on CUDA the kernels each op launched itself (an op's
    # children have their own rows), on CPU the op's own time without its children's
    self_time = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    busy_events = [e for e in averages if e.device_type == (DeviceType.CUDA if on_gpu else DeviceType.CPU)]
    busy_us = sum(getattr(e, self_time) for e in busy_events) / steps

    def ranked(events):
        events = sorted((e for e in events if getattr(e, self_time) > 0), key=lambda e: getattr(e, self_time),
                        reverse=True)
        return [{"name": e.key[:90], "calls_per_step": e.count / steps,
                 "ms_per_step": getattr(e, self_time) / steps / 1000,
                 "share_of_busy": getattr(e, self_time) / steps / busy_us} for e in events[:top]]
    return {"step_wall_ms": 1000 * wall, "device_busy_ms": busy_us / 1000, "profiled_steps": steps,
            "host_ops_per_step": sum(e.count for e in host_ops if e.key.startswith("aten::")) / steps,
            "kernels_per_step": sum(e.count for e in busy_events) / steps if on_gpu else None,
            "top": ranked(host_ops),  # by op name (aten::mm, autograd nodes, the fused head's Function)
            "top_kernels": ranked(busy_events) if on_gpu else None}


def loss_agreement(config: dict, tokenizer, mode: str, device: torch.device) -> dict:
    """Loss and gradient of the fused head against the straightforward full-logits cross-entropy, same batch."""

    config = _for_mode(config, mode)
    model = build_model(config, tokenizer).to(device)
    batch = _random_blocks(min(config["training"]["batch_size"], 64), config["data"]["block_size"],
                           model.config.vocab_size, model.config.mask_token_id).to(device)
    schedule = get_noise_schedule(model.config.noise_schedule)
    dtype = _autocast_dtype(config)
    inputs = _objective_inputs(model, batch, schedule, torch.Generator(device=device).manual_seed(0))
    labels = model.prediction_targets(inputs["labels"])
    weights, normaliser = inputs.get("loss_weights"), inputs.get("num_items_in_batch")
    results = {}
    for name in ("fused", "reference"):
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            if name == "fused":
                loss = model(**inputs).loss
            else:
                logits = model(**{k: v for k, v in inputs.items()
                                  if k not in ("labels", "loss_weights", "num_items_in_batch")}).logits.float()
                positions = labels != -100
                ce = F.cross_entropy(logits[positions], labels[positions], reduction="none")
                if weights is not None:
                    ce = ce * weights[positions]
                loss = ce.sum() / (normaliser if normaliser is not None else positions.sum())
        loss.backward()
        results[name] = (loss.item(), model.lm_head.weight.grad.detach().float().clone())
    (fused, grad_f), (reference, grad_r) = results["fused"], results["reference"]
    return {"fused_loss": fused, "reference_loss": reference,
            "relative_loss_difference": abs(fused - reference) / abs(reference),
            "relative_grad_difference": ((grad_f - grad_r).norm() / grad_r.norm()).item()}


def run_benchmark(config: dict, device: str | None = None, steps: int = 20, warmup: int = 5,
                  modes=("autoregressive", "diffusion"), compile_variants=(False,), head_variants=None,
                  sampling: dict | None = None, profile: bool = False, output: str | Path | None = None) -> dict:
    """Everything in one run, for both objectives: training throughput (the Trainer for every head implementation x
    compile variant; the eager bare loop per head, which the eager Trainer rows are compared with), the fused-loss
    check per head, optionally a profile of the eager bare loop per head, and sampling speed. Compiled variants run
    last. Returns (and writes to `output`) a JSON-able dict."""

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    head_variants = tuple(head_variants or (config["model"]["head_implementation"],))
    tokenizer = build_tokenizer(config)
    report = {"machine": device_name(device), "device": str(device), "torch": torch.__version__,
              "transformers": transformers.__version__, "precision": config["training"]["mixed_precision"],
              "batch_size": config["training"]["batch_size"], "sequence_length": config["data"]["block_size"],
              "training": [], "loss_check": [], "profile": [], "sampling": []}

    def save():  # after every measurement: a run cut off by a time limit keeps what it measured
        if output:
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            Path(output).write_text(json.dumps(report, indent=2))

    bare = {}

    def trainer_row(mode, head, compiled):
        row = guarded(benchmark_trainer, _variant(config, head, compiled), tokenizer, mode, device, steps, warmup)
        row.update(mode=mode, path="trainer", head_implementation=head, torch_compile=compiled)
        if "error" not in row and not compiled and "error" not in bare[mode, head]:  # the same eager model and head
            row["overhead_vs_bare_loop"] = row["median_step_s"] / bare[mode, head]["median_step_s"] - 1.0
        report["training"].append(row)
        save()

    # cheap rows first and compiled variants last (each compiles for a minute or so on a GPU): a run cut off by
    # its time limit loses the fewest measurements
    for mode in modes:
        for head in head_variants:
            eager = _variant(config, head, False)
            check = guarded(loss_agreement, eager, tokenizer, mode, device)
            report["loss_check"].append({"mode": mode, "head_implementation": head, **check})
            if profile:
                found = guarded(profile_bare_loop, eager, tokenizer, mode, device)
                report["profile"].append({"mode": mode, "head_implementation": head, **found})
            bare[mode, head] = guarded(benchmark_bare_loop, eager, tokenizer, mode, device, steps, warmup)
            report["training"].append({**bare[mode, head], "mode": mode, "path": "bare_loop", "torch_compile": False,
                                       "head_implementation": head})
            save()
        for head in head_variants if False in compile_variants else ():
            trainer_row(mode, head, False)
    if sampling:
        report["sampling"] = benchmark_sampling_for(config, tokenizer, device, **sampling,
                                                    block_diffusion="block_diffusion" in modes)
        save()
    for compiled in (variant for variant in compile_variants if variant):
        for mode in modes:
            for head in head_variants:
                trainer_row(mode, head, compiled)
    return report


def guarded(measure, *args) -> dict:
    """One variant's failure (a kernel that does not compile on this GPU) is reported, not fatal: GPU time is scarce
    and the other rows of the run still count."""
    try:
        return measure(*args)
    except Exception as error:  # noqa: BLE001 - recorded in the report and printed
        traceback.print_exc()
        return {"error": f"{type(error).__name__}: {error}"[:500]}


def compile_variants(text: str) -> tuple:
    """"false,true,reduce-overhead" -> (False, True, "reduce-overhead"); a mode must be one torch.compile knows."""

    modes = [m for m in CHOICES["training.torch_compile_mode"] if m]
    variants = []
    for item in (v.strip() for v in text.split(",")):
        if item not in ("false", "true", *modes):
            raise ValueError(f"--compile: unknown variant {item!r}; expected false, true or one of {modes}")
        variants.append({"false": False, "true": True}.get(item, item))
    return tuple(variants)


def _variant(config: dict, head_implementation: str, torch_compile: bool | str | None = None) -> dict:
    """The config with another head and compile setting: False, True (default mode) or a torch.compile mode name."""
    variant = json.loads(json.dumps(config))
    variant["model"]["head_implementation"] = head_implementation
    if torch_compile is not None:
        variant["training"]["torch_compile"] = bool(torch_compile)
        variant["training"]["torch_compile_mode"] = torch_compile if isinstance(torch_compile, str) else None
    return variant


def benchmark_sampling_for(config, tokenizer, device, batch_size=8, length=256, steps_list=(16, 32, 64, 256),
                           confidence_threshold=0.9, repeats=3, block_diffusion=False):
    """Sampling rows of random-init models of the config's shape: diffusion, AR, and with `block_diffusion` the
    block-diffusion sampler with and without its KV cache (`block_diffusion_sampling`)."""
    modes = ("diffusion", "autoregressive") + (("block_diffusion",) if block_diffusion else ())
    models = {mode: build_model(_for_mode(config, mode), tokenizer).to(device).eval() for mode in modes}
    dtype = _autocast_dtype(config)
    if dtype is not None and device.type == "cuda":
        models = {k: v.to(dtype) for k, v in models.items()}
    rows = benchmark_sampling(models["diffusion"], models["autoregressive"], batch_size=batch_size, length=length,
                              steps_list=steps_list, confidence_threshold=confidence_threshold, repeats=repeats,
                              device=device)
    if block_diffusion:
        rows += block_diffusion_sampling(models["block_diffusion"], batch_size, length, repeats, device)
    return rows


def block_diffusion_sampling(model, batch_size: int, length: int, repeats: int, device, seed: int = 0) -> list[dict]:
    """`sampling_speed`-shaped rows of a block-diffusion model generating `length` tokens (up to its
    max_position_embeddings, which may exceed the training length) with `bd_block_size` steps per block (one token per
    step), with and without the KV cache of finished blocks."""
    size = model.config.bd_block_size
    rows = []
    for use_cache in (True, False):
        def sample(use_cache=use_cache):
            generator = torch.Generator(device=device).manual_seed(seed)
            return model.diffusion_generate(batch_size=batch_size, max_length=length, num_steps=size,
                                            use_cache=use_cache, return_dict_in_generate=True,
                                            generator=generator).num_model_calls
        seconds, calls = timed(sample, device, repeats)
        rows.append({"method": f"block_diffusion B={size}" + (" + KV cache" if use_cache else ", no cache"),
                     "num_steps": size, "confidence_threshold": None, "batch_size": batch_size, "length": length,
                     "wall_time_s": seconds, "tokens_per_second": batch_size * length / seconds, "model_calls": calls,
                     "model_calls_per_token": calls / length, "device": str(device),
                     "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")})
    return rows


def format_report(report: dict) -> str:
    lines = [f"Machine: {report['machine']}  torch {report['torch']}  transformers {report['transformers']}  "
             f"precision {report['precision']}  batch {report['batch_size']} x seq {report['sequence_length']}",
             "",
             "| mode | path | head | compile | tokens/s | median step (ms) | peak mem (GB) | MFU | overhead vs bare |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in report["training"]:
        if "error" in row:
            lines.append(f"| {row['mode']} | {row['path']} | {row['head_implementation']} | {row['torch_compile']} | "
                         f"failed: {row['error']} | | | | |")
            continue
        mem = f"{row['peak_memory_gb']:.1f}" if row.get("peak_memory_gb") is not None else "-"
        mfu = f"{100 * row['mfu']:.1f}%" if row.get("mfu") else "-"
        overhead = f"{100 * row['overhead_vs_bare_loop']:+.1f}%" if "overhead_vs_bare_loop" in row else "-"
        lines.append(f"| {row['mode']} | {row['path']} | {row['head_implementation']} | {row['torch_compile']} | "
                     f"{row['tokens_per_second']:,.0f} | "
                     f"{1000 * row['median_step_s']:.1f} | {mem} | {mfu} | {overhead} |")
    lines += ["", "| mode | head | fused loss | reference loss | rel. loss diff | rel. head-grad diff |",
              "|---|---|---|---|---|---|"]
    for row in report["loss_check"]:
        if "error" in row:
            lines.append(f"| {row['mode']} | {row['head_implementation']} | failed: {row['error']} | | | |")
            continue
        lines.append(f"| {row['mode']} | {row['head_implementation']} | {row['fused_loss']:.5f} | "
                     f"{row['reference_loss']:.5f} | "
                     f"{row['relative_loss_difference']:.2e} | {row['relative_grad_difference']:.2e} |")
    for row in report["profile"]:
        lines += ["", f"Profile, bare loop, {row['mode']}, head {row['head_implementation']}: "
                  + (f"failed: {row['error']}" if "error" in row else
                     f"step {row['step_wall_ms']:.1f} ms wall, {row['device_busy_ms']:.1f} ms device busy, "
                     f"{row['host_ops_per_step']:,.0f} host aten ops"
                     + (f", {row['kernels_per_step']:,.0f} kernels" if row["kernels_per_step"] else ""))]
        for key, what in (("top", "op"), ("top_kernels", "kernel")):
            if row.get(key):
                lines += ["", f"| {what} | calls/step | ms/step | share of busy |", "|---|---|---|---|"]
                lines += [f"| {k['name']} | {k['calls_per_step']:g} | {k['ms_per_step']:.2f} | "
                          f"{100 * k['share_of_busy']:.1f}% |" for k in row[key]]
    if report["sampling"]:
        keys = list(report["sampling"][0].keys())
        lines += ["", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for row in report["sampling"]:
            cells = (f"{v:,.3g}" if isinstance(v, float) else str(v) for v in row.values())
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
