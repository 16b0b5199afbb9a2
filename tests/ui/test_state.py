"""The URL <-> view mapping (ui.state): every view survives the round trip, malformed URLs
fall back to something sensible, and links carry exactly what they should."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from ui.state import MAX_PAGES, View


def round_trip(view: View) -> View:
    query = urlsplit(view.href()).query
    return View.from_params(parse_qs(query))


@pytest.mark.parametrize(
    "view",
    [
        View(),
        View(mode="text", q="black dress"),
        View(mode="text", q="a&b=c #1", filters=(("colour", ("Black", "Dark Red")),), pages=3),
        View(mode="similar", like="0108775015", filters=(("type", ("Dress",)),)),
        View(mode="link", url="https://example.com/a.jpg?x=1&y=2", q="in red"),
        View(mode="photo", img="3f2a9c", details=True, engine="fashion-lite"),
        View(mode="text", q="hat", product="0111586001"),
        View(product="0111586001"),
    ],
)
def test_every_view_survives_the_url(view: View) -> None:
    assert round_trip(view) == view


def test_defaults_stay_out_of_the_url() -> None:
    assert View(mode="text", q="hat").to_params() == {"q": "hat"}
    assert View().href() == "./"


def test_malformed_urls_fall_back_without_errors() -> None:
    assert View.from_params({"page": ["-3"], "q": ["hat"]}).pages == 1
    assert View.from_params({"page": ["999"], "q": ["hat"]}).pages == MAX_PAGES
    assert View.from_params({"mode": ["similar"]}).mode is None  # no product to be like
    assert View.from_params({"mode": ["nonsense"], "q": ["x"]}).mode is None
    assert View.from_params({"mode": ["link"], "url": ["file:///etc/passwd"]}).mode is None
    assert View.from_params({"colour": ["", "Black", "Black"]}).filters == (("colour", ("Black",)),)


def test_moves_keep_what_a_shopper_expects() -> None:
    browsing = View(mode="text", q="dress", filters=(("colour", ("Red",)),), pages=2)
    opened = browsing.opened("p1")
    assert opened.closed() == browsing  # Back to results: the same search, same page
    similar = opened.similar_to("p1")
    assert (similar.mode, similar.like, similar.q, similar.pages, similar.product) == (
        "similar",
        "p1",
        "",
        1,
        "",
    )
    assert similar.filters == browsing.filters  # filters carry over to "more like this"
    assert browsing.with_filters({}).pages == 1  # new filters start at the first page
    assert "#results" in browsing.similar_to("p9").href("results")
