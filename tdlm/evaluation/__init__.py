"""Evaluation of TDLM checkpoints: likelihoods, downstream tasks, lm-eval adapter, comparison, heatmaps.

Imports only torch/transformers at module level; lm-eval, matplotlib and yaml are imported where used.
"""

from .checkpoints import best_checkpoint, load_checkpoint, read_metrics, resolve_experiment
from .likelihood import (ar_nll, conditional_loglikelihood, diffusion_nelbo, diffusion_ordered_nll, evaluate_likelihood,
                         make_blocks)
from .multiple_choice import aggregate, score_docs
from .tasks import TASK_NAMES, load_task


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


__all__ = ["run_downstream", "load_checkpoint", "best_checkpoint", "resolve_experiment", "read_metrics",
           "evaluate_likelihood", "ar_nll", "diffusion_nelbo", "diffusion_ordered_nll", "conditional_loglikelihood",
           "make_blocks", "score_docs", "aggregate", "load_task", "TASK_NAMES"]
