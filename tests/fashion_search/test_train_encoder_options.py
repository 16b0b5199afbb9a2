"""`train-encoder --tune-labels`: the default is the tuning module's, and bad values are
refused before any work starts."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from encoders.fashion_lite.tuning import DEFAULT_LABELS
from fashion_search.cli import app
from fashion_search.commands.encoder_commands import _label_weights, train_encoder


def test_the_default_labels_are_the_tuning_modules() -> None:
    default = inspect.signature(train_encoder).parameters["tune_labels"].default
    assert _label_weights(default) == DEFAULT_LABELS


def test_label_weights_parse_and_refuse_nonsense() -> None:
    assert _label_weights(" colour = 1 , product_type=0.5,") == {
        "colour": 1.0,
        "product_type": 0.5,
    }
    for bad in ("colour", "colour=x", "=1", "colour=-1", "colour=0", ""):
        with pytest.raises(typer.BadParameter):
            _label_weights(bad)


def test_a_validation_run_needs_its_own_heads_file(tmp_path: Path) -> None:
    # refused before any data is read (the hm-dev folder does not exist)
    result = CliRunner().invoke(
        app, ["train-encoder", "--hm-dev", str(tmp_path / "missing"), "--validation", "0.2"]
    )
    assert result.exit_code == 2
    assert "--out" in result.output
    assert "committed" in result.output


def test_tune_labels_the_catalog_lacks_are_refused_before_any_work(
    hm_demo: Path, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        app,
        [
            "train-encoder",
            "--hm-dev",
            str(hm_demo),
            "--hm-extra",
            "none",
            "--tuned-backbone",
            "",  # tune (the default reuses heads-v3's tuned layers: no labels to check)
            "--tune-labels",
            "product_type=1,colur=0.3",
            "--out",
            str(tmp_path / "heads.npz"),
        ],
        env={"FASHION_SEARCH_HOME": str(tmp_path / "home")},
    )
    assert result.exit_code == 2
    assert "no training item has the labels ['colur']" in result.output
    assert "colour" in result.output  # the known labels are listed
    assert not (tmp_path / "heads.npz").exists()
    assert not (tmp_path / "home").exists()  # nothing was cached
