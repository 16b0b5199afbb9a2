"""The colour re-rank end to end: a tiny catalog whose words never say the colour, written
through the real composition root (SQLite, FAISS, the default encoder, the colour analyser),
asked over GraphQL. Colour queries rank the garments of that colour first, with their colour
share as a signal; with the gate closed, the photos' vectors alone do not."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw

from domain.colour import ColourRerank
from domain.fusion import DEFAULT_FUSION
from fashion_search.asgi import app_for
from fashion_search.settings import Settings
from fashion_search.wiring import Container, build

pytestmark = pytest.mark.slow

COLOURS = {
    "navy": (25, 35, 85),
    "black": (25, 25, 28),
    "maroon": (100, 25, 35),
    "grey": (128, 128, 130),
    "white": (245, 245, 245),
    "olive": (90, 95, 40),
    "teal": (20, 110, 110),
    "pink": (240, 160, 190),
    "orange": (240, 130, 30),
}
"""Shades apart enough for the histogram's bins (red and maroon share "red" bins, brown and
maroon "brown" ones: both are left out)."""
TEES_PER_COLOUR = 2
SEARCH = """query($text: String!) {
  searchByText(text: $text, topK: 4) {
    hits { product { id } signals { colour } }
  }
}"""


def tee(rgb: tuple[int, int, int], shift: int) -> bytes:
    """A T-shirt shape of one colour on a white backdrop, as a packshot."""
    image = Image.new("RGB", (160, 200), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.polygon(
        [
            (50 + shift, 30),
            (110 - shift, 30),
            (150, 70),
            (125, 90),
            (115, 80),
            (115, 180),
            (45, 180),
            (45, 80),
            (35, 90),
            (10, 70),
        ],
        fill=rgb,
    )
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


async def fill(container: Container) -> None:
    for colour, rgb in COLOURS.items():
        for n in range(TEES_PER_COLOUR):
            await container.catalog_service.add(
                f"{colour}-{n}",
                f"Basic tee {n}",
                tee(rgb, 4 * n),
                description="Soft cotton jersey top with short sleeves",
            )


async def top(client: httpx.AsyncClient, text: str) -> list[dict[str, Any]]:
    response = await client.post("/graphql", json={"query": SEARCH, "variables": {"text": text}})
    body = response.json()
    assert "errors" not in body, body
    hits: list[dict[str, Any]] = body["data"]["searchByText"]["hits"]
    return hits


async def test_colour_queries_the_words_do_not_answer_rank_that_colour_first(
    tmp_path: Path,
) -> None:
    container = build(Settings(home=tmp_path), load_entry_points=False)
    # the drawn tees are far from any text (low text-to-image cosines), which would leave
    # their order to the noise of their near-identical words: trust the photos fully, as an
    # H&M-style catalog's photos are, so the fusion ranks by them and the re-rank by colour
    container.search.fusion = replace(
        DEFAULT_FUSION, visual_evidence_from=-1.0, visual_evidence_at=-0.5
    )
    await fill(container)
    stored = await container.catalog.get_many(["navy-0"])
    assert stored["navy-0"].colour is not None  # computed at ingest, stored with the product
    app = app_for(container)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        wrong_without = 0
        for colour in COLOURS:
            container.search.colour_rerank = ColourRerank(gate=0.0)  # closed: never re-ranks
            closed = await top(client, f"{colour} top")
            wrong_without += sum(not h["product"]["id"].startswith(colour) for h in closed[:2])
            assert all(h["signals"]["colour"] is not None for h in closed)
            container.search.colour_rerank = ColourRerank()  # the default
            hits = await top(client, f"{colour} top")
            firsts = [h["product"]["id"] for h in hits[:TEES_PER_COLOUR]]
            assert all(pid.startswith(colour) for pid in firsts), (colour, hits)
            assert hits[0]["signals"]["colour"] > 0.5
        # the re-rank fixed rankings the fusion alone got wrong
        assert wrong_without > 0
