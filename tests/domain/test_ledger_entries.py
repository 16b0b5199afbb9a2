"""Ledger entries name the encoder weights that made a product's vectors."""

from __future__ import annotations

from domain.ports import indexed_by_current_version, ledger_entry
from tests.fakes import HashingEncoder


class Versioned(HashingEncoder):
    def __init__(self, version: str) -> None:
        super().__init__()
        self.version = version


def test_an_encoder_without_a_version_records_the_content_hash() -> None:
    encoder = HashingEncoder()
    assert ledger_entry(encoder, "abc123") == "abc123"
    assert indexed_by_current_version(encoder, "abc123")


def test_a_versioned_encoder_tags_the_hash_with_its_weights() -> None:
    assert ledger_entry(Versioned("heads-1"), "abc123") == "abc123@heads-1"
    assert ledger_entry(Versioned(""), "abc123") == "abc123"


def test_entries_of_other_weights_are_not_current() -> None:
    new = Versioned("heads-2")
    assert indexed_by_current_version(new, "abc123@heads-2")
    assert not indexed_by_current_version(new, "abc123@heads-1")
    assert not indexed_by_current_version(new, "abc123")  # indexed before versions existed
    assert not indexed_by_current_version(HashingEncoder(), "abc123@heads-1")
