"""The import's progress bar: a total from the file, a bar on a terminal, silence in a pipe."""

from __future__ import annotations

import io
from pathlib import Path

from carebridge.cli.roster import _Progress, count_rows


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_count_rows_counts_data_lines_with_or_without_a_final_line_break(tmp_path: Path) -> None:
    ended = tmp_path / "ended.csv"
    ended.write_bytes(b"header\na\nb\nc\n")
    open_ended = tmp_path / "open.csv"
    open_ended.write_bytes(b"header\na\nb")
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    assert [count_rows(ended), count_rows(open_ended), count_rows(empty)] == [3, 2, 0]
    assert count_rows(tmp_path / "missing.csv") is None


def test_a_terminal_gets_a_bar_that_stops_short_of_full_until_done() -> None:
    terminal = Terminal()
    progress = _Progress(terminal, total=200)
    progress.rows(100)
    assert "[" + "#" * 15 + "." * 15 + "]" in terminal.getvalue()
    assert "50%" in terminal.getvalue() and "100 of ~200 rows" in terminal.getvalue()
    progress.rows(250)  # the total overestimated nothing here, underestimated: still < 100%
    assert terminal.getvalue().rstrip().endswith("250 of ~200 rows")
    assert "100%" not in terminal.getvalue()
    progress.done()
    assert terminal.getvalue().endswith("\n")


def test_a_pipe_gets_nothing() -> None:
    pipe = io.StringIO()
    progress = _Progress(pipe, total=10)
    progress.rows(5)
    progress.done()
    assert pipe.getvalue() == ""
