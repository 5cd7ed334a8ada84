"""Share a trained TDLM on the Hugging Face Hub: pick the checkpoint, write a model card, upload.

Data flow: an experiment folder (or a checkpoint folder) --`runs.model_folder`--> the model folder to
publish --`prepare_hub_folder`--> the upload set (weights, config with `auto_map`, remote code, tokenizer,
`generation_config.json`, README.md model card) --`push_to_hub`--> one commit on the Hub.

The token comes from the usual huggingface_hub places (`token=`, `HF_TOKEN`, `huggingface-cli login`);
this module never prints or logs it.
"""

import json
import logging
import re
import shutil
import tempfile
from pathlib import Path

import yaml
from huggingface_hub import CommitOperationAdd, HfApi, ModelCardData

from .peft_utils import merge_adapter
from .runs import Experiment, experiment_of, model_folder, read_json

logger = logging.getLogger(__name__)

# Files of a checkpoint folder that make up the published model; optimizer/scheduler/RNG state,
# trainer_state.json and training_args.bin stay behind.
MODEL_FILE_PATTERNS = (
    "config.json", "generation_config.json", "model.safetensors", "model-*.safetensors",
    "model.safetensors.index.json", "*.py", "tokenizer.json", "tokenizer_config.json", "vocab.json",
    "merges.txt", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
)
REMOTE_CODE_FILES = ("configuration_tdlm.py", "modeling_tdlm.py", "generation_tdlm.py", "schedules.py",
                     "fused_cross_entropy.py")
REQUIRED_FILES = ("config.json", "tokenizer_config.json") + REMOTE_CODE_FILES
DEFAULT_LICENSE = "apache-2.0"
# keys of the training config never written to a model card (credentials)
_SECRET_KEY = re.compile(r"token|secret|password|api_key|apikey", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------
def training_config_of(experiment: Experiment | None) -> dict | None:
    """The experiment's resolved config, with credential-like keys removed."""
    config = experiment.read_raw_config() if experiment is not None else None
    return _without_secrets(config) if config is not None else None


def _without_secrets(value):
    if isinstance(value, dict):
        return {k: _without_secrets(v) for k, v in value.items() if not _SECRET_KEY.search(str(k))}
    if isinstance(value, list):
        return [_without_secrets(v) for v in value]
    return value


def datasets_of(training_config: dict | None) -> list[str]:
    """Hub dataset ids named in the config's `data` section (local files map to nothing)."""
    data = (training_config or {}).get("data") or {}
    names = []
    for key in ("dataset_name", "dataset", "hub_dataset", "name"):
        value = data.get(key) if isinstance(data, dict) else None
        if isinstance(value, str) and value and not Path(value).exists():
            names.append(value)
    if not names and "wikitext" in json.dumps(data).lower():
        names.append("Salesforce/wikitext")
    return list(dict.fromkeys(names))


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[name] = value
    return flat


def _results_markdown(results: dict[str, dict]) -> str:
    if not results:
        return "No evaluation results were recorded with this checkpoint."
    sections = []
    for name, values in results.items():
        rows = [f"| {k} | {_format_value(v)} |" for k, v in _flatten(values).items()
                if not str(k).endswith("checkpoint")]
        sections.append(f"**{name}.json**\n\n| metric | value |\n|---|---|\n" + "\n".join(rows))
    return "\n\n".join(sections)


def _format_value(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return value


def usage_snippet(repo_id: str, training_mode: str) -> str:
    """Copy-paste Python for loading and sampling the published model."""
    if training_mode == "diffusion":
        return f'''```python
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{repo_id}", trust_remote_code=True)
model = AutoModelForMaskedLM.from_pretrained("{repo_id}", trust_remote_code=True).eval()

# continue a prompt: 32 masked positions are filled in by iterative unmasking
prompt = tokenizer("The history of the city", return_tensors="pt")
out = model.diffusion_generate(**prompt, max_new_tokens=32, num_steps=32)
print(tokenizer.decode(out[0], skip_special_tokens=True))

# unconditional samples; sampling options default to generation_config.json
out = model.diffusion_generate(max_new_tokens=32, num_return_sequences=2, num_steps=16, temperature=1.0,
                               top_k=50, generator=torch.Generator().manual_seed(0))
print(tokenizer.batch_decode(out, skip_special_tokens=True))
```

Options of `diffusion_generate`: `num_steps`, `step_schedule` ("cosine", "linear"), `remasking`
("low_confidence", "margin", "entropy", "random"), `temperature`, `top_k`, `top_p`, `block_length`,
`confidence_threshold`, `stop_at_eos`. Infilling: put `tokenizer.mask_token_id` wherever text is wanted.'''
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


def model_card(checkpoint, repo_id: str | None = None, license: str = DEFAULT_LICENSE,
               experiment_dir=None, base_model: str | None = None) -> str:
    """README.md for a checkpoint folder: YAML metadata, model description, usage, training config
    and the experiment's evaluation results (`experiment_dir` defaults to the experiment holding the
    checkpoint). `base_model`: the model a merged LoRA fine-tune started from."""
    checkpoint = Path(checkpoint)
    config = read_json(checkpoint / "config.json")
    mode = config.get("training_mode", "diffusion")
    experiment = Experiment(experiment_dir) if experiment_dir is not None else experiment_of(checkpoint)
    training_config = training_config_of(experiment)
    results = experiment.read_results() if experiment is not None else {}
    repo_id = repo_id or checkpoint.resolve().name
    datasets = datasets_of(training_config)
    metadata = ModelCardData(
        library_name="transformers", license=license, pipeline_tag="text-generation",
        tags=["tdlm", mode, "masked-diffusion", "text-generation"], datasets=datasets or None,
        # the Hub validates base_model against its repositories: only a Hub id goes in the metadata
        base_model=base_model if base_model and not Path(base_model).exists() else None,
    )
    num_parameters = results.get("summary", {}).get("num_parameters")
    objective = ("a masked (absorbing-state) discrete diffusion language model: bidirectional attention, "
                 "trained on the weighted masked-token ELBO, sampled by iterative unmasking"
                 if mode == "diffusion" else
                 "the autoregressive baseline of TDLM: the same backbone with causal attention, trained on "
                 "next-token prediction, sampled with the standard `generate()`")
    shape = ", ".join(f"{key} {config[key]}" for key in ("vocab_size", "hidden_size", "num_hidden_layers",
                                                         "num_attention_heads", "intermediate_size",
                                                         "max_position_embeddings") if key in config)
    config_block = (f"```yaml\n{yaml.safe_dump(training_config, sort_keys=False).rstrip()}\n```"
                    if training_config else "The training configuration was not saved with this checkpoint.")
    lines = [
        "---", metadata.to_yaml(), "---", "",
        f"# {repo_id.split('/')[-1]}", "",
        f"A TDLM (tiny diffusion language model) checkpoint, {objective}.",
        "The architecture is Llama-style (RoPE, SwiGLU, RMSNorm, tied embeddings) and ships as remote code: "
        "load it with `trust_remote_code=True`; no extra package is needed.", "",
        f"- training mode: `{mode}`",
        f"- shape: {shape}",
    ]
    if num_parameters:
        lines.append(f"- parameters: {num_parameters:,}")
    if mode == "diffusion":
        lines.append(f"- noise schedule: `{config.get('noise_schedule')}`, mask token id {config.get('mask_token_id')}")
    if datasets:
        lines.append(f"- training data: {', '.join(datasets)}")
    if base_model:
        lines.append(f"- LoRA fine-tune of `{base_model}`, adapter merged into the weights")
    lines += ["", "## Usage", "", usage_snippet(repo_id, mode), "",
              "## Evaluation results", "", _results_markdown(results), "",
              "## Training configuration", "", config_block, ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Upload set and push
# ---------------------------------------------------------------------------------------------
def model_files(checkpoint: Path) -> list[Path]:
    """The files of a model folder that are published; fails when the folder is not self-sufficient."""
    missing = [name for name in REQUIRED_FILES if not (checkpoint / name).is_file()]
    if not any(checkpoint.glob("model*.safetensors")):
        missing.append("model.safetensors")
    if missing:
        raise FileNotFoundError(f"{checkpoint} cannot be published as a self-sufficient model: missing {missing}")
    return sorted({p for pattern in MODEL_FILE_PATTERNS for p in checkpoint.glob(pattern) if p.is_file()})


def prepare_hub_folder(path, output_dir, repo_id: str | None = None, license: str = DEFAULT_LICENSE) -> Path:
    """Write the exact upload set for `path` (experiment or checkpoint) into `output_dir`.

    A LoRA adapter checkpoint (adapter_config.json, no config.json) is merged into its base model first,
    so what is published is always a full model that loads without PEFT.
    """
    checkpoint = model_folder(path)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    experiment, base_model = experiment_of(checkpoint), None
    with tempfile.TemporaryDirectory(prefix="tdlm-merge-") as merge_dir:
        if not (checkpoint / "config.json").is_file():
            base_model = read_json(checkpoint / "adapter_config.json").get("base_model_name_or_path")
            logger.info("merging the LoRA adapter %s into its base model %s before publishing", checkpoint, base_model)
            checkpoint = merge_adapter(checkpoint, Path(merge_dir) / "merged")
        for file in model_files(checkpoint):
            shutil.copy2(file, output_dir / file.name)
        card = model_card(checkpoint, repo_id=repo_id, license=license, experiment_dir=experiment and experiment.root,
                          base_model=base_model)
    (output_dir / "README.md").write_text(card)
    return output_dir


def push_to_hub(
    path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str = "Upload TDLM model",
    license: str = DEFAULT_LICENSE,
):
    """Publish an experiment's best checkpoint (or a checkpoint folder) to `repo_id` in one commit.

    Creates the repository (and the `revision` branch) when missing. `token=None` uses the token
    huggingface_hub finds itself (HF_TOKEN, the login cache). Returns the CommitInfo.
    """
    checkpoint = model_folder(path)
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="tdlm-hub-") as staging:
        folder = prepare_hub_folder(checkpoint, staging, repo_id=repo_id, license=license)
        operations = [CommitOperationAdd(path_in_repo=f.name, path_or_fileobj=str(f))
                      for f in sorted(folder.iterdir())]
        logger.info("publishing %s to %s (%d files)", checkpoint, repo_id, len(operations))
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.create_commit(repo_id, operations, commit_message=commit_message, revision=revision)
