"""schema.graphql is the live schema, and the live schema honours the design's contract."""

from __future__ import annotations

from pathlib import Path

from graphql import (
    GraphQLArgument,
    GraphQLInputField,
    GraphQLInputObjectType,
    GraphQLObjectType,
    build_schema,
    print_type,
)
from graphql.pyutils import Undefined
from typer.testing import CliRunner

from api import schema_sdl
from fashion_search.cli import app as cli

REPO_ROOT = Path(__file__).resolve().parents[2]

# Section 5 of DESIGN.md plus the agreed additions, verbatim.
CONTRACT = """
scalar Upload
type Query {
  searchByText(text: String!, topK: Int! = 10, filter: ProductFilter, encoder: String, after: String, mode: SearchMode! = HYBRID): SearchPage!
  searchByImage(image: ImageInput!, topK: Int! = 10, filter: ProductFilter, encoder: String, after: String, text: String, textWeight: Float, mode: SearchMode! = HYBRID): SearchPage!
  similarProducts(productId: ID!, topK: Int! = 10, filter: ProductFilter, encoder: String, after: String): SearchPage!
  product(id: ID!): Product
  products(filter: ProductFilter, first: Int! = 20, after: String): ProductConnection!
  encoders: [EncoderInfo!]!
  facets(keys: [String!], filter: ProductFilter): [Facet!]!
}
type Mutation {
  addProduct(input: AddProductInput!, image: Upload!): Product!
  deleteProduct(id: ID!): Boolean!
}
input ImageInput { url: String  base64: String  upload: Upload }
type SearchPage { hits: [SearchHit!]!  encoder: String!  tookMs: Float!  nextCursor: String
  matchQuality: MatchQuality!  mode: SearchMode!  facets(keys: [String!]): [Facet!]! }
type SearchHit { rank: Int!  score: Float!  product: Product!  signals: HitSignals!  exactMatch: Boolean! }
type HitSignals { visual: Float  lexical: Float  semantic: Float  colour: Float }
enum SearchMode { HYBRID VISUAL TEXT }
enum MatchQuality { STRONG WEAK NONE }
type Product { id: ID!  name: String!  description: String  imageUrl: String!  tags: [Tag!]! }
type Tag { key: String!  value: String! }
input TagFilter { key: String!  values: [String!]! }
input ProductFilter { tags: [TagFilter!]! }
type Facet { key: String!  values: [FacetValue!]! }
type FacetValue { value: String!  count: Int! }
type EncoderInfo { id: String!  dim: Int!  modalities: [String!]!  isDefault: Boolean!  indexedCount: Int! }
type ProductConnection { items: [Product!]!  nextCursor: String  totalCount: Int! }
input AddProductInput { id: ID!  name: String!  description: String  tags: [TagInput!] }
input TagInput { key: String!  value: String! }
"""


def _signature(field: GraphQLInputField | GraphQLArgument) -> str:
    if field.default_value is Undefined:
        return str(field.type)
    return f"{field.type} = {field.default_value!r}"


def _shape(schema_sdl_text: str) -> dict[str, dict[str, str]]:
    schema = build_schema(schema_sdl_text)
    shape: dict[str, dict[str, str]] = {}
    for name, graphql_type in schema.type_map.items():
        if name.startswith("__"):
            continue
        if isinstance(graphql_type, GraphQLObjectType):
            shape[name] = {}
            for field_name, field in graphql_type.fields.items():
                args = ", ".join(f"{a}: {_signature(arg)}" for a, arg in field.args.items())
                shape[name][field_name] = f"({args}) -> {field.type}"
        elif isinstance(graphql_type, GraphQLInputObjectType):
            shape[name] = {f: _signature(v) for f, v in graphql_type.fields.items()}
    return shape


def test_schema_file_matches_the_live_schema() -> None:
    on_disk = (REPO_ROOT / "schema.graphql").read_text(encoding="utf-8")
    assert on_disk == schema_sdl(), (
        "schema.graphql is stale: run `fashion-search export-schema --output schema.graphql`"
    )


def test_live_schema_is_exactly_the_contract() -> None:
    live = _shape(schema_sdl())
    contract = _shape(CONTRACT)
    assert set(live) == set(contract)
    for type_name, fields in contract.items():
        assert live[type_name] == fields, type_name


def test_contract_types_print_without_added_defaults() -> None:
    schema = build_schema(schema_sdl())
    image_input = print_type(schema.type_map["ImageInput"])
    assert "= null" not in image_input
    assert "= null" not in schema_sdl()


def test_export_schema_prints_sdl_and_writes_a_file(tmp_path: Path) -> None:
    runner = CliRunner()
    printed = runner.invoke(cli, ["export-schema"])
    assert printed.exit_code == 0, printed.output
    assert printed.stdout == schema_sdl()
    target = tmp_path / "schema.graphql"
    written = runner.invoke(cli, ["export-schema", "--output", str(target)])
    assert written.exit_code == 0
    assert target.read_text(encoding="utf-8") == schema_sdl()
