"""The CLI end to end: ingest part of hm-demo with the real default encoder and the embedded
stores into a scratch data directory, then search it by text and by image."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fashion_search.cli import app

TROUSERS = "Trousers"
SAMPLE = 30


@pytest.fixture(scope="module")
def sample_manifest(hm_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 hm-demo products: every pair of trousers plus the first other products, as a
    manifest whose images are absolute paths into the shared dataset."""
    with (hm_demo / "products.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    trousers = [r for r in rows if r["product_type"] == TROUSERS]
    others = [r for r in rows if r["product_type"] != TROUSERS][: SAMPLE - len(trousers)]
    folder = tmp_path_factory.mktemp("catalog")
    manifest = folder / "sample.csv"
    with manifest.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in trousers + others:
            writer.writerow({**row, "image": str(hm_demo / row["image"])})
    return manifest


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {"FASHION_SEARCH_HOME": str(tmp_path_factory.mktemp("home"))}


@pytest.fixture(scope="module")
def ingested(sample_manifest: Path, env: dict[str, str]) -> Path:
    report = Path(env["FASHION_SEARCH_HOME"]) / "first-report.json"
    result = CliRunner().invoke(
        app,
        ["ingest", str(sample_manifest), "--batch-size", "16", "--report", str(report)],
        env=env,
    )
    assert result.exit_code == 0, result.output
    return report


def trouser_ids(manifest: Path) -> set[str]:
    with manifest.open(encoding="utf-8", newline="") as handle:
        return {r["id"] for r in csv.DictReader(handle) if r["product_type"] == TROUSERS}


@pytest.mark.slow
def test_ingest_then_rerun_is_a_no_op(
    ingested: Path, sample_manifest: Path, env: dict[str, str]
) -> None:
    first = json.loads(ingested.read_text("utf-8"))
    assert first["summary"]["indexed"] == SAMPLE
    assert first["summary"]["failed"] == 0
    assert first["layout"] == "manifest"

    result = CliRunner().invoke(app, ["ingest", str(sample_manifest)], env=env)
    assert result.exit_code == 0, result.output
    reports = sorted((Path(env["FASHION_SEARCH_HOME"]) / "reports").glob("ingest-*.json"))
    assert len(reports) == 1  # the default report location
    second = json.loads(reports[0].read_text("utf-8"))["summary"]
    assert (second["indexed"], second["skipped_unchanged"]) == (0, SAMPLE)


@pytest.mark.slow
def test_search_black_trousers_finds_trousers(
    ingested: Path, sample_manifest: Path, env: dict[str, str]
) -> None:
    result = CliRunner().invoke(app, ["search", "black trousers", "--top-k", "5"], env=env)
    assert result.exit_code == 0, result.output
    shown = [line for line in result.output.splitlines() if line.startswith("│")]
    ids = [cell.strip() for line in shown if (cell := line.split("│")[2].strip())]
    assert len(ids) == 5
    assert set(ids[:3]) & trouser_ids(sample_manifest), result.output


@pytest.mark.slow
def test_search_says_when_nothing_matches_well(ingested: Path, env: dict[str, str]) -> None:
    """matchQuality NONE (random letters): the nearest products are listed under a line
    saying they are no close match, as the shop says it; a query that matches says nothing."""
    result = CliRunner().invoke(app, ["search", "qzxqvbnm", "-k", "3"], env=env)
    assert result.exit_code == 0, result.output
    assert "No close matches" in result.output
    assert any(line.startswith("│ 1 ") for line in result.output.splitlines())
    matched = CliRunner().invoke(app, ["search", "trousers", "-k", "3"], env=env)
    assert "No close matches" not in matched.output


@pytest.mark.slow
def test_search_by_image_and_filter(
    ingested: Path, sample_manifest: Path, hm_demo: Path, env: dict[str, str]
) -> None:
    query = sorted(trouser_ids(sample_manifest))[0]
    result = CliRunner().invoke(
        app,
        ["search", "--image", str(hm_demo / "images" / f"{query}.jpg"), "-k", "3"],
        env=env,
    )
    assert result.exit_code == 0, result.output
    first_row = next(line for line in result.output.splitlines() if line.startswith("│ 1 "))
    assert query in first_row
    assert "1.000" in first_row

    filtered = CliRunner().invoke(
        app, ["search", "trousers", "-f", "product_type=Umbrella", "-k", "5"], env=env
    )
    assert filtered.exit_code == 0, filtered.output
    assert "Umbrella" in filtered.output
    assert TROUSERS not in filtered.output.replace("'trousers'", "")


def test_clear_errors_without_tracebacks(tmp_path: Path, hm_demo: Path) -> None:
    env = {"FASHION_SEARCH_HOME": str(tmp_path / "home")}
    empty = tmp_path / "empty"
    empty.mkdir()
    runner = CliRunner()
    cases = [
        (["ingest", str(tmp_path / "missing")], "no such file or folder"),
        (["ingest", str(empty)], "holds no catalog"),
        (["ingest", str(hm_demo), "--encoder", "no-such-encoder"], "no-such-encoder"),
        (["search", "red dress", "--encoder", "no-such-encoder"], "no-such-encoder"),
        (["search"], "give a search text"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args, env=env)
        assert result.exit_code != 0, args
        assert message in " ".join(result.output.split()), (args, result.output)
        assert "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), args


def test_every_command_has_help() -> None:
    for command in ("ingest", "search", "demo"):
        result = CliRunner().invoke(app, [command, "--help"])
        assert result.exit_code == 0, result.output
        assert "Usage" in result.output
