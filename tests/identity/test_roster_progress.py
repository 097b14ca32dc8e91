"""The import's progress bar: a total from the file, a bar on a terminal, silence in a pipe."""

from __future__ import annotations

import io
import re
from pathlib import Path

from carebridge.cli.roster import _Progress, count_rows
from identity.roster.csv_format import RowError


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def shown(terminal: Terminal) -> str:
    """What a person sees: the text without the terminal's control sequences."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.getvalue())


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
    assert terminal.getvalue() == ""  # nothing before the first rows
    progress.rows(100)
    assert "50%" in shown(terminal) and "100 of ~200 rows" in shown(terminal)
    progress.rows(250)  # the total overestimated nothing here, underestimated: still < 100%
    assert shown(terminal).rstrip().endswith("250 of ~200 rows")
    assert "100%" not in shown(terminal)
    progress.done()
    assert shown(terminal).endswith("\n")


def test_row_errors_are_printed_on_their_own_lines_around_the_bar() -> None:
    terminal = Terminal()
    progress = _Progress(terminal, total=10)
    progress.rows(5)
    progress.error(RowError(3, "dob", "is not a date"))
    progress.rows(8)
    progress.done()
    lines = [line.split("\r")[-1] for line in shown(terminal).splitlines()]
    assert str(RowError(3, "dob", "is not a date")) in lines
    assert lines[-1].endswith("8 of ~10 rows")


def test_a_pipe_gets_nothing() -> None:
    pipe = io.StringIO()
    progress = _Progress(pipe, total=10)
    progress.rows(5)
    progress.done()
    assert pipe.getvalue() == ""


def test_a_pipe_still_gets_the_row_errors() -> None:
    pipe = io.StringIO()
    progress = _Progress(pipe, total=10)
    progress.error(RowError(3, "dob", "is not a date"))
    assert pipe.getvalue() == f"{RowError(3, 'dob', 'is not a date')}\n"
