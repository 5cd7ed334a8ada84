"""Training data: read text (local .txt/.raw/.jsonl files, or a Hub dataset), tokenize once (cached), pack
into fixed-length blocks, and collate.

Local files are read here with strict UTF-8 decoding so that errors name the file and line; Hub datasets
(`Salesforce/wikitext`, `wikitext-2-raw-v1`) come through `datasets`, imported only when used (the GPU
machines have no `datasets`). Packed blocks are cached as a LongTensor under `cache_dir`, keyed by the
source (path, size, mtime), the tokenizer's vocabulary and the block size.
"""

import hashlib
import json
import os
from pathlib import Path

import torch

TEXT_SUFFIXES = (".txt", ".raw", ".text")
JSONL_SUFFIXES = (".jsonl", ".json")


# ---------------------------------------------------------------------------------------------
# Reading text
# ---------------------------------------------------------------------------------------------
def _as_list(files) -> list[str]:
    return [files] if isinstance(files, (str, Path)) else list(files)


def read_text_file(path: str | Path, text_field: str = "text") -> list[str]:
    """Documents of one local file: a .txt/.raw file is one document per line (newlines kept, as in
    WikiText); a .jsonl file is one document per record's `text_field`. Fails early with the file named."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"data file is empty: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b"\n") + 1
        raise ValueError(f"data file {path} is not valid UTF-8 text (line {line}, byte {error.start}): "
                         f"{error.reason}") from None
    if path.suffix in JSONL_SUFFIXES:
        documents = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"data file {path} line {number}: invalid JSON ({error.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise ValueError(f"data file {path} line {number}: no string field {text_field!r}")
            documents.append(record[text_field])
    elif path.suffix in TEXT_SUFFIXES or not path.suffix:
        documents = text.splitlines(keepends=True)
    else:
        raise ValueError(f"data file {path}: unsupported suffix {path.suffix!r}; use .txt, .raw or .jsonl")
    if not any(doc.strip() for doc in documents):
        raise ValueError(f"data file {path} contains no text")
    return documents


def read_hub_dataset(name: str, config_name: str | None, split: str, text_field: str = "text",
                     cache_dir: str | None = None) -> list[str]:
    """Documents of a Hub dataset split, e.g. ("Salesforce/wikitext", "wikitext-2-raw-v1", "train")."""
    import datasets

    dataset = datasets.load_dataset(name, config_name, split=split, cache_dir=cache_dir)
    if text_field not in dataset.column_names:
        raise ValueError(f"dataset {name}/{config_name} split {split} has no column {text_field!r}; "
                         f"columns: {dataset.column_names}")
    return list(dataset[text_field])


# ---------------------------------------------------------------------------------------------
# Tokenize + pack, cached
# ---------------------------------------------------------------------------------------------
def tokenizer_fingerprint(tokenizer) -> str:
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return hashlib.sha256(f"{type(tokenizer).__name__}|{vocab}".encode()).hexdigest()[:16]


def _source_key(source: dict) -> str:
    if "files" in source:
        parts = [f"{Path(f).resolve()}:{Path(f).stat().st_size}:{Path(f).stat().st_mtime_ns}" for f in source["files"]]
        return "|".join(parts) + f"|{source.get('text_field')}"
    return f"{source['hub']}|{source.get('config')}|{source['split']}|{source.get('text_field')}"


def tokenize_documents(documents: list[str], tokenizer, append_eos: bool, batch_size: int = 1000) -> list[int]:
    """Concatenated token ids of all documents (EOS between documents when `append_eos`)."""
    from tqdm.auto import tqdm

    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for start in tqdm(range(0, len(documents), batch_size), desc="tokenizing", leave=False,
                      disable=len(documents) <= batch_size):
        batch = [doc for doc in documents[start:start + batch_size] if doc]
        if not batch:
            continue
        for row in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            ids.extend(row)
            if append_eos and eos is not None:
                ids.append(eos)
    return ids


def pack_blocks(ids: list[int] | torch.Tensor, block_size: int, name: str = "corpus") -> torch.Tensor:
    """[num_blocks, block_size] LongTensor; the remainder shorter than one block is dropped."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    num_blocks = ids.numel() // block_size
    if num_blocks == 0:
        raise ValueError(f"{name} has {ids.numel()} tokens, fewer than one block of data.block_size={block_size}")
    return ids[: num_blocks * block_size].view(num_blocks, block_size)


def load_blocks(source: dict, tokenizer, block_size: int, cache_dir: str | Path | None = None) -> torch.Tensor:
    """Packed token blocks of a source: {"files": [...], "text_field"} or {"hub", "config", "split", "text_field"}.

    Tokenized once: the result is cached under `cache_dir` keyed by source, tokenizer and block size.
    """
    if "files" in source:
        for f in source["files"]:  # existence/emptiness before the cache key reads stat()
            if not Path(f).is_file():
                raise FileNotFoundError(f"data file not found: {f}")
    key = hashlib.sha256(f"{_source_key(source)}|{tokenizer_fingerprint(tokenizer)}|{block_size}".encode()
                         ).hexdigest()[:20]
    cache_file = Path(cache_dir) / f"blocks-{key}.pt" if cache_dir else None
    if cache_file is not None and cache_file.is_file():
        return torch.load(cache_file, weights_only=True)  # a tensor only: nothing to unpickle
    name = ", ".join(str(f) for f in source["files"]) if "files" in source else f"{source['hub']}:{source['split']}"
    if "files" in source:
        ids = []
        for f in source["files"]:
            jsonl = Path(f).suffix in JSONL_SUFFIXES
            ids.extend(tokenize_documents(read_text_file(f, source.get("text_field", "text")), tokenizer,
                                          append_eos=jsonl))
    else:
        documents = read_hub_dataset(source["hub"], source.get("config"), source["split"],
                                     source.get("text_field", "text"))
        ids = tokenize_documents(documents, tokenizer, append_eos=False)
    blocks = pack_blocks(ids, block_size, name)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}")  # each process writes its own, then renames
        torch.save(blocks, tmp)
        tmp.replace(cache_file)
    return blocks


def check_vocab(blocks: torch.Tensor, vocab_size: int, name: str) -> None:
    """Token ids must fit the model's embedding (a tokenizer/model vocabulary mismatch fails at start)."""
    top = int(blocks.max())
    if top >= vocab_size:
        raise ValueError(f"{name}: token id {top} does not fit the model's vocab_size {vocab_size}; "
                         f"the tokenizer does not match the model")


class BlockDataset(torch.utils.data.Dataset):
    """Fixed-length packed blocks; every token is real (attention_mask all ones)."""

    def __init__(self, blocks: torch.Tensor):
        self.blocks = blocks

    def __len__(self):
        return self.blocks.shape[0]

    def __getitem__(self, index):
        return {"input_ids": self.blocks[index]}


class DataCollatorForTDLM:
    """Stack (or right-pad) examples into input_ids, labels (= input ids at real tokens, -100 at padding)
    and, only when some row is padded, attention_mask (without padding the model takes sdpa's fused
    path). The trainer corrupts inputs itself; `labels` lets Trainer count the real tokens of an
    accumulated batch (`num_items_in_batch`)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples):
        rows = [torch.as_tensor(e["input_ids"], dtype=torch.long) for e in examples]
        length = max(r.numel() for r in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : row.numel()] = row
            attention_mask[i, : row.numel()] = 1
        batch = {"input_ids": input_ids, "labels": input_ids.masked_fill(attention_mask == 0, -100)}
        if any(row.numel() < length for row in rows):
            batch["attention_mask"] = attention_mask
        return batch


def build_datasets(data_config: dict, tokenizer, vocab_size: int, max_eval_blocks: int | None = None):
    """(train BlockDataset, eval BlockDataset or None) from the config's `data` section."""
    block = data_config["block_size"]
    cache = data_config["cache_dir"]
    field = data_config["text_field"]
    if data_config["hub_dataset"]:
        train_src = {"hub": data_config["hub_dataset"], "config": data_config["hub_config"],
                     "split": data_config["train_split"], "text_field": field}
        eval_src = {**train_src, "split": data_config["eval_split"]} if data_config["eval_split"] else None
        if data_config["eval_files"]:
            eval_src = {"files": _as_list(data_config["eval_files"]), "text_field": field}
    else:
        train_src = {"files": _as_list(data_config["train_files"]), "text_field": field}
        eval_src = {"files": _as_list(data_config["eval_files"]), "text_field": field} if data_config["eval_files"] \
            else None
    train = load_blocks(train_src, tokenizer, block, cache)
    check_vocab(train, vocab_size, "training data")
    evaluation = None
    if eval_src is not None:
        eval_blocks = load_blocks(eval_src, tokenizer, block, cache)
        if max_eval_blocks is not None:
            eval_blocks = eval_blocks[:max_eval_blocks]
        check_vocab(eval_blocks, vocab_size, "evaluation data")
        evaluation = BlockDataset(eval_blocks)
    return BlockDataset(train), evaluation
