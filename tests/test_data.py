"""Data loading: local files, errors that name the file, packing, caching, collation."""

import json

import pytest
import torch

from tdlm import data as tdlm_data
from tdlm.data import (DataCollatorForTDLM, check_vocab, load_blocks, pack_blocks, read_hub_dataset,
                       read_text_file)
from tdlm.tokenization import train_bpe_tokenizer

CORPUS = "".join(f" The quick brown fox {i} jumps over the lazy dog .\n" for i in range(200))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "corpus.txt"
    path.write_text(CORPUS)
    return train_bpe_tokenizer(path, vocab_size=300)


def test_missing_empty_and_undecodable_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.txt"):
        read_text_file(tmp_path / "nothere.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty.txt"):
        read_text_file(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes("line one\ncaf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt is not valid UTF-8 text \(line 2"):
        read_text_file(tmp_path / "latin1.txt")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": "no field"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl line 2: no string field 'text'"):
        read_text_file(tmp_path / "bad.jsonl")


def test_text_lines_keep_newlines_and_jsonl_reads_the_field(tmp_path):
    (tmp_path / "a.raw").write_text(" = Title = \n\n body text .\n")
    assert read_text_file(tmp_path / "a.raw") == [" = Title = \n", "\n", " body text .\n"]
    (tmp_path / "b.jsonl").write_text(json.dumps({"content": "x y"}) + "\n\n" + json.dumps({"content": "z"}) + "\n")
    assert read_text_file(tmp_path / "b.jsonl", text_field="content") == ["x y", "z"]


def test_pack_blocks_drops_the_remainder_and_rejects_short_corpora():
    blocks = pack_blocks(list(range(23)), 5)
    assert blocks.shape == (4, 5) and blocks[1].tolist() == [5, 6, 7, 8, 9]
    with pytest.raises(ValueError, match="fewer than one block of data.block_size=64"):
        pack_blocks(list(range(10)), 64, "tiny.txt")


def test_load_blocks_short_corpus_names_the_file(tmp_path, tokenizer):
    (tmp_path / "short.txt").write_text("just a few words\n")
    with pytest.raises(ValueError, match=r"short\.txt has \d+ tokens, fewer than one block"):
        load_blocks({"files": [str(tmp_path / "short.txt")]}, tokenizer, 64)


def test_tokenized_once_then_cached(tmp_path, tokenizer, monkeypatch):
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS)
    source = {"files": [str(path)]}
    first = load_blocks(source, tokenizer, 16, cache_dir=tmp_path / "cache")
    expected = tokenizer(CORPUS.splitlines(keepends=True), add_special_tokens=False)["input_ids"]
    flat = [i for row in expected for i in row]
    assert first.flatten().tolist() == flat[: first.numel()]
    monkeypatch.setattr(tdlm_data, "tokenize_documents", lambda *a, **k: pytest.fail("tokenized twice"))
    assert torch.equal(load_blocks(source, tokenizer, 16, cache_dir=tmp_path / "cache"), first)
    # a different block size is a different cache entry
    monkeypatch.undo()
    assert load_blocks(source, tokenizer, 8, cache_dir=tmp_path / "cache").shape[1] == 8


class _Payload:
    """Any pickled object that is not tensors: what a tampered cache file could hold."""


def test_the_block_cache_loads_tensors_only(tmp_path, tokenizer):
    import pickle

    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS)
    load_blocks({"files": [str(path)]}, tokenizer, 16, cache_dir=tmp_path / "cache")
    (cache_file,) = (tmp_path / "cache").glob("blocks-*.pt")
    torch.save(_Payload(), cache_file)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_blocks({"files": [str(path)]}, tokenizer, 16, cache_dir=tmp_path / "cache")


def test_jsonl_documents_are_separated_by_eos(tmp_path, tokenizer):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"The quick brown fox {i} ."}) for i in range(40)))
    blocks = load_blocks({"files": [str(path)]}, tokenizer, 16)
    assert (blocks == tokenizer.eos_token_id).sum() >= 30


def test_vocab_mismatch_fails_at_start():
    with pytest.raises(ValueError, match="token id 600 does not fit the model's vocab_size 512"):
        check_vocab(torch.tensor([[1, 600]]), 512, "training data")


def test_collator_pads_only_when_needed():
    collate = DataCollatorForTDLM(pad_token_id=0)
    packed = collate([{"input_ids": torch.arange(1, 5)}, {"input_ids": torch.arange(5, 9)}])
    assert "attention_mask" not in packed and torch.equal(packed["labels"], packed["input_ids"])
    ragged = collate([{"input_ids": [3, 4, 5]}, {"input_ids": [6]}])
    assert ragged["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert ragged["labels"].tolist() == [[3, 4, 5], [6, -100, -100]]
    assert ragged["input_ids"].tolist() == [[3, 4, 5], [6, 0, 0]]


def test_hub_dataset_goes_through_datasets(monkeypatch):
    import datasets

    calls = {}

    def fake_load_dataset(name, config_name, split, cache_dir=None):
        calls.update(name=name, config=config_name, split=split)
        return datasets.Dataset.from_dict({"text": [" = Valkyria = \n", " text .\n"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    docs = read_hub_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", "train")
    assert docs == [" = Valkyria = \n", " text .\n"]
    assert calls == {"name": "Salesforce/wikitext", "config": "wikitext-2-raw-v1", "split": "train"}
    with pytest.raises(ValueError, match="no column 'body'"):
        read_hub_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", "train", text_field="body")
