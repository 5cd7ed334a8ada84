"""Data as training sees it: the config's `data` section, the fingerprinted preparation cache (reuse, stale
sources, corrupt shards), prepared folders checked against tokenizer and model, and training from shards giving
the same losses as the in-memory path it replaced."""

import json
from pathlib import Path

import pytest
import torch

import tdlm.data.prepare as prepare_module
import tdlm.training.run as run_module
from tdlm.config import ConfigError, load_config
from tdlm.data import BlockDataset, build_datasets, ensure_prepared, prepare_dataset, read_index
from tdlm.runs import Experiment
from tdlm.tokenization import train_bpe_tokenizer
from tdlm.training import run_training

WIKI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext-2-raw"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """~30 KB of WikiText-2 validation text (its lines: one running text) and a few JSON documents."""
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "train.txt").write_text((WIKI / "wiki.valid.raw").read_text()[:30_000])
    (folder / "eval.txt").write_text((WIKI / "wiki.test.raw").read_text()[:6_000])
    (folder / "docs.jsonl").write_text("".join(json.dumps({"text": f"The fox {i} jumps ."}) + "\n" for i in range(300)))
    return folder


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return train_bpe_tokenizer(corpus / "train.txt", vocab_size=300)


def data_section(corpus, *overrides):
    base = [f"data.train_files={corpus / 'train.txt'}", f"data.eval_files={corpus / 'eval.txt'}",
            "data.block_size=16", f"data.cache_dir={corpus / 'cache'}", "model.tokenizer=unused"]
    return load_config(None, base + list(overrides))["data"]


def test_config_data_checks():
    base = ["model.tokenizer=gpt2"]
    with pytest.raises(ConfigError, match="data.train_files: set exactly one of"):
        load_config(None, base + ["data.train_files=a.txt", "data.prepared=folder"])
    with pytest.raises(ConfigError, match="data.eval_files: a prepared folder brings its own eval split"):
        load_config(None, base + ["data.prepared=folder", "data.eval_files=b.txt"])
    with pytest.raises(ConfigError, match=r"data.eval_fraction: must lie in \[0, 1\)"):
        load_config(None, base + ["data.train_files=a.txt", "data.eval_fraction=1.5"])
    with pytest.raises(ConfigError, match="data.eval_fraction: holds out training documents only when"):
        load_config(None, base + ["data.train_files=a.txt", "data.eval_files=b.txt", "data.eval_fraction=0.1"])
    with pytest.raises(ConfigError, match="data.num_proc: must be >= 1"):
        load_config(None, base + ["data.train_files=a.txt", "data.num_proc=0"])
    with pytest.raises(ConfigError, match="data.prepared: no such folder: no-such-folder"):
        load_config(None, base + ["data.prepared=no-such-folder"])
    with pytest.raises(ConfigError, match=r"data.split_seed: must be in \[0, 2\*\*32\), got -1"):
        load_config(None, base + ["data.train_files=a.txt", "data.split_seed=-1"])
    held_out = load_config(None, base + ["data.hub_dataset=org/set", "data.eval_split=null", "data.eval_fraction=0.1"])
    assert held_out["data"]["eval_fraction"] == 0.1


def test_cache_is_reused_and_a_changed_source_is_prepared_again_saying_so(tmp_path, tokenizer, monkeypatch, capsys):
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": f"The fox {i} jumps ."}) + "\n" for i in range(300)))
    folder = ensure_prepared(source, tmp_path / "cache", tokenizer)
    tokens = read_index(folder)["splits"]["train"]["num_tokens"]
    with monkeypatch.context() as patch:
        patch.setattr(prepare_module, "prepare_dataset", lambda *a, **k: pytest.fail("prepared twice"))
        assert ensure_prepared(source, tmp_path / "cache", tokenizer) == folder
    # the case: the source shrinks, the old cache must not be served
    source.write_text("".join(json.dumps({"text": f"The fox {i} jumps ."}) + "\n" for i in range(30)))
    assert ensure_prepared(source, tmp_path / "cache", tokenizer) == folder
    assert "is stale: the train source" in capsys.readouterr().err
    assert read_index(folder)["splits"]["train"]["num_tokens"] < tokens / 5
    (folder / "train-00000.bin").write_bytes(b"\0")  # a damaged cache heals instead of failing
    ensure_prepared(source, tmp_path / "cache", tokenizer)
    assert "train-00000.bin is corrupt" in capsys.readouterr().err
    assert (folder / "train-00000.bin").stat().st_size == read_index(folder)["splits"]["train"]["num_tokens"] * 2
    other = train_bpe_tokenizer(source, vocab_size=280)  # another tokenizer: its own cache entry
    assert ensure_prepared(source, tmp_path / "cache", other) != folder


def test_concurrent_processes_prepare_once(tmp_path, tokenizer, monkeypatch):
    """DDP ranks (here: threads) asking for the same data at once: one prepares, the others wait and reuse it."""
    from concurrent.futures import ThreadPoolExecutor

    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": f"The fox {i} jumps ."}) + "\n" for i in range(300)))
    calls, prepare = [], prepare_module.prepare_dataset
    monkeypatch.setattr(prepare_module, "prepare_dataset", lambda *a, **k: calls.append(1) or prepare(*a, **k))
    with ThreadPoolExecutor(3) as pool:
        folders = list(pool.map(lambda _: ensure_prepared(source, tmp_path / "cache", tokenizer), range(3)))
    assert len(set(folders)) == 1 and calls == [1]


def test_data_section_builds_train_and_eval_blocks(corpus, tokenizer):
    train, evaluation = build_datasets(data_section(corpus), tokenizer, len(tokenizer), max_eval_blocks=5)
    assert len(evaluation) == 5 and train.block_size == 16 and len(train) > 100
    train, evaluation = build_datasets(data_section(corpus, "data.eval_files=null"), tokenizer, len(tokenizer))
    assert evaluation is None
    docs = data_section(corpus, f"data.train_files={corpus / 'docs.jsonl'}", "data.eval_files=null",
                        "data.eval_fraction=0.1", "data.split_seed=1")
    train, evaluation = build_datasets(docs, tokenizer, len(tokenizer))
    assert len(evaluation) > 0 and evaluation[0]["input_ids"].dtype == torch.long
    with pytest.raises(ValueError, match="does not fit the model's vocab_size 100"):
        build_datasets(docs, tokenizer, 100)


def test_a_prepared_folder_is_checked_against_the_tokenizer(corpus, tokenizer, tmp_path):
    folder = prepare_dataset(corpus / "docs.jsonl", tmp_path / "prepared", tokenizer, eval_fraction=0.2)
    data = data_section(corpus, "data.train_files=null", "data.eval_files=null", f"data.prepared={folder}")
    train, evaluation = build_datasets(data, tokenizer, len(tokenizer))
    assert len(train) > len(evaluation) > 0
    other = train_bpe_tokenizer(corpus / "eval.txt", vocab_size=280)
    with pytest.raises(ValueError, match="was prepared with tokenizer"):
        build_datasets(data, other, len(other))


def old_path_blocks(path: Path, tokenizer, block_size: int) -> torch.Tensor:
    """What tdlm/data.py did before the shards (commit a490063): a text file's lines (newlines kept) tokenized
    without EOS, concatenated into one Python list and packed into a LongTensor, the tail dropped."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    ids = [i for row in tokenizer(lines, add_special_tokens=False)["input_ids"] for i in row]
    usable = len(ids) // block_size * block_size
    return torch.tensor(ids[:usable]).view(-1, block_size)


def test_training_from_shards_matches_the_old_in_memory_path(corpus, tmp_path, monkeypatch):
    """Same blocks in the same order (the Trainer's seeded sampler sees a dataset of the same length), so the same
    losses step for step. The one difference from the old reader: `datasets`' text loader reads with universal
    newlines, so a CRLF line ends in "\\n" and U+2028 / U+0085 are not line breaks (WikiText has none of them)."""
    overrides = [f"model.train_bpe={{files: [{corpus / 'train.txt'}], vocab_size: 300}}", "model.hidden_size=32",
                 "model.num_hidden_layers=1", "model.num_attention_heads=2", "model.intermediate_size=64",
                 f"data.train_files={corpus / 'train.txt'}", "data.block_size=16",
                 f"data.cache_dir={tmp_path / 'cache'}", "training.batch_size=8", "training.max_steps=6",
                 "training.logging_steps=1", "training.save_every_n_steps=null", "training.save_every_n_epochs=null"]
    config = load_config(None, overrides)
    run_training(config, "shards", str(tmp_path))

    build_data = run_module.build_data

    def old_build_data(config, tokenizer, model):
        shards, _, collator = build_data(config, tokenizer, model)
        old = old_path_blocks(corpus / "train.txt", tokenizer, 16)
        assert torch.equal(shards.tensor(), old)
        return BlockDataset(old), None, collator

    monkeypatch.setattr(run_module, "build_data", old_build_data)
    run_training(config, "old", str(tmp_path))
    losses = [{r["step"]: r["loss"] for r in Experiment(tmp_path / name).read_metrics() if r["split"] == "train"}
              for name in ("shards", "old")]
    assert len(losses[0]) == 6 and losses[0] == losses[1]
