"""``scorebeater export`` and ``scorebeater predictions`` on every backend (local, S3 on moto, Postgres).

Each test stores a small league (two seasons; features history, champion and challenger
predictions, early and final outcomes) with ``batch_rows = 64``, so every export streams
several batches, then reads back what the command wrote with an independent reader (pyarrow,
``orjson``, deltalake's own ``DeltaTable``) and compares it with what the storage answers.
CLI cases run ``scorebeater.cli.main`` in-process with the config loader patched to this
test's storage config (exit codes, stdout, one-line errors).
"""

from __future__ import annotations

import asyncio
import io
from typing import TYPE_CHECKING, Any, cast

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

import scorebeater.config
import scorebeater.export
from scorebeater.cli import main
from scorebeater.config import Config
from scorebeater.export import (
    ExportError,
    Progress,
    Target,
    defuse_formulas,
    delta_storage_options,
    export,
    format_table,
    prediction_table,
    s3_filesystem,
)
from scorebeater.storage import open_storage
from tests.contract.test_storage import features, grid, outcomes, predictions
from tests.services.storage import BACKENDS, config_for

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator
    from pathlib import Path

    from scorebeater.config import StorageConfig
    from scorebeater.storage.base import Storage

pytestmark = pytest.mark.services

BATCH_ROWS = 64
SEASON = 2014
OTHER = 2015
KEYS = {
    "features": ["player_id", "season", "as_of_seq"],
    "predictions": ["player_id", "season", "as_of_seq", "model_version"],
    "outcomes": ["player_id", "season"],
}


# Ids whose remainder mod 97 is small: the contract's feature rows grow with it, within bounds.
PLAYERS = [97 * block + j for block in range(5) for j in range(1, 21)]


async def populate(storage: Storage) -> None:
    """100 players x 3 games in 2014 and 20 x 1 in 2015; champion v1 predictions of every
    feature row, challenger v2 of the last game of 50 players; 2014 outcomes: 30 early, of which
    10 turn final, and 10 more final (40 rows)."""
    keys = grid(PLAYERS, [SEASON], [1, 2, 3]) + grid(PLAYERS[:20], [OTHER], [1])
    await storage.write_features(features(keys))
    champion = predictions([(*k, 1) for k in keys], probability=0.2)
    # Spread the probabilities so that the table's order is the players' order reversed.
    spread = pc.add(
        champion.column("probability"),
        pc.multiply(pc.cast(champion.column("player_id"), pa.float64()), 0.005),
    )
    champion = champion.set_column(champion.schema.get_field_index("probability"), "probability", spread)
    await storage.write_predictions(champion)
    await storage.write_predictions(
        predictions([(p, SEASON, 3, 2) for p in PLAYERS[:50]], probability=0.6, role="challenger")
    )
    await storage.write_outcomes(outcomes([(p, SEASON, True, "early") for p in PLAYERS[:30]], seq=2))
    await storage.write_outcomes(
        outcomes(
            [(p, SEASON, True, "final") for p in PLAYERS[:10]]
            + [(p, SEASON, False, "final") for p in PLAYERS[30:40]]
        )
    )


EXPECTED_ROWS = {"features": 300, "predictions": 300, "outcomes": 40}


@pytest.fixture(name="storage_config", params=BACKENDS)
def _storage_config(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> StorageConfig:
    return config_for(request.param, request, tmp_path, monkeypatch, batch_rows=BATCH_ROWS, name="export")


@pytest.fixture(name="storage")
async def _storage(storage_config: StorageConfig) -> AsyncGenerator[Storage, None]:
    async with open_storage(storage_config) as storage:
        await populate(storage)
        yield storage


@pytest.fixture(name="out_dir")
def _out_dir(tmp_path: Path) -> Path:
    """Where exports go: apart from the local backend's store (also under ``tmp_path``)."""
    out = tmp_path / "out"
    out.mkdir()
    return out


async def stored(storage: Storage, what: str, **kwargs: object) -> pa.Table:
    """What the storage answers for ``what`` of 2014 (the export's reference)."""
    from scorebeater.export import source

    tables = [t async for t in source(storage, what, SEASON, **kwargs)]  # type: ignore[arg-type]
    return pa.concat_tables(tables)


def keyset(table: pa.Table, what: str) -> set[tuple[object, ...]]:
    return set(zip(*(table.column(k).to_pylist() for k in KEYS[what]), strict=True))


def read_back(fmt: str, where: str, s3_options: dict[str, str] | None = None) -> pa.Table:
    """What an export wrote, read by a reader independent of the writer."""
    if fmt == "parquet":
        return pq.read_table(where)
    if fmt == "csv":
        return pacsv.read_csv(where)
    if fmt == "jsonl":
        with open(where, "rb") as f:  # noqa: PTH123
            return pa.Table.from_pylist([orjson.loads(line) for line in f])
    table = DeltaTable(where, storage_options=s3_options).to_pyarrow_table()
    return table.filter(pc.equal(table.column("season"), SEASON))


# --- every format round-trips ----------------------------------------------------------------


@pytest.mark.parametrize("what", ["predictions", "features", "outcomes"])
async def test_every_format_writes_exactly_the_stored_rows(
    storage: Storage, what: str, out_dir: Path
) -> None:
    reference = await stored(storage, what)
    assert reference.num_rows == EXPECTED_ROWS[what]
    for fmt in ("csv", "jsonl", "parquet", "delta"):
        out = out_dir / (f"table_{what}" if fmt == "delta" else f"out.{fmt}")
        result = await export(storage, Target(str(out), what, SEASON, fmt), s3=Config().storage.s3)  # type: ignore[arg-type]
        assert result.rows == reference.num_rows, fmt
        back = read_back(fmt, str(out))
        assert back.num_rows == reference.num_rows, fmt
        assert keyset(back, what) == keyset(reference, what), fmt
        assert back.column_names == reference.column_names, fmt
        if fmt in {"parquet", "delta"}:
            order = [(k, "ascending") for k in KEYS[what]]
            got = back.select(reference.column_names).sort_by(order)
            assert got.to_pylist() == reference.sort_by(order).to_pylist(), fmt
    # Nothing but the outputs is left in the directory (temporary files are renamed away).
    assert sorted(p.name for p in out_dir.iterdir() if p.name.startswith(".")) == []


async def test_outcomes_are_one_row_per_player_season_final_replacing_early(
    storage: Storage, out_dir: Path
) -> None:
    out = out_dir / "o.parquet"
    await export(storage, Target(str(out), "outcomes", SEASON, "parquet"), s3=Config().storage.s3)
    table = pq.read_table(out)
    assert table.num_rows == len(set(table.column("player_id").to_pylist())) == 40
    by_player = {r["player_id"]: r["resolution"] for r in table.to_pylist()}
    assert by_player[PLAYERS[5]] == "final"
    assert by_player[PLAYERS[15]] == "early"
    assert by_player[PLAYERS[35]] == "final"


async def test_roles_and_latest_select_the_rows(storage: Storage, out_dir: Path) -> None:
    s3 = Config().storage.s3
    cases = {
        ("champion", False): 300,
        ("challenger", False): 50,
        ("all", False): 350,
        ("champion", True): 100,
    }
    for (role, latest), rows in cases.items():
        out = out_dir / f"{role}_{latest}.csv"
        result = await export(
            storage, Target(str(out), "predictions", SEASON, "csv"), s3=s3, role=role, latest=latest
        )
        assert result.rows == rows == pacsv.read_csv(out).num_rows, (role, latest)
    out = out_dir / "latest_features.jsonl"
    result = await export(storage, Target(str(out), "features", SEASON, "jsonl"), s3=s3, latest=True)
    lines = out.read_bytes().splitlines()
    assert result.rows == len(lines) == 100
    assert {orjson.loads(line)["as_of_seq"] for line in lines} == {3}


FORMULA_NAMES = {
    PLAYERS[0]: '=HYPERLINK("http://evil.example","click")',
    PLAYERS[1]: "+1+2",
    PLAYERS[2]: "-2+3",
    PLAYERS[3]: "@SUM(A1:A9)",
    PLAYERS[4]: "\tTabbed",
    PLAYERS[5]: "O'Neal = fine",  # a formula character later in the cell is harmless
}


async def test_csv_formula_names_are_exported_behind_a_quote(storage: Storage, out_dir: Path) -> None:
    """CSV injection: a stored name a spreadsheet would run as a formula is written with a
    leading ``'``; other cells, numbers and the JSON lines export are left as stored."""
    rows = features(grid(list(FORMULA_NAMES), [OTHER], [2]))
    names = pa.array([FORMULA_NAMES[p] for p in rows.column("player_id").to_pylist()], pa.string())
    await storage.write_features(rows.set_column(rows.schema.get_field_index("player"), "player", names))
    s3 = Config().storage.s3
    out = out_dir / "features.csv"
    await export(storage, Target(str(out), "features", OTHER, "csv"), s3=s3, latest=True)
    table = pacsv.read_csv(out)
    by_player = dict(zip(*(table.column(c).to_pylist() for c in ("player_id", "player")), strict=True))
    for player, name in FORMULA_NAMES.items():
        expected = name if player == PLAYERS[5] else f"'{name}"
        assert by_player[player] == expected, player
    assert by_player[PLAYERS[6]] == f"Player Ünïcode {PLAYERS[6]}"
    assert pa.types.is_floating(table.schema.field("ftm").type)  # numbers stay numbers
    jsonl = out_dir / "features.jsonl"
    await export(storage, Target(str(jsonl), "features", OTHER, "jsonl"), s3=s3, latest=True)
    stored_names = {orjson.loads(line)["player"] for line in jsonl.read_bytes().splitlines()}
    assert set(FORMULA_NAMES.values()) <= stored_names  # only CSV is defused


def test_csv_formula_defusing_is_for_string_columns_only() -> None:
    table = pa.table(
        {
            "name": pa.array(["=1+1", "-x", None, "", "ok", "\rcr", "@a"], pa.string()),
            "wide": pa.array(["+y", "z", None, "-", "", "=", "a"], pa.large_string()),
            "change": pa.array([-0.25, -1.0, None, 0.5, 0.0, -3.0, 1.0], pa.float64()),
            "count": pa.array([-1, 2, 3, -4, 5, 6, 7], pa.int64()),
        }
    )
    out = defuse_formulas(table)
    assert out.schema == table.schema
    assert out.column("name").to_pylist() == ["'=1+1", "'-x", None, "", "ok", "'\rcr", "'@a"]
    assert out.column("wide").to_pylist() == ["'+y", "z", None, "'-", "", "'=", "a"]
    assert out.column("change").equals(table.column("change"))
    assert out.column("count").equals(table.column("count"))
    sink = io.BytesIO()
    with pacsv.CSVWriter(sink, out.schema) as writer:
        writer.write_table(out)
    back = pacsv.read_csv(io.BytesIO(sink.getvalue()))
    assert back.column("change").to_pylist()[:2] == [-0.25, -1.0]  # a negative number, not text


async def test_a_delta_reexport_replaces_the_season_partition(storage: Storage, out_dir: Path) -> None:
    s3 = Config().storage.s3
    table = out_dir / "delta"
    await export(storage, Target(str(table), "predictions", SEASON, "delta"), s3=s3)
    await export(storage, Target(str(table), "predictions", OTHER, "delta"), s3=s3)
    # The season moves on: a fourth game for every 2014 player, then the season is exported again.
    await storage.write_predictions(predictions([(p, SEASON, 4, 1) for p in PLAYERS]))
    await export(storage, Target(str(table), "predictions", SEASON, "delta"), s3=s3)
    await export(storage, Target(str(table), "predictions", SEASON, "delta"), s3=s3)
    delta = DeltaTable(str(table))
    assert delta.metadata().partition_columns == ["season"]
    back = delta.to_pyarrow_table()
    counts = {
        r["season"]: r["player_id_count"]
        for r in back.group_by("season").aggregate([("player_id", "count")]).to_pylist()
    }
    assert counts == {SEASON: 400, OTHER: 20}
    assert len(keyset(back, "predictions")) == back.num_rows  # no duplicates


# --- destinations and errors -----------------------------------------------------------------


async def test_an_unknown_season_is_an_error_and_writes_nothing(storage: Storage, out_dir: Path) -> None:
    s3 = Config().storage.s3
    for fmt in ("csv", "delta"):
        out = out_dir / f"nothing.{fmt}"
        with pytest.raises(ExportError, match="no predictions \\(champion\\) stored for season 1999"):
            await export(storage, Target(str(out), "predictions", 1999, fmt), s3=s3)
        assert not out.exists()
    with pytest.raises(ExportError, match="no outcomes stored for season 2015"):
        await export(storage, Target(str(out_dir / "o.csv"), "outcomes", OTHER, "csv"), s3=s3)
    assert list(out_dir.iterdir()) == []


async def test_a_failed_export_leaves_the_previous_file_or_table_whole(
    storage: Storage, out_dir: Path
) -> None:
    out = out_dir / "p.csv"
    out.write_text("previous\n")

    class Failing:
        def __init__(self, inner: Storage) -> None:
            self.inner = inner

        async def read_predictions(self, **kwargs: object) -> AsyncGenerator[pa.Table, None]:
            async for batch in self.inner.read_predictions(**kwargs):  # type: ignore[arg-type]
                yield batch
                raise OSError("connection lost")

    with pytest.raises(OSError, match="connection lost"):
        await export(Failing(storage), Target(str(out), "predictions", SEASON, "csv"), s3=Config().storage.s3)  # type: ignore[arg-type]
    assert out.read_text() == "previous\n"
    assert [p.name for p in out_dir.iterdir()] == ["p.csv"]
    # A Delta table keeps its last commit: the failed export's rows are never committed.
    table = out_dir / "delta"
    await export(storage, Target(str(table), "predictions", SEASON, "delta"), s3=Config().storage.s3)
    before = DeltaTable(str(table)).version()
    with pytest.raises(OSError, match="connection lost"):
        await export(
            Failing(storage),  # type: ignore[arg-type]
            Target(str(table), "predictions", SEASON, "delta"),
            s3=Config().storage.s3,
        )
    assert DeltaTable(str(table)).version() == before
    assert DeltaTable(str(table)).to_pyarrow_table().num_rows == 300


async def test_each_batch_is_written_before_the_next_is_read(storage: Storage, out_dir: Path) -> None:
    """Streaming: the export asks for a batch only once the previous one is written (so it
    never holds more than a batch), in every format."""
    progress = Progress("test", io.StringIO())
    written_before: list[int] = []

    class Watched:
        async def read_predictions(self, **kwargs: object) -> AsyncGenerator[pa.Table, None]:
            sent = 0
            async for batch in storage.read_predictions(**kwargs):  # type: ignore[arg-type]
                written_before.append(progress.rows - start)
                assert progress.rows - start == sent  # everything sent so far is written
                sent += batch.num_rows
                yield batch

    for fmt in ("csv", "jsonl", "parquet", "delta"):
        start = progress.rows
        written_before.clear()
        target = Target(str(out_dir / f"p_{fmt}"), "predictions", SEASON, fmt)
        await export(Watched(), target, s3=Config().storage.s3, progress=progress)  # type: ignore[arg-type]
        assert progress.rows - start == 300
        assert len(written_before) >= 300 // BATCH_ROWS, fmt  # several batches


# The S3 destination is tested once, on the moto server the S3 backend starts.
@pytest.mark.parametrize("storage_config", ["s3"], indirect=True)
async def test_s3_destinations(storage: Storage, storage_config: StorageConfig) -> None:
    s3 = storage_config.s3
    prefix = f"s3://{s3.bucket}/{s3.prefix}/exports"
    result = await export(storage, Target(prefix, "predictions", SEASON, "parquet"), s3=s3)
    assert result.where == f"s3://{s3.bucket}/{s3.prefix}/exports/predictions_{SEASON}.parquet"
    fs = s3_filesystem(s3)
    assert pq.read_table(result.where.removeprefix("s3://"), filesystem=fs).num_rows == 300
    listing = fs.get_file_info(pa.fs.FileSelector(f"{s3.bucket}/{s3.prefix}/exports"))
    assert [i.base_name for i in listing] == [f"predictions_{SEASON}.parquet"]  # no temporary object left
    table = f"{prefix}/delta"
    await export(storage, Target(table, "outcomes", SEASON, "delta"), s3=s3)
    await export(storage, Target(table, "outcomes", SEASON, "delta"), s3=s3)
    back = DeltaTable(table, storage_options=delta_storage_options(s3)).to_pyarrow_table()
    assert back.num_rows == 40
    assert len(keyset(back, "outcomes")) == 40


# --- the predictions table -------------------------------------------------------------------


async def test_the_predictions_table(storage: Storage) -> None:
    table = await prediction_table(storage, SEASON)
    assert table.num_rows == 100
    assert table.column("player_id").to_pylist() == sorted(PLAYERS, reverse=True)  # by probability
    assert set(table.column("as_of_seq").to_pylist()) == {3}
    first = table.to_pylist()[-1]
    assert first["player"] == "Player Ünïcode 1"
    assert first["team"] == "BOS"
    assert first["beat"] is True
    assert first["resolution"] == "final"
    text = format_table(await prediction_table(storage, SEASON, top=3))
    lines = text.splitlines()
    assert len(lines) == 4
    assert lines[0].split() == [
        "#",
        "player",
        "team",
        "P(beat)",
        "FTM/mark",
        "team",
        "games",
        "model",
        "outcome",
    ]
    assert lines[1].split()[:4] == ["1", "Player", "Ünïcode", str(PLAYERS[-1])]
    assert len({line.index("v1") for line in lines[1:]}) == 1  # aligned
    found = await prediction_table(storage, SEASON, player="ÜNÏCODE 3")
    assert sorted(found.column("player_id").to_pylist()) == [p for p in PLAYERS if str(p).startswith("3")]
    outcomes_shown = format_table(await prediction_table(storage, SEASON, player=f"code {PLAYERS[35]}"))
    assert "missed (final)" in outcomes_shown
    challengers = await prediction_table(storage, SEASON, role="challenger")
    assert challengers.num_rows == 50
    assert set(challengers.column("model_version").to_pylist()) == {2}
    with pytest.raises(ExportError, match="no predictions"):
        await prediction_table(storage, 1999)


# --- the CLI ---------------------------------------------------------------------------------


@pytest.fixture(name="cli_config")
def _cli_config(storage_config: StorageConfig, monkeypatch: pytest.MonkeyPatch) -> StorageConfig:
    """A stored league, and ``--config`` of any path loading this test's storage config."""

    async def fill() -> None:
        async with open_storage(storage_config) as storage:
            await populate(storage)

    asyncio.run(fill())
    monkeypatch.setattr(
        scorebeater.config, "load_config", lambda path, **kwargs: Config(storage=storage_config)
    )
    return storage_config


def run(*argv: str) -> int:
    return main([argv[0], "--config", "unused.toml", *argv[1:]])


def test_cli_export_to_stdout_and_files(
    cli_config: StorageConfig, out_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    del cli_config
    assert run("export", "--season", "2014", "--what", "predictions", "--format", "csv", "--out", "-") == 0
    out = capsys.readouterr()
    assert "rows/s" not in out.err  # no progress display when stderr is not a terminal
    assert "\r" not in out.err
    assert pacsv.read_csv(io.BytesIO(out.out.encode())).num_rows == 300
    assert run("export", "--season", "2014", "--what", "outcomes", "--format", "jsonl", "--out", "-") == 0
    assert len(capsys.readouterr().out.splitlines()) == 40
    assert (
        run("export", "--season", "2014", "--what", "features", "--format", "parquet", "--out", str(out_dir))
        == 0
    )
    assert pq.read_table(out_dir / "features_2014.parquet").num_rows == 300
    assert (out_dir / "features_2014.parquet").stat().st_mode & 0o044  # not mkstemp's private 0600


def test_cli_errors(cli_config: StorageConfig, out_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    del cli_config
    out = out_dir / "p.csv"
    assert (
        run("export", "--season", "1999", "--what", "predictions", "--format", "csv", "--out", str(out)) == 1
    )
    assert "no predictions (champion) stored for season 1999" in capsys.readouterr().err
    assert not out.exists()
    for fmt in ("parquet", "delta"):
        assert run("export", "--season", "2014", "--what", "predictions", "--format", fmt, "--out", "-") == 1
        assert f"--format {fmt} cannot be written to stdout" in capsys.readouterr().err
    blocker = out_dir / "a-file"
    blocker.write_text("")
    for fmt, where in (("csv", blocker / "p.csv"), ("delta", blocker / "table")):
        assert (
            run("export", "--season", "2014", "--what", "predictions", "--format", fmt, "--out", str(where))
            == 1
        )
        err = capsys.readouterr().err
        assert "scorebeater: error: cannot write" in err
        assert str(blocker) in err
        assert "Traceback" not in err


def test_cli_predictions_table(cli_config: StorageConfig, capsys: pytest.CaptureFixture[str]) -> None:
    del cli_config
    assert run("predictions", "--season", "2014", "--top", "5") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6
    assert f"Player Ünïcode {PLAYERS[-1]}" in lines[1]
    assert run("predictions", "--season", "2014", "--player", f"ünïcode {PLAYERS[-1]}") == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert run("predictions", "--season", "1999") == 1
    assert "no predictions" in capsys.readouterr().err


def test_latest_with_role_all_is_refused_before_storage_is_opened(
    out_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_storage(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("storage opened")

    monkeypatch.setattr(scorebeater.config, "load_config", lambda path, **kwargs: Config())
    monkeypatch.setattr(scorebeater.export, "open_storage", no_storage)
    out = out_dir / "p.csv"
    argv = ("export", "--season", "2014", "--what", "predictions", "--format", "csv", "--out", str(out))
    assert run(*argv, "--latest", "--role", "all") == 1
    err = capsys.readouterr().err
    assert "scorebeater: error: --latest with --role all is ambiguous" in err
    assert "storage opened" not in err
    assert not out.exists()
    unopened = cast("Storage", None)
    target = Target(str(out), "predictions", SEASON, "csv")
    with pytest.raises(ExportError, match="--latest with --role all"):
        asyncio.run(export(unopened, target, s3=Config().storage.s3, role="all", latest=True))
    # The table of each player's latest prediction is of one role.
    with pytest.raises(SystemExit) as exited:
        run("predictions", "--season", "2014", "--role", "all")
    assert exited.value.code == 2
    assert "invalid choice: 'all'" in capsys.readouterr().err
    with pytest.raises(ExportError, match="one role"):
        asyncio.run(prediction_table(unopened, SEASON, role="all"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ("--what", "outcomes", "--out", "{out}", "--role", "challenger"),
            "--role applies to --what predictions only",
        ),
        (
            ("--what", "features", "--out", "{out}", "--role", "champion"),
            "--role applies to --what predictions only",
        ),
        (("--what", "outcomes", "--out", "{out}", "--latest"), "--latest does not apply to outcomes"),
        (("--what", "predictions", "--out", ""), "--out is empty"),
        (("--what", "predictions", "--out", "  "), "--out is empty"),
    ],
)
def test_options_that_do_not_apply_are_refused_before_storage_is_opened(
    options: tuple[str, ...],
    message: str,
    out_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def no_storage(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("storage opened")

    monkeypatch.setattr(scorebeater.config, "load_config", lambda path, **kwargs: Config())
    monkeypatch.setattr(scorebeater.export, "open_storage", no_storage)
    monkeypatch.chdir(out_dir)
    out = out_dir / "x.csv"
    argv = [o.format(out=out) for o in options]
    assert run("export", "--season", "2014", "--format", "csv", *argv) == 1
    err = capsys.readouterr().err
    assert f"scorebeater: error: {message}" in err
    assert "storage opened" not in err
    assert list(out_dir.iterdir()) == []


def test_format_table_does_not_inject_terminal_escapes() -> None:
    row = {
        "player_id": 7,
        "player": "\x1b[2J\x1b]0;owned\x07Evil\x9b31m",
        "team": "B\x00S",
        "probability": 0.5,
        "ftm": 10.0,
        "prev_ftm": 20.0,
        "team_games": 5.0,
        "model_version": 1,
        "beat": True,
        "resolution": "final\r",
    }
    text = format_table(pa.Table.from_pylist([row]))
    assert not any((ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F for c in text)
    assert "\ufffd[2J\ufffd]0;owned\ufffdEvil\ufffd31m" in text
    assert "B\ufffdS" in text


def test_progress_is_drawn_only_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        progress = Progress("predictions 2014", stream)
        progress.add(1000)
        progress.done("p.csv")
    assert "predictions 2014: 1,000 rows" in tty.getvalue()
    assert "rows/s" in tty.getvalue()
    assert tty.getvalue().endswith("-> p.csv\n")
    assert pipe.getvalue() == ""
