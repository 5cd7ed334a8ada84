"""The LM head fused with its cross-entropy, alone: TDLM's heads against what a user would pick instead, over a
(rows x hidden) grid; behind `scripts/benchmark.py --head-grid`.

Every head computes the same thing, the mean cross-entropy of `rows @ weight^T` against targets, forward + backward
(the common ground of the libraries: TDLM's per-row weights and mask-token exclusion are checked in
tests/test_fused_cross_entropy.py). Per head and shape: median time, extra memory (CUDA: peak allocated during the
call above what existed before, gradients included), and agreement with an fp32 full-logits reference (loss and both
gradients, relative). The libraries are optional (`pip install -e .[compare]`): a head whose package is missing is
reported as skipped, with the pip command, and one that fails (say, a kernel without a CPU path) as an error; neither
stops the grid.
"""

import importlib.metadata
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..fused_cross_entropy import linear_cross_entropy
from .benchmark import device_name, guarded, sync

LIBRARIES = {"cut_cross_entropy": "cut-cross-entropy", "liger_kernel": "liger-kernel"}  # head -> pip package


def _tdlm(implementation):
    def loss(rows, weight, targets):
        coefficients = torch.full(targets.shape, 1.0 / len(targets), device=rows.device)
        return linear_cross_entropy(rows, weight, targets, coefficients, None, implementation)[0]
    return loss


def _full_logits(rows, weight, targets):
    return F.cross_entropy((rows @ weight.t()).float(), targets)


def _cut_cross_entropy():
    from cut_cross_entropy import linear_cross_entropy as cce
    return lambda rows, weight, targets: cce(rows, weight, targets)


def _liger_kernel():
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    loss = LigerFusedLinearCrossEntropyLoss()
    return lambda rows, weight, targets: loss(weight, rows, targets)


# name -> factory of loss(rows, weight, targets); factories import the optional libraries
HEADS = {
    "tdlm_triton": lambda: _tdlm("triton"),  # off CUDA: the chunked path
    "tdlm_chunked": lambda: _tdlm("chunked"),
    "torch_full_logits": lambda: _full_logits,
    "torch_compile_full_logits": lambda: torch.compile(_full_logits),
    "cut_cross_entropy": _cut_cross_entropy,
    "liger_kernel": _liger_kernel,
}


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """"32768x128,65536x768" -> [(32768, 128), (65536, 768)]."""
    shapes = [item.strip().lower().split("x") for item in text.split(",")]
    if not all(len(shape) == 2 and all(n.isdigit() for n in shape) for shape in shapes):
        raise ValueError(f"--head-grid: expected ROWSxHIDDEN[,ROWSxHIDDEN...], got {text!r}")
    return [(int(n_rows), int(hidden)) for n_rows, hidden in shapes]


def _inputs(n_rows, hidden, vocab_size, device, dtype):
    generator = torch.Generator(device).manual_seed(0)
    rows = torch.randn(n_rows, hidden, device=device, generator=generator).to(dtype).requires_grad_()
    weight = (torch.randn(vocab_size, hidden, device=device, generator=generator) / hidden ** 0.5).to(dtype)
    targets = torch.randint(0, vocab_size, (n_rows,), device=device, generator=generator)
    return rows, weight.requires_grad_(), targets


def _reference(rows, weight, targets, chunk=4096):
    """Loss and gradients with fp32 logits, by autograd, a row chunk at a time (the full fp32 logits of a large shape
    would not fit next to the heads being timed)."""
    rows32 = rows.detach().float().requires_grad_()
    weight32 = weight.detach().float().requires_grad_()
    total = 0.0
    for start in range(0, len(targets), chunk):
        logits = rows32[start:start + chunk] @ weight32.t()
        loss = F.cross_entropy(logits, targets[start:start + chunk], reduction="sum") / len(targets)
        loss.backward()
        total += loss.item()
    return total, rows32.grad, weight32.grad


def _relative(a, b):
    return ((a.float() - b).norm() / b.norm()).item()


def time_head(name, rows, weight, targets, reference, repeats, warmup) -> dict:
    """One head on one shape: median forward + backward time, extra memory, agreement with the reference."""
    try:
        loss_fn = HEADS[name]()
    except ModuleNotFoundError:
        return {"skipped": f"not installed (pip install {LIBRARIES.get(name, name)})"}
    device = rows.device

    def step():
        rows.grad = weight.grad = None
        loss = loss_fn(rows, weight, targets)
        loss.backward()
        return loss

    for _ in range(warmup):  # compiles and autotunes
        step()
    rows.grad = weight.grad = None
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        loss = step()
        sync(device)
        times.append(time.perf_counter() - start)
    reference_loss, reference_grad_rows, reference_grad_weight = reference
    return {"median_ms": 1000 * statistics.median(times),
            "extra_memory_gb": (torch.cuda.max_memory_allocated(device) - before) / 1e9 if device.type == "cuda"
            else None,
            "relative_loss_difference": abs(loss.item() - reference_loss) / abs(reference_loss),
            "relative_grad_rows_difference": _relative(rows.grad, reference_grad_rows),
            "relative_grad_weight_difference": _relative(weight.grad, reference_grad_weight)}


def run_head_grid(shapes, vocab_size=50258, heads=tuple(HEADS), device=None, dtype=None, repeats=5, warmup=2,
                  output=None) -> dict:
    """Every head on every (rows, hidden) shape; bf16 on CUDA, fp32 elsewhere, unless `dtype` says otherwise. Writes
    `output` after every measurement, so that a run cut off by a time limit keeps what it measured."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    report = {"machine": device_name(device), "device": str(device), "dtype": str(dtype).removeprefix("torch."),
              "torch": torch.__version__, "vocab_size": vocab_size, "repeats": repeats,
              "libraries": {package: _version(package) for package in (*LIBRARIES.values(), "triton")}, "rows": []}
    for n_rows, hidden in shapes:
        rows, weight, targets = _inputs(n_rows, hidden, vocab_size, device, dtype)
        reference = _reference(rows, weight, targets)
        for head in heads:
            result = guarded(time_head, head, rows, weight, targets, reference, repeats, warmup)
            report["rows"].append({"rows": n_rows, "hidden": hidden, "head": head, **result})
            if output:
                Path(output).parent.mkdir(parents=True, exist_ok=True)
                Path(output).write_text(json.dumps(report, indent=2))
        del rows, weight, reference
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return report


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def faster_than_tdlm(report: dict) -> list[dict]:
    """The shapes where another head beats TDLM's fastest: where the head should hand over to that library."""
    by_shape = {}
    for row in report["rows"]:
        if "median_ms" in row:
            by_shape.setdefault((row["rows"], row["hidden"]), []).append(row)
    found = []
    for (n_rows, hidden), rows in by_shape.items():
        tdlm = min((r for r in rows if r["head"].startswith("tdlm_")), key=lambda r: r["median_ms"], default=None)
        best = min(rows, key=lambda r: r["median_ms"])
        if tdlm is not None and not best["head"].startswith("tdlm_"):
            found.append({"rows": n_rows, "hidden": hidden, "head": best["head"], "median_ms": best["median_ms"],
                          "tdlm_head": tdlm["head"], "tdlm_median_ms": tdlm["median_ms"]})
    return found


def format_head_grid(report: dict) -> str:
    libraries = ", ".join(f"{name} {version or 'absent'}" for name, version in report["libraries"].items())
    lines = [f"LM head + cross-entropy, forward + backward: {report['machine']}, {report['dtype']}, vocabulary "
             f"{report['vocab_size']:,}, median of {report['repeats']} ({libraries})", "",
             "| rows x hidden | head | ms | extra memory (GB) | rel. loss diff | rel. d rows diff | rel. d W diff |",
             "|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        shape = f"{row['rows']:,} x {row['hidden']}"
        if "median_ms" not in row:
            lines.append(f"| {shape} | {row['head']} | {row.get('skipped') or 'failed: ' + row['error']} | | | | |")
            continue
        memory = f"{row['extra_memory_gb']:.2f}" if row["extra_memory_gb"] is not None else "-"
        lines.append(f"| {shape} | {row['head']} | {row['median_ms']:.1f} | {memory} | "
                     f"{row['relative_loss_difference']:.1e} | {row['relative_grad_rows_difference']:.1e} | "
                     f"{row['relative_grad_weight_difference']:.1e} |")
    for faster in faster_than_tdlm(report):
        lines.append(f"\nAt {faster['rows']:,} x {faster['hidden']} {faster['head']} ({faster['median_ms']:.1f} ms) "
                     f"beats {faster['tdlm_head']} ({faster['tdlm_median_ms']:.1f} ms).")
    return "\n".join(lines)
