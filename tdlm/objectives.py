"""One objective class per head: what the platform asks instead of branching on `training_mode`.

    config.training_mode --objective_for--> Objective
        collator / training_targets   how the Trainer prepares a batch (AR: context token; diffusion: corruption)
        held_out_loss                 every objective scores all L tokens of each block (estimators: likelihood.py)
        conditional_loglikelihood     lm-eval's loglikelihood requests
        rolling_loglikelihood         lm-eval's loglikelihood_rolling (whole documents)
        sample                        the sampler the head calls for
        packaging facts               Auto class, pipeline tag, PEFT task type, model-card text

The modes and their head classes are declared once, in `configuration_tdlm.HEAD_CLASSES` (modeling_tdlm.MODEL_CLASSES
maps them to the classes); `OBJECTIVES` adds the platform's side of each. `evaluation/scoring.py` is the front door
that asks the objective for any model.
"""

import torch

from . import generation_tdlm, schedules
from .configuration_tdlm import HEAD_CLASSES
from .data import DataCollatorForTDLM
from .evaluation.likelihood import (
    ar_conditional_loglikelihood,
    ar_nll,
    block_conditional_loglikelihood,
    diffusion_conditional_loglikelihood,
    diffusion_nelbo,
    diffusion_nelbo_samples,
)
from .schedules import block_diffusion_targets, diffusion_targets


def shipped_names(registry: dict, module) -> str:
    """The names in a registry whose function ships with the weights (rules registered from outside the package
    exist only in the process that registered them), for the model card."""
    return ", ".join(f'"{name}"' for name, function in registry.items() if function.__module__ == module.__name__)


class Objective:
    """The facts and operations of one training objective. Subclasses set the class attributes."""

    mode: str
    auto_class: str  # the transformers Auto class a published checkpoint is loaded with
    pipeline_tag: str
    peft_task_type: str | None  # peft.TaskType name, None: a plain LoRA wrap
    sampler: str  # what `sample` calls, for messages
    corrupts = True  # the Trainer draws a forward-process corruption for each batch
    summary: str  # one sentence for the model card
    card_tag: str  # the model card's tag for the objective
    held_out_metric = ("nelbo", "held-out NELBO (nats/token, upper bound on the NLL)")  # key in results, card name

    def collator(self, config, pad_token_id: int) -> DataCollatorForTDLM:
        return DataCollatorForTDLM(pad_token_id)

    def training_targets(self, input_ids, attention_mask, config, schedule, generator, ratio_range, antithetic):
        """One draw of the forward process for a batch (dict of `schedules.diffusion_targets`)."""
        raise NotImplementedError

    def model_inputs(self, inputs: dict, targets: dict | None) -> dict:
        """Keyword arguments of the head's forward for a collated batch and its corruption."""
        return {"input_ids": targets["input_ids"], "attention_mask": inputs.get("attention_mask"),
                "labels": targets["labels"], "loss_weights": targets["loss_weights"]}

    def held_out_loss(self, model, blocks, num_samples=32, seed=0, batch_size=16, show_progress=False) -> dict:
        """Loss per token over all L tokens of each of `blocks` ([N, L]): "loss", "standard_error", "num_tokens"..."""
        result = diffusion_nelbo(model, blocks, num_samples, seed, batch_size=batch_size, show_progress=show_progress,
                                 noise_block_size=self.noise_block_size(model.config))
        return {**result, "loss": result["nelbo"]}

    def noise_block_size(self, config) -> int | None:
        return None

    def conditional_loglikelihood(self, model, encoded, keys, mc_num, batch_size, show_progress, check_greedy):
        raise NotImplementedError

    def rolling_loglikelihood(self, model, tokens: list[int], prefix_token_id: int, nelbo_samples: int, seed: int,
                              batch_size: int) -> float:
        """log p(document) (a lower bound for the diffusion objectives): blocks of max_position_embeddings tokens."""
        length = model.config.max_position_embeddings
        blocks = [torch.tensor(tokens[i:i + length]) for i in range(0, len(tokens), length)]
        return -sum(float(diffusion_nelbo_samples(model, block.unsqueeze(0), nelbo_samples, seed,
                                                  noise_block_size=self.noise_block_size(model.config)).mean())
                    for block in blocks)

    def prompt(self, config, ids: list[int]) -> list[int]:
        """The ids a sampler starts from for a prompt (AR needs at least one token to condition on)."""
        return ids

    def sample(self, model, ids: list[int], num_samples: int, max_new_tokens: int, seed: int, show_progress: bool,
               options: dict) -> torch.LongTensor:
        """[num_samples, len(ids) + max_new_tokens] ids continuing `ids` (unconditional when empty)."""
        generator = torch.Generator(device=model.device).manual_seed(seed)
        options.setdefault("show_progress", show_progress)
        if not ids:
            return model.diffusion_generate(batch_size=num_samples, max_length=max_new_tokens, generator=generator,
                                            **options)
        input_ids = torch.tensor([ids] * num_samples, device=model.device)
        return model.diffusion_generate(input_ids, max_new_tokens=max_new_tokens, generator=generator, **options)

    def card_lines(self, config: dict) -> list[str]:
        """Model-card facts of a checkpoint's config.json dict."""
        return [f"- noise schedule: `{config.get('noise_schedule')}`, mask token id {config.get('mask_token_id')}"]

    def usage(self, repo_id: str) -> str:
        """Copy-paste Python for the model card."""
        return f'''```python
import torch
from transformers import {self.auto_class}, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{repo_id}", trust_remote_code=True)
model = {self.auto_class}.from_pretrained("{repo_id}", trust_remote_code=True).eval()

# continue a prompt: 32 masked positions are filled in by iterative unmasking
prompt = tokenizer("The history of the city", return_tensors="pt")
out = model.diffusion_generate(**prompt, max_new_tokens=32, num_steps=32)
print(tokenizer.decode(out[0], skip_special_tokens=True))

# unconditional samples; sampling options default to generation_config.json
out = model.diffusion_generate(max_new_tokens=32, num_return_sequences=2, num_steps=16, temperature=1.0,
                               top_k=50, generator=torch.Generator().manual_seed(0))
print(tokenizer.batch_decode(out, skip_special_tokens=True))
```'''


class MaskedDiffusion(Objective):
    mode = "diffusion"
    auto_class = "AutoModelForMaskedLM"
    pipeline_tag = "fill-mask"
    peft_task_type = None
    sampler = "diffusion_generate"
    card_tag = "masked-diffusion"
    summary = ("a masked (absorbing-state) discrete diffusion language model: bidirectional attention, trained on the "
               "weighted masked-token ELBO (MDLM), sampled by iterative unmasking (LLaDA)")

    def training_targets(self, input_ids, attention_mask, config, schedule, generator, ratio_range, antithetic):
        return diffusion_targets(input_ids, attention_mask, schedule, config.mask_token_id,
                                 single_ratio_per_sequence=config.single_ratio_per_sequence,
                                 min_mask_ratio=ratio_range[0], max_mask_ratio=ratio_range[1],
                                 time_epsilon=config.time_epsilon, antithetic=antithetic, generator=generator)

    def conditional_loglikelihood(self, model, encoded, keys, mc_num, batch_size, show_progress, check_greedy):
        return diffusion_conditional_loglikelihood(model, encoded, keys, mc_num, batch_size, show_progress,
                                                   check_greedy)

    def usage(self, repo_id: str) -> str:
        return super().usage(repo_id) + f'''

Or score a single masked position: `pipeline("fill-mask", model="{repo_id}", trust_remote_code=True)`.
Options of `diffusion_generate`: `num_steps`, `step_schedule` ({shipped_names(schedules.STEP_SCHEDULES, schedules)}),
`remasking` ({shipped_names(generation_tdlm.REMASKING_RULES, generation_tdlm)}), `temperature`, `top_k`, `top_p`,
`block_length`, `confidence_threshold`, `stop_at_eos`. Infilling: put `tokenizer.mask_token_id` wherever text is
wanted.'''


class BlockDiffusion(Objective):
    mode = "block_diffusion"
    auto_class = "AutoModel"
    pipeline_tag = "text-generation"
    peft_task_type = None
    sampler = "diffusion_generate (block by block, KV cache)"
    card_tag = "block-diffusion"
    summary = ("a block-diffusion language model (BD3-LM): autoregressive over blocks of tokens, masked diffusion "
               "within a block, trained on the per-block NELBO with one forward over x_t and x_0, sampled block by "
               "block with a KV cache of the finished blocks")

    def noise_block_size(self, config) -> int:
        return config.bd_block_size

    def training_targets(self, input_ids, attention_mask, config, schedule, generator, ratio_range, antithetic):
        return block_diffusion_targets(input_ids, attention_mask, schedule, config.mask_token_id, config.bd_block_size,
                                       single_ratio_per_sequence=config.single_ratio_per_sequence,
                                       min_mask_ratio=ratio_range[0], max_mask_ratio=ratio_range[1],
                                       time_epsilon=config.time_epsilon, antithetic=antithetic, generator=generator)

    def model_inputs(self, inputs: dict, targets: dict | None) -> dict:
        return {**super().model_inputs(inputs, targets), "clean_input_ids": inputs["input_ids"]}

    def card_lines(self, config: dict) -> list[str]:
        return [f"- block size: {config.get('bd_block_size')} tokens", *super().card_lines(config)]

    def conditional_loglikelihood(self, model, encoded, keys, mc_num, batch_size, show_progress, check_greedy):
        return block_conditional_loglikelihood(model, encoded, keys, mc_num, batch_size, show_progress, check_greedy)

    def usage(self, repo_id: str) -> str:
        return super().usage(repo_id) + '''

`num_steps` is the step budget of each block; generation runs block by block to any length up to
`max_position_embeddings`, with an exact KV cache of the finished blocks (`use_cache=False` recomputes them).'''


class Autoregressive(Objective):
    mode = "autoregressive"
    auto_class = "AutoModelForCausalLM"
    pipeline_tag = "text-generation"
    peft_task_type = "CAUSAL_LM"
    sampler = "generate (KV cache)"
    corrupts = False
    card_tag = "autoregressive-baseline"
    held_out_metric = ("nll", "held-out NLL (nats/token)")
    summary = ("the autoregressive baseline of TDLM: the same backbone with causal attention, trained on next-token "
               "prediction, sampled with the standard `generate()`")

    def collator(self, config, pad_token_id: int) -> DataCollatorForTDLM:
        return DataCollatorForTDLM(pad_token_id, context_token_id=config.context_token_id)

    def model_inputs(self, inputs: dict, targets: dict | None) -> dict:
        return {"input_ids": inputs["input_ids"], "attention_mask": inputs.get("attention_mask"),
                "labels": inputs["labels"]}

    def held_out_loss(self, model, blocks, num_samples=32, seed=0, batch_size=16, show_progress=False) -> dict:
        result = ar_nll(model, blocks, batch_size, show_progress, context_token_id=model.config.context_token_id)
        return {**result, "loss": result["nll"], "standard_error": 0.0}

    def card_lines(self, config: dict) -> list[str]:
        context = config.get("ar_context_token", False)
        return [f"- context token in front of every block: {'yes (all L tokens scored)' if context else 'no'}"]

    def conditional_loglikelihood(self, model, encoded, keys, mc_num, batch_size, show_progress, check_greedy):
        return ar_conditional_loglikelihood(model, encoded, batch_size, show_progress)

    def rolling_loglikelihood(self, model, tokens, prefix_token_id, nelbo_samples, seed, batch_size) -> float:
        # windows score up to max_length tokens each, the first after the prefix token: every token is scored
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        windows = [make_disjoint_window(window) for window in get_rolling_token_windows(
            tokens, prefix_token_id, model.config.max_position_embeddings, context_len=1)]
        return sum(score for score, _ in ar_conditional_loglikelihood(model, windows, batch_size))

    def prompt(self, config, ids: list[int]) -> list[int]:
        bos = config.bos_token_id if config.bos_token_id is not None else config.eos_token_id
        return [bos] + ids

    def sample(self, model, ids, num_samples, max_new_tokens, seed, show_progress, options) -> torch.LongTensor:
        temperature = options.pop("temperature", 0.0) or 0.0
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        torch.manual_seed(seed)
        ar_options = {k: v for k, v in options.items() if k in ("top_k", "top_p") and v is not None}
        input_ids = torch.tensor([ids] * num_samples, device=model.device)
        return model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                              max_new_tokens=max_new_tokens, pad_token_id=model.config.pad_token_id, **sampling,
                              **ar_options)

    def usage(self, repo_id: str) -> str:
        return f'''```python
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

tokenizer = AutoTokenizer.from_pretrained("{repo_id}", trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained("{repo_id}", trust_remote_code=True).eval()
prompt = tokenizer("The history of the city", return_tensors="pt")
out = model.generate(**prompt, max_new_tokens=32, do_sample=True, top_p=0.9)
print(tokenizer.decode(out[0], skip_special_tokens=True))

# or through a pipeline
generator = pipeline("text-generation", model="{repo_id}", trust_remote_code=True)
print(generator("The history of the city", max_new_tokens=32)[0]["generated_text"])
```'''


OBJECTIVES = {cls.mode: cls() for cls in (MaskedDiffusion, Autoregressive, BlockDiffusion)}
if set(OBJECTIVES) != set(HEAD_CLASSES):
    raise ImportError(f"objectives {sorted(OBJECTIVES)} do not match configuration_tdlm.HEAD_CLASSES "
                      f"{sorted(HEAD_CLASSES)}")


def objective_for(config_or_mode) -> Objective:
    """The objective of a TDLMConfig (or a config.json dict, or a training_mode name)."""
    if isinstance(config_or_mode, str):
        mode = config_or_mode
    elif isinstance(config_or_mode, dict):
        mode = config_or_mode.get("training_mode", "diffusion")
    else:
        mode = config_or_mode.training_mode
    if mode not in OBJECTIVES:
        raise ValueError(f"training_mode: unknown mode {mode!r}; expected one of {tuple(OBJECTIVES)}")
    return OBJECTIVES[mode]
