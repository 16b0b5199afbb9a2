"""The UI reaches the product over HTTP only: it imports none of the product's layers."""

from __future__ import annotations

import ast
from pathlib import Path

UI_DIR = Path(__file__).resolve().parents[2] / "ui"
FORBIDDEN = {"domain", "api", "stores", "encoders", "ingest", "fashion_search", "tests"}


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_ui_imports_no_product_layer() -> None:
    sources = sorted(UI_DIR.rglob("*.py"))
    assert {p.name for p in sources} >= {"app.py", "client.py", "shop.py"}
    for source in sources:
        roots = {name.split(".")[0] for name in imported_modules(source)}
        assert not roots & FORBIDDEN, f"{source.name} imports {sorted(roots & FORBIDDEN)}"
