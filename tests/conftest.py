"""Put the repository root on sys.path so tests import the in-tree `tdlm` package (no install needed); fixtures
shared by several test modules."""

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """~40 KB of WikiText-2 validation text to train on and ~8 KB of test text to evaluate on."""
    from training_helpers import WIKI

    folder = tmp_path_factory.mktemp("corpus")
    (folder / "train.txt").write_text((WIKI / "wiki.valid.raw").read_text()[:40_000])
    (folder / "eval.txt").write_text((WIKI / "wiki.test.raw").read_text()[:8_000])
    return folder
