"""`train-encoder --tune-labels`: the default is the tuning module's, and bad values are
refused before any work starts."""

from __future__ import annotations

import inspect

import pytest
import typer

from encoders.fashion_lite.tuning import DEFAULT_LABELS
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
