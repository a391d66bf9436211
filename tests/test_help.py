"""Every command's --help reflows at any width: no paragraph broken mid-sentence, no `<bool>` on a flag,
every option explained, an example in every command and group.

The command tree is walked (typer's click group), so a command added later is checked too. A hard
line break is told from rich's own wrapping by width: rich breaks a line only when the next word
does not fit, so a line followed by a continuation line whose first word would have fit on it was
broken by the text itself.
"""
from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from migrator.cli import app

runner = CliRunner()
WIDTHS = (80, 120)
BORDER = "│"


def command_paths(cmd=None, path=()):
    """Every command and group of the tree as its argv path ((), ("status",), ("bench", "rollback"), ...)."""
    cmd = typer.main.get_command(app) if cmd is None else cmd
    yield path
    for name, sub in getattr(cmd, "commands", {}).items():
        if not getattr(sub, "hidden", False):
            yield from command_paths(sub, (*path, name))


ALL = list(command_paths())


def help_text(path, width: int) -> str:
    r = runner.invoke(app, [*path, "--help"], env={"COLUMNS": str(width), "TERMINAL_WIDTH": None},
                      terminal_width=width)
    assert r.exit_code == 0, (path, r.output)
    return r.stdout


def _text(line: str) -> tuple[int, str, int] | None:
    """(start column, text, room) of one output line's text; room is how many columns text starting
    there may fill before rich has to wrap (a box's border and its padding excluded)."""
    stripped = line.rstrip()
    if not stripped.strip() or stripped.lstrip().startswith(("╭", "╰")):
        return None
    if stripped.startswith(BORDER):
        border = len(stripped) - 1  # the right border's column
        start = len(stripped[1:border]) - len(stripped[1:border].lstrip()) + 1
        if start >= border:
            return None
        return start, stripped[start:border].rstrip(), border - 1 - start
    start = len(stripped) - len(stripped.lstrip())
    return start, stripped.strip(), WIDTH_NOW[0] - 1 - start


WIDTH_NOW = [80]


def _unmark(line: str) -> str:
    """A table line with typer's required marker (the `*` column) blanked: it is not text."""
    return re.sub(r"^│( *)\*", lambda m: "│" + m.group(1) + " ", line)


def hard_breaks(text: str, width: int) -> list[str]:
    """Pairs of consecutive lines where the second continues the first's paragraph (same column, same
    box) although its first word would have fitted on the first line: a break written into the text."""
    WIDTH_NOW[0] = width
    found = []
    lines = [_unmark(line) for line in text.split("\n")]
    row_col = {}  # per line in a box: the column where that box's rows start (its leftmost text)
    box: list[int] = []
    for i, line in enumerate(lines + ["╰"]):
        if line.startswith(BORDER):
            box.append(i)
        elif box:
            first = min((_text(lines[j]) or (999,))[0] for j in box)
            row_col.update({j: first for j in box})
            box = []
    for i, (a, b) in enumerate(zip(lines, lines[1:])):
        ta, tb = _text(a), _text(b)
        if ta is None or tb is None or a.startswith(BORDER) != b.startswith(BORDER):
            continue
        col, text_b, room = tb
        if not a.startswith(BORDER) and ta[0] > 1 and col == 1:
            found.append(f"{a.rstrip()}\n{b.rstrip()}")  # an example line too long for the width
            continue
        if not a.startswith(BORDER) and col > 1:
            continue  # an indented example block, kept line by line on purpose
        if a.startswith(BORDER) and col <= row_col[i + 1]:
            continue  # the next row of a table (an option, argument or command of its own)
        if a[col - 1:col] != " " or not a[col:col + 1].strip():
            continue  # line a has no text starting in that column: b is not its continuation
        if text_b.startswith("["):
            continue  # [default: ...], [env var: ...], [required]: rich puts these on lines of their own
        text_a = a.rstrip()[col:].rstrip(BORDER).rstrip()
        if len(text_a) + 1 + len(text_b.split(" ")[0]) <= room:
            found.append(f"{a.rstrip()}\n{b.rstrip()}")
    return found


def test_the_check_finds_a_hard_break():
    """The check can fail: a docstring with a line break mid-sentence is caught, its reflowed form passes."""
    demo = typer.Typer()

    @demo.command()
    def one() -> None:
        """First paragraph, on one line.

        This paragraph was written with a
        line break in the middle of a sentence.
        """

    @demo.command()
    def two() -> None:
        """Nothing to see."""

    r = runner.invoke(demo, ["one", "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert hard_breaks(r.stdout, 80) == [" This paragraph was written with a\n line break in the middle of a sentence."]
    from migrator.cli._help import reflow

    assert reflow(one.__doc__).split("\n\n")[1] == "This paragraph was written with a line break in the middle of a sentence."


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("path", ALL, ids=lambda p: " ".join(p) or "migrator")
def test_help_reflows(path, width):
    text = help_text(path, width)
    assert hard_breaks(text, width) == [], text
    assert "<bool>" not in text and "<list[str]>" not in text
    assert max(len(line) for line in text.split("\n")) <= width
    # Example commands stay an indented block (typer dedents a block that follows a lone "Example:").
    assert [line for line in text.split("\n") if re.match(r" (sudo )?migrator ", line)] == []
    assert "…" not in text, "a word cut short by rich: shorten it or let it wrap"


@pytest.mark.parametrize("path", ALL, ids=lambda p: " ".join(p) or "migrator")
def test_every_option_has_help_and_every_command_an_example(path):
    root = typer.main.get_command(app)
    cmd = root
    for name in path:
        cmd = cmd.commands[name]
    ctx = typer.Context(cmd, info_name="migrator")
    missing = [p.name for p in cmd.get_params(ctx) if not getattr(p, "help", None)]
    assert missing == [], f"{' '.join(path)}: options without help: {missing}"
    if path:
        assert "Example" in (cmd.help or ""), f"{' '.join(path)} has no example"


def test_short_options_mean_one_thing():
    """A short option has one meaning across the tree (-w is --watch wherever it exists)."""
    root = typer.main.get_command(app)
    meaning: dict[str, set[str]] = {}

    def walk(cmd):
        for p in cmd.params:
            longs = [o for o in getattr(p, "opts", []) if o.startswith("--")]
            for o in getattr(p, "opts", []):
                if re.fullmatch(r"-[A-Za-z]", o) and longs:
                    meaning.setdefault(o, set()).add(longs[0])
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    walk(root)
    assert {k: v for k, v in meaning.items() if len(v) > 1} == {}
    assert meaning["-m"] == {"--migration"} and meaning["-c"] == {"--config"}
    agent = root.commands["agent"]
    assert any("-m" in p.opts for p in agent.params if p.name == "migration")


def test_what_if_covers_every_threshold():
    """Every [thresholds] rule of canary.toml (migrator.config.Thresholds) can be replayed by what-if."""
    import dataclasses

    from migrator.config import Thresholds

    cmd = typer.main.get_command(app).commands["what-if"]
    opts = {o for p in cmd.params for o in p.opts}
    wanted = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(Thresholds)}
    assert wanted - opts == set()
    assert {"--rollback-after", "--no-data"} <= opts


# ---- errors: "did you mean", no placeholders, fixes that work -------------------------------------

PLAN = 'hosts = ["web-1", "web-2", "db-1"]\nslices = [1, 3]\n'


@pytest.fixture
def planned(tmp_path, monkeypatch):
    """A canary.toml in an empty directory (the working directory), its migration recorded by init."""
    monkeypatch.delenv("MIGRATOR_CONFIG", raising=False)
    monkeypatch.setattr("migrator.cli.agent.DRILL_DIR", tmp_path / "drills")
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "canary.toml"
    path.write_text(PLAN)
    r = runner.invoke(app, ["init", str(path)])
    assert r.exit_code == 0, r.output
    return path


def test_unknown_key_says_did_you_mean(tmp_path):
    path = tmp_path / "canary.toml"
    path.write_text(PLAN + "rollback_afer = 3\n")
    r = runner.invoke(app, ["plan", "-c", str(path)])
    assert (r.exit_code, r.stdout) == (1, "")
    assert r.stderr == (f"Error: {path}: rollback_afer: unknown key, did you mean rollback_after? (fix: rename it "
                        "rollback_after, or remove it; known keys here: database, database_file, window_seconds, hosts, "
                        "slices, rollback_after, no_data, phases, thresholds, probe, buffers, lab, source, agents, "
                        "notify, store)\n")
    path.write_text(PLAN + "[thresholds]\nmax_lag_p99 = 100\n")
    r = runner.invoke(app, ["plan", "-c", str(path)])
    assert r.exit_code == 1 and r.stderr.startswith(
        f"Error: {path}: thresholds.max_lag_p99: unknown key, did you mean max_lag_p99_ms? (fix: rename it "
        "max_lag_p99_ms, or remove it; known keys here: max_loss_rate, ")
    path.write_text(PLAN + "colour = 3\n")  # nothing close: no guess
    r = runner.invoke(app, ["plan", "-c", str(path)])
    assert r.exit_code == 1 and r.stderr.startswith(f"Error: {path}: colour: unknown key (fix: remove it; known keys")


def test_a_wrong_config_path_names_no_placeholder_and_no_option_already_given(tmp_path, monkeypatch):
    monkeypatch.delenv("MIGRATOR_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    wrong = tmp_path / "runs" / "canary.toml"
    r = runner.invoke(app, ["status", "-c", str(wrong)])
    assert (r.exit_code, r.stdout) == (1, "")
    assert r.stderr == (f"Error: {wrong}: does not exist (fix: check the path, or write the commented default "
                        f"there with `migrator init --example > {wrong}`)\n")
    r = runner.invoke(app, ["status"])  # no -c: then -c is the fix to suggest
    assert (r.exit_code, r.stderr) == (1, "Error: canary.toml: does not exist (fix: run the command where "
                                          "canary.toml is, give its path with -c, or write the commented default "
                                          "with `migrator init --example > canary.toml`)\n")
    monkeypatch.setenv("MIGRATOR_CONFIG", str(wrong))
    r = runner.invoke(app, ["status"])
    assert (r.exit_code, r.stderr) == (1, f"Error: {wrong}: does not exist (fix: point $MIGRATOR_CONFIG at an "
                                          "existing canary.toml, or give one with -c)\n")
    path = tmp_path / "bad.toml"
    path.write_text("hosts = = 1\n")
    r = runner.invoke(app, ["plan", "-c", str(path)])
    assert (r.exit_code, r.stderr) == (1, f"Error: {path}: is not valid TOML: Invalid value (at line 1, column 9) "
                                          "(fix: correct the TOML syntax there)\n")
    assert "<" not in r.stderr and "--config" not in r.stderr


def test_a_host_not_in_the_plan_gets_did_you_mean_and_no_advice_to_edit_the_plan(planned):
    import signal

    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        r = runner.invoke(app, ["agent", "--host", "web-3", "-c", str(planned)])
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    assert (r.exit_code, r.stdout) == (1, "")
    assert r.stderr == ("Error: host 'web-3' is not part of migration 1; did you mean web-2 or web-1? (fix: use a "
                        "host name from its plan: web-1, web-2, db-1; a host it does not list needs a new migration "
                        "planned with it)\n")
    assert "canary.toml" not in r.stderr
    r = runner.invoke(app, ["fault", "db1", "stall-ring", "-c", str(planned)])
    assert (r.exit_code, r.stdout) == (1, "")
    assert r.stderr == ("Error: host 'db1' is not part of migration 1; did you mean db-1? (fix: use a host name from "
                        "its plan: web-1, web-2, db-1; a host it does not list needs a new migration planned with it)\n")
    r = runner.invoke(app, ["fault", "cache-9", "stall-ring", "-c", str(planned)])  # nothing close: no guess
    assert r.exit_code == 1 and r.stderr.startswith("Error: host 'cache-9' is not part of migration 1 (fix: ")
