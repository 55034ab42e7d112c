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
