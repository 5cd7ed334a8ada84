"""Sampling speed: masked-diffusion `diffusion_generate` against autoregressive `generate()` with KV cache.

Both models generate `length` new tokens for `batch_size` rows; diffusion at several step counts and with
parallel decoding (`confidence_threshold`), AR with the stock KV-cached `generate()`. Timings are the
median of `repeats` runs after one warm-up, CUDA-synchronised on GPU.
"""

import statistics
import time

import torch


def _timed(fn, device, repeats):
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


def benchmark_sampling(diffusion_model, ar_model, batch_size: int = 8, length: int = 256,
                       steps_list=(16, 32, 64, 256), confidence_threshold: float | None = 0.9, repeats: int = 3,
                       device=None, seed: int = 0) -> list[dict]:
    """Generated tokens/s, model calls and wall time of each sampler; one dict per row of the table.

    Row keys: method ("diffusion" / "diffusion+threshold" / "autoregressive"), num_steps (None for AR),
    confidence_threshold, batch_size, length, wall_time_s (median), tokens_per_second
    (batch_size * length / wall_time_s), model_calls (forward passes of the last run),
    model_calls_per_token (per generated token of one row), device, dtype.
    Either model may be None to skip its rows.
    """
    rows = []
    reference = diffusion_model if diffusion_model is not None else ar_model
    if reference is None:
        raise ValueError("benchmark_sampling needs a diffusion model, an AR model, or both")
    device = torch.device(device if device is not None else reference.device)
    generated_tokens = batch_size * length

    def row(method, seconds, calls, num_steps=None, threshold=None, model=None):
        return {"method": method, "num_steps": num_steps, "confidence_threshold": threshold,
                "batch_size": batch_size, "length": length, "wall_time_s": seconds,
                "tokens_per_second": generated_tokens / seconds, "model_calls": calls,
                "model_calls_per_token": calls / length, "device": str(device),
                "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}

    if diffusion_model is not None:
        diffusion_model = diffusion_model.to(device).eval()
        settings = [(steps, None) for steps in steps_list]
        if confidence_threshold is not None:
            settings += [(steps, confidence_threshold) for steps in steps_list]
        for steps, threshold in settings:
            def sample():
                generator = torch.Generator(device=device).manual_seed(seed)
                return diffusion_model.diffusion_generate(
                    batch_size=batch_size, max_length=length, num_steps=steps, confidence_threshold=threshold,
                    return_dict_in_generate=True, generator=generator)
            seconds, out = _timed(sample, device, repeats)
            method = "diffusion" if threshold is None else "diffusion+threshold"
            rows.append(row(method, seconds, out.num_model_calls, steps, threshold, diffusion_model))

    if ar_model is not None:
        ar_model = ar_model.to(device).eval()
        bos = ar_model.config.bos_token_id if ar_model.config.bos_token_id is not None else ar_model.config.eos_token_id
        prompt = torch.full((batch_size, 1), bos, dtype=torch.long, device=device)

        def generate():
            with torch.no_grad():
                return ar_model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=length,
                                         min_new_tokens=length, do_sample=False, use_cache=True,
                                         pad_token_id=ar_model.config.pad_token_id)
        seconds, out = _timed(generate, device, repeats)
        if out.shape[1] - 1 != length:
            raise RuntimeError(f"AR generate produced {out.shape[1] - 1} tokens instead of {length}")
        rows.append(row("autoregressive", seconds, length, model=ar_model))
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
