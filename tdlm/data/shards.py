"""Reading prepared token shards (nanoGPT's `train.bin`, Megatron's indexed dataset): numpy + torch only.

A prepared folder holds `index.json` and, per split, one or more flat `uint16`/`uint32` token files
(`train-00000.bin`, ...). Training reads fixed-length blocks by offset through `np.memmap`, so data RAM stays
flat however large the corpus is: the OS pages in what a batch touches.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

INDEX = "index.json"
FORMAT = "tdlm-token-shards"
VERSION = 1
REQUIRED_KEYS = ("version", "dtype", "tokenizer", "max_token_id", "splits")


def tokenizer_fingerprint(tokenizer) -> str:
    """Changes with the vocabulary (added tokens included), the tokenizer class and the EOS id."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    key = f"{type(tokenizer).__name__}|{tokenizer.eos_token_id}|{vocab}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def read_index(folder) -> dict:
    """index.json of a prepared folder, checked for shape; errors name the file."""
    folder = Path(folder)
    path = folder / INDEX
    if not folder.is_dir():
        raise FileNotFoundError(f"prepared data folder not found: {folder}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {folder} is not a prepared data folder (see tdlm-prepare)")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is corrupt ({error}); prepare the data again") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} index; prepare the data again")
    missing = [key for key in REQUIRED_KEYS if key not in index]
    if missing:
        raise ValueError(f"{path} is corrupt: no {missing[0]!r}; prepare the data again")
    if index["version"] != VERSION:
        raise ValueError(f"{path} has format version {index['version']}; this tdlm reads version {VERSION}")
    return index


def check_tokenizer(index: dict, tokenizer, folder) -> None:
    """Shards are only meaningful with the tokenizer that wrote them."""
    saved, ours = index["tokenizer"]["fingerprint"], tokenizer_fingerprint(tokenizer)
    if saved != ours:
        raise ValueError(f"{folder} was prepared with tokenizer {index['tokenizer'].get('name_or_path')!r} "
                         f"(fingerprint {saved}) but this tokenizer's fingerprint is {ours}; prepare it again with "
                         f"this tokenizer")


def check_vocab(index: dict, vocab_size: int, folder) -> None:
    """Token ids must fit the model's embedding: a tokenizer/model mismatch fails at start, not mid-run."""
    if index["max_token_id"] >= vocab_size:
        raise ValueError(f"{folder}: token id {index['max_token_id']} does not fit the model's vocab_size "
                         f"{vocab_size}; the tokenizer does not match the model")


class TokenShards:
    """The tokens of one split: its shard files back to back. Memmaps open lazily, so a DataLoader worker
    unpickles a few paths, not the tokens."""

    def __init__(self, folder, split: str = "train"):
        self.folder, self.split = Path(folder), split
        self.index = read_index(folder)
        if split not in self.index["splits"]:
            raise ValueError(f"{folder}: no split {split!r} (it has {', '.join(self.index['splits'])})")
        self.dtype = np.dtype(self.index["dtype"])
        shards = self.index["splits"][split]["shards"]
        self.files = [self.folder / shard["file"] for shard in shards]
        sizes = [shard["num_tokens"] for shard in shards]
        for file, size in zip(self.files, sizes):
            self._check_size(file, size)
        self.offsets = np.cumsum([0, *sizes])
        self.num_tokens = int(self.offsets[-1])
        self._maps = None

    @property
    def name(self) -> str:
        return f"{self.folder} split {self.split!r}"

    def _check_size(self, file: Path, num_tokens: int) -> None:
        if not file.is_file():
            raise FileNotFoundError(f"token shard not found: {file} (listed in {self.folder / INDEX})")
        expected = num_tokens * self.dtype.itemsize
        if file.stat().st_size != expected:
            raise ValueError(f"token shard {file} is corrupt: {file.stat().st_size} bytes, index.json says "
                             f"{num_tokens} {self.dtype} tokens ({expected} bytes); prepare the data again")

    def __getstate__(self):
        return {**self.__dict__, "_maps": None}

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length), across shard boundaries when needed."""
        if self._maps is None:
            self._maps = [np.memmap(f, dtype=self.dtype, mode="r") for f in self.files]
        end, shard = start + length, int(np.searchsorted(self.offsets, start, side="right")) - 1
        pieces = []
        while start < end:
            local, stop = start - self.offsets[shard], min(end, self.offsets[shard + 1])
            pieces.append(self._maps[shard][local:local + stop - start])
            start, shard = stop, shard + 1
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


    def document_offsets(self) -> np.ndarray:
        """Token offsets of the split's documents: [num_documents + 1] int64, from 0 to num_tokens."""
        name = self.index["splits"][self.split].get("documents")
        if name is None:
            raise ValueError(f"{self.folder} records no document boundaries (prepared by an older tdlm); "
                             f"prepare it again with tdlm-prepare")
        offsets = np.load(self.folder / name)
        if offsets.ndim != 1 or offsets[0] != 0 or offsets[-1] != self.num_tokens:
            raise ValueError(f"{self.folder / name} is corrupt (its offsets do not span the split's "
                             f"{self.num_tokens} tokens); prepare the data again")
        return offsets


def document_blocks(tokens: TokenShards, documents, block_size: int, num_blocks: int | None = None):
    """Blocks of `block_size` tokens cut from `documents` (indices into the split, in the order given) written
    back to back, and the document each block starts in: ([num_blocks, block_size], [num_blocks]) LongTensors.

    Documents shuffled with a seed and cut at growing `num_blocks` give nested budgets that sample the corpus,
    not a few neighbouring files; the tail shorter than a block is dropped."""
    offsets = tokens.document_offsets()
    documents = np.asarray(documents, dtype=np.int64)
    lengths = offsets[documents + 1] - offsets[documents]
    available = int(lengths.sum()) // block_size
    num_blocks = available if num_blocks is None else num_blocks
    if not 0 < num_blocks <= available:
        raise ValueError(f"{tokens.name}: {num_blocks} blocks of {block_size} tokens asked for, the documents "
                         f"given hold {available}")
    needed = int(np.searchsorted(np.cumsum(lengths), num_blocks * block_size)) + 1
    stream = np.concatenate([tokens.read(int(offsets[d]), int(n)) for d, n in zip(documents[:needed],
                                                                                lengths[:needed])])
    owner = np.repeat(documents[:needed], lengths[:needed])
    size = num_blocks * block_size
    blocks = torch.from_numpy(stream[:size].astype(np.int64)).view(num_blocks, block_size)
    return blocks, torch.from_numpy(owner[:size:block_size].copy())


class ShardedBlocks(torch.utils.data.Dataset):
    """Blocks [i * block_size, (i + 1) * block_size) of a split; the tail shorter than a block is dropped.

    Map-style on purpose: the sampler orders it. Under `Trainer` that is a RandomSampler seeded from
    `TrainingArguments.seed` (a new permutation each epoch) and, with several processes, accelerate gives each
    rank its share of every batch; outside Trainer, `torch.utils.data.DistributedSampler(dataset,
    num_replicas, rank, seed=...)` + `set_epoch` does the same. A unique-token budget is a prefix (`prefix`).
    """

    def __init__(self, tokens: TokenShards, block_size: int, num_blocks: int | None = None):
        available = tokens.num_tokens // block_size
        if available == 0:
            raise ValueError(f"{tokens.name} has {tokens.num_tokens} tokens, fewer than one block of "
                             f"data.block_size={block_size}")
        self.tokens, self.block_size = tokens, block_size
        self.num_blocks = available if num_blocks is None else max(0, min(num_blocks, available))

    def __len__(self):
        return self.num_blocks

    def __getitem__(self, index: int):
        if not 0 <= index < self.num_blocks:
            raise IndexError(f"block {index} out of range ({self.num_blocks} blocks)")
        block = self.tokens.read(index * self.block_size, self.block_size)
        return {"input_ids": torch.from_numpy(block.astype(np.int64))}

    @property
    def num_tokens(self) -> int:
        return self.num_blocks * self.block_size

    def prefix(self, num_blocks: int) -> "ShardedBlocks":
        """The first `num_blocks` blocks: a unique-token budget that grows by extension, never by resampling."""
        return ShardedBlocks(self.tokens, self.block_size, num_blocks)

    def tensor(self) -> torch.LongTensor:
        """All blocks as one [num_blocks, block_size] LongTensor (for evaluation sets, which are small)."""
        flat = self.tokens.read(0, self.num_tokens).astype(np.int64)
        return torch.from_numpy(flat).view(self.num_blocks, self.block_size)


class BlockDataset(torch.utils.data.Dataset):
    """Blocks already in memory as a [num_blocks, block_size] LongTensor (benchmarks' random blocks)."""

    def __init__(self, blocks: torch.Tensor):
        self.blocks = blocks

    def __len__(self):
        return self.blocks.shape[0]

    def __getitem__(self, index):
        return {"input_ids": self.blocks[index]}
