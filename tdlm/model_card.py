"""The model card (README.md) of a published TDLM checkpoint, built with huggingface_hub's ModelCard.

Metadata: license (the code's, MIT), pipeline tag per objective (fill-mask for diffusion, which the masked-LM head
serves; text-generation for AR), training data sets, and a `model-index` of `EvalResult`s: the run's own held-out
NELBO (an upper bound on the NLL) or exact NLL, and the downstream scores of whole tasks found in the experiment's
results/, filed under the task type Hub leaderboards use. Body: what the model is, intended use, limitations, how
to sample, every score with what it was computed on (tokens, documents, any --limit), the training config that ran
and the method papers. Nothing in the card names a local path: the config dump keeps only file names.
"""

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .evaluation.tasks import resolve_task
from .objectives import objective_for
from .runs import Experiment, experiment_of, read_json

LICENSE = "mit"  # the license of this code base (setup.cfg), under which the weights are trained and released
_SECRET_KEY = re.compile(r"token|secret|password|api_key|apikey", re.IGNORECASE)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class DataSource:
    hub_id: str  # a Hub data set id, or the file names of local data
    config: str | None = None
    split: str | None = None
    license: str | None = None

    def describe(self) -> str:
        parts = [f"`{self.hub_id}`"] + [f"{k} `{v}`" for k, v in (("config", self.config), ("split", self.split),
                                                                   ("license", self.license)) if v]
        return ", ".join(parts)


WIKITEXT = ("Salesforce/wikitext", "wikitext-2-raw-v1")
# local copies of Hub data sets (../shared/data) -> what they are; licenses of the Hub data sets used here
KNOWN_FILES = {"wiki.train.raw": (*WIKITEXT, "train"), "wiki.valid.raw": (*WIKITEXT, "validation"),
               "wiki.test.raw": (*WIKITEXT, "test")}
DATASET_LICENSES = {"Salesforce/wikitext": "cc-by-sa-3.0"}
CITATIONS = """```bibtex
@inproceedings{sahoo2024mdlm,
  title={Simple and Effective Masked Diffusion Language Models},
  author={Sahoo, Subham Sekhar and Arriola, Marianne and Schiff, Yair and Gokaslan, Aaron and Marroquin, Edgar
          and Chiu, Justin T. and Rush, Alexander and Kuleshov, Volodymyr},
  booktitle={Advances in Neural Information Processing Systems},
  year={2024}
}
@article{nie2025llada,
  title={Large Language Diffusion Models},
  author={Nie, Shen and Zhu, Fengqi and You, Zebin and Zhang, Xiaolu and Ou, Jingyang and Hu, Jun and Zhou, Jun
          and Lin, Yankai and Wen, Ji-Rong and Li, Chongxuan},
  journal={arXiv preprint arXiv:2502.09992},
  year={2025}
}
@article{prabhudesai2025diffusion,
  title={Diffusion Beats Autoregressive in Data-Constrained Settings},
  author={Prabhudesai, Mihir and Wu, Mengning and Zadeh, Amir and Fragkiadaki, Katerina and Pathak, Deepak},
  journal={arXiv preprint arXiv:2507.15857},
  year={2025}
}
```"""


# ---------------------------------------------------------------------------------------------
# Training config without secrets or local paths
# ---------------------------------------------------------------------------------------------
def is_local_path(value: str) -> bool:
    """A string naming this machine's files (not a Hub id such as `Salesforce/wikitext`)."""
    return Path(value).exists() or value.startswith(("/", ".", "~")) or value.count("/") > 1


# where this machine kept things (no fact about the model; a file name alone would read as a setting)
MACHINE_KEYS = ("cache_dir",)


def public_config(value):
    """The config with credential-like keys and MACHINE_KEYS dropped and local paths reduced to their file names."""
    if isinstance(value, dict):
        return {k: public_config(v) for k, v in value.items()
                if not _SECRET_KEY.search(str(k)) and k not in MACHINE_KEYS}
    if isinstance(value, list):
        return [public_config(v) for v in value]
    if isinstance(value, str) and is_local_path(value):
        return Path(value).name
    return value


# ---------------------------------------------------------------------------------------------
# Data sets
# ---------------------------------------------------------------------------------------------
def _as_list(value) -> list:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def data_source(data: dict, role: str) -> DataSource | None:
    """Where the `train` or `eval` data of a config's data section came from."""
    for name in _as_list(data.get(f"{role}_files")):
        if Path(name).name in KNOWN_FILES:
            hub_id, config, split = KNOWN_FILES[Path(name).name]
            return DataSource(hub_id, config, split, DATASET_LICENSES.get(hub_id))
    if data.get(f"{role}_files"):
        return DataSource(", ".join(Path(name).name for name in _as_list(data[f"{role}_files"])))
    if data.get("hub_dataset"):
        split = data.get(f"{role}_split")
        return DataSource(data["hub_dataset"], data.get("hub_config"), split, DATASET_LICENSES.get(data["hub_dataset"]))
    return None


# ---------------------------------------------------------------------------------------------
# Evaluation results -> model-index
# ---------------------------------------------------------------------------------------------
# the task type Hub leaderboards file benchmarks under (the Open LLM Leaderboard's model-index entries)
BENCHMARK_TASK_TYPE = "text-generation"
OWN_EVALUATION = ("summary", "eval_")  # results files of the run's own (Trainer) evaluation


@dataclass(frozen=True)
class Score:
    """One number of a results file, with what it was computed on."""
    task: str
    metric: str
    metric_name: str
    value: float
    dataset: tuple  # (Hub id, name, config, split)
    evaluated_on: str  # "4,096 tokens", "100 of 2,376 documents (limit 100)", ...
    source: str  # the results file
    in_model_index: bool  # full-task scores with a known size, and the run's own held-out score


def _count(number, unit: str) -> str:
    return f"{number:,} {unit}" if isinstance(number, int) else f"{unit}: not recorded"


def _held_out(result: dict, mode: str) -> tuple[float, int | None] | None:
    """(loss per token, tokens) of a results file: summary's best_eval_loss, an eval-only run's eval_loss, or
    tdlm-evaluate's likelihood section."""
    likelihood = result.get("likelihood") or {}
    for value, tokens in ((likelihood.get(objective_for(mode).held_out_metric[0]), likelihood.get("num_tokens")),
                          (result.get("eval_loss"), result.get("eval_tokens")),
                          (result.get("best_eval_loss"), result.get("eval_tokens"))):
        if isinstance(value, (int, float)):
            return float(value), tokens
    return None


def _task_scores(result: dict, stem: str) -> list[tuple[str, dict, int | None, str | None]]:
    """(task, {metric: value}, documents scored, limit note or None) of one results file: ours (`downstream`,
    `settings.limit`), lm-eval's (`results` with "acc,none" keys and tdlm_ prefixes, `n-samples`) or a bare
    per-task file (<task>.json with acc / acc_norm, num_docs, limit)."""
    if isinstance(result.get("downstream"), dict):
        limit = (result.get("settings") or {}).get("limit")
        return [(task, scores, scores.get("num_docs"), f"limit {limit}" if limit is not None else None)
                for task, scores in result["downstream"].items()]
    if isinstance(result.get("results"), dict):
        samples, limit = result.get("n-samples") or {}, (result.get("config") or {}).get("limit")
        found = []
        for task, metrics in result["results"].items():
            counts = samples.get(task) or {}
            effective, original = counts.get("effective"), counts.get("original")
            limited = effective < original if counts else limit is not None
            note = f"{effective:,} of {original:,} documents, limit {limit}" if limited and counts else (
                f"limit {limit}" if limited else None)
            found.append((task.removeprefix("tdlm_"),
                          {key.split(",")[0]: value for key, value in metrics.items()
                           if "," in key and "stderr" not in key}, effective, note))
        return found
    if "acc" in result:
        return [(stem, result, result.get("num_docs"),
                 f"limit {result['limit']}" if result.get("limit") is not None else None)]
    return []


def _task_dataset(task: str) -> tuple[str, str, str | None, str | None]:
    """(Hub data set, its name, config, split) of a task's local copy (`Task.dataset`); one subtask (an MMLU
    subject) is that config of the data set. A task this process does not know is named by itself."""
    try:
        record, subtask = resolve_task(task)
    except ValueError:
        record, subtask = None, None
    dataset = record.dataset if record is not None else None
    if dataset is None:
        return task, task, None, None
    if subtask is not None:
        return dataset.id, f"{dataset.name} {subtask}", subtask, dataset.split
    return dataset.id, dataset.name, dataset.config, dataset.split


def collect_scores(results: dict[str, dict], mode: str, eval_data: DataSource | None) -> list[Score]:
    """Every score in results/, each with what it was computed on. The model-index takes the run's own held-out
    score (tdlm-evaluate's only when the run has none) and downstream scores of whole tasks; `--limit` runs and
    scores without a document count stay out of it (leaderboards read the model-index as full results)."""
    metric, metric_name = objective_for(mode).held_out_metric
    held_out, tasks = [], {}
    for stem, result in results.items():
        loss = _held_out(result, mode)
        if loss is not None and eval_data is not None:
            own = stem.startswith(OWN_EVALUATION)
            held_out.append(Score("held-out likelihood", metric, metric_name, round(loss[0], 4),
                                  (eval_data.hub_id, eval_data.hub_id, eval_data.config, eval_data.split),
                                  _count(loss[1], "tokens") + (" (the run's own evaluation)" if own else ""),
                                  f"{stem}.json", own))
        for task, scores, docs, limited in _task_scores(result, stem):
            for name in ("acc", "acc_norm", "perplexity"):
                if isinstance(scores.get(name), (int, float)):
                    on = _count(docs, "documents") + (f" ({limited})" if limited else "")
                    tasks[(task, name)] = Score(task, name, name, round(float(scores[name]), 4), _task_dataset(task),
                                                on, f"{stem}.json", docs is not None and not limited)
    if held_out and not any(score.in_model_index for score in held_out):
        held_out[-1] = dataclasses.replace(held_out[-1], in_model_index=True)
    return held_out + list(tasks.values())


def eval_results(results: dict[str, dict], mode: str, eval_data: DataSource | None) -> list[EvalResult]:
    """The model-index entries of results/ (`collect_scores`)."""
    return model_index(collect_scores(results, mode, eval_data), mode)


def model_index(scores: list[Score], mode: str) -> list[EvalResult]:
    """The scores the model-index takes: benchmarks under the leaderboards' task type, the held-out score under the
    model's."""
    held_out_type = objective_for(mode).pipeline_tag
    return [EvalResult(task_type=held_out_type if s.task == "held-out likelihood" else BENCHMARK_TASK_TYPE,
                       task_name=s.task, dataset_type=s.dataset[0], dataset_name=s.dataset[1],
                       dataset_config=s.dataset[2], dataset_split=s.dataset[3], metric_type=s.metric,
                       metric_name=s.metric_name, metric_value=s.value)
            for s in scores if s.in_model_index]


def _results_table(scores: list[Score]) -> str:
    if not scores:
        return "No evaluation results were recorded with this checkpoint."
    rows = [f"| {s.task} | {s.dataset[1]} ({s.dataset[3] or 'n/a'}) | {s.metric_name} | {s.value} | {s.evaluated_on} "
            f"| {'yes' if s.in_model_index else 'no'} |" for s in scores]
    note = ("" if all(s.in_model_index for s in scores) else
            "\n\nRows marked *no* are not in the model-index: runs limited to part of a task (`--limit`), scores "
            "without a recorded document count, and held-out scores other than the run's own evaluation.")
    return ("| task | data set (split) | metric | value | evaluated on | in model-index |\n|---|---|---|---|---|---|\n"
            + "\n".join(rows) + note)


def usage_snippet(repo_id: str, training_mode: str) -> str:
    """Copy-paste Python for loading and sampling the published model."""
    return objective_for(training_mode).usage(repo_id)


INTENDED_USE = """A research artifact: study masked diffusion against autoregression at small scale (likelihood bounds,
sampling schedules, data-constrained training), teach how a diffusion LM is built, or start a LoRA fine-tune. It is
not meant for applications: its text is not factual, safe or fluent."""
LIMITATIONS = """- A tiny model trained on little data: expect incoherent text and near-chance benchmark accuracy.
- The diffusion model's held-out loss is a Monte-Carlo NELBO, an *upper bound* on its negative log-likelihood (in
  expectation), so its perplexity bound is not directly an AR perplexity; its multiple-choice scores use LLaDA's
  Monte-Carlo estimator and carry sampling noise.
- English Wikipedia-style text only (when trained on WikiText); biases of the source text are kept."""


def model_card(checkpoint, repo_id: str | None = None, license: str = LICENSE, experiment_dir=None,
               base_model: str | None = None) -> ModelCard:
    """The card of a checkpoint folder (`experiment_dir` defaults to the experiment holding it).
    `base_model`: what a merged LoRA fine-tune started from (named only when it is a Hub id)."""
    checkpoint = Path(checkpoint)
    config = read_json(checkpoint / "config.json")
    mode = config.get("training_mode", "diffusion")
    experiment = Experiment(experiment_dir) if experiment_dir is not None else experiment_of(checkpoint)
    raw_config = experiment.read_raw_config() if experiment is not None else None
    results = experiment.read_results() if experiment is not None else {}
    repo_id = repo_id or checkpoint.resolve().name
    data = (raw_config or {}).get("data") or {}
    train_data, eval_data = data_source(data, "train"), data_source(data, "eval")
    hub_base = base_model if base_model and not is_local_path(base_model) else None
    scores = collect_scores(results, mode, eval_data)
    datasets = sorted({s.hub_id for s in (train_data, eval_data) if s and _HUB_ID.match(s.hub_id)})
    metadata = ModelCardData(
        library_name="transformers", license=license, pipeline_tag=objective_for(mode).pipeline_tag, language="en",
        tags=["tdlm", mode, objective_for(mode).card_tag],
        datasets=datasets or None, base_model=hub_base, model_name=repo_id.split("/")[-1],
        eval_results=model_index(scores, mode) or None)
    return ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n" + "\n".join(
        _body(repo_id, mode, config, results.get("summary", {}), train_data, eval_data, base_model, hub_base,
              scores, raw_config)))


def _body(repo_id, mode, config, summary, train_data, eval_data, base_model, hub_base, scores, raw_config):
    objective = objective_for(mode).summary
    shape = ", ".join(f"{key} {config[key]}" for key in ("vocab_size", "hidden_size", "num_hidden_layers",
                                                         "num_attention_heads", "intermediate_size",
                                                         "max_position_embeddings") if key in config)
    lines = [f"# {repo_id.split('/')[-1]}", "",
             f"A TDLM (tiny diffusion language model) checkpoint, {objective}. The architecture is Llama-style "
             "(RoPE, SwiGLU, RMSNorm, tied embeddings) and ships as remote code: load it with "
             "`trust_remote_code=True`; no extra package is needed.", "",
             f"- training mode: `{mode}`", f"- shape: {shape}"]
    if summary.get("num_parameters"):
        lines.append(f"- parameters: {summary['num_parameters']:,}")
    lines += objective_for(mode).card_lines(config)
    if summary.get("train_tokens"):
        lines.append(f"- training tokens: {summary['train_tokens']:,} ({summary.get('epochs') or 0:.2f} epochs)")
    if train_data:
        lines.append(f"- training data: {train_data.describe()}")
    if eval_data:
        lines.append(f"- held-out data: {eval_data.describe()}")
    if base_model:
        lines.append(f"- LoRA fine-tune of {f'`{hub_base}`' if hub_base else 'a local TDLM checkpoint'}, "
                     "adapter merged into the weights")
    config_block = (f"```yaml\n{yaml.safe_dump(public_config(raw_config), sort_keys=False).rstrip()}\n```"
                    if raw_config else "The training configuration was not saved with this checkpoint.")
    return lines + ["", "## Intended use", "", INTENDED_USE, "", "## Limitations", "", LIMITATIONS, "",
                    "## How to sample", "", usage_snippet(repo_id, mode), "",
                    "## Evaluation results", "", _results_table(scores), "",
                    "## Training configuration", "", config_block, "",
                    "## Citation", "", "The method this model implements and studies:", "", CITATIONS, ""]
