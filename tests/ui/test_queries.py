"""The UI's GraphQL documents (ui/queries/*.graphql) are valid against the API's schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from graphql import GraphQLSchema, OperationDefinitionNode, build_schema, parse, validate

from ui.client import QUERIES_DIR, document, operation_names

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schema.graphql"
EXPECTED = {
    "encoders",
    "facets",
    "product",
    "search_by_image",
    "search_by_text",
    "similar_products",
}


@pytest.fixture(scope="module")
def schema() -> GraphQLSchema:
    return build_schema(SCHEMA_PATH.read_text(encoding="utf-8"))


def test_every_interaction_has_a_document() -> None:
    assert set(operation_names()) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_document_is_valid_against_schema_graphql(schema: GraphQLSchema, name: str) -> None:
    sent = parse(document(name))  # exactly what the client sends: operation + its fragments
    assert validate(schema, sent) == []
    operations = [d for d in sent.definitions if isinstance(d, OperationDefinitionNode)]
    assert len(operations) == 1
    assert operations[0].name is not None
    assert operations[0].name.value.lower() == name.replace("_", "")


def test_every_fragment_is_used() -> None:
    fragments = parse((QUERIES_DIR / "fragments.graphql").read_text()).definitions
    sent = "\n".join(document(name) for name in EXPECTED)
    for fragment in fragments:
        assert f"...{fragment.name.value}" in sent.replace("... ", "...")  # type: ignore[attr-defined]


def test_an_invalid_document_is_caught(schema: GraphQLSchema) -> None:
    # The check above can fail: a field the schema lacks is reported.
    broken = document("product").replace("imageUrl", "imageURL")
    errors = validate(schema, parse(broken))
    assert errors
    assert "imageURL" in errors[0].message
