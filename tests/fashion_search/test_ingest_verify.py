"""``fashion-search ingest --verify`` / ``--reindex``, the stale-ledger detection of a plain
ingest and the "nothing indexed" hint, on the embedded profile (the real CLI, SQLite, FAISS
and local files; a hashing encoder so no model is loaded)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fashion_search.cli import app
from fashion_search.commands import catalog_commands
from fashion_search.settings import Settings
from fashion_search.wiring import Container, build, build_encoders
from tests.fakes import HashingEncoder, fake_image

N = 12


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("FASHION_SEARCH_HOME", str(home))
    monkeypatch.setenv("FASHION_SEARCH_ENCODER", "fake")

    def make_container(settings: Settings) -> Container:
        encoders = build_encoders(settings, load_entry_points=False)
        encoders.register_instance(HashingEncoder())
        encoders.register_instance(HashingEncoder("other", dim=32))
        return build(settings, encoders=encoders)

    monkeypatch.setattr(catalog_commands, "make_container", make_container)
    return home


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    folder = tmp_path / "catalog"
    (folder / "img").mkdir(parents=True)
    lines = ["id,image,name,colour"]
    for i in range(N):
        (folder / "img" / f"{i}.jpg").write_bytes(fake_image(f"item {i}"))
        lines.append(f"p{i:02d},img/{i}.jpg,Item {i},red")
    (folder / "products.csv").write_text("\n".join(lines) + "\n", "utf-8")
    return folder


def ingest(home: Path, *args: str) -> tuple[str, dict[str, int]]:
    report = home.parent / "report.json"
    result = CliRunner().invoke(app, ["ingest", *args, "--report", str(report)])
    assert result.exit_code == 0, result.output
    return flat(result.output), json.loads(report.read_text("utf-8"))["summary"]


def flat(output: str) -> str:
    """The output with Rich's line wrapping undone."""
    return " ".join(output.split())


def test_an_emptied_index_is_detected_and_everything_encoded_again(
    home: Path, catalog: Path
) -> None:
    _, first = ingest(home, str(catalog))
    assert first["indexed"] == N
    shutil.rmtree(home / "vectors")  # a new (empty) index behind the existing ledger

    output, again = ingest(home, str(catalog))
    assert "Note: the ledger (the catalog" in output
    assert "has no vectors for it" in output
    assert "every product is encoded and written again" in output
    assert (again["indexed"], again["skipped_unchanged"]) == (N, 0)
    _, third = ingest(home, str(catalog))
    assert (third["indexed"], third["skipped_unchanged"]) == (0, N)


def test_reindex_encodes_everything_again(home: Path, catalog: Path) -> None:
    ingest(home, str(catalog))
    output, again = ingest(home, str(catalog), "--reindex")
    assert "Note:" not in output
    assert (again["indexed"], again["skipped_unchanged"]) == (N, 0)


def test_verify_reports_and_repairs_without_the_source(home: Path, catalog: Path) -> None:
    ingest(home, str(catalog))
    images = sorted((home / "images").rglob("*.jpg"))
    images[0].unlink()  # one image object lost
    (images[1].parent / "stray-0000.jpg").write_bytes(fake_image("stray"))  # one nobody uses
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", "--verify"])
    assert result.exit_code == 0, result.output
    output = flat(result.output)
    assert "products whose image object is missing" in output
    assert "Repaired: 0 products encoded again" in output
    assert "1 ledger entries dropped" in output
    assert "Left in place: 1 image objects no product points at (e.g. stray-0000.jpg)" in output
    (images[1].parent / "stray-0000.jpg").unlink()

    # the source ingest puts the lost image back; then everything agrees
    _, summary = ingest(home, str(catalog))
    assert summary["indexed"] == 1
    clean = runner.invoke(app, ["ingest", "--verify"])
    assert clean.exit_code == 0, clean.output
    assert f"All {N} products agree with the ledger." in flat(clean.output)


def test_ingest_without_a_path_asks_for_one(home: Path) -> None:
    result = CliRunner().invoke(app, ["ingest"])
    assert result.exit_code == 2
    assert "--verify" in result.output


def test_nothing_indexed_hint_names_the_active_vector_store(home: Path) -> None:
    result = CliRunner().invoke(app, ["search", "red dress"])
    assert result.exit_code == 1
    assert f"the vector index in {home / 'vectors'}" in flat(result.output)


def test_verify_then_ingest_of_the_source_repairs_a_lost_image(home: Path, catalog: Path) -> None:
    ingest(home, str(catalog))
    lost = sorted((home / "images").rglob("*.jpg"))[3]
    lost.unlink()
    output, summary = ingest(home, str(catalog), "--verify")
    assert "products whose image object is missing" in output
    assert (summary["indexed"], summary["skipped_unchanged"]) == (1, N - 1)
    assert lost.exists()


def test_verify_checks_every_encoder_with_vectors_by_default(home: Path, catalog: Path) -> None:
    ingest(home, str(catalog), "--encoder", "fake", "--encoder", "other")
    result = CliRunner().invoke(app, ["ingest", "--verify"])
    assert result.exit_code == 0, result.output
    assert f"All {N} products agree with the ledger." in flat(result.output)
    assert "fake" in result.output
    assert "other" in result.output  # a row per encoder in the check's table
    only = CliRunner().invoke(app, ["ingest", "--verify", "--encoder", "other"])
    assert "other" in only.output
    assert "fake" not in only.output
