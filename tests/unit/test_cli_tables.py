"""The CLI's tables (rich lays them out): what someone else named is shown as text, never as
markup or terminal control, and piped output is whole lines a script can split."""

from __future__ import annotations

from rich.cells import cell_len

from podbay.tui.commands.common import print_table


def test_cells_are_text_and_piped_lines_are_never_cut(capsys):
    long = "a-message-longer-than-any-terminal-" * 10
    print_table([[7, "[bold red]pwn", "done", "\x1b]52;c;ZXZpbA==\x07clip"], [12, "日本語", "failed", long]],
                ["id", "name", "state", "message"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["ID", "NAME", "STATE", "MESSAGE"]
    assert "[bold red]pwn" in out[1]            # markup shown, not applied
    assert "\x1b" not in "".join(out) and "\x07" not in "".join(out)  # no escape reaches the terminal
    assert out[1].endswith("\\x1b]52;c;ZXZpbA==\\x07clip")
    assert out[2].endswith(long) and out[2].split()[:3] == ["12", "日本語", "failed"]
    # Columns line up as a terminal shows them (日本語 is six cells wide).
    assert cell_len(out[1][:out[1].index("done")]) == cell_len(out[2][:out[2].index("failed")])
    assert all(line == line.rstrip() for line in out)


def test_gpu_hours_read_as_people_read_them():
    from podbay.tui.fmt import gpu_hours

    # A short run is minutes, never "0.0" beside a chart that shows it.
    assert [gpu_hours(h) for h in (0, 0.005, 0.03, 0.5, 0.99, 0.999)] == ["0", "<1 min", "2 min", "30 min", "59 min", "1.0"]
    assert [gpu_hours(h) for h in (1, 12.34, 99.94, 1234.5)] == ["1.0", "12.3", "99.9", "1,234"]
