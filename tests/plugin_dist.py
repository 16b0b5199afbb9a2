"""Test-only plugin distributions: a ``*.dist-info`` folder whose entry points name modules of
the test suite, so that a real plugin manager (or a child CLI with the folder on PYTHONPATH)
loads them like third-party encoder plugins."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from encoders.hookspecs import ENTRY_POINT_GROUP


def write_plugin_distribution(folder: Path, name: str, entry_points: Mapping[str, str]) -> Path:
    """Write distribution ``name`` (version 1.0) into ``folder`` with these
    ``fashion_search.encoders`` entry points (entry name -> module); returns ``folder``."""
    dist_info = folder / f"{name.replace('-', '_')}-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n", encoding="utf-8"
    )
    lines = [f"[{ENTRY_POINT_GROUP}]", *(f"{k} = {v}" for k, v in entry_points.items())]
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder
