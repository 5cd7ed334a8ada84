"""Training: the DiffusionTrainer, building its pieces from a config, the run entry point, research metrics."""

from .build import build_data, build_model, build_tokenizer, compile_backbone, training_arguments
from .run import run_evaluation, run_training
from .trainer import CheckpointScheduleCallback, DiffusionTrainer

__all__ = ["DiffusionTrainer", "CheckpointScheduleCallback", "build_data", "build_model", "build_tokenizer",
           "compile_backbone", "training_arguments", "run_training", "run_evaluation"]
