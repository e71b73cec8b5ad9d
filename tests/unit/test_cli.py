"""The CLI: --help for every subcommand, one-line errors and exit codes."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

import scorebeater.config
import scorebeater.daemon
from scorebeater.cli import HANDLERS, build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in HANDLERS:
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args([command, "--help"])
        assert info.value.code == 0
        assert "usage: scorebeater" in capsys.readouterr().out


def test_check_config_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(ROOT / "config/scorebeater.toml")]) == 0
    out = capsys.readouterr()
    assert '"backend": "local"' in out.out
    assert "ok" in out.err


def test_config_errors_are_lines_not_tracebacks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[storage]\nbackend = "nope"\n[admin]\nport = -1\n')
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "storage.backend" in err
    assert "admin.port" in err


def test_python_dash_m_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "scorebeater", "--version"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0
    assert proc.stdout.startswith("scorebeater ")


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["replay-api", "--speed", "-3"])
    assert info.value.code == 2
    assert "must be > 0" in capsys.readouterr().err


def test_a_command_loads_its_config_once_and_async_handlers_run_on_one_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The config a command runs with is the one logging was configured from: read once."""
    loads: list[Path] = []
    real_load = scorebeater.config.load_config

    def counting_load(path: Path | str, **kwargs: object) -> scorebeater.config.Config:
        loads.append(Path(path))
        return real_load(path)

    seen: list[object] = []

    async def fake_run(args: argparse.Namespace) -> int:
        seen.append(args.cfg)
        seen.append(asyncio.get_running_loop())
        return 0

    monkeypatch.setattr(scorebeater.config, "load_config", counting_load)
    monkeypatch.setattr(scorebeater.daemon, "command", fake_run)
    assert main(["run", "--config", "config/scorebeater.toml"]) == 0
    assert loads == [Path("config/scorebeater.toml")]
    assert isinstance(seen[0], scorebeater.config.Config)
