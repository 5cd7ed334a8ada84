"""Data preparation: every input format through `datasets`, errors that name the file/field, token shards read by
offset across shard boundaries, DDP-free sharded reading, collation, the tdlm-prepare command."""

import bz2
import gzip
import json
import pickle

import numpy as np
import pytest
import torch

from tdlm.cli.prepare_data import cli as prepare_cli
from tdlm.data import DataCollatorForTDLM, ShardedBlocks, TokenShards, prepare_dataset, read_index
from tdlm.data.shards import check_tokenizer, check_vocab, tokenizer_fingerprint
from tdlm.data.sources import HubSource
from tdlm.tokenization import train_bpe_tokenizer

CORPUS = "".join(f" The quick brown fox {i} jumps over the lazy dog .\n" for i in range(200))
DOCS = [f"The quick brown fox {i} ." for i in range(40)] + ["", "lazy dog"]  # an empty document adds nothing


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "corpus.txt"
    path.write_text(CORPUS)
    return train_bpe_tokenizer(path, vocab_size=300)


def document_tokens(tokenizer, docs=DOCS):
    """What preparation must produce for documents: each non-empty one's ids, then EOS."""
    return [i for doc in docs if doc for i in [*tokenizer(doc, add_special_tokens=False)["input_ids"],
                                               tokenizer.eos_token_id]]


def prepared_tokens(folder, split="train") -> list[int]:
    shards = TokenShards(folder, split)
    return shards.read(0, shards.num_tokens).tolist()


def write_records(path, docs=DOCS):
    """`docs` in the format the suffix names (compressed when it ends in .gz / .bz2 / .zst)."""
    import pandas

    frame = pandas.DataFrame({"id": range(len(docs)), "text": docs})
    base = path.name.rsplit(".", 1)[0] if path.suffix in (".gz", ".bz2", ".zst") else path.name
    if base.endswith(".parquet"):
        frame.to_parquet(path)
        return path
    if base.endswith(".csv"):
        payload = frame.to_csv(index=False)
    elif base.endswith(".jsonl"):
        payload = "".join(json.dumps(record) + "\n" for record in frame.to_dict("records"))
    else:  # .json: one array of records
        payload = json.dumps(frame.to_dict("records"))
    data = payload.encode()
    if path.suffix == ".gz":
        data = gzip.compress(data)
    elif path.suffix == ".bz2":
        data = bz2.compress(data)
    elif path.suffix == ".zst":
        data = pytest.importorskip("zstandard").ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name", ["docs.jsonl", "docs.json", "docs.parquet", "docs.csv", "docs.jsonl.gz",
                                  "docs.csv.bz2", "docs.jsonl.zst"])
def test_record_formats_give_documents_separated_by_eos(tmp_path, tokenizer, name):
    source = write_records(tmp_path / name)
    folder = prepare_dataset(source, tmp_path / "out", tokenizer)
    assert prepared_tokens(folder) == document_tokens(tokenizer)
    index = read_index(folder)
    assert index["splits"]["train"]["num_documents"] == len(DOCS) - 1 and index["dtype"] == "uint16"
    assert index["tokenizer"]["fingerprint"] == tokenizer_fingerprint(tokenizer)
    assert index["sources"]["train"]["files"] == [str(source.resolve())]


@pytest.mark.parametrize("suffix", [".txt", ".raw", ".raw.gz"])
def test_text_files_are_lines_of_one_text_without_eos(tmp_path, tokenizer, suffix):
    text = " = Title = \n\n body text .\n more\n"
    path = tmp_path / f"wiki{suffix}"
    path.write_bytes(gzip.compress(text.encode()) if suffix.endswith(".gz") else text.encode())
    folder = prepare_dataset(path, tmp_path / "out", tokenizer)
    expected = tokenizer(text.splitlines(keepends=True), add_special_tokens=False)["input_ids"]
    assert prepared_tokens(folder) == [i for row in expected for i in row]


def test_folders_globs_and_dataset_objects(tmp_path, tokenizer):
    import datasets

    (tmp_path / "corpus" / "nested").mkdir(parents=True)
    write_records(tmp_path / "corpus" / "a.jsonl", DOCS[:20])
    write_records(tmp_path / "corpus" / "nested" / "b.jsonl", DOCS[20:])
    (tmp_path / "corpus" / "README").write_text("not data: no known suffix")
    expected = document_tokens(tokenizer)
    assert prepared_tokens(prepare_dataset(tmp_path / "corpus", tmp_path / "f", tokenizer)) == expected
    assert prepared_tokens(prepare_dataset(str(tmp_path / "corpus/**/*.jsonl"), tmp_path / "g", tokenizer)) == expected
    dataset = datasets.Dataset.from_dict({"body": DOCS})
    assert prepared_tokens(prepare_dataset(dataset, tmp_path / "d", tokenizer, text_field="body")) == expected
    streamed = dataset.to_iterable_dataset(num_shards=2)
    assert prepared_tokens(prepare_dataset(streamed, tmp_path / "i", tokenizer, text_field="body")) == expected


def test_held_out_documents_are_seeded_and_independent_of_num_proc(tmp_path, tokenizer):
    import datasets

    docs = [f"document {i} fox" for i in range(300)]
    dataset = datasets.Dataset.from_dict({"text": docs})
    one = prepare_dataset(dataset, tmp_path / "one", tokenizer, eval_fraction=0.2, seed=3)
    two = prepare_dataset(dataset, tmp_path / "two", tokenizer, eval_fraction=0.2, seed=3, num_proc=2, batch_size=64)
    assert prepared_tokens(one, "eval") == prepared_tokens(two, "eval")
    assert prepared_tokens(one, "train") == prepared_tokens(two, "train")
    splits = read_index(one)["splits"]
    assert splits["train"]["num_documents"] + splits["eval"]["num_documents"] == 300
    assert 30 <= splits["eval"]["num_documents"] <= 90
    other = prepare_dataset(dataset, tmp_path / "other", tokenizer, eval_fraction=0.2, seed=4)
    assert prepared_tokens(other, "eval") != prepared_tokens(one, "eval")


def test_eval_source_becomes_the_eval_split(tmp_path, tokenizer):
    train, held = write_records(tmp_path / "train.jsonl"), write_records(tmp_path / "test.jsonl", DOCS[:5])
    folder = prepare_dataset(train, tmp_path / "out", tokenizer, eval_source=held)
    assert prepared_tokens(folder, "eval") == document_tokens(tokenizer, DOCS[:5])


def test_hub_sources_go_through_datasets(monkeypatch, tmp_path, tokenizer):
    import datasets

    calls = []

    def fake_load_dataset(name, config_name=None, split=None, revision=None, streaming=False):
        calls.append((name, config_name, split, revision, streaming))
        return datasets.Dataset.from_dict({"text": [" = Valkyria = \n", " text .\n"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    source = HubSource("Salesforce/wikitext", "wikitext-2-raw-v1", "train", revision="main")
    folder = prepare_dataset(source, tmp_path / "out", tokenizer, append_eos=False)
    assert calls[0] == ("Salesforce/wikitext", "wikitext-2-raw-v1", "train", "main", False)
    assert read_index(folder)["sources"]["train"]["fingerprint"]["revision"] == "main"
    with pytest.raises(ValueError, match="'json' is a file format"):
        HubSource("json")


# ---------------------------------------------------------------------------------------------
# Bad input: one-line errors naming the file / field; nothing written half
# ---------------------------------------------------------------------------------------------
def assert_nothing_written(tmp_path):
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_missing_empty_and_unsupported_files_are_named(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="nothere.jsonl"):
        prepare_dataset(tmp_path / "nothere.jsonl", tmp_path / "out", tokenizer)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="data file is empty: .*empty.txt"):
        prepare_dataset(tmp_path / "empty.txt", tmp_path / "out", tokenizer)
    (tmp_path / "notes.docx").write_text("x")
    with pytest.raises(ValueError, match=r"notes\.docx: unsupported suffix"):
        prepare_dataset(tmp_path / "notes.docx", tmp_path / "out", tokenizer)
    assert_nothing_written(tmp_path)


def test_missing_and_non_text_fields_are_named(tmp_path, tokenizer):
    import datasets

    path = write_records(tmp_path / "docs.csv")
    with pytest.raises(ValueError, match=r"docs\.csv: no field 'body' \(columns: id, text\)"):
        prepare_dataset(path, tmp_path / "out", tokenizer, text_field="body")
    with pytest.raises(ValueError, match=r"docs\.csv: field 'id' holds Value\('int64'\), not text"):
        prepare_dataset(path, tmp_path / "out", tokenizer, text_field="id")
    streamed = datasets.Dataset.from_dict({"text": [1, 2]}).to_iterable_dataset()
    streamed.info.features = None  # as from a generator: the type shows only in the rows
    with pytest.raises(ValueError, match="field 'text' holds int values, not text"):
        prepare_dataset(streamed, tmp_path / "out", tokenizer)
    assert_nothing_written(tmp_path)


def test_empty_datasets_fail(tmp_path, tokenizer):
    import datasets

    with pytest.raises(ValueError, match="the dataset is empty"):
        prepare_dataset(datasets.Dataset.from_dict({"text": []}), tmp_path / "out", tokenizer)
    with pytest.raises(ValueError, match="no text in field 'text'"):
        prepare_dataset(datasets.Dataset.from_dict({"text": ["", ""]}), tmp_path / "out", tokenizer)
    with pytest.raises(ValueError, match="eval_fraction 0.01 held out no document"):
        prepare_dataset(datasets.Dataset.from_dict({"text": ["a b", "c"]}), tmp_path / "out", tokenizer,
                        eval_fraction=0.01)
    assert_nothing_written(tmp_path)


def test_an_existing_folder_is_replaced_only_when_asked(tmp_path, tokenizer):
    path = write_records(tmp_path / "docs.jsonl")
    prepare_dataset(path, tmp_path / "out", tokenizer)
    with pytest.raises(ValueError, match="exists"):
        prepare_dataset(path, tmp_path / "out", tokenizer)
    prepare_dataset(path, tmp_path / "out", tokenizer, eval_fraction=0.3, overwrite=True)
    assert set(read_index(tmp_path / "out")["splits"]) == {"train", "eval"}


def test_corrupt_index_and_shards_are_named(tmp_path, tokenizer):
    folder = prepare_dataset(write_records(tmp_path / "docs.jsonl"), tmp_path / "out", tokenizer)
    index_text = (folder / "index.json").read_text()
    (folder / "index.json").write_text(index_text[:50])
    with pytest.raises(ValueError, match=r"index\.json is corrupt"):
        TokenShards(folder)
    (folder / "index.json").write_text(index_text)
    shard = folder / "train-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(ValueError, match=r"token shard .*train-00000\.bin is corrupt: \d+ bytes"):
        TokenShards(folder)
    shard.unlink()
    with pytest.raises(FileNotFoundError, match="token shard not found"):
        TokenShards(folder)
    with pytest.raises(FileNotFoundError, match="not a prepared data folder"):
        TokenShards(tmp_path)


def test_tokenizer_and_vocab_mismatches_fail(tmp_path, tokenizer):
    folder = prepare_dataset(write_records(tmp_path / "docs.jsonl"), tmp_path / "out", tokenizer)
    index = read_index(folder)
    other = train_bpe_tokenizer(write_records(tmp_path / "other.txt", ["zebra quartz"] * 50), vocab_size=280)
    with pytest.raises(ValueError, match="was prepared with tokenizer .* this tokenizer's fingerprint is"):
        check_tokenizer(index, other, folder)
    with pytest.raises(ValueError, match=rf"token id {index['max_token_id']} does not fit the model's vocab_size 64"):
        check_vocab(index, 64, folder)


# ---------------------------------------------------------------------------------------------
# Reading: blocks by offset, across shards, per rank, without holding tokens in RAM
# ---------------------------------------------------------------------------------------------
def test_blocks_read_across_shard_boundaries(tmp_path, tokenizer):
    path = write_records(tmp_path / "docs.jsonl")
    whole = ShardedBlocks(TokenShards(prepare_dataset(path, tmp_path / "one", tokenizer)), 16)
    sharded = TokenShards(prepare_dataset(path, tmp_path / "many", tokenizer, shard_tokens=37))
    assert len(sharded.files) > 3
    blocks = ShardedBlocks(sharded, 16)
    assert torch.equal(blocks.tensor(), whole.tensor())
    assert all(torch.equal(blocks[i]["input_ids"], whole[i]["input_ids"]) for i in range(len(whole)))
    assert len(whole) == len(document_tokens(tokenizer)) // 16  # the tail shorter than a block is dropped
    assert torch.equal(blocks.prefix(3).tensor(), whole.tensor()[:3]) and blocks.prefix(3).num_tokens == 48
    with pytest.raises(IndexError):
        blocks[len(blocks)]
    with pytest.raises(ValueError, match="fewer than one block of data.block_size=4096"):
        ShardedBlocks(sharded, 4096)


def test_ranks_read_disjoint_shares_and_workers_unpickle_paths(tmp_path, tokenizer):
    """What DDP does, without DDP: DistributedSampler gives each rank a seeded, per-epoch share; a DataLoader
    worker receives the dataset pickled, which must carry paths, not tokens."""
    folder = prepare_dataset(write_records(tmp_path / "docs.jsonl", DOCS * 20), tmp_path / "out", tokenizer)
    dataset = ShardedBlocks(TokenShards(folder), 8)
    dataset[0]  # opens the memmaps
    assert len(pickle.dumps(dataset)) < 4096 < dataset.num_tokens * 2
    shares = []
    for rank in (0, 1):
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=5)
        sampler.set_epoch(1)
        shares.append(list(sampler))
    assert not set(shares[0]) & set(shares[1]) and set(shares[0]) | set(shares[1]) == set(range(len(dataset)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=1,
                                         collate_fn=DataCollatorForTDLM(0))
    first = next(iter(loader))["input_ids"]
    assert torch.equal(first, torch.stack([dataset[i]["input_ids"] for i in shares[1][:4]]))


def test_collator_pads_only_when_needed():
    collate = DataCollatorForTDLM(pad_token_id=0)
    packed = collate([{"input_ids": torch.arange(1, 5)}, {"input_ids": torch.arange(5, 9)}])
    assert "attention_mask" not in packed and torch.equal(packed["labels"], packed["input_ids"])
    ragged = collate([{"input_ids": [3, 4, 5]}, {"input_ids": [6]}])
    assert ragged["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert ragged["labels"].tolist() == [[3, 4, 5], [6, -100, -100]]
    assert ragged["input_ids"].tolist() == [[3, 4, 5], [6, 0, 0]]


def test_prepare_command_writes_a_folder_and_prints_errors(tmp_path, tokenizer, capsys):
    tokenizer.save_pretrained(tmp_path / "tok")
    path = write_records(tmp_path / "docs.jsonl")
    argv = ["--tokenizer", str(tmp_path / "tok"), "--train", str(path), "--eval-fraction", "0.25",
            "--output", str(tmp_path / "out")]
    assert prepare_cli(argv) == 0
    assert set(read_index(tmp_path / "out")["splits"]) == {"train", "eval"}
    assert np.fromfile(tmp_path / "out" / "train-00000.bin", dtype=np.uint16).size > 0
    assert prepare_cli(argv[:3] + [str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "x")]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: data file not found:")
