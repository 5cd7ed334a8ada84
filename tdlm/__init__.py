"""TDLM: a tiny masked-diffusion language model as a Hugging Face model."""

from .configuration_tdlm import TDLMConfig
from .generation_tdlm import DiffusionGenerationConfig, DiffusionGenerationMixin, DiffusionGenerationOutput
from .modeling_tdlm import TDLMForCausalLM, TDLMForMaskedDiffusion, TDLMModel, TDLMOutput, TDLMPreTrainedModel
from .schedules import get_noise_schedule
from .tokenization import load_tokenizer, train_bpe_tokenizer

__version__ = "0.1.0"
__all__ = ["TDLMConfig", "DiffusionGenerationConfig", "DiffusionGenerationMixin", "DiffusionGenerationOutput",
           "TDLMForCausalLM", "TDLMForMaskedDiffusion", "TDLMModel", "TDLMOutput", "TDLMPreTrainedModel",
           "get_noise_schedule", "load_tokenizer", "train_bpe_tokenizer", "MODEL_CLASSES", "model_class_for"]

MODEL_CLASSES = {"diffusion": TDLMForMaskedDiffusion, "autoregressive": TDLMForCausalLM}


def model_class_for(config: TDLMConfig):
    """The head class that matches `config.training_mode`."""
    return MODEL_CLASSES[config.training_mode]
