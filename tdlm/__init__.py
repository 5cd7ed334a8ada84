"""TDLM: a tiny masked-diffusion language model as a Hugging Face model."""

from .configuration_tdlm import TDLMConfig
from .generation_tdlm import DiffusionGenerationConfig, DiffusionGenerationMixin, DiffusionGenerationOutput
from .modeling_tdlm import (
                            MODEL_CLASSES,
                            TDLMForBlockDiffusion,
                            TDLMForCausalLM,
                            TDLMForMaskedDiffusion,
                            TDLMModel,
                            TDLMOutput,
                            TDLMPreTrainedModel,
                            model_class_for,
)
from .schedules import get_noise_schedule
from .tokenization import load_tokenizer, train_bpe_tokenizer

__version__ = "0.1.0"
__all__ = ["TDLMConfig", "DiffusionGenerationConfig", "DiffusionGenerationMixin", "DiffusionGenerationOutput",
           "TDLMForBlockDiffusion", "TDLMForCausalLM", "TDLMForMaskedDiffusion", "TDLMModel", "TDLMOutput",
           "TDLMPreTrainedModel",
           "get_noise_schedule", "load_tokenizer", "train_bpe_tokenizer", "MODEL_CLASSES", "model_class_for"]
