"""Downstream tasks read from local files, as prompts, and as lm-eval task YAMLs that build the same prompts.

Every task is a `Task` record in `TASKS` (its loader, its lm-eval YAML writer, its Hub data set for the model card);
`register_task` adds one, also from outside the package. Each task yields `Doc`s: a context string, answer choices
(scored as `delimiter + choice`) and the gold index. Prompt formats follow lm-eval's stock tasks (HellaSwag, MMLU's
"default" variant, ARC, PIQA, BoolQ, LAMBADA), so numbers are comparable to lm-eval's, and `write_lm_eval_tasks`
writes task YAMLs for exactly these prompts (tested: lm-eval's `hf` backend on those YAMLs gives our per-choice
log-likelihoods).

Data layout (default `../shared/data` relative to the repository root, or any folder with the same layout):
  hellaswag/hellaswag_val.jsonl          query, endings, label
  mmlu/{dev,test}/<subject>_{dev,test}.csv   question,A,B,C,D,answer (no header)
  icl/<name>.jsonl                       MosaicML ICL: query, choices, gold (lambada: context, continuation)
"""

import csv
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"
DATA_DIR_ENV = "TDLM_DATA_DIR"  # overrides the default (e.g. on a machine where shared/ sits inside the repo)

MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics", "high_school_mathematics",
    "high_school_microeconomics", "high_school_physics", "high_school_psychology", "high_school_statistics",
    "high_school_us_history", "high_school_world_history", "human_aging", "human_sexuality", "international_law",
    "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing", "medical_genetics",
    "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition", "philosophy", "prehistory",
    "professional_accounting", "professional_law", "professional_medicine", "professional_psychology",
    "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology", "world_religions",
)
MMLU_LETTERS = ("A", "B", "C", "D")
_ICL_FILES = {"arc_easy": "arc_easy", "arc_challenge": "arc_challenge", "piqa": "piqa", "boolq": "boolq",
              "lambada": "lambada_openai"}  # task -> file stem under icl/


@dataclass
class Doc:
    """One question. kind "multiple_choice": score `delimiter + c` for c in choices, gold = index.
    kind "loglikelihood" (LAMBADA): choices holds the one target continuation."""

    context: str
    choices: list[str]
    gold: int = 0
    delimiter: str = " "
    kind: str = "multiple_choice"
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class HubDataset:
    """The Hub data set a task's local copy comes from (the model card's model-index names it)."""

    id: str
    name: str
    config: str | None = None
    split: str | None = None


@dataclass(frozen=True)
class Task:
    """An evaluation task.

    load(data_dir, limit) -> [Doc]: its questions (at most `limit`); `data_dir` is what the caller passed (None:
        `resolve_data_dir()`). A task with `subtasks` returns {subtask name: [Doc]} (limit per subtask) and is also
        called as load(data_dir, limit, subtask=<one of subtasks>), which `load_task("<name>_<subtask>")` runs.
    lm_eval(task, output_dir, data_dir) -> {YAML file stem: lm-eval task config}: lm-eval tasks building the same
        prompts, the main one "tdlm_<name>" (a task or a group); it may write the data files they read into
        output_dir. None: the loaded docs as JSONL and one multiple-choice task on them (`docs_lm_eval_task`).
    dataset: the Hub data set of the local copy, for the model card; None: the card names the task only.
    subtasks: parts evaluated alone as "<name>_<subtask>" (MMLU's subjects).
    """

    name: str
    load: Callable
    lm_eval: Callable | None = None
    dataset: HubDataset | None = None
    subtasks: tuple[str, ...] = ()


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add (or replace) a task under `task.name`: `load_task`, `run_downstream`, `tdlm-evaluate --tasks`,
    `write_lm_eval_tasks` and the model card then know it."""
    if not isinstance(task, Task):
        raise TypeError(f"register_task expects a Task, got {type(task).__name__}")
    TASKS[task.name] = task
    return task


def resolve_data_dir(data_dir=None) -> Path:
    """`data_dir`, else $TDLM_DATA_DIR, else ../shared/data next to the repository, else ./shared/data in it."""
    if data_dir is None and os.environ.get(DATA_DIR_ENV):
        data_dir = os.environ[DATA_DIR_ENV]
    candidates = [Path(data_dir)] if data_dir is not None else [DEFAULT_DATA_DIR,
                                                               Path(__file__).resolve().parents[2] / "shared" / "data"]
    for path in candidates:
        if path.is_dir():
            return path
    raise FileNotFoundError(f"benchmark data folder not found: {candidates[0]} (pass --data-dir or set {DATA_DIR_ENV})")


def _read_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"task file not found: {path}")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                rows.append(json.loads(line))
            if limit is not None and len(rows) >= limit:
                break
    return rows


# ---------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------
def load_hellaswag(data_dir=None, limit=None) -> list[Doc]:
    rows = _read_jsonl(resolve_data_dir(data_dir) / "hellaswag" / "hellaswag_val.jsonl", limit)
    return [Doc(row["query"], list(row["endings"]), int(row["label"])) for row in rows]


def read_mmlu_csv(path: Path) -> list[dict]:
    """Rows {question, choices[4], answer (0-3)} of one headerless MMLU CSV."""
    if not path.is_file():
        raise FileNotFoundError(f"MMLU file not found: {path}")
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for number, record in enumerate(csv.reader(handle)):
            if len(record) != 6 or record[5] not in MMLU_LETTERS:
                raise ValueError(f"{path}:{number + 1}: expected question,A,B,C,D,answer; got {record[:1]}...")
            rows.append({"question": record[0], "choices": record[1:5], "answer": MMLU_LETTERS.index(record[5])})
    return rows


def mmlu_description(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def mmlu_question_text(row: dict) -> str:
    """lm-eval's MMLU `doc_to_text`."""
    lines = [row["question"].strip()] + [f"{letter}. {choice}" for letter, choice in zip(MMLU_LETTERS, row["choices"])]
    return "\n".join(lines) + "\nAnswer:"


def load_mmlu_subject(subject: str, data_dir=None, num_fewshot: int = 0, limit=None) -> list[Doc]:
    """Questions of one subject's test split; few-shot examples are the first `num_fewshot` dev questions."""
    root = resolve_data_dir(data_dir) / "mmlu"
    test = read_mmlu_csv(root / "test" / f"{subject}_test.csv")[:limit]
    shots = read_mmlu_csv(root / "dev" / f"{subject}_dev.csv")[:num_fewshot] if num_fewshot else []
    if len(shots) < num_fewshot:
        raise ValueError(f"MMLU {subject}: {num_fewshot}-shot needs {num_fewshot} dev questions, found {len(shots)}")
    prefix = mmlu_description(subject) + "".join(
        f"{mmlu_question_text(s)} {MMLU_LETTERS[s['answer']]}\n\n" for s in shots)
    return [Doc(prefix + mmlu_question_text(row), list(MMLU_LETTERS), row["answer"], meta={"subject": subject})
            for row in test]


def _mmlu_loader(num_fewshot: int):
    def load(data_dir=None, limit=None, subtask=None):
        subjects = MMLU_SUBJECTS if subtask is None else (subtask,)
        return {subject: load_mmlu_subject(subject, data_dir, num_fewshot, limit) for subject in subjects}

    return load


def _icl_context(task: str, query: str) -> str:
    """lm-eval-style prompts from MosaicML ICL queries ("Question: ..." / "Passage: ...\nQuestion: ...")."""
    if task in ("arc_easy", "arc_challenge", "piqa"):
        return query.strip() + "\nAnswer:"
    if task == "boolq":
        return query.strip() + "?\nAnswer:" if not query.strip().endswith("?") else query.strip() + "\nAnswer:"
    raise KeyError(task)


def load_icl(task: str, data_dir=None, limit=None) -> list[Doc]:
    rows = _read_jsonl(resolve_data_dir(data_dir) / "icl" / f"{_ICL_FILES[task]}.jsonl", limit)
    if task == "lambada":
        return [Doc(row["context"].rstrip(), [row["continuation"].strip()], 0, kind="loglikelihood") for row in rows]
    return [Doc(_icl_context(task, row["query"]), list(row["choices"]), int(row["gold"])) for row in rows]


def resolve_task(name: str) -> tuple[Task, str | None]:
    """(task, subtask) of a task name: "boolq" -> (boolq, None); "mmlu_5shot_anatomy" -> (mmlu_5shot, "anatomy")."""
    if name in TASKS:
        return TASKS[name], None
    for task in sorted(TASKS.values(), key=lambda t: -len(t.name)):  # mmlu_5shot_x before mmlu_x
        subtask = name.removeprefix(task.name + "_")
        if name.startswith(task.name + "_") and subtask in task.subtasks:
            return task, subtask
    with_parts = [f"{t.name}_<{'|'.join(t.subtasks[:2])}|...>" for t in TASKS.values() if t.subtasks]
    raise ValueError(f"unknown task {name!r}; expected one of {tuple(TASKS)}" +
                     (f" or {', '.join(with_parts)}" if with_parts else ""))


def load_task(name: str, data_dir=None, limit=None) -> dict[str, list[Doc]]:
    """{subtask: docs}. MMLU gives one entry per subject (limit applies per subject, as in lm-eval)."""
    task, subtask = resolve_task(name)
    if subtask is not None:
        return {name: task.load(data_dir, limit, subtask=subtask)[subtask]}
    docs = task.load(data_dir, limit)
    if isinstance(docs, dict):
        return {f"{name}_{part}": part_docs for part, part_docs in docs.items()}
    return {name: docs}


def lm_eval_task_names(tasks) -> tuple[list[str], list[str]]:
    """(task families to write with `write_lm_eval_tasks`, lm-eval task/group names to run) for our names."""
    families, names = [], []
    for task in tasks:
        family = resolve_task(task)[0].name
        if family not in families:
            families.append(family)
        names.append(f"tdlm_{task}")
    return families, names


# ---------------------------------------------------------------------------------------------
# lm-eval task YAMLs (prefix "tdlm_" so they never clash with lm-eval's own tasks)
# ---------------------------------------------------------------------------------------------
_MC_METRICS = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
               {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]


def task_yaml(task: str, data_file: Path, extra: dict) -> dict:
    """An lm-eval multiple-choice task named `task` over a JSONL file of {context, choices, gold}; `extra`
    overrides or adds keys (a None value drops the key)."""
    config = {"task": task, "dataset_path": "json", "dataset_name": None,
              "dataset_kwargs": {"data_files": {"test": str(data_file)}}, "test_split": "test",
              "output_type": "multiple_choice", "doc_to_text": "{{context}}", "doc_to_choice": "{{choices}}",
              "doc_to_target": "{{gold}}", "target_delimiter": " ", "metric_list": _MC_METRICS,
              "metadata": {"version": 1.0}}
    config.update(extra)
    return {key: value for key, value in config.items() if value is not None or key == "dataset_name"}


def write_jsonl(path: Path, rows) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def docs_lm_eval_task(task: Task, output_dir: Path, data_dir) -> dict[str, dict]:
    """The default lm-eval writer: the task's docs as JSONL and one lm-eval task on them (a loglikelihood task with
    perplexity and accuracy when the docs are "loglikelihood" ones, as LAMBADA's)."""
    docs = task.load(data_dir, None)
    path = write_jsonl(output_dir / f"icl_{task.name}.jsonl",
                       [{"context": d.context, "choices": d.choices, "gold": d.gold} for d in docs])
    extra = {}
    if docs and docs[0].kind == "loglikelihood":
        extra = {"output_type": "loglikelihood", "doc_to_target": "{{' ' + choices[0]}}", "doc_to_choice": None,
                 "metric_list": [{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                                 {"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
    return {f"tdlm_{task.name}": task_yaml(f"tdlm_{task.name}", path, extra)}


def _hellaswag_lm_eval(task: Task, output_dir: Path, data_dir) -> dict[str, dict]:
    """lm-eval reads the shared JSONL directly with its own field templates."""
    data_file = resolve_data_dir(data_dir) / "hellaswag" / "hellaswag_val.jsonl"
    return {"tdlm_hellaswag": task_yaml("tdlm_hellaswag", data_file, {
        "doc_to_text": "{{query}}", "doc_to_choice": "{{endings}}", "doc_to_target": "{{label}}"})}


def _mmlu_lm_eval(num_fewshot: int):
    """A group of one task per subject over JSONL copies of the CSVs; lm-eval assembles few-shot prompts itself from
    the dev split (first_n sampler)."""
    def write(task: Task, output_dir: Path, data_dir) -> dict[str, dict]:
        configs, subtasks = {}, []
        for subject in MMLU_SUBJECTS:
            split_files = {split: write_jsonl(output_dir / f"mmlu_{subject}_{split}.jsonl", read_mmlu_csv(
                resolve_data_dir(data_dir) / "mmlu" / split / f"{subject}_{split}.csv")) for split in ("test", "dev")}
            name = f"tdlm_{task.name}_{subject}"
            configs[name] = task_yaml(name, split_files["test"], {
                "dataset_kwargs": {"data_files": {k: str(v) for k, v in split_files.items()}},
                "fewshot_split": "dev", "fewshot_config": {"sampler": "first_n"}, "num_fewshot": num_fewshot,
                "description": mmlu_description(subject),
                "doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}"
                               "\nD. {{choices[3]}}\nAnswer:",
                "doc_to_choice": list(MMLU_LETTERS), "doc_to_target": "answer",
                "metric_list": [_MC_METRICS[0]]})
            subtasks.append(name)
        configs[f"tdlm_{task.name}"] = {"group": f"tdlm_{task.name}", "task": subtasks, "aggregate_metric_list": [
            {"metric": "acc", "aggregation": "mean", "weight_by_size": True}], "metadata": {"version": 1.0}}
        return configs

    return write


def write_lm_eval_tasks(output_dir, tasks=None, data_dir=None) -> list[str]:
    """Write lm-eval task YAMLs (and the data files they read) of `tasks` (default: every registered task) to
    output_dir, each through its `Task.lm_eval` writer, so both paths see identical prompts except for MMLU
    few-shot, which lm-eval assembles itself. Returns the task (or group) names to pass to lm-eval.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for name in (tuple(TASKS) if tasks is None else tasks):
        if name not in TASKS:
            raise ValueError(f"unknown task {name!r}; expected one of {tuple(TASKS)}")
        task = TASKS[name]
        for stem, config in (task.lm_eval or docs_lm_eval_task)(task, output_dir, data_dir).items():
            (output_dir / f"{stem}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        names.append(f"tdlm_{name}")
    return names


# ---------------------------------------------------------------------------------------------
# The tasks of this package (lm-eval's stock prompts on ../shared/data)
# ---------------------------------------------------------------------------------------------
def _icl_task(name: str, dataset: HubDataset) -> Task:
    return Task(name, lambda data_dir=None, limit=None: load_icl(name, data_dir, limit), dataset=dataset)


_MMLU = HubDataset("cais/mmlu", "MMLU", "all", "test")
for _task in (
    Task("hellaswag", load_hellaswag, _hellaswag_lm_eval,
         HubDataset("Rowan/hellaswag", "HellaSwag", None, "validation")),
    Task("mmlu", _mmlu_loader(0), _mmlu_lm_eval(0), _MMLU, MMLU_SUBJECTS),
    Task("mmlu_5shot", _mmlu_loader(5), _mmlu_lm_eval(5), _MMLU, MMLU_SUBJECTS),
    _icl_task("arc_easy", HubDataset("allenai/ai2_arc", "ARC-Easy", "ARC-Easy", "test")),
    _icl_task("arc_challenge", HubDataset("allenai/ai2_arc", "ARC-Challenge", "ARC-Challenge", "test")),
    _icl_task("piqa", HubDataset("ybisk/piqa", "PIQA", None, "validation")),
    _icl_task("boolq", HubDataset("google/boolq", "BoolQ", None, "validation")),
    _icl_task("lambada", HubDataset("EleutherAI/lambada_openai", "LAMBADA (OpenAI)", "default", "test")),
):
    register_task(_task)
