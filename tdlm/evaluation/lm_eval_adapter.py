"""lm-eval model "tdlm": TDLM checkpoints (diffusion or AR) behind lm-eval's `TemplateLM` interface.

    import tdlm.evaluation.lm_eval_adapter  # registers "tdlm" (a registered model is visible only after import)
    lm_eval.simple_evaluate(model="tdlm", model_args="pretrained=PATH,mc_num=128", tasks=[...], task_manager=...)

TemplateLM encodes each (context, continuation) request as lm-eval's `hf` backend does (trailing context spaces
move to the continuation; an empty context becomes the prefix token) and hands the token ids to
`_loglikelihood_tokens`, which scores them with `tdlm.evaluation.likelihood`: AR exact; diffusion LLaDA Monte Carlo,
the masks seeded by (seed, context string) so the choices of one context share them. loglikelihood_rolling is the
exact NLL (AR, lm-eval's rolling windows) or minus the NELBO over max-length blocks (diffusion: a lower bound on
log p); generate_until uses `generate` (AR) or `diffusion_generate` (diffusion) and cuts at the stop strings.
is_greedy (LAMBADA's `acc`) follows LLaDA's one-token-per-step decode for diffusion; `check_greedy=False` (LLaDA's
`is_check_greedy`) skips that decode for runs of multiple-choice tasks only, whose metrics never read it.

`pretrained` may be a LoRA adapter folder (merged into its base on load; `base_model=` names the base instead of
its adapter_config.json). Requests longer than the model's
positions have their context left-truncated as in lm-eval's `hf` backend, with a warning that counts them. Under
`accelerate launch` / torchrun each process scores its share and lm-eval gathers the results on rank 0.
The command line is lm-eval's own with this model registered: `tdlm-lm-eval` (tdlm/cli/lm_eval.py).
"""

import logging
from pathlib import Path

import lm_eval.models  # noqa: F401  (fills the registry with lm-eval's own models first)
import torch
from accelerate import PartialState
from accelerate.utils import gather
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from ..objectives import objective_for
from ..runs import load_checkpoint
from .likelihood import context_key, fit_continuations, prefix_token_id
from .scoring import encoded_loglikelihood

logger = logging.getLogger(__name__)


def warn_truncated(what: str, lengths, limit: int) -> None:
    """Log how many requests are longer than the model's `limit` tokens (their context is left-truncated)."""
    over = [length - limit for length in lengths if length > limit]
    if over:
        logger.warning("%d of %d %s requests exceed %d tokens: their context was left-truncated (up to %d tokens "
                       "dropped, %d in all)", len(over), len(lengths), what, limit, max(over), sum(over))


def process_state() -> PartialState:
    """accelerate's view of this process; without CUDA it must be told to use CPU (gloo), or a torchrun /
    `accelerate launch` on CPU looks like one process."""
    return PartialState(cpu=not torch.cuda.is_available())


def load_pretrained(pretrained: str, device: str | None = None, base_model: str | None = None):
    """(model, tokenizer) of a checkpoint folder, or of a LoRA adapter folder merged into its base (the one its
    adapter_config.json names, or `base_model`)."""
    if Path(pretrained, "adapter_config.json").is_file():
        from ..peft_utils import load_merged  # peft is an optional extra

        model, tokenizer = load_merged(pretrained, base_model=base_model)
        return model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval(), tokenizer
    return load_checkpoint(pretrained, device=device)


@register_model("tdlm")
class TDLMLM(TemplateLM):
    def __init__(self, pretrained: str = None, model=None, tokenizer=None, mc_num: int = 128, seed: int = 0,
                 batch_size: int | str = 32, nelbo_samples: int = 32, max_gen_toks: int = 64, device: str = None,
                 check_greedy: bool = True, base_model: str = None, **kwargs):
        super().__init__()
        # under `accelerate launch` / torchrun each process scores its share of the requests; lm-eval's
        # evaluator gathers them through all_gather / gather_object below
        state = process_state()
        self._rank, self._world_size = state.process_index, state.num_processes
        if state.num_processes > 1:
            device = str(state.device)
        elif device and str(device).startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {device}: this machine has no CUDA; pass --device cpu (tdlm-lm-eval picks the "
                             f"machine's device when --device is left out)")
        if model is None:
            if pretrained is None:
                raise ValueError("lm-eval model 'tdlm' needs pretrained=<checkpoint folder> (or model=, tokenizer=)")
            model, tokenizer = load_pretrained(pretrained, device=device if device not in (None, "auto") else None,
                                               base_model=base_model)
        self.model, self.tokenizer = model, tokenizer
        self.objective = objective_for(model.config)
        self._device = model.device
        self.mc_num, self.seed, self.nelbo_samples = int(mc_num), int(seed), int(nelbo_samples)
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 32
        self.max_gen_toks = int(max_gen_toks)
        self.check_greedy = bool(check_greedy)  # lm-eval parses model_args "false" / "False" to False
        if self.objective.corrupts and not self.check_greedy:
            logger.warning("check_greedy=False: is_greedy is reported False, so a LAMBADA-style acc is 0")

    def all_gather(self, tensor):
        return gather(tensor) if self.world_size > 1 else tensor

    def gather_object(self, obj, dst=0):
        if self.world_size == 1:
            return [obj]
        gathered = [None] * self.world_size if self.rank == dst else None
        torch.distributed.gather_object(obj, gathered, dst=dst)
        return gathered

    def barrier(self) -> None:
        process_state().wait_for_everyone()

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        return prefix_token_id(self.tokenizer)

    @property
    def max_length(self) -> int:
        return self.model.config.max_position_embeddings

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        special = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        return self.tokenizer.encode(string, **special)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        encoded = fit_continuations([(context, continuation) for _, context, continuation in requests],
                                     self.max_length)
        # AR scores (context + continuation)[-(max_length + 1):], its last token being only a target
        limit = self.max_length + (0 if self.objective.corrupts else 1)
        warn_truncated("loglikelihood", [len(context) + len(continuation) for context, continuation in encoded], limit)
        keys = [context_key(self.seed, context) for (context, _), _, _ in requests]
        return encoded_loglikelihood(self.model, encoded, keys, self.mc_num, self.batch_size,
                                     show_progress=not disable_tqdm, check_greedy=self.check_greedy)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        results = []
        for request in requests:
            tokens = self.tok_encode(request.args[0])
            results.append(self.objective.rolling_loglikelihood(self.model, tokens, self.prefix_token_id,
                                                                self.nelbo_samples, self.seed, self.batch_size))
        return results

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False):
        outputs, context_lengths = [], []
        for request in requests:
            context, gen_kwargs = request.args
            until = gen_kwargs.get("until") or [self.tokenizer.eos_token]
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
            ids = self.tok_encode(context) or [self.prefix_token_id]
            context_lengths.append(len(ids) + max_new)
            ids = ids[-max(1, self.max_length - max_new):]
            # greedy AR; the diffusion samplers with the checkpoint's generation config, seeded
            sequence = self.objective.sample(self.model, ids, 1, max_new, self.seed, False, {})
            text = self.tokenizer.decode(sequence[0, len(ids):], skip_special_tokens=True)
            for stop in until:
                if stop:
                    text = text.split(stop)[0]
            outputs.append(text)
        warn_truncated("generate_until (context + max_gen_toks)", context_lengths, self.max_length)
        return outputs


def evaluate_with_lm_eval(model_name: str, model_args, tasks, limit=None, data_dir=None, task_dir=None,
                          num_fewshot=None, log_samples: bool = False, seed: int = 0, batch_size=8,
                          device: str | None = None):
    """lm_eval.simple_evaluate on our local task YAMLs (written to `task_dir`, a temp folder by default).

    `model_name` is "tdlm" (this adapter) or "hf" (lm-eval's stock backend, for AR checkpoints); `model_args`
    a dict or "k=v,..." string, or an LM instance as `model_name`.
    """
    import tempfile

    import lm_eval
    from lm_eval.tasks import TaskManager

    from .tasks import lm_eval_task_names, write_lm_eval_tasks

    families, names = lm_eval_task_names(tasks)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="tdlm_tasks_") as tmp:
        folder = task_dir or tmp
        write_lm_eval_tasks(folder, families, data_dir)
        manager = TaskManager(include_path=folder, include_defaults=False)
        return lm_eval.simple_evaluate(model=model_name, model_args=model_args, tasks=names, limit=limit,
                                       num_fewshot=num_fewshot, task_manager=manager, log_samples=log_samples,
                                       batch_size=batch_size, device=device,
                                       random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                       fewshot_random_seed=seed, bootstrap_iters=0)
