"""Share a trained TDLM on the Hugging Face Hub: pick the checkpoint, write a model card, upload.

Data flow: an experiment folder (or a checkpoint folder) --`runs.model_folder`--> the model folder to
publish --`prepare_hub_folder`--> the upload set (weights, config with `auto_map`, remote code, tokenizer,
`generation_config.json`, README.md model card) --`push_to_hub`--> one commit on the Hub.

The token comes from the usual huggingface_hub places (`token=`, `HF_TOKEN`, `huggingface-cli login`);
this module never prints or logs it.
"""

import logging
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi
from transformers.dynamic_module_utils import get_relative_imports

from .model_card import LICENSE, model_card
from .peft_utils import merge_adapter
from .runs import experiment_of, model_folder, read_json

logger = logging.getLogger(__name__)

# Files of a checkpoint folder that make up the published model; optimizer/scheduler/RNG state,
# trainer_state.json and training_args.bin stay behind.
MODEL_FILE_PATTERNS = (
    "config.json", "generation_config.json", "model.safetensors", "model-*.safetensors",
    "model.safetensors.index.json", "*.py", "tokenizer.json", "tokenizer_config.json", "vocab.json",
    "merges.txt", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
)
REMOTE_CODE_FILES = ("configuration_tdlm.py", "modeling_tdlm.py", "generation_tdlm.py", "schedules.py",
                     "fused_cross_entropy.py", "block_diffusion_tdlm.py")  # what a checkpoint saved now ships
REQUIRED_FILES = ("config.json", "tokenizer_config.json", "configuration_tdlm.py", "modeling_tdlm.py")
DEFAULT_LICENSE = LICENSE


# ---------------------------------------------------------------------------------------------
# Upload set and push
# ---------------------------------------------------------------------------------------------
def model_files(checkpoint: Path) -> list[Path]:
    """The files of a model folder that are published; fails when the folder is not self-sufficient."""
    missing = [name for name in REQUIRED_FILES if not (checkpoint / name).is_file()]
    missing += [name for name in _sibling_imports(checkpoint) if not (checkpoint / name).is_file()]
    if not any(checkpoint.glob("model*.safetensors")):
        missing.append("model.safetensors")
    if missing:
        raise FileNotFoundError(f"{checkpoint} cannot be published as a self-sufficient model: missing {missing}")
    return sorted({p for pattern in MODEL_FILE_PATTERNS for p in checkpoint.glob(pattern) if p.is_file()})


def _sibling_imports(folder: Path) -> list[str]:
    """The files modeling_tdlm.py imports relatively, recursively (a checkpoint saved before a sibling existed imports
    fewer): the remote code a folder must hold."""
    found, todo = [], ["modeling_tdlm.py"]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.append(name)
        if (folder / name).is_file():
            todo += [f"{module}.py" for module in get_relative_imports(str(folder / name))]
    return found


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
    card.save(output_dir / "README.md")
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
