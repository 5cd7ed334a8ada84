"""Scoring of multiple-choice and continuation tasks with our own likelihoods (no lm-eval needed).

Metrics follow lm-eval: `acc` = argmax of log p(delimiter + choice | context); `acc_norm` = argmax of the
log-likelihood divided by the choice's length in characters; LAMBADA-style tasks report `acc` (the target is
the greedy continuation: for diffusion, LLaDA's one-token-per-step decode, see `likelihood`) and
`perplexity` = exp(-mean log p(target)).
"""

import math

from .scoring import conditional_loglikelihood
from .tasks import load_task


def score_docs(model, tokenizer, docs, mc_num: int = 128, seed: int = 0, batch_size: int = 32,
               show_progress: bool = False) -> dict:
    """Metrics of one (sub)task and the per-document log-likelihoods."""
    pairs, owners = [], []
    for index, doc in enumerate(docs):
        for choice in doc.choices:
            pairs.append((doc.context, doc.delimiter + choice))
            owners.append(index)
    greedy_task = bool(docs) and docs[0].kind == "loglikelihood"  # only its acc reads is_greedy
    scores = conditional_loglikelihood(model, tokenizer, pairs, mc_num=mc_num, seed=seed, batch_size=batch_size,
                                       show_progress=show_progress, check_greedy=greedy_task)
    per_doc = [[] for _ in docs]
    for index, score in zip(owners, scores):
        per_doc[index].append(score)
    if greedy_task:
        lls = [d[0][0] for d in per_doc]
        return {"acc": sum(d[0][1] for d in per_doc) / len(docs), "perplexity": math.exp(-sum(lls) / len(lls)),
                "num_docs": len(docs), "loglikelihoods": lls}
    correct = correct_norm = 0
    for doc, results in zip(docs, per_doc):
        lls = [ll for ll, _ in results]
        normalised = [ll / len(choice) for ll, choice in zip(lls, doc.choices)]
        correct += _argmax(lls) == doc.gold
        correct_norm += _argmax(normalised) == doc.gold
    count = max(len(docs), 1)
    return {"acc": correct / count, "acc_norm": correct_norm / count, "num_docs": len(docs),
            "loglikelihoods": [[ll for ll, _ in r] for r in per_doc]}


def _argmax(values):
    """First index of the maximum (numpy's tie rule, as lm-eval)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def aggregate(subtasks: dict[str, dict]) -> dict:
    """Size-weighted average of subtask metrics (lm-eval's group aggregation with weight_by_size)."""
    total = sum(r["num_docs"] for r in subtasks.values())
    metrics = {}
    for metric in ("acc", "acc_norm"):
        if all(metric in r for r in subtasks.values()) and total:
            metrics[metric] = sum(r[metric] * r["num_docs"] for r in subtasks.values()) / total
    metrics["num_docs"] = total
    return metrics


def run_downstream(model, tokenizer, tasks, limit=None, mc_num: int = 128, seed: int = 0, data_dir=None,
                   batch_size: int = 32, show_progress: bool = False) -> dict:
    """{task: metrics} on local task files with our own scorer (no lm-eval needed).

    MMLU variants report the size-weighted average over subjects plus each subject under "subtasks";
    `limit` caps documents per (sub)task. Per-document log-likelihoods are left out.
    """
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    results = {}
    for task in tasks:
        subtasks = {}
        for name, docs in load_task(task, data_dir, limit).items():
            metrics = score_docs(model, tokenizer, docs, mc_num=mc_num, seed=seed, batch_size=batch_size,
                                 show_progress=show_progress)
            metrics.pop("loglikelihoods")
            subtasks[name] = metrics
        if len(subtasks) == 1 and task in subtasks:
            results[task] = subtasks[task]
        else:
            results[task] = {**aggregate(subtasks), "subtasks": subtasks}
    return results
