"""The LM head micro-benchmark (scripts/benchmark.py --head-grid) on CPU with a tiny grid: TDLM's heads agree with the
fp32 reference, missing libraries are skipped with a note, and the table says where a library is faster."""

import importlib.util
import json

import pytest

from tdlm.cli.benchmark import cli
from tdlm.research import head_benchmark


def test_head_grid_on_cpu_agrees_with_the_reference_and_skips_missing_libraries(tmp_path):
    heads = ("tdlm_triton", "tdlm_chunked", "torch_full_logits", "cut_cross_entropy", "liger_kernel")
    report = head_benchmark.run_head_grid([(40, 24), (70, 48)], vocab_size=300, heads=heads, repeats=2, warmup=1,
                                          output=tmp_path / "grid.json")
    assert json.loads((tmp_path / "grid.json").read_text()) == report
    assert [(r["rows"], r["hidden"], r["head"]) for r in report["rows"]] == [
        (n, h, head) for n, h in ((40, 24), (70, 48)) for head in heads]
    for row in report["rows"]:
        if row["head"] in head_benchmark.LIBRARIES:
            if importlib.util.find_spec(row["head"]) is None:
                assert row == {"rows": row["rows"], "hidden": row["hidden"], "head": row["head"],
                               "skipped": f"not installed (pip install {head_benchmark.LIBRARIES[row['head']]})"}
            continue
        assert row["median_ms"] > 0 and row["extra_memory_gb"] is None  # no memory counter on CPU
        for key in ("relative_loss_difference", "relative_grad_rows_difference", "relative_grad_weight_difference"):
            assert row[key] < 1e-5, (row["head"], key)  # fp32: summation order only
    table = head_benchmark.format_head_grid(report)
    assert "| 70 x 48 | tdlm_chunked |" in table and report["dtype"] == "float32"


def test_the_table_names_where_a_library_beats_the_kernel():
    def row(head, ms, hidden=768):
        return {"rows": 65536, "hidden": hidden, "head": head, "median_ms": ms, "extra_memory_gb": 0.1,
                "relative_loss_difference": 0.0, "relative_grad_rows_difference": 0.0,
                "relative_grad_weight_difference": 0.0}

    report = {"machine": "GPU", "dtype": "bfloat16", "vocab_size": 50258, "repeats": 5, "libraries": {},
              "rows": [row("tdlm_triton", 60.0), row("tdlm_chunked", 120.0), row("liger_kernel", 50.0),
                       row("tdlm_triton", 6.7, 128), row("cut_cross_entropy", 26.8, 128),
                       {"rows": 65536, "hidden": 128, "head": "liger_kernel", "error": "RuntimeError: no"}]}
    assert head_benchmark.faster_than_tdlm(report) == [
        {"rows": 65536, "hidden": 768, "head": "liger_kernel", "median_ms": 50.0, "tdlm_head": "tdlm_triton",
         "tdlm_median_ms": 60.0}]
    table = head_benchmark.format_head_grid(report)
    assert "At 65,536 x 768 liger_kernel (50.0 ms) beats tdlm_triton (60.0 ms)." in table
    assert "| 65,536 x 128 | liger_kernel | failed: RuntimeError: no |" in table


def test_head_grid_cli(tmp_path, capsys):
    output = tmp_path / "grid.json"
    assert cli(["--head-grid", "33x16", "--vocab-size", "100", "--heads", "tdlm_chunked", "--repeats", "1",
                "--warmup", "0", "--output", str(output)]) == 0
    assert "| 33 x 16 | tdlm_chunked |" in capsys.readouterr().out
    assert json.loads(output.read_text())["rows"][0]["head"] == "tdlm_chunked"
    assert cli(["--head-grid", "33x16", "--heads", "fast"]) == 2  # usage error: the head is named
    assert "--heads: unknown ['fast']" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--head-grid: expected ROWSxHIDDEN"):
        head_benchmark.parse_shapes("65536,768")
    assert cli(["--steps", "1"]) == 2  # neither a config nor a grid
