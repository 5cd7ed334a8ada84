"""Sample quality: generative perplexity under a fixed AR scorer, with the samples' unigram entropy.

Samples (the study's and the sampling frontier's) are scored by the scorer's exact NLL, every token predicted given a
context token (`prefix_token_id`) as in the study's held-out scoring. Gen-PPL alone rewards repetitive, low-entropy
text, so the mean unigram entropy of the samples (nats, of each sample's token frequencies) stands beside it (MDLM /
Zheng et al. 2024 report both).
"""

import math
from collections import Counter

import torch

from ..evaluation.likelihood import ar_nll, prefix_token_id


def unigram_entropy(ids: list[int]) -> float:
    """Entropy (nats) of the token frequency distribution of one sample; 0 for an empty one."""
    counts, total = Counter(ids), len(ids)
    return -sum(c / total * math.log(c / total) for c in counts.values()) if total else 0.0


def score_texts(scorer, tokenizer, texts: list[str]) -> dict:
    """Gen-PPL of `texts` under the AR `scorer` (exact NLL per token over all samples) and their mean unigram
    entropy. Each text is re-encoded without special tokens and cut to the scorer's context."""
    limit = scorer.config.max_position_embeddings - 1
    return score_ids(scorer, prefix_token_id(tokenizer),
                     [tokenizer(text, add_special_tokens=False)["input_ids"][:limit] for text in texts])


def score_ids(scorer, context: int, encoded: list[list[int]]) -> dict:
    """`score_texts` of samples already in the scorer's tokenizer (lists of ids, each predicted after the `context`
    token): no decode / re-encode round trip, which turns byte-level pieces of a character into replacement
    characters. Each sample is cut to the scorer's context (its positions less the context token)."""
    limit = scorer.config.max_position_embeddings - 1
    encoded = [ids[:limit] for ids in encoded if ids]
    total, count = 0.0, 0
    for ids in encoded:  # one sample at a time: lengths differ and there are few samples
        result = ar_nll(scorer, torch.tensor([ids]), context_token_id=context)
        total += result["nll"] * result["num_tokens"]
        count += result["num_tokens"]
    nll = total / count if count else math.nan
    return {"gen_nll": nll, "gen_ppl": math.exp(nll) if count else math.nan, "num_tokens": count,
            "num_samples": len(encoded),
            "unigram_entropy": sum(map(unigram_entropy, encoded)) / len(encoded) if encoded else math.nan}
