"""The ``kvroute`` entry point lists every subcommand and each one's ``--help`` works."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kvroute import cli
from kvroute_bench import commands as bench_commands

# Provided by the benchmark through the ``kvroute.commands`` entry-point group (pyproject.toml).
PLUGGED = ("bench", "demo")
ALL = sorted({*cli.SUBCOMMANDS, *PLUGGED})


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ALL:
        assert name in out


@pytest.mark.parametrize("name", ALL)
def test_each_subcommand_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([name, "--help"])
    assert exc.value.code == 0
    assert name in capsys.readouterr().out


def test_bench_and_demo_come_from_the_entry_point_group() -> None:
    """kvroute's own table does not name them; the installed entry points do."""
    found = cli.subcommands()
    assert not set(PLUGGED) & set(cli.SUBCOMMANDS)
    assert found["bench"].help == bench_commands.BENCH.help
    assert found["demo"].help == bench_commands.DEMO.help


@pytest.mark.parametrize(
    ("argv", "bench_loaded"),
    [(["epp", "--help"], False), (["schedule", "--help"], False), (["demo", "--help"], True)],
)
def test_only_the_chosen_subcommand_is_loaded(argv: list[str], bench_loaded: bool) -> None:
    """A fresh interpreter: ``kvroute epp`` must not load any of the benchmark's modules."""
    code = (
        "import sys\nfrom kvroute import cli\ntry:\n    cli.main(sys.argv[1:])\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('kvroute_bench')), file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60
    )
    loaded = done.stderr.strip().splitlines()[-1]
    assert (loaded != "[]") is bench_loaded, loaded


def test_plugged_command_without_its_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_commands, "BENCH_EXTRA_MODULES", ("rich", "kvroute_no_such_module"))
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--help"])
    assert "kvroute demo needs the [bench] extra" in str(exc.value.code)
    assert "kvroute[bench,gateway]" in str(exc.value.code)
    assert "kvroute_no_such_module" in str(exc.value.code)
