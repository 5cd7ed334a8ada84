"""From a config's `data` section (or one source) to block datasets: a prepared folder, or sources prepared
into the cache on first use."""

import tempfile
from pathlib import Path

import torch

from .prepare import ensure_prepared
from .shards import ShardedBlocks, TokenShards, check_tokenizer, check_vocab, read_index
from .sources import FileSource, HubSource


def sources_of(data: dict):
    """(train source, eval source or None) that a `data` section names."""
    field = data["text_field"]
    evaluation = None
    if data["hub_dataset"]:
        hub = {"name": data["hub_dataset"], "config": data["hub_config"], "revision": data["hub_revision"],
               "streaming": data["streaming"], "text_field": field}
        train = HubSource(split=data["train_split"], **hub)
        if data["eval_split"]:
            evaluation = HubSource(split=data["eval_split"], **hub)
    else:
        train = FileSource(data["train_files"], field)
    if data["eval_files"]:
        evaluation = FileSource(data["eval_files"], field)
    return train, evaluation


def prepared_folder(data: dict, tokenizer) -> Path:
    """`data.prepared`, checked against the tokenizer; else the cache's folder for the section's sources."""
    from ..config import default_config

    data = {**default_config()["data"], **data}  # sections saved by older versions lack the newer keys
    if data["prepared"]:
        folder = Path(data["prepared"])
        check_tokenizer(read_index(folder), tokenizer, folder)
        return folder
    train, evaluation = sources_of(data)
    return ensure_prepared(train, data["cache_dir"], tokenizer, eval_source=evaluation, text_field=data["text_field"],
                           eval_fraction=data["eval_fraction"], seed=data["split_seed"],
                           append_eos=data["append_eos"], num_proc=data["num_proc"])


def build_datasets(data: dict, tokenizer, vocab_size: int, max_eval_blocks: int | None = None):
    """(train ShardedBlocks, eval ShardedBlocks or None) from the config's `data` section."""
    from ..config import default_config

    data = {**default_config()["data"], **data}
    folder = prepared_folder(data, tokenizer)
    index = read_index(folder)
    check_vocab(index, vocab_size, folder)
    train = _blocks(TokenShards(folder, "train"), data["block_size"], _named_by(data, "train"))
    evaluation = None
    if "eval" in index["splits"]:
        evaluation = _blocks(TokenShards(folder, "eval"), data["block_size"], _named_by(data, "eval"),
                             max_eval_blocks)
    return train, evaluation


def _named_by(data: dict, split: str) -> str:
    """The config key and value that name a split's text (what a user can fix; not the cache folder)."""
    def files(value):
        return ", ".join(map(str, [value] if isinstance(value, str) else value))

    if data["prepared"]:
        return f"data.prepared={data['prepared']} split {split!r}"
    if split == "eval" and data["eval_files"]:
        return f"data.eval_files={files(data['eval_files'])}"
    if data["hub_dataset"] and (split == "train" or data["eval_split"]):
        return f"data.hub_dataset={data['hub_dataset']} split {data[f'{split}_split']!r}"
    origin = (f"data.hub_dataset={data['hub_dataset']} split {data['train_split']!r}" if data["hub_dataset"]
              else f"data.train_files={files(data['train_files'])}")
    return origin if split == "train" else f"the data.eval_fraction={data['eval_fraction']} held out of {origin}"


def _blocks(tokens: TokenShards, block_size: int, named_by: str, num_blocks: int | None = None) -> ShardedBlocks:
    if tokens.num_tokens < block_size:
        raise ValueError(f"{named_by}: {tokens.num_tokens} tokens after tokenising, fewer than one block of "
                         f"data.block_size={block_size}; give more text or a smaller data.block_size")
    return ShardedBlocks(tokens, block_size, num_blocks)


def load_blocks(source, tokenizer, block_size: int, cache_dir=None, text_field: str = "text") -> torch.LongTensor:
    """All blocks of one source (an eval file) as a LongTensor; prepared into `cache_dir`, or a temporary folder."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = ensure_prepared(source, cache_dir or scratch, tokenizer, text_field=text_field)
        tokens = TokenShards(folder, "train")
        if tokens.num_tokens < block_size:  # named by the source, not the scratch folder
            raise ValueError(f"{getattr(source, 'name', source)}: {tokens.num_tokens} tokens after tokenising, "
                             f"fewer than one block of {block_size}")
        return ShardedBlocks(tokens, block_size).tensor()  # a copy: outlives the folder
