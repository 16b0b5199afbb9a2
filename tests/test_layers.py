"""The import contract of DESIGN.md section 1, checked on the source (every import statement,
including those inside functions and under TYPE_CHECKING, since each is a dependency):

    api, ingest -> domain <- stores, encoders;  ui -> nothing of ours;  fashion_search -> all

* domain imports only the standard library, numpy and itself;
* stores and encoders import no other layer but domain (never fashion_search's settings:
  the composition root hands them plain values);
* api and ingest import only domain (api never decodes images with encoders itself);
* ui imports none of the product's packages (it reaches the product over GraphQL);
* in fashion_search, only wiring.py imports adapters (stores): it alone chooses them.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAYERS = ("domain", "encoders", "stores", "ingest", "api", "ui", "fashion_search")
ALLOWED_LAYERS: dict[str, frozenset[str]] = {
    "domain": frozenset({"domain"}),
    "encoders": frozenset({"encoders", "domain"}),
    "stores": frozenset({"stores", "domain"}),
    "ingest": frozenset({"ingest", "domain"}),
    "api": frozenset({"api", "domain"}),
    "ui": frozenset({"ui"}),
    "fashion_search": frozenset(LAYERS),
}
DOMAIN_THIRD_PARTY = frozenset({"numpy"})
COMPOSITION_ROOT = Path("fashion_search/wiring.py")


@dataclass(frozen=True)
class Import:
    module: Path
    """Relative to the repository root."""
    line: int
    target: str

    @property
    def top(self) -> str:
        return self.target.split(".", 1)[0]

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.target}"


def imports_of(path: Path, root: Path = REPO) -> Iterator[Import]:
    relative = path.relative_to(root)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(relative, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: stays inside its own package
                package = relative.parent.parts[: len(relative.parent.parts) - node.level + 1]
                target = ".".join((*package, *([node.module] if node.module else [])))
                yield Import(relative, node.lineno, target)
            elif node.module:
                yield Import(relative, node.lineno, node.module)


def layer_imports(layer: str, root: Path = REPO) -> list[Import]:
    files = sorted((root / layer).rglob("*.py"))
    assert files, f"no sources under {layer}/"
    return [found for path in files for found in imports_of(path, root)]


def violations(layer: str, root: Path = REPO) -> list[str]:
    allowed = ALLOWED_LAYERS[layer]
    return [str(i) for i in layer_imports(layer, root) if i.top in LAYERS and i.top not in allowed]


@pytest.mark.parametrize("layer", [name for name in LAYERS if name != "fashion_search"])
def test_layer_imports_only_what_it_may(layer: str) -> None:
    assert violations(layer) == []


def test_domain_imports_only_the_standard_library_numpy_and_itself() -> None:
    foreign = [
        str(i)
        for i in layer_imports("domain")
        if i.top != "domain"
        and i.top not in DOMAIN_THIRD_PARTY
        and i.top not in sys.stdlib_module_names
        and i.top != "__future__"
    ]
    assert foreign == []


def test_only_the_composition_root_chooses_adapters() -> None:
    choosers = [
        str(i)
        for i in layer_imports("fashion_search")
        if i.top == "stores" and i.module != COMPOSITION_ROOT
    ]
    assert choosers == []


def test_the_contract_sees_the_imports_it_forbids(tmp_path: Path) -> None:
    """The walker finds lazy, TYPE_CHECKING and relative imports (what a grep would miss)."""
    probe = tmp_path / "stores" / "vectors" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from fashion_search.settings import Settings\n"
        "def f():\n"
        "    import encoders.images as images\n"
        "    from . import sibling\n"
        "    from ..catalog import mongodb\n",
        encoding="utf-8",
    )
    targets = [i.target for i in imports_of(probe, tmp_path)]
    assert targets == [
        "typing",
        "fashion_search.settings",
        "encoders.images",
        "stores.vectors",
        "stores.catalog",
    ]
    assert violations("stores", tmp_path) == [
        "stores/vectors/probe.py:3 imports fashion_search.settings",
        "stores/vectors/probe.py:5 imports encoders.images",
    ]
