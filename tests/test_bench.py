"""`python -m ferrotrain.bench` runs end to end on tiny sizes (it measures nothing here: the
timings of a smoke run are not checked, only that every row and the table come out)."""

from __future__ import annotations

import pytest

from ferrotrain.bench.__main__ import format_table, main, write_chart
from ferrotrain.bench.workloads import Row


def test_bench_runs_tiny_workloads_and_prints_one_table(capsys, tmp_path) -> None:
    chart = tmp_path / "bench.png"
    assert main(["--tiny", "--repeats", "1", "--workloads", "W1,W2,W3,W5", "--no-lightning",
                 "--chart", str(chart)]) == 0
    out = capsys.readouterr().out
    for text in ("W1 loop overhead", "raw loop", "ferrotrain quiet", "W2 slow loader", "ideal max(load, step)",
                 "W3 checkpoint stall", "W5 clip 20x100", "ratio"):
        assert text in out, text
    assert chart.is_file() or "matplotlib is not installed" in out


def test_bench_rejects_unknown_workloads() -> None:
    with pytest.raises(SystemExit):
        main(["--workloads", "W9"])


def test_table_ratios_against_the_baseline(tmp_path) -> None:
    rows = [Row("W", "raw loop", 0.001, "s/step"), Row("W", "trainer", 0.0015, "s/step", "raw loop")]
    table = format_table(rows)
    assert "1.500" in table and "1000.0" in table and "us/step" in table
    pytest.importorskip("matplotlib")
    assert write_chart(rows, str(tmp_path / "c.png")) is not None


def test_matrix_runs_each_row_against_its_raw_loop_under_a_terminal_and_redirected(capsys, tmp_path) -> None:
    from ferrotrain.bench import matrix

    chart = tmp_path / "matrix.png"
    assert matrix.main(["--tiny", "--repeats", "1", "--only", "map/dict, dropout;W7 validate", "--no-lightning",
                        "--chart", str(chart)]) == 0
    out = capsys.readouterr().out
    for text in ("map/dict, dropout, 2 metrics (1 on bar)", "W7 validate()", "terminal", "redirected",
                 "raw (control) / raw", "ferrotrain / raw"):
        assert text in out, text
    assert chart.is_file() or "matplotlib is not installed" in out


def test_matrix_table_marks_rows_over_the_goal(tmp_path) -> None:
    from ferrotrain.bench.matrix import MatrixRow, format_matrix, write_matrix_chart

    rows = [MatrixRow("a", "terminal", 100.0, {"raw (control)": 1.0, "ferrotrain": 1.02}),
            MatrixRow("b", "redirected", 200.0, {"ferrotrain": 1.2, "lightning": 4.0})]
    table = format_matrix(rows)
    line_a, line_b = (next(line for line in table.splitlines() if line.startswith(k)) for k in ("a ", "b "))
    assert "1.020" in line_a and not line_a.endswith("over")
    assert "1.200" in line_b and "4.000" in line_b and line_b.endswith("over")
    pytest.importorskip("matplotlib")
    assert write_matrix_chart(rows, str(tmp_path / "m.png")) is not None


def test_matrix_on_cuda_without_a_gpu_says_so(capsys) -> None:
    import torch

    from ferrotrain.bench import matrix

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert matrix.main(["--device", "cuda", "--tiny"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
