"""Downstream tasks read from local files, as prompts, and as lm-eval task YAMLs that build the same prompts.

Each task yields `Doc`s: a context string, answer choices (scored as `delimiter + choice`) and the gold
index. Prompt formats follow lm-eval's stock tasks (HellaSwag, MMLU's "default" variant, ARC, PIQA, BoolQ,
LAMBADA), so numbers are comparable to lm-eval's, and `write_lm_eval_tasks` writes task YAMLs for exactly
these prompts (tested: lm-eval's `hf` backend on those YAMLs gives our per-choice log-likelihoods).

Data layout (default `../shared/data` relative to the repository root, or any folder with the same layout):
  hellaswag/hellaswag_val.jsonl          query, endings, label
  mmlu/{dev,test}/<subject>_{dev,test}.csv   question,A,B,C,D,answer (no header)
  icl/<name>.jsonl                       MosaicML ICL: query, choices, gold (lambada: context, continuation)
"""

import csv
import json
import os
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
ICL_TASKS = {"arc_easy": "arc_easy", "arc_challenge": "arc_challenge", "piqa": "piqa", "boolq": "boolq",
             "lambada": "lambada_openai"}
TASK_NAMES = ("hellaswag", "mmlu", "mmlu_5shot", *ICL_TASKS)


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


def _icl_context(task: str, query: str) -> str:
    """lm-eval-style prompts from MosaicML ICL queries ("Question: ..." / "Passage: ...\nQuestion: ...")."""
    if task in ("arc_easy", "arc_challenge", "piqa"):
        return query.strip() + "\nAnswer:"
    if task == "boolq":
        return query.strip() + "?\nAnswer:" if not query.strip().endswith("?") else query.strip() + "\nAnswer:"
    raise KeyError(task)


def load_icl(task: str, data_dir=None, limit=None) -> list[Doc]:
    rows = _read_jsonl(resolve_data_dir(data_dir) / "icl" / f"{ICL_TASKS[task]}.jsonl", limit)
    if task == "lambada":
        return [Doc(row["context"].rstrip(), [row["continuation"].strip()], 0, kind="loglikelihood") for row in rows]
    return [Doc(_icl_context(task, row["query"]), list(row["choices"]), int(row["gold"])) for row in rows]


def load_task(name: str, data_dir=None, limit=None) -> dict[str, list[Doc]]:
    """{subtask: docs}. MMLU gives one entry per subject (limit applies per subject, as in lm-eval)."""
    if name == "hellaswag":
        return {"hellaswag": load_hellaswag(data_dir, limit)}
    if name in ("mmlu", "mmlu_5shot"):
        shots = 5 if name == "mmlu_5shot" else 0
        return {f"{name}_{s}": load_mmlu_subject(s, data_dir, shots, limit) for s in MMLU_SUBJECTS}
    if name.startswith("mmlu_"):
        base, subject = _mmlu_subtask(name)
        return {name: load_mmlu_subject(subject, data_dir, 5 if base == "mmlu_5shot" else 0, limit)}
    if name in ICL_TASKS:
        return {name: load_icl(name, data_dir, limit)}
    raise ValueError(f"unknown task {name!r}; expected one of {TASK_NAMES} or mmlu_<subject>")


def _mmlu_subtask(name: str) -> tuple[str, str]:
    """"mmlu_anatomy" -> ("mmlu", "anatomy"); "mmlu_5shot_anatomy" -> ("mmlu_5shot", "anatomy")."""
    for base in ("mmlu_5shot", "mmlu"):
        subject = name.removeprefix(base + "_")
        if name.startswith(base + "_") and subject in MMLU_SUBJECTS:
            return base, subject
    raise ValueError(f"unknown task {name!r}; expected one of {TASK_NAMES}, mmlu_<subject> or mmlu_5shot_<subject>")


def lm_eval_task_names(tasks) -> tuple[list[str], list[str]]:
    """(task families to write with `write_lm_eval_tasks`, lm-eval task/group names to run) for our names."""
    families, names = [], []
    for task in tasks:
        family = task if task in TASK_NAMES else _mmlu_subtask(task)[0]
        if family not in families:
            families.append(family)
        names.append(f"tdlm_{task}")
    return families, names


# ---------------------------------------------------------------------------------------------
# lm-eval task YAMLs (prefix "tdlm_" so they never clash with lm-eval's own tasks)
# ---------------------------------------------------------------------------------------------
_MC_METRICS = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
               {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]


def _task_yaml(task: str, data_file: Path, extra: dict) -> dict:
    config = {"task": task, "dataset_path": "json", "dataset_name": None,
              "dataset_kwargs": {"data_files": {"test": str(data_file)}}, "test_split": "test",
              "output_type": "multiple_choice", "doc_to_text": "{{context}}", "doc_to_choice": "{{choices}}",
              "doc_to_target": "{{gold}}", "target_delimiter": " ", "metric_list": _MC_METRICS,
              "metadata": {"version": 1.0}}
    config.update(extra)
    return {key: value for key, value in config.items() if value is not None or key == "dataset_name"}


def write_lm_eval_tasks(output_dir, tasks=TASK_NAMES, data_dir=None) -> list[str]:
    """Write lm-eval task YAMLs (and, for MMLU and ICL tasks, the normalised JSONL they read) to output_dir.

    HellaSwag reads the shared JSONL directly with lm-eval's own field templates; the others read
    JSONL files {context, choices, gold} written from our loaders, so both paths see identical prompts
    except for MMLU few-shot, which lm-eval assembles itself from the dev split (first_n sampler).
    Returns the task (or group) names to pass to lm-eval.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    data_dir = resolve_data_dir(data_dir)
    names = []

    def dump(name, config):
        (output_dir / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def write_rows(path, rows):
        with open(path, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")

    for task in tasks:
        if task == "hellaswag":
            dump("tdlm_hellaswag", _task_yaml("tdlm_hellaswag", data_dir / "hellaswag" / "hellaswag_val.jsonl",
                                              {"doc_to_text": "{{query}}", "doc_to_choice": "{{endings}}",
                                               "doc_to_target": "{{label}}"}))
            names.append("tdlm_hellaswag")
        elif task in ("mmlu", "mmlu_5shot"):
            shots = 5 if task == "mmlu_5shot" else 0
            subtasks = []
            for subject in MMLU_SUBJECTS:
                split_files = {}
                for split in ("test", "dev"):
                    rows = read_mmlu_csv(data_dir / "mmlu" / split / f"{subject}_{split}.csv")
                    split_files[split] = output_dir / f"mmlu_{subject}_{split}.jsonl"
                    write_rows(split_files[split], rows)
                name = f"tdlm_{task}_{subject}"
                dump(name, _task_yaml(name, split_files["test"], {
                    "dataset_kwargs": {"data_files": {k: str(v) for k, v in split_files.items()}},
                    "fewshot_split": "dev", "fewshot_config": {"sampler": "first_n"}, "num_fewshot": shots,
                    "description": mmlu_description(subject),
                    "doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}"
                                   "\nD. {{choices[3]}}\nAnswer:",
                    "doc_to_choice": list(MMLU_LETTERS), "doc_to_target": "answer",
                    "metric_list": [_MC_METRICS[0]]}))
                subtasks.append(name)
            dump(f"tdlm_{task}", {"group": f"tdlm_{task}", "task": subtasks, "aggregate_metric_list": [
                {"metric": "acc", "aggregation": "mean", "weight_by_size": True}], "metadata": {"version": 1.0}})
            names.append(f"tdlm_{task}")
        elif task in ICL_TASKS:
            docs = load_icl(task, data_dir)
            path = output_dir / f"icl_{task}.jsonl"
            write_rows(path, [{"context": d.context, "choices": d.choices, "gold": d.gold} for d in docs])
            extra = {}
            if task == "lambada":
                extra = {"output_type": "loglikelihood", "doc_to_target": "{{' ' + choices[0]}}", "doc_to_choice": None,
                         "metric_list": [{"metric": "perplexity", "aggregation": "perplexity",
                                          "higher_is_better": False},
                                         {"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
            dump(f"tdlm_{task}", _task_yaml(f"tdlm_{task}", path, extra))
            names.append(f"tdlm_{task}")
        else:
            raise ValueError(f"unknown task {task!r}; expected one of {TASK_NAMES}")
    return names
