"""Sampling speed: masked-diffusion `diffusion_generate` against autoregressive `generate()` with KV cache.

Both models generate `length` new tokens for `batch_size` rows; diffusion at several step counts and with
parallel decoding (`confidence_threshold`), AR with the stock KV-cached `generate()`. Timings are the
median of `repeats` runs after one warm-up, CUDA-synchronised on GPU.
"""

import statistics
import time

import torch


def timed(fn, device, repeats):
    """Median wall time of `fn()` over `repeats` runs (after one warm-up) and the last result."""
    def sync():
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    result = fn()  # warm-up: kernels, allocator, autotuning
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def sampling_speed(model, batch_size: int = 8, length: int = 256, num_steps: int | None = None,
                   confidence_threshold: float | None = None, repeats: int = 3, device=None, seed: int = 0) -> dict:
    """One row: `model` generates `length` new tokens for `batch_size` rows with the sampler its objective
    calls for (diffusion: unconditional `diffusion_generate`; AR: KV-cached greedy `generate()` after a BOS).

    Row keys: method ("diffusion" / "diffusion+threshold" / "autoregressive"), num_steps (None for AR),
    confidence_threshold, batch_size, length, wall_time_s (median), tokens_per_second
    (batch_size * length / wall_time_s), model_calls (forward passes of the last run),
    model_calls_per_token (per generated token of one row), device, dtype.
    """
    device = torch.device(device if device is not None else model.device)
    model = model.to(device).eval()
    if model.config.uses_mask_token:  # diffusion_generate (block diffusion: block by block, KV cache)
        def sample():
            generator = torch.Generator(device=device).manual_seed(seed)
            options = {"num_steps": num_steps} if num_steps is not None else {}  # else the generation_config's
            out = model.diffusion_generate(batch_size=batch_size, max_length=length,
                                           confidence_threshold=confidence_threshold, return_dict_in_generate=True,
                                           generator=generator, **options)
            return out.num_model_calls
        method = "diffusion" if confidence_threshold is None else "diffusion+threshold"
    else:
        bos = model.config.bos_token_id if model.config.bos_token_id is not None else model.config.eos_token_id
        prompt = torch.full((batch_size, 1), bos, dtype=torch.long, device=device)

        def sample():
            with torch.no_grad():
                out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=length,
                                     min_new_tokens=length, do_sample=False, use_cache=True,
                                     pad_token_id=model.config.pad_token_id)
            if out.shape[1] - 1 != length:
                raise RuntimeError(f"AR generate produced {out.shape[1] - 1} tokens instead of {length}")
            return length
        method, num_steps, confidence_threshold = "autoregressive", None, None
    seconds, calls = timed(sample, device, repeats)
    return {"method": method, "num_steps": num_steps, "confidence_threshold": confidence_threshold,
            "batch_size": batch_size, "length": length, "wall_time_s": seconds,
            "tokens_per_second": batch_size * length / seconds, "model_calls": calls,
            "model_calls_per_token": calls / length, "device": str(device),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}


def benchmark_sampling(diffusion_model, ar_model, batch_size: int = 8, length: int = 256,
                       steps_list=(16, 32, 64, 256), confidence_threshold: float | None = 0.9, repeats: int = 3,
                       device=None, seed: int = 0) -> list[dict]:
    """`sampling_speed` rows: diffusion at each of `steps_list` (and with parallel decoding at
    `confidence_threshold`), then AR. Either model may be None to skip its rows."""
    if diffusion_model is None and ar_model is None:
        raise ValueError("benchmark_sampling needs a diffusion model, an AR model, or both")
    measure = {"batch_size": batch_size, "length": length, "repeats": repeats, "device": device, "seed": seed}
    rows = []
    if diffusion_model is not None:
        thresholds = (None, confidence_threshold) if confidence_threshold is not None else (None,)
        rows += [sampling_speed(diffusion_model, num_steps=steps, confidence_threshold=threshold, **measure)
                 for threshold in thresholds for steps in steps_list]
    if ar_model is not None:
        rows.append(sampling_speed(ar_model, **measure))
    return rows


def format_table(rows: list[dict]) -> str:
    """A Markdown table of `benchmark_sampling` rows."""
    lines = ["| method | steps | threshold | batch | length | tokens/s | wall s | model calls |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['num_steps'] or '-'} | {r['confidence_threshold'] or '-'} | "
                     f"{r['batch_size']} | {r['length']} | {r['tokens_per_second']:,.0f} | {r['wall_time_s']:.3f} | "
                     f"{r['model_calls']} |")
    return "\n".join(lines)
