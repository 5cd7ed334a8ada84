"""The speed-quality frontier of sampling: generated tokens/s against sample quality, per sampler.

Each method samples `batch_size` rows of `length` new tokens from a trained checkpoint of its objective (AR + KV
cache at temperature 1 and with top-p 0.9; masked diffusion at several step counts, with and without threshold
decoding and Fast-dLLM caches). Every row starts from the first `prompt_tokens` tokens of a held-out piece of text,
the same pieces for every method: an AR model trained on contiguous blocks has never seen a BOS, so "unconditional"
AR sampling after one emits bytes at random. One round runs every method once; `repeats` rounds after a warm-up round
interleave the methods, so a slow spell of the shared machine hits all of them, and each method's speed (new tokens
per second) is the median of its rounds. The samples of all rounds (prompt + new tokens) are its quality sample:
gen-PPL under a fixed AR scorer and mean unigram entropy (`sample_quality`), beside the same numbers for the held-out
pieces themselves (real text of the same length).

A method is a `FrontierMethod`: a name, the objective whose checkpoint it samples, and `sample(model, prompts [B, P],
length, generator) -> [B, length]` new ids. New samplers (block diffusion with its exact KV cache) join by adding
methods for their objective and passing a checkpoint for it (`--frontier-checkpoints block_diffusion=...`).
"""

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..evaluation.likelihood import prefix_token_id
from .sample_quality import score_ids, score_texts


@dataclass
class FrontierMethod:
    name: str
    objective: str  # key of the `models` dict: "autoregressive", "diffusion", ...
    sample: Callable  # (model, prompts [B, P], length, generator) -> LongTensor [B, length] of new tokens
    options: dict = field(default_factory=dict)  # recorded with the row


def autoregressive_method(name: str, temperature: float = 1.0, **options) -> FrontierMethod:
    """Stock `generate()` with its KV cache after the prompts (a BOS token where there are none) at `temperature`
    (0: greedy), plus `options` (top_p); EOS is suppressed until `length` tokens (min_new_tokens), as diffusion always
    fills its canvas."""
    sampling = {"do_sample": True, "temperature": temperature, **options} if temperature else {"do_sample": False}

    def sample(model, prompts, length, generator):
        if not prompts.shape[1]:
            bos = model.config.bos_token_id if model.config.bos_token_id is not None else model.config.eos_token_id
            prompts = prompts.new_full((prompts.shape[0], 1), bos)
        prompts = prompts.to(model.device)
        torch.manual_seed(int(torch.randint(1 << 62, (1,), generator=generator)))  # generate() takes no generator
        with torch.no_grad():
            out = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=length,
                                 min_new_tokens=length, use_cache=True, pad_token_id=model.config.pad_token_id,
                                 **sampling)
        return out[:, prompts.shape[1]:]
    return FrontierMethod(name, "autoregressive", sample, {"temperature": temperature, **options})


def diffusion_method(name: str, objective: str = "diffusion", **options) -> FrontierMethod:
    """`diffusion_generate` of `length` masks after the prompts (unconditional where there are none) with `options`
    (num_steps, remasking, temperature, block_length, cache...), from the checkpoint of `objective` ("diffusion", or
    "block_diffusion", whose `num_steps` is each block's budget and whose KV cache of finished blocks is exact)."""
    def sample(model, prompts, length, generator):
        if not prompts.shape[1]:
            return model.diffusion_generate(batch_size=prompts.shape[0], max_length=length, generator=generator,
                                            **options)
        out = model.diffusion_generate(prompts.to(model.device), max_new_tokens=length, generator=generator, **options)
        return out[:, prompts.shape[1]:]
    return FrontierMethod(name, objective, sample, options)


BASELINE = ("diffusion 16 greedy", "ar greedy")  # the ratio: diffusion at 16 steps vs AR, both greedy


def default_methods(steps_list=(8, 16, 32, 64, 128, 256), threshold: float = 0.9, block_length: int = 32,
                    cache_steps=(16, 32, 64, 128), block_diffusion_steps=(2, 4, 8, 16)) -> list[FrontierMethod]:
    """AR at temperature 1 and top-p 0.9; diffusion ancestral sampling (random order, temperature 1) at each step
    count; the baseline pair (`BASELINE`: diffusion 16 steps with the default low-confidence rule vs AR, both
    greedy); semi-AR blocks of `block_length` in low-confidence order at temperature 1, without and with threshold
    decoding, uncached and with the prefix and dual caches, at each of `cache_steps`; and block diffusion (its own
    blocks, exact KV cache) in the same order at each of `block_diffusion_steps` per block. Methods whose objective has
    no checkpoint are skipped."""
    methods = [autoregressive_method("ar"), autoregressive_method("ar top-p 0.9", top_p=0.9),
               autoregressive_method(BASELINE[1], temperature=0.0), diffusion_method(BASELINE[0], num_steps=16)]
    methods += [diffusion_method(f"diffusion random {s}", num_steps=s, remasking="random", temperature=1.0)
                for s in steps_list]
    for cache in (None, "prefix", "dual"):
        label = f"blocks {block_length}" + (f" {cache}-cache" if cache else "")
        for s in cache_steps:
            blocks = {"num_steps": s, "remasking": "low_confidence", "temperature": 1.0, "block_length": block_length,
                      "cache": cache}
            methods.append(diffusion_method(f"{label} {s}", **blocks))
            methods.append(diffusion_method(f"{label} threshold {threshold} {s}", confidence_threshold=threshold,
                                            **blocks))
    methods += [diffusion_method(f"block diffusion, steps per block {s}", "block_diffusion", num_steps=s,
                                 remasking="low_confidence", temperature=1.0) for s in block_diffusion_steps]
    return methods


def reference_pieces(path, tokenizer, count: int, length: int) -> list[list[int]]:
    """Held-out real text: the first `count` consecutive `length`-token pieces of the file `path`, encoded with the
    sampled models' tokenizer. Their first tokens prompt the samplers; whole, they are the real-text reference."""
    ids = tokenizer(Path(path).read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    if len(ids) < count * length:
        raise ValueError(f"--reference-text {path}: {len(ids)} tokens, fewer than {count} pieces of {length}")
    return [ids[i * length:(i + 1) * length] for i in range(count)]


def _score(samples: list[list[int]], tokenizer, scorer, scorer_tokenizer) -> dict:
    """Gen-PPL and unigram entropy of id samples: scored as ids when the scorer shares the sampler's vocabulary (no
    text round trip), else as decoded text. Special tokens (EOS/pad a sampler emitted) are dropped either way."""
    special = set(tokenizer.all_special_ids)
    samples = [[i for i in ids if i not in special] for ids in samples]
    if tokenizer.get_vocab() == scorer_tokenizer.get_vocab():
        return {**score_ids(scorer, prefix_token_id(scorer_tokenizer), samples), "scored_as": "ids"}
    texts = tokenizer.batch_decode(samples)
    return {**score_texts(scorer, scorer_tokenizer, texts), "scored_as": "text"}


def run_frontier(models: dict, scorer, scorer_tokenizer, methods: list[FrontierMethod], batch_size: int = 16,
                 length: int = 128, repeats: int = 3, seed: int = 0, reference_text=None, prompt_tokens: int = 1,
                 on_round: Callable | None = None) -> dict:
    """`models`: objective -> (model, tokenizer). Rows {method, objective, options, tokens_per_second (new tokens,
    median of `repeats` rounds), wall_time_s, rounds_s, gen_ppl, gen_nll, unigram_entropy, num_samples, num_tokens}
    for every method whose objective has a model, the "real text" reference (no speed) and the baseline ratio.
    Prompts and reference come from `reference_text` (cut with the first model's tokenizer); without it the samplers
    start from nothing (`prompt_tokens` must be 0)."""
    methods = [m for m in methods if m.objective in models]
    if not methods:
        raise ValueError(f"no method samples any of the given objectives {sorted(models)}")
    if reference_text is None and prompt_tokens:
        raise ValueError("prompts come from the reference text: give --reference-text or --prompt-tokens 0")
    pieces = None
    if reference_text is not None:
        tokenizer = next(iter(models.values()))[1]
        pieces = reference_pieces(reference_text, tokenizer, batch_size * (repeats + 1), prompt_tokens + length)
    times = {m.name: [] for m in methods}
    samples = {m.name: [] for m in methods}
    new_ids = {m.name: [] for m in methods}
    for round_index in range(repeats + 1):  # round 0 warms up (allocator, kernels) and is not counted
        rows = range(round_index * batch_size, (round_index + 1) * batch_size)
        prompts = torch.tensor([pieces[i][:prompt_tokens] for i in rows] if pieces else [[]] * batch_size,
                               dtype=torch.long).view(batch_size, prompt_tokens)
        for method in methods:
            # one seed per round: a cached sampler draws the same noise as its uncached twin (paired agreement)
            generator = torch.Generator().manual_seed(seed + round_index)
            start = time.perf_counter()
            ids = method.sample(models[method.objective][0], prompts, length, generator)
            seconds = time.perf_counter() - start
            if tuple(ids.shape) != (batch_size, length):
                raise RuntimeError(f"{method.name} returned shape {tuple(ids.shape)}, not {(batch_size, length)}")
            if round_index:
                times[method.name].append(seconds)
                samples[method.name] += torch.cat([prompts, ids.cpu()], 1).tolist()
                new_ids[method.name].append(ids.cpu())
        if on_round is not None:
            on_round(round_index)
    rows = []
    for method in methods:
        seconds = statistics.median(times[method.name])
        rows.append({"method": method.name, "objective": method.objective, "options": method.options,
                     "tokens_per_second": batch_size * length / seconds, "wall_time_s": seconds,
                     "rounds_s": times[method.name],
                     **_score(samples[method.name], models[method.objective][1], scorer, scorer_tokenizer)})
        if method.options.get("cache"):  # Fast-dLLM's question: how often does the cache change a token?
            twin = next(m.name for m in methods if m.objective == method.objective
                        and m.options == {**method.options, "cache": None})
            rows[-1]["agreement_with_uncached"] = float(
                (torch.cat(new_ids[method.name]) == torch.cat(new_ids[twin])).double().mean())
    report = {"batch_size": batch_size, "length": length, "prompt_tokens": prompt_tokens, "repeats": repeats,
              "rows": rows}
    if pieces is not None:  # the pieces whose prompts the counted rounds used
        report["reference"] = {"method": "real text", "source": str(reference_text),
                               **_score(pieces[batch_size:], tokenizer, scorer, scorer_tokenizer)}
    speed = {row["method"]: row["tokens_per_second"] for row in rows}
    if all(name in speed for name in BASELINE):
        report["baseline_ratio"] = speed[BASELINE[0]] / speed[BASELINE[1]]
    return report


def frontier_summary(report: dict, entropy_tolerance: float = 0.05) -> dict:
    """The goal's answer against AR at temperature 1 ("ar"): the fastest diffusion-family row with gen-PPL at or below
    AR's and a unigram entropy no more than `entropy_tolerance` (relative) below AR's (low gen-PPL from repetitive
    text does not count), with its speed-up; where none is, the best such gen-PPL among the diffusion rows and its
    speed. The greedy baseline rows are left out (they are there for the speed ratio)."""
    rows = {row["method"]: row for row in report["rows"]}
    if "ar" not in rows:
        return {}
    ar = rows["ar"]
    diverse = [row for row in report["rows"] if row["objective"] != "autoregressive" and row["method"] not in BASELINE
               and row["unigram_entropy"] >= (1 - entropy_tolerance) * ar["unigram_entropy"]]
    summary = {"ar_tokens_per_second": ar["tokens_per_second"], "ar_gen_ppl": ar["gen_ppl"],
               "ar_unigram_entropy": ar["unigram_entropy"], "entropy_tolerance": entropy_tolerance}
    matching = [row for row in diverse if row["gen_ppl"] <= ar["gen_ppl"]]
    if matching:
        best = max(matching, key=lambda row: row["tokens_per_second"])
        summary.update(winner=best["method"], speedup=best["tokens_per_second"] / ar["tokens_per_second"],
                       gen_ppl=best["gen_ppl"])
    elif diverse:
        best = min(diverse, key=lambda row: row["gen_ppl"])
        summary.update(winner=None, best_quality=best["method"], best_gen_ppl=best["gen_ppl"],
                       gen_ppl_ratio_to_ar=best["gen_ppl"] / ar["gen_ppl"],
                       best_quality_speedup=best["tokens_per_second"] / ar["tokens_per_second"])
    return summary


def format_frontier(report: dict) -> str:
    """A Markdown table of the frontier, fastest first, the real-text reference last."""
    lines = ["| method | tokens/s | x AR | gen-PPL | unigram entropy | tokens = uncached |",
             "|---|---:|---:|---:|---:|---:|"]
    ar = next((row["tokens_per_second"] for row in report["rows"] if row["method"] == "ar"), math.nan)
    for row in sorted(report["rows"], key=lambda r: -r["tokens_per_second"]):
        lines.append(f"| {row['method']} | {row['tokens_per_second']:,.0f} | {row['tokens_per_second'] / ar:.2f} | "
                     f"{row['gen_ppl']:.1f} | {row['unigram_entropy']:.2f} | "
                     f"{format(row['agreement_with_uncached'], '.1%') if 'agreement_with_uncached' in row else '-'} |")
    if "reference" in report:
        ref = report["reference"]
        lines.append(f"| real text (held out) | - | - | {ref['gen_ppl']:.1f} | {ref['unigram_entropy']:.2f} | - |")
    return "\n".join(lines)


def plot_frontier(report: dict, path) -> Path:
    """PNG: gen-PPL (log) against generated tokens/s (log), one marker per method family, the real text's gen-PPL
    as a horizontal line."""
    from ..evaluation.plots import pyplot, save_figure

    plt = pyplot()
    families = {}
    for row in report["rows"]:
        steps_last = row["objective"] != "autoregressive" and row["method"][-1].isdigit()  # "<family> <steps>"
        family = row["method"].rsplit(" ", 1)[0] if steps_last else row["method"]
        families.setdefault(family, []).append(row)
    figure, axis = plt.subplots(figsize=(8, 5))
    markers = "os^vD<>pPhX*"
    for number, (family, rows) in enumerate(families.items()):
        rows = sorted(rows, key=lambda r: r["tokens_per_second"])
        axis.plot([r["tokens_per_second"] for r in rows], [r["gen_ppl"] for r in rows],
                  marker=markers[number % len(markers)], label=family, alpha=0.8)
    if "reference" in report:
        axis.axhline(report["reference"]["gen_ppl"], color="black", linestyle="--", linewidth=1,
                     label="real text (held out)")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("generated tokens/s")
    axis.set_ylabel("gen-PPL under the AR scorer (lower is better)")
    axis.set_title(f"speed-quality frontier: {report['batch_size']} x {report['length']} tokens")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=7, ncol=2)
    return save_figure(figure, path)
