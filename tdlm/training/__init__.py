"""Training: the TDLMTrainer (make_trainer), building its pieces from a config, the run entry point, metrics."""

from .build import build_data, build_model, build_tokenizer, compile_backbone, training_arguments
from .run import run_evaluation, run_training
from .trainer import CheckpointScheduleCallback, DiffusionTrainer, TDLMTrainer, make_trainer

__all__ = ["TDLMTrainer", "DiffusionTrainer", "make_trainer", "CheckpointScheduleCallback", "build_data",
           "build_model", "build_tokenizer",
           "compile_backbone", "training_arguments", "run_training", "run_evaluation"]
