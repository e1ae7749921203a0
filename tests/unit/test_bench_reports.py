"""The benchmark reports' own pieces: a part rewrites only its section; a profile's shares add up."""

from __future__ import annotations

from pathlib import Path

from bench.profile import top
from bench.report import table, write_section


def test_a_part_rewrites_its_own_section_and_leaves_the_others(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    write_section("A", ["first A"], path)
    write_section("B", ["first B"], path)
    write_section("A", ["second A"], path)
    text = path.read_text()
    assert "second A" in text and "first A" not in text
    assert "first B" in text
    assert text.index("## A") < text.index("## B"), "a rewritten section keeps its place"
    assert text.count("## A") == 1 and text.count("## B") == 1


def test_a_table_has_one_row_per_entry_and_aligns_numbers_right() -> None:
    lines = table(["what", "n"], [["x", "1"], ["y", "2"]], ["l", "r"])
    assert lines[1] == "| --- | ---: |"
    assert lines[2:] == ["| x | 1 |", "| y | 2 |"]


def test_profile_shares_are_of_busy_samples_and_idle_waits_are_left_out(tmp_path: Path) -> None:
    raw = tmp_path / "worker-0.txt"
    raw.write_text(
        "process 1:python;main (/w/engine/cli.py:1);process_batch (/w/engine/runtime/stage.py:10) 30\n"
        "process 1:python;main (/w/engine/cli.py:1);process_batch (/w/engine/runtime/stage.py:10);"
        "decode (/w/schemas/wire.py:5) 10\n"
        "process 1:python;main (/w/engine/cli.py:1);select (/usr/lib/python3.11/selectors.py:468) 60\n"
    )
    found = top([raw])
    assert found["busy_samples"] == 40 and found["idle_samples"] == 60
    shares = dict(found["self"])
    assert shares == {"process_batch (/w/engine/runtime/stage.py)": 75.0, "decode (/w/schemas/wire.py)": 25.0}
    assert dict(found["inclusive"])["main (/w/engine/cli.py)"] == 100.0
