"""Evaluation of TDLM checkpoints: likelihoods, downstream tasks, lm-eval adapter, comparison, heatmaps.

Imports only torch/transformers at module level; lm-eval, matplotlib and yaml are imported where used.
"""

from .likelihood import ar_nll, diffusion_nelbo, diffusion_ordered_nll
from .multiple_choice import aggregate, run_downstream, score_docs
from .scoring import conditional_loglikelihood
from .tasks import TASKS, Task, load_task, register_task

__all__ = ["run_downstream", "ar_nll", "diffusion_nelbo", "diffusion_ordered_nll", "conditional_loglikelihood",
           "score_docs", "aggregate", "load_task", "TASKS", "Task", "register_task"]
