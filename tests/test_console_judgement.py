"""The console's results table judges each configuration as the report does, and its intervals of
positive quantities never go below zero."""
from __future__ import annotations

import csv
import re

from .conftest import run_cli, tiny_study


def test_console_table_shows_the_reports_flags_and_positive_intervals(write_study, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("run", write_study(tiny_study("judged", repeats=2)), "--out", out, timeout=900,
                   env={"COLUMNS": "250"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "summary.csv") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["too_few_repeats"] == "True"
    report = (out / "report.html").read_text()
    judged = {code for code in ("too_few_repeats", "high_cv", "throughput_dominated", "ci_above_target")
              if row.get({"high_cv": "cv_above_target"}.get(code, code)) == "True"}
    assert "too_few_repeats" in judged
    table = proc.stdout[proc.stdout.index("results (mean"):]
    assert "goodput/W" not in table                             # served columns only where a study has them
    for code in judged:
        assert f"<code>{code}</code>" in report
        assert code in table                                   # the console says what the report says
    assert re.search(r"too_few_repeats: n = 2 finished repeat\(s\); about \d+ repeats would reach a 2 % CI", table)
    numbers = [float(x) for x in re.findall(r"\[(-?[\d.e+-]+), (-?[\d.e+-]+)\]", table) for x in x]
    assert numbers and min(numbers) > 0                       # tokens/s and TTFT intervals stay positive
