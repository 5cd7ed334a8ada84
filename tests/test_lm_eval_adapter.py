"""The lm-eval "tdlm" adapter on lm-eval's TemplateLM: its scores equal our own scorer's
(`conditional_loglikelihood`, what the adapter returned before it let TemplateLM encode the requests) on
requests that exercise the encoding: trailing spaces, empty contexts, left truncation, over-long continuations,
choices sharing a context, and a greedy continuation."""

import random
from functools import cache
from types import SimpleNamespace

import pytest
import torch
from lm_eval.api.model import TemplateLM

from tdlm import TDLMConfig, load_tokenizer, model_class_for
from tdlm.evaluation.likelihood import diffusion_nelbo_samples
from tdlm.evaluation.lm_eval_adapter import TDLMLM
from tdlm.evaluation.scoring import conditional_loglikelihood
from tdlm.evaluation.tasks import DEFAULT_DATA_DIR
from tdlm.tokenization import config_kwargs_for_tokenizer

CONTEXT = "The quick brown fox jumps over the lazy dog. Question: what did the fox do?\nAnswer:"


@cache
def tiny(mode):
    tokenizer = load_tokenizer(str(DEFAULT_DATA_DIR / "gpt2-tokenizer"))
    torch.manual_seed(0)
    config = TDLMConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64, training_mode=mode,
                        **config_kwargs_for_tokenizer(tokenizer))
    return model_class_for(config)(config).eval(), tokenizer


def _pairs(model, tokenizer):
    ids = torch.tensor([tokenizer.encode("Hello")])
    with torch.no_grad():
        if model.config.is_diffusion:
            ids = torch.cat([ids, torch.tensor([[model.config.mask_token_id]])], 1)
        greedy = tokenizer.decode([int(model(input_ids=ids).logits[0, -1].argmax())])
    return [(CONTEXT, " jumped"), (CONTEXT, " slept all day long"), (CONTEXT, " ran"), (CONTEXT + " ", "jumped"),
            ("", "Hello world"), ("", " Hello world"), ("A  ", " b"), ("Hello", greedy),
            ("word " * 80, " end of text"),  # context left-truncated to fit 64 positions
            ("Context", " many words " * 60),  # continuation longer than 63 tokens: its tail is scored
            ("Another context.", " yes"), ("Another context.", " no")]


def _requests(pairs):
    return [SimpleNamespace(args=pair) for pair in pairs]


@pytest.mark.parametrize("batch_size", [32, 3])
@pytest.mark.parametrize("mode", ["autoregressive", "diffusion"])
def test_adapter_scores_equal_own_scorer(mode, batch_size):
    model, tokenizer = tiny(mode)
    lm = TDLMLM(model=model, tokenizer=tokenizer, mc_num=8, seed=3, batch_size=batch_size)
    assert isinstance(lm, TemplateLM) and lm.max_length == 64
    pairs = _pairs(model, tokenizer)
    scores = lm.loglikelihood(_requests(pairs), disable_tqdm=True)
    assert scores == conditional_loglikelihood(model, tokenizer, pairs, mc_num=8, seed=3, batch_size=batch_size)
    if not model.config.is_diffusion:
        assert scores[7][1]  # the argmax continuation is greedy
    else:  # masks are seeded by the context string: the order lm-eval sends requests in does not matter
        order = list(range(len(pairs)))
        random.Random(0).shuffle(order)
        shuffled = lm.loglikelihood(_requests([pairs[i] for i in order]), disable_tqdm=True)
        assert [shuffled[order.index(i)] for i in range(len(pairs))] == scores


def test_diffusion_rolling_is_minus_nelbo_over_max_length_blocks():  # AR: test_eval_benchmarks
    model, tokenizer = tiny("diffusion")
    lm = TDLMLM(model=model, tokenizer=tokenizer, nelbo_samples=4, seed=3)
    text = "The quick brown fox jumps over the lazy dog. " * 12
    tokens = tokenizer.encode(text)
    expected = -sum(float(diffusion_nelbo_samples(model, torch.tensor([tokens[i:i + 64]]), 4, 3).mean())
                    for i in range(0, len(tokens), 64))
    assert lm.loglikelihood_rolling(_requests([(text,)]), disable_tqdm=True) == [expected]
