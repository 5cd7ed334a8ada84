"""Tokenizers for TDLM: GPT-2 BPE plus an absorbing `<|mask|>` token, or a small BPE trained on a corpus."""

import codecs
import json
from pathlib import Path

MASK_TOKEN = "<|mask|>"
EOS_TOKEN = "<|endoftext|>"
# files a saved tokenizer folder holds (fast: tokenizer.json; GPT-2 style: vocab.json + merges.txt)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


def load_tokenizer(name_or_path: str = "gpt2", **kwargs):
    """A GPT-2 style tokenizer (Hub name such as "gpt2" or a local folder) with `<|mask|>` added.

    The mask token is appended after the base vocabulary (id 50257 for GPT-2); pad is set to EOS because
    padding is carried by `attention_mask`, never by the token id.
    """
    from transformers import AutoTokenizer

    path = Path(name_or_path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"tokenizer path {name_or_path} is a file; pass the folder that holds it")
    if path.is_dir():
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise ValueError(f"tokenizer folder {name_or_path} holds no tokenizer files (one of {TOKENIZER_FILES})")
        if _is_tdlm_checkpoint(path):
            # a checkpoint folder: AutoTokenizer would load its config.json through the remote code (asking
            # whether to trust it) only to learn the model type; the tokenizer itself is a stock one
            from .configuration_tdlm import TDLMConfig

            kwargs.setdefault("config", TDLMConfig.from_pretrained(path))
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    if tokenizer.mask_token is None:
        tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _is_tdlm_checkpoint(folder: Path) -> bool:
    config = folder / "config.json"
    try:
        return config.is_file() and json.loads(config.read_text()).get("model_type") == "tdlm"
    except json.JSONDecodeError:
        return False


def train_bpe_tokenizer(files, vocab_size: int = 1024, min_frequency: int = 2):
    """Train a byte-level BPE (the `tokenizers` library) on text files, for CPU-sized models.

    Special tokens: `<|endoftext|>` (id 0, also pad/bos/eos) and `<|mask|>` (id 1).
    """
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    files = [str(f) for f in ([files] if isinstance(files, (str, Path)) else files)]
    for name in files:
        if not Path(name).is_file():
            raise FileNotFoundError(f"tokenizer training file not found: {name}")
        _check_utf8_text(name)
    bpe = ByteLevelBPETokenizer()
    bpe.train(files, vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS_TOKEN, MASK_TOKEN],
              show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN,
                                   pad_token=EOS_TOKEN, unk_token=EOS_TOKEN, mask_token=MASK_TOKEN)


def _check_utf8_text(name: str) -> None:
    """The `tokenizers` trainer reads UTF-8 text and fails on anything else with a message that names no file."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(name, "rb") as f:
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                raise ValueError(f"tokenizer training file {name} is not UTF-8 text ({error.reason} at byte "
                                 f"{f.tell() - len(chunk) + error.start})") from None
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise ValueError(f"tokenizer training file {name} is not UTF-8 text (it ends inside a character)") from None


def is_utf8_text(name) -> bool:
    try:
        _check_utf8_text(name)
        return True
    except ValueError:
        return False


def config_kwargs_for_tokenizer(tokenizer) -> dict:
    """TDLMConfig fields that must agree with a tokenizer: vocabulary size and special ids."""
    return {
        "vocab_size": len(tokenizer),
        "mask_token_id": tokenizer.mask_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def check_tokenizer_matches(tokenizer, config) -> None:
    """Fail at start, not mid-run, when a tokenizer cannot drive a model."""
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {config.vocab_size}")
    if config.uses_mask_token and tokenizer.mask_token_id != config.mask_token_id:
        raise ValueError(f"tokenizer mask id {tokenizer.mask_token_id} != model mask_token_id {config.mask_token_id}")
