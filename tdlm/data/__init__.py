"""Training data: `datasets` reads and tokenises once (prepare.py) into memory-mapped token shards that training
reads with numpy + torch alone (shards.py).

    sources.py   local files / Hub datasets / Dataset objects, read through `datasets`
    prepare.py   tokenise (batched, num_proc) -> uint16/uint32 shards + index.json; the fingerprinted cache
    shards.py    index.json checks, TokenShards (memmaps), ShardedBlocks (fixed-length blocks by offset)
    collator.py  DataCollatorForTDLM
    build.py     a config's `data` section -> (train, eval) block datasets
"""

from .build import build_datasets, load_blocks, prepared_folder
from .collator import DataCollatorForTDLM
from .prepare import ensure_prepared, prepare_dataset
from .shards import BlockDataset, ShardedBlocks, TokenShards, document_blocks, read_index, tokenizer_fingerprint

__all__ = ["BlockDataset", "DataCollatorForTDLM", "ShardedBlocks", "TokenShards", "build_datasets",
           "document_blocks", "ensure_prepared", "load_blocks", "prepare_dataset", "prepared_folder", "read_index",
           "tokenizer_fingerprint"]
