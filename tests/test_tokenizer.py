"""Tokenizers: GPT-2 BPE + <|mask|>, a small BPE trained on a text file, and the config/tokenizer check."""

from pathlib import Path

import pytest

from tdlm import TDLMConfig
from tdlm.tokenization import (
    EOS_TOKEN,
    MASK_TOKEN,
    check_tokenizer_matches,
    config_kwargs_for_tokenizer,
    load_tokenizer,
    train_bpe_tokenizer,
)

GPT2_PATH = Path(__file__).resolve().parents[2] / "shared" / "data" / "gpt2-tokenizer"
WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw" / "wiki.valid.raw"


@pytest.fixture(scope="module")
def gpt2():
    return load_tokenizer(str(GPT2_PATH))


def test_gpt2_tokenizer_with_mask(gpt2):
    assert len(gpt2) == 50258
    assert gpt2.mask_token == MASK_TOKEN and gpt2.mask_token_id == 50257
    assert gpt2.eos_token == EOS_TOKEN and gpt2.eos_token_id == 50256
    assert gpt2.pad_token_id == gpt2.eos_token_id
    assert gpt2("Hello world")["input_ids"] == [15496, 995]
    assert gpt2.decode([15496, 995]) == "Hello world"
    assert gpt2.convert_tokens_to_ids(MASK_TOKEN) == 50257
    # the mask token is one special token, never split, when it appears in text
    assert gpt2("a<|mask|>b")["input_ids"].count(50257) == 1
    kwargs = config_kwargs_for_tokenizer(gpt2)
    assert kwargs == {"vocab_size": 50258, "mask_token_id": 50257, "pad_token_id": 50256, "bos_token_id": 50256,
                      "eos_token_id": 50256}
    default = TDLMConfig()
    assert all(getattr(default, key) == value for key, value in kwargs.items())
    check_tokenizer_matches(gpt2, default)


def test_load_tokenizer_rejects_a_file_path():
    with pytest.raises(ValueError, match="vocab.json"):
        load_tokenizer(str(GPT2_PATH / "vocab.json"))


def test_train_bpe_tokenizer_round_trips(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(WIKITEXT.read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    tokenizer = train_bpe_tokenizer(corpus, vocab_size=400)
    assert len(tokenizer) <= 400
    assert tokenizer.eos_token_id == 0 and tokenizer.pad_token_id == 0 and tokenizer.mask_token_id == 1
    text = "The game 's Valkyria series, 1 @,@ 000 runs."
    ids = tokenizer(text)["input_ids"]
    assert 1 not in ids and 0 not in ids
    assert len(ids) < len(text.encode())  # merges were learned
    assert tokenizer.decode(ids) == text
    # save / reload keeps ids and special tokens
    tokenizer.save_pretrained(tmp_path / "tok")
    reloaded = load_tokenizer(str(tmp_path / "tok"))
    assert reloaded(text)["input_ids"] == ids
    assert reloaded.mask_token_id == 1 and reloaded.eos_token_id == 0 and len(reloaded) == len(tokenizer)
    config = TDLMConfig(**config_kwargs_for_tokenizer(tokenizer), hidden_size=32, num_attention_heads=4)
    assert config.mask_token_id == 1 and config.vocab_size == len(tokenizer)
    check_tokenizer_matches(tokenizer, config)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        train_bpe_tokenizer(tmp_path / "missing.txt")


def test_check_tokenizer_matches_raises_on_mismatch(gpt2):
    small = TDLMConfig(vocab_size=1000, mask_token_id=999, pad_token_id=0, bos_token_id=0, eos_token_id=0)
    with pytest.raises(ValueError, match="vocab_size"):
        check_tokenizer_matches(gpt2, small)
    other_mask = TDLMConfig(vocab_size=50300, mask_token_id=50299)
    with pytest.raises(ValueError, match="mask"):
        check_tokenizer_matches(gpt2, other_mask)
    # an AR model has no use for the mask token, so only the size must fit
    check_tokenizer_matches(gpt2, TDLMConfig(vocab_size=50300, mask_token_id=50299, training_mode="autoregressive"))
