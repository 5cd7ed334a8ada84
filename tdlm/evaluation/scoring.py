"""Scores whatever a model's objective: the front door the evaluation paths use. Each objective class
(`tdlm/objectives.py`) picks its estimator from `likelihood.py`; this module only asks the objective, so that the
estimators never import the objectives built on them."""

import torch

from .. import objectives  # a module reference: objectives itself imports this package's estimators
from .likelihood import context_key, encode_pair, fit_continuations


def held_out_loss(model, blocks: torch.LongTensor, num_samples: int = 32, seed: int = 0, batch_size: int = 16,
                  show_progress: bool = False) -> dict:
    """The model's held-out loss per token on `blocks`, whatever its objective: `ar_nll`'s or `diffusion_nelbo`'s
    result plus "loss" (nats/token) and "standard_error" (0 for the exact AR NLL)."""
    objective = objectives.objective_for(model.config)
    return objective.held_out_loss(model, blocks, num_samples, seed, batch_size, show_progress)


def conditional_loglikelihood(model, tokenizer, pairs, mc_num: int = 128, seed: int = 0, batch_size: int = 32,
                              show_progress: bool = False, check_greedy: bool = True) -> list[tuple[float, bool]]:
    """(log p(continuation | context), is_greedy) for each (context, continuation) string pair.

    `check_greedy=False` skips the diffusion greedy decode (L model calls per pair; is_greedy is then False): for
    callers that only rank choices by log-likelihood. The AR check is free and always made."""
    encoded = [encode_pair(tokenizer, context, continuation) for context, continuation in pairs]
    encoded = fit_continuations(encoded, model.config.max_position_embeddings)
    keys = [context_key(seed, context) for context, _ in pairs]
    return encoded_loglikelihood(model, encoded, keys, mc_num, batch_size, show_progress, check_greedy)


def encoded_loglikelihood(model, encoded, keys, mc_num: int = 128, batch_size: int = 32, show_progress: bool = False,
                          check_greedy: bool = True) -> list[tuple[float, bool]]:
    """`conditional_loglikelihood` of already encoded (context ids, continuation ids) pairs, whatever the model's
    objective: exact for AR; LLaDA's Monte-Carlo estimate for diffusion, its masks seeded by `keys` (one per pair;
    equal keys share masks, so the choices of one question are paired)."""
    objective = objectives.objective_for(model.config)
    return objective.conditional_loglikelihood(model, encoded, keys, mc_num, batch_size, show_progress, check_greedy)
