"""Where text comes from: local files, a Hub dataset, or a `datasets` object passed in; all read by `datasets`.

A source knows three things: how to load itself as a `datasets.Dataset`/`IterableDataset`, a fingerprint that
changes when its content does (so a prepared cache can tell it is stale), and whether its rows are documents
(JSON records, Parquet/CSV rows, Hub rows: EOS after each) or lines of one running text (`.txt`/`.raw` files
through `datasets`' text loader, newlines kept: the WikiText convention, no EOS between lines).
`datasets` is imported only here and only when a source is loaded (the GPU machines have no `datasets`).
"""

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

# suffix (after stripping a compression suffix) -> `datasets` packaged builder
BUILDERS = {".txt": "text", ".raw": "text", ".text": "text", ".jsonl": "json", ".json": "json",
            ".parquet": "parquet", ".csv": "csv"}
COMPRESSIONS = (".gz", ".zst", ".bz2", ".xz")
TEXT_TYPES = ("string", "large_string")


def builder_of(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    return BUILDERS.get(suffixes[-1]) if suffixes else "text"  # no suffix: plain text


def resolve_files(patterns) -> list[Path]:
    """Files named by paths, globs and folders (searched recursively for known suffixes), sorted within each
    pattern; a pattern that matches nothing raises FileNotFoundError naming it."""
    patterns = [patterns] if isinstance(patterns, (str, os.PathLike)) else list(patterns)
    files = []
    for pattern in map(str, patterns):
        path = Path(pattern)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and builder_of(p) and p.suffix)
        elif path.is_file():
            found = [path]
        else:
            found = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not found:
            raise FileNotFoundError(f"data file not found: {pattern}")
        files.extend(found)
    return files


@dataclass
class FileSource:
    """Local files of one format (`.txt/.raw`, `.jsonl/.json`, `.parquet`, `.csv`, optionally `.gz/.zst/...`)."""

    patterns: list = field(default_factory=list)
    text_field: str = "text"

    def __post_init__(self):
        self.files = resolve_files(self.patterns)
        builders = {builder_of(f) for f in self.files}
        if None in builders:
            bad = next(f for f in self.files if builder_of(f) is None)
            raise ValueError(f"data file {bad}: unsupported suffix; use .txt/.raw, .jsonl/.json, .parquet or .csv "
                             f"(optionally {'/'.join(COMPRESSIONS)})")
        if len(builders) > 1:
            raise ValueError(f"data files {self.name} mix formats {sorted(builders)}; prepare one format at a time")
        self.builder = builders.pop()
        for f in self.files:
            if f.stat().st_size == 0:
                raise ValueError(f"data file is empty: {f}")

    @property
    def name(self) -> str:
        return ", ".join(map(str, self.files[:3])) + (f" (+{len(self.files) - 3} files)" if len(self.files) > 3 else "")

    @property
    def rows_are_lines(self) -> bool:
        return self.builder == "text"

    def spec(self) -> dict:
        return {"files": [str(f.resolve()) for f in self.files], "text_field": self.text_field}

    def fingerprint(self) -> dict:
        """Path, size and modification time of every file: cheap, and needs no `datasets`."""
        return {"files": [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in self.files]}

    def load(self):
        import datasets

        kwargs = {"keep_linebreaks": True} if self.builder == "text" else {}
        try:
            return datasets.load_dataset(self.builder, data_files=[str(f) for f in self.files], split="train",
                                         **kwargs)
        except datasets.exceptions.DatasetGenerationError as error:  # e.g. a binary file among text files
            raise ValueError(self._unreadable(error.__cause__ or error)) from None

    def _unreadable(self, cause) -> str:
        """What `datasets` failed on, named: for text, the first file that is not UTF-8; else all of them."""
        if isinstance(cause, UnicodeDecodeError):
            from ..tokenization import is_utf8_text

            bad = next((f for f in self.files if f.suffix.lower() not in COMPRESSIONS and not is_utf8_text(f)), None)
            if bad is not None:
                return f"data file {bad} is not UTF-8 text ({cause.reason}); training data must be text"
        detail = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        return f"data files {self.name}: cannot be read as {self.builder} data ({detail})"


@dataclass
class HubSource:
    """A Hub dataset split, e.g. ("Salesforce/wikitext", "wikitext-2-raw-v1", "train"); `streaming` for large ones."""

    name: str
    config: str | None = None
    split: str = "train"
    revision: str | None = None
    streaming: bool = False
    text_field: str = "text"
    rows_are_lines = False
    _dataset: object = field(default=None, repr=False)

    def __post_init__(self):
        if self.name in BUILDERS.values() or self.name in ("parquet", "arrow", "pandas"):
            raise ValueError(f"data.hub_dataset {self.name!r} is a file format, not a dataset; list the files in "
                             f"data.train_files instead")

    def spec(self) -> dict:
        return {"hub": self.name, "config": self.config, "split": self.split, "revision": self.revision,
                "streaming": self.streaming, "text_field": self.text_field}

    def fingerprint(self) -> dict:
        """The loaded split's `datasets` fingerprint (changes with the Hub revision); when streaming, the commit
        the revision resolves to (asking the Hub)."""
        if self.streaming:
            from huggingface_hub import HfApi

            return {"revision": HfApi().dataset_info(self.name, revision=self.revision).sha}
        return {"revision": self.revision, "datasets_fingerprint": self.load()._fingerprint}

    def load(self):
        import datasets

        if self._dataset is None:
            self._dataset = datasets.load_dataset(self.name, self.config, split=self.split, revision=self.revision,
                                                  streaming=self.streaming)
        return self._dataset


@dataclass
class DatasetSource:
    """A `datasets.Dataset` or `IterableDataset` passed in by the caller; its rows are documents."""

    dataset: object
    text_field: str = "text"
    rows_are_lines = False

    @property
    def name(self) -> str:
        return f"the {type(self.dataset).__name__} passed in"

    def spec(self) -> dict:
        return {"dataset": self.name, **self.fingerprint(), "text_field": self.text_field}

    def fingerprint(self) -> dict:
        """`datasets`' own fingerprint; an IterableDataset has none, so its cache can never be checked."""
        return {"datasets_fingerprint": getattr(self.dataset, "_fingerprint", None)}

    def load(self):
        return self.dataset


def as_source(obj, text_field: str = "text"):
    """A source from what a caller holds: a source, a Dataset/IterableDataset, or file paths/globs/folders."""
    if isinstance(obj, (FileSource, HubSource, DatasetSource)):
        return obj
    if isinstance(obj, (str, os.PathLike, list, tuple)):
        return FileSource(obj, text_field)
    if hasattr(obj, "column_names") and hasattr(obj, "map"):
        return DatasetSource(obj, text_field)
    raise TypeError(f"cannot read text from a {type(obj).__name__}; pass files, a Dataset or an IterableDataset")


def check_text_column(dataset, source) -> None:
    """The text field exists and holds strings (an IterableDataset without features is checked per batch)."""
    if getattr(dataset, "num_rows", None) == 0:
        raise ValueError(f"{source.name}: the dataset is empty")
    columns = dataset.column_names
    if columns is not None and source.text_field not in columns:
        raise ValueError(f"{source.name}: no field {source.text_field!r} (columns: {', '.join(columns)}); "
                         f"set data.text_field / --text-field")
    feature = (dataset.features or {}).get(source.text_field)
    if feature is not None and getattr(feature, "dtype", None) not in TEXT_TYPES:
        raise ValueError(f"{source.name}: field {source.text_field!r} holds {feature}, not text")
