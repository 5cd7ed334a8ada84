"""Data pipeline benchmark: preparation speed and memory, time to the first training step, loader time per batch.

Each measurement runs in a fresh Python process (so imports, `datasets`' own cache and peak memory start cold);
the parent samples the memory (PSS) of that process and all its children (tokenising workers) every 50 ms.
"""

import gzip
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CORPUS = SHARED / "python-stdlib" / "train.jsonl.gz"
TOKENIZER = SHARED / "gpt2-tokenizer"


def _peak_tree_memory(process, samples: list) -> None:
    """Appends the summed PSS of `process` and its descendants until it exits (run in a thread). PSS, not RSS:
    forked tokenising workers share the parent's pages, which RSS would count once per process."""
    import psutil

    root = psutil.Process(process.pid)
    while process.poll() is None:
        total = 0
        try:
            members = [root, *root.children(recursive=True)]
        except psutil.Error:  # it exited between poll() and here
            break
        for member in members:
            try:
                total += member.memory_full_info().pss
            except psutil.Error:  # a worker that just exited
                pass
        samples.append(total)
        time.sleep(0.05)


def run_measured(code: str, env_extra: dict | None = None) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON line last. Adds wall time and peak tree PSS."""
    import os

    samples = []
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, **(env_extra or {})})
    watcher = threading.Thread(target=_peak_tree_memory, args=(process, samples), daemon=True)
    watcher.start()
    stdout, stderr = process.communicate()
    watcher.join()
    if process.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    return {**result, "process_wall_s": time.perf_counter() - start, "peak_pss_mb": max(samples, default=0) / 2**20}


def corpus_fraction(fraction: float, folder: Path) -> Path:
    """The first `fraction` of the corpus' documents as a .jsonl.gz file."""
    with gzip.open(CORPUS, "rt", encoding="utf-8") as source:
        lines = source.readlines()
    path = folder / f"train-{int(fraction * 100)}pct.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as target:
        target.writelines(lines[: max(1, round(fraction * len(lines)))])
    return path


def measure_preparation(corpus: Path, output: Path, num_proc: int, cache: Path) -> dict:
    code = f"""
import json, time
from tdlm.tokenization import load_tokenizer
from tdlm.data import prepare_dataset, read_index
tokenizer = load_tokenizer({str(TOKENIZER)!r})
start = time.perf_counter()
prepare_dataset({str(corpus)!r}, {str(output)!r}, tokenizer, num_proc={num_proc}, overwrite=True)
seconds = time.perf_counter() - start
tokens = read_index({str(output)!r})["splits"]["train"]["num_tokens"]
print(json.dumps({{"tokens": tokens, "prepare_s": seconds, "tokens_per_s": tokens / seconds}}))
"""
    return run_measured(code, {"HF_DATASETS_CACHE": str(cache), "TOKENIZERS_PARALLELISM": "true"})


def measure_first_step(prepared: Path, experiments: Path) -> dict:
    """Launch -> first optimizer step of a tiny GPT-2-vocabulary model trained from `prepared`; the data part
    (build_data: open and check the shards) is timed on its own."""
    code = f"""
import json, time
import psutil
launched = psutil.Process().create_time()
from transformers import TrainerCallback
import tdlm.training.run as run
from tdlm.config import load_config
timing = {{}}
build_data = run.build_data
def timed_build_data(*args, **kwargs):
    start = time.perf_counter()
    result = build_data(*args, **kwargs)
    timing["build_data_s"] = time.perf_counter() - start
    return result
run.build_data = timed_build_data
class FirstStep(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        timing.setdefault("launch_to_first_step_s", time.time() - launched)
config = load_config(None, ["model.tokenizer={TOKENIZER}", "data.prepared={prepared}", "data.block_size=256",
    "model.hidden_size=32", "model.num_hidden_layers=1", "model.num_attention_heads=2",
    "model.intermediate_size=64", "training.batch_size=4", "training.max_steps=1", "training.logging_steps=1",
    "training.save_every_n_steps=null", "training.save_every_n_epochs=null", "training.eval_steps=null",
    "training.detailed_metrics_steps=null", "training.attention_analysis_steps=null"])
run.run_training(config, "first_step", {str(experiments)!r}, callbacks=[FirstStep()])
print(json.dumps(timing))
"""
    return run_measured(code)


def measure_loader(prepared: Path, batch_size: int = 256, block_size: int = 256, batches: int = 200) -> dict:
    """Seconds per batch of a seeded, shuffled DataLoader over the shards (rank 0 of 1), and memory after a
    pass: anonymous memory (RSS minus file-backed shared pages) is what grows with data held in RAM."""
    code = f"""
import json, time
import psutil, torch
from tdlm.data import DataCollatorForTDLM, ShardedBlocks, TokenShards
dataset = ShardedBlocks(TokenShards({str(prepared)!r}), {block_size})
sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
loader = torch.utils.data.DataLoader(dataset, batch_size={batch_size}, sampler=sampler,
                                     collate_fn=DataCollatorForTDLM(0), drop_last=True)
start, count = time.perf_counter(), 0
for batch in loader:
    count += 1
    if count == {batches}:
        break
per_batch = (time.perf_counter() - start) / count
memory = psutil.Process().memory_info()
print(json.dumps({{"blocks": len(dataset), "batch": [{batch_size}, {block_size}], "batches": count,
                  "loader_ms_per_batch": per_batch * 1e3, "rss_mb": memory.rss / 2**20,
                  "anonymous_mb": (memory.rss - memory.shared) / 2**20}}))
"""
    return run_measured(code)


def run_benchmark(workdir: str | Path | None = None, fractions=(0.1, 1.0), num_procs=(1, 2)) -> dict:
    """All measurements; returns {"preparation": [...], "first_step": {...}, "loader": {...}}."""
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(workdir or scratch)
        work.mkdir(parents=True, exist_ok=True)
        results = {"preparation": []}
        for fraction in fractions:
            corpus = CORPUS if fraction == 1.0 else corpus_fraction(fraction, work)
            for num_proc in num_procs:
                output = work / f"prepared-{int(fraction * 100)}pct-np{num_proc}"
                row = measure_preparation(corpus, output, num_proc, work / f"hf-cache-{fraction}-{num_proc}")
                results["preparation"].append({"fraction": fraction, "num_proc": num_proc, **row})
                print(json.dumps(results["preparation"][-1]), flush=True)
        full = work / f"prepared-100pct-np{num_procs[-1]}"
        results["first_step"] = measure_first_step(full, work / "experiments")
        print(json.dumps(results["first_step"]), flush=True)
        results["loader"] = measure_loader(full)
        print(json.dumps(results["loader"]), flush=True)
    return results
