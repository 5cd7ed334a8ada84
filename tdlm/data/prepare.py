"""Preparing data once: `datasets` reads and tokenises (batched, `num_proc` processes), numpy writes token shards.

The output folder (see shards.py) holds a `train` split and, when there is evaluation data, an `eval` split:
from a second source, or a seeded held-out fraction of the training documents. It is written to a staging
folder and renamed, so a failed or interrupted preparation leaves nothing behind. `ensure_prepared` keeps
prepared folders in a cache keyed by what was asked for (sources, options, tokenizer) and re-prepares, saying
so, when the sources' content fingerprints no longer match.
"""

import hashlib
import json
import os
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .shards import FORMAT, INDEX, VERSION, TokenShards, read_index, tokenizer_fingerprint
from .sources import as_source, check_text_column

SHARD_TOKENS = 1 << 30  # tokens per shard file: 2 GiB of uint16, ~100 files for a 1 TB text corpus
WRITE_BATCH = 10_000  # tokenised rows handed from arrow to numpy at a time


def token_dtype(tokenizer) -> np.dtype:
    return np.dtype(np.uint16) if len(tokenizer) <= 1 << 16 else np.dtype(np.uint32)


def held_out(indices: np.ndarray, seed: int, fraction: float) -> np.ndarray:
    """Whether each document (by its index in the source) is held out: a splitmix64 hash of (seed, index), so
    the same documents are held out whatever num_proc, batch size or streaming."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps around, as the hash intends
        x = np.uint64(seed) + (np.asarray(indices, dtype=np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / 2.0**53 < fraction


def tokenize_batch(batch, indices, tokenizer, text_field, append_eos, eval_fraction, seed, name):
    """`Dataset.map` function: token ids per non-empty document (+ EOS) and whether it is held out. Empty
    documents add nothing, not even an EOS."""
    texts = batch[text_field]
    bad = next((text for text in texts if text is not None and not isinstance(text, str)), None)
    if bad is not None:
        raise ValueError(f"{name}: field {text_field!r} holds {type(bad).__name__} values, not text")
    keep = [i for i, text in enumerate(texts) if text]
    ids = encode(tokenizer, [texts[i] for i in keep])
    if append_eos:
        ids = [row + [tokenizer.eos_token_id] for row in ids]
    dtype = token_dtype(tokenizer)
    return {"input_ids": [np.asarray(row, dtype=dtype) for row in ids],  # arrow takes numpy rows fastest
            "eval": held_out(np.asarray(indices)[keep], seed, eval_fraction).tolist()}


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids without special tokens. A fast tokenizer's Rust backend directly: the same ids as
    `tokenizer(texts, add_special_tokens=False)` at twice the speed (no BatchEncoding, no length warnings)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [encoding.ids for encoding in backend.encode_batch(texts, add_special_tokens=False)]


class SplitWriter:
    """Appends one split's tokens to shard files of at most `shard_tokens` tokens."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int = SHARD_TOKENS):
        self.folder, self.split, self.dtype, self.shard_tokens = folder, split, dtype, shard_tokens
        self.shards, self.num_documents, self.file = [], 0, None
        self.document_lengths = []  # tokens per document, in writing order: budgets of whole documents

    def write(self, tokens: np.ndarray, document_lengths: np.ndarray) -> None:
        self.num_documents += len(document_lengths)
        self.document_lengths.append(np.asarray(document_lengths, dtype=np.int64))
        while tokens.size:
            if self.file is None or self.shards[-1]["num_tokens"] == self.shard_tokens:
                self._next_shard()
            part, tokens = np.split(tokens, [self.shard_tokens - self.shards[-1]["num_tokens"]])
            part.astype(self.dtype, copy=False).tofile(self.file)
            self.shards[-1]["num_tokens"] += int(part.size)

    def _next_shard(self) -> None:
        if self.file is not None:
            self.file.close()
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self.file = open(self.folder / name, "wb")  # closed by the next shard or by close()
        self.shards.append({"file": name, "num_tokens": 0})

    def close(self) -> dict:
        if self.file is not None:
            self.file.close()
        lengths = np.concatenate(self.document_lengths) if self.document_lengths else np.zeros(0, np.int64)
        documents = f"{self.split}-documents.npy"
        np.save(self.folder / documents, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        return {"num_documents": self.num_documents, "num_tokens": sum(s["num_tokens"] for s in self.shards),
                "shards": self.shards, "documents": documents}


def write_tokens(tokenized, writer: SplitWriter, held_out_writer: SplitWriter | None) -> int:
    """Stream tokenised rows (arrow batches, zero-copy to numpy) into the writers; returns the largest id."""
    import pyarrow.compute as pc

    largest = -1
    for table in tokenized.with_format("arrow").iter(batch_size=WRITE_BATCH):
        ids, held = table.column("input_ids"), table.column("eval").to_numpy(zero_copy_only=False)
        for target, rows in ((writer, ~held), (held_out_writer, held)):
            if rows.any():
                kept = pc.filter(ids, rows)
                tokens = pc.list_flatten(kept).to_numpy()
                target.write(tokens, pc.list_value_length(kept).to_numpy(zero_copy_only=False))
                largest = max(largest, int(tokens.max(initial=0)))
    return largest


def tokenize_source(source, tokenizer, scratch: Path, *, append_eos=None, eval_fraction=0.0, seed=0, num_proc=1,
                    batch_size=128):
    """The source's rows mapped to token ids (a lazy IterableDataset, or a Dataset cached under `scratch`)."""
    import datasets

    dataset = source.load()
    check_text_column(dataset, source)
    eos = (not source.rows_are_lines) if append_eos is None else append_eos
    if eos and tokenizer.eos_token_id is None:
        raise ValueError(f"{source.name}: the tokenizer has no EOS token to put between documents; set "
                         f"data.append_eos: false")
    kwargs = {"batched": True, "batch_size": batch_size, "with_indices": True, "remove_columns": dataset.column_names,
              "features": datasets.Features({"input_ids": datasets.List(datasets.Value(token_dtype(tokenizer).name)),
                                             "eval": datasets.Value("bool")}),
              "fn_kwargs": {"tokenizer": tokenizer, "text_field": source.text_field, "append_eos": eos,
                            "eval_fraction": eval_fraction, "seed": seed, "name": source.name}}
    if isinstance(dataset, datasets.Dataset):
        scratch.mkdir(exist_ok=True)
        kwargs.update(num_proc=num_proc if num_proc > 1 else None, cache_file_name=str(scratch / "tokens.arrow"),
                      new_fingerprint=hashlib.sha256(str(scratch).encode()).hexdigest()[:16], desc="tokenizing")
    return dataset.map(tokenize_batch, **kwargs)


def _describe(source) -> dict:
    """What index.json records of a source; the fingerprint is taken before reading, so a change made during
    preparation shows up as stale next time."""
    return {**source.spec(), "fingerprint": source.fingerprint()}


def prepare_dataset(source, output_dir, tokenizer, *, eval_source=None, eval_fraction: float = 0.0, seed: int = 0,
                    text_field: str = "text", append_eos: bool | None = None, num_proc: int = 1,
                    batch_size: int = 128, shard_tokens: int = SHARD_TOKENS, overwrite: bool = False) -> Path:
    """Tokenise `source` (files/globs/folders, a Dataset/IterableDataset, or a source from tdlm.data.sources) once
    into token shards under `output_dir` and return it. Evaluation data: `eval_source`, or `eval_fraction` of the
    training documents held out (seeded by `seed`). `append_eos` defaults to EOS after each document, none
    between the lines of text files."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must lie in [0, 1), got {eval_fraction}")
    if eval_source is not None and eval_fraction:
        raise ValueError("give either an eval source or an eval_fraction to hold out, not both")
    output_dir = Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise ValueError(f"{output_dir} exists; choose another folder or overwrite it (--overwrite)")
    train = as_source(source, text_field)
    evaluation = as_source(eval_source, text_field) if eval_source is not None else None
    staging = output_dir.with_name(f".{output_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        index = _prepare_into(staging, train, evaluation, tokenizer, eval_fraction=eval_fraction, seed=seed,
                              append_eos=append_eos, num_proc=num_proc, batch_size=batch_size,
                              shard_tokens=shard_tokens)
        (staging / INDEX).write_text(json.dumps(index, indent=1))
        _replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


def _prepare_into(staging: Path, train, evaluation, tokenizer, *, eval_fraction, seed, shard_tokens, **options) -> dict:
    import datasets

    dtype = token_dtype(tokenizer)
    writers = {"train": SplitWriter(staging, "train", dtype, shard_tokens)}
    if evaluation is not None or eval_fraction:
        writers["eval"] = SplitWriter(staging, "eval", dtype, shard_tokens)
    sources = {"train": _describe(train)}
    tokenized = tokenize_source(train, tokenizer, staging / "scratch-train", eval_fraction=eval_fraction, seed=seed,
                                **options)
    largest = write_tokens(tokenized, writers["train"], writers.get("eval"))
    if evaluation is not None:
        sources["eval"] = _describe(evaluation)
        tokenized = tokenize_source(evaluation, tokenizer, staging / "scratch-eval", **options)
        largest = max(largest, write_tokens(tokenized, writers["eval"], None))
    del tokenized  # release the arrow scratch files before deleting them
    for scratch in staging.glob("scratch-*"):
        shutil.rmtree(scratch)
    splits = {name: writer.close() for name, writer in writers.items()}
    for name, split in splits.items():
        if split["num_tokens"] == 0:
            origin = evaluation if name == "eval" and evaluation is not None else train
            why = f"eval_fraction {eval_fraction} held out no document" if origin is train and name == "eval" \
                else f"no text in field {origin.text_field!r}"
            raise ValueError(f"{origin.name}: {why}")
    return {"format": FORMAT, "version": VERSION, "dtype": dtype.name, "max_token_id": largest,
            "tokenizer": {"fingerprint": tokenizer_fingerprint(tokenizer), "name_or_path": tokenizer.name_or_path,
                          "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id},
            "sources": sources, "options": {"eval_fraction": eval_fraction, "seed": seed, **options},
            "splits": splits, "datasets_version": datasets.__version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _replace(staging: Path, output_dir: Path) -> None:
    """Rename the finished staging folder into place (an old folder is moved aside first, then deleted)."""
    old = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
    if output_dir.exists():
        output_dir.rename(old)
    staging.rename(output_dir)
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# The preparation cache
# ---------------------------------------------------------------------------------------------
def stale_reason(folder: Path, sources: dict) -> str | None:
    """Why the prepared `folder` cannot serve `sources` ({"train": source, "eval": source}); None if it can."""
    if not folder.exists():
        return "missing"
    try:
        index = read_index(folder)
        for split in index["splits"]:
            TokenShards(folder, split)  # checks every shard file's size
    except (ValueError, FileNotFoundError) as error:
        return str(error)
    for role, source in sources.items():
        saved = index["sources"].get(role, {}).get("fingerprint")
        current = source.fingerprint()
        if None in (saved or {}).values() or None in current.values():
            return f"the {role} source ({source.name}) has no fingerprint to compare"
        if saved != current:
            return f"the {role} source ({source.name}) changed since it was prepared"
    return None


def ensure_prepared(source, cache_dir, tokenizer, *, eval_source=None, text_field: str = "text", **options) -> Path:
    """A prepared folder for these sources under `cache_dir`: reused while its fingerprints match, otherwise
    prepared (again, saying why). A file lock makes one process prepare while the others (DDP ranks, a second
    run) wait and then reuse its result: preparation runs once, on whichever process comes first."""
    from filelock import FileLock

    sources = {"train": as_source(source, text_field)}
    if eval_source is not None:
        sources["eval"] = as_source(eval_source, text_field)
    asked = {role: s.spec() for role, s in sources.items()}
    content_options = {k: v for k, v in options.items() if k not in ("num_proc", "batch_size")}
    key = json.dumps([asked, content_options, tokenizer_fingerprint(tokenizer), VERSION], sort_keys=True, default=str)
    folder = Path(cache_dir) / f"prepared-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        reason = stale_reason(folder, sources)
        if reason is None:
            return folder
        if reason != "missing":
            print(f"[tdlm.data] cached data {folder} is stale: {reason}; preparing it again", file=sys.stderr)
        prepare_dataset(sources["train"], folder, tokenizer, eval_source=sources.get("eval"), overwrite=True,
                        **options)
    return folder
