"""The Streamlit app, driven with AppTest against a live API (the real FastAPI app over the
in-memory fakes on a loopback port): every shopper interaction, the URL each one leads to,
and the friendly messages. Links (products, "More like this", Back) are followed the way a
browser does: the URL's query parameters, then a run."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from html import unescape
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

from streamlit.testing.v1 import AppTest

from tests.ui.conftest import AppFactory
from tests.ui.live import LiveApi, SampleProduct, free_port, noisy_png, running_api


def run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def submit(at: AppTest, label: str) -> AppTest:
    next(b for b in at.button if b.label == label).click()
    return run(at)


def text_search(at: AppTest, text: str) -> AppTest:
    at.text_input(key="text-query").set_value(text)
    return submit(at, "Search")


def upload(at: AppTest, name: str, data: bytes, mime: str = "image/jpeg") -> AppTest:
    at.file_uploader(key="photo").set_value((name, data, mime))
    return submit(at, "Find similar")


def follow(at: AppTest, href: str) -> AppTest:
    """Open a link of the page (a relative `?query` URL), as a browser would."""
    query = urlsplit(href).query
    at.query_params = {k: v if len(v) > 1 else v[0] for k, v in parse_qs(query).items()}
    return run(at)


@dataclass
class Card:
    name: str
    href: str
    image: str
    alt: str
    more_href: str
    more_label: str
    text: str


class _Cards(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cards: list[Card] = []
        self._in: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "li" and a.get("class") == "fs-card":
            self.cards.append(Card("", "", "", "", "", "", ""))
        elif self.cards and tag == "a":
            if a.get("class") == "fs-product":
                self.cards[-1].href = a["href"]
            else:
                self.cards[-1].more_href = a["href"]
                self.cards[-1].more_label = a["aria-label"]
        elif self.cards and tag == "img":
            self.cards[-1].image, self.cards[-1].alt = a["src"], a["alt"]
        self._in.append(a.get("class", ""))

    def handle_endtag(self, tag: str) -> None:
        if self._in:
            self._in.pop()

    def handle_data(self, data: str) -> None:
        if not self.cards:
            return
        card = self.cards[-1]
        if "fs-name" in self._in:
            card.name += data
        card.text += data


def cards(at: AppTest, label: str = "Search results") -> list[Card]:
    for element in at.get("html"):
        body = str(element.proto.body)
        if f'aria-label="{label}"' in body:
            parser = _Cards()
            parser.feed(body)
            return parser.cards
    return []


def names(at: AppTest, label: str = "Search results") -> list[str]:
    return [c.name for c in cards(at, label)]


def html_text(at: AppTest) -> str:
    return "\n".join(str(e.proto.body) for e in at.get("html"))


def notes(at: AppTest) -> list[str]:
    """The page's quiet lines (result counts, timings), in order."""
    return [
        unescape(body.split('<p class="fs-note">')[1].split("</p>")[0])
        for body in (str(e.proto.body) for e in at.get("html"))
        if body.startswith('<p class="fs-note">')
    ]


def texts(at: AppTest, kind: str) -> list[str]:
    return [str(e.value) for e in getattr(at, kind)]


def pills(at: AppTest, label: str) -> Any:
    return next(p for p in at.get("button_group") if getattr(p, "label", None) == label)


# -- start page --------------------------------------------------------------------------


def test_start_page_in_shopper_language(app: AppTest, live_api: LiveApi) -> None:
    assert "Search is online · 24 products" in html_text(app)
    assert "a photo, or paste a link" in app.info[0].value
    assert not app.slider  # no result-count slider
    assert not app.selectbox  # the engine picker is a detail, off by default
    assert live_api.url not in html_text(app) + " ".join(texts(app, "markdown"))
    assert app.query_params == {}
    assert not app.error


# -- searching, and the URL it leads to ---------------------------------------------------


def test_text_search_puts_the_words_in_the_url(app: AppTest, live_api: LiveApi) -> None:
    text_search(app, "Mini Umbrella")

    assert app.query_params == {"q": "Mini Umbrella"}
    assert app.subheader[0].value == "Results for “Mini Umbrella”"
    assert notes(app)[0] == "Showing the 12 closest matches"
    found = cards(app)
    assert len(found) == 12
    assert found[0].name == "Mini Umbrella"
    assert found[0].image == live_api.image_url(live_api.product("Mini Umbrella"))
    assert all(c.alt == c.name for c in found)  # alt text is the product's name
    assert "Umbrella · Pink" in found[0].text
    assert not any("score 0." in c.text or "rank 1" in c.text for c in found)  # no raw scores


def test_a_shared_link_opens_the_same_search(make_app: AppFactory, live_api: LiveApi) -> None:
    first = make_app(live_api.url)
    text_search(first, "Polo shirt")
    shared = make_app(live_api.url)
    follow(shared, "?q=Polo+shirt")
    assert names(shared) == names(first)
    assert shared.text_input(key="text-query").value == "Polo shirt"  # the box shows it


def test_empty_text_asks_for_words_instead_of_searching(app: AppTest) -> None:
    text_search(app, "   ")
    assert "Type a few words first" in app.warning[0].value
    assert app.query_params == {}
    assert not cards(app)


def test_uploaded_photo_finds_that_product_and_survives_a_reload(
    make_app: AppFactory, live_api: LiveApi
) -> None:
    at = make_app(live_api.url)
    fedora = live_api.product("Hat Frank Fedora(1)")
    upload(at, "my-hat.jpg", fedora.image)

    assert at.query_params["mode"] == "photo"
    photo_key = at.query_params["img"]
    assert at.subheader[0].value == "Like your photo"
    assert names(at)[0] == fedora.name

    reloaded = make_app(live_api.url)
    follow(reloaded, f"?mode=photo&img={photo_key}")
    assert names(reloaded)[0] == fedora.name

    forgotten = make_app(live_api.url)
    follow(forgotten, "?mode=photo&img=0123456789abcdef")
    assert "upload it again" in forgotten.info[0].value


def test_photo_steered_with_words(app: AppTest, live_api: LiveApi) -> None:
    tie = live_api.product("Bowtie Kalle")
    app.text_input(key="photo-refine").set_value("Umbrella Pink")
    upload(app, "tie.jpg", tie.image)

    assert app.query_params["q"] == "Umbrella Pink"
    assert app.subheader[0].value == "Like your photo, steered by “Umbrella Pink”"
    assert names(app)[:2] == ["Bowtie Kalle", "Mini Umbrella"]


def test_not_an_image_gets_a_friendly_message(app: AppTest) -> None:
    upload(app, "holiday.jpg", b"these bytes are not a picture")
    warning = app.warning[0].value
    assert warning.startswith("We couldn't read that picture.")
    assert "JPEG, PNG or WebP" in warning
    assert not cards(app)


def test_too_large_photo_gets_a_friendly_message(make_app: AppFactory, strict_api: LiveApi) -> None:
    at = make_app(strict_api.url)
    upload(at, "huge.png", noisy_png(300), "image/png")
    assert at.warning[0].value.startswith("That image is too large")
    assert not cards(at)


def test_image_link_search(app: AppTest, live_api: LiveApi) -> None:
    parka = live_api.product("Peter softshell parka")
    app.text_input(key="link-url").set_value(live_api.image_url(parka))
    submit(app, "Search by link")

    assert app.query_params == {"mode": "link", "url": live_api.image_url(parka)}
    assert names(app)[0] == parka.name


def test_refused_image_link_gets_a_friendly_message(app: AppTest) -> None:
    app.text_input(key="link-url").set_value("http://10.0.0.7/photo.jpg")
    submit(app, "Search by link")
    warning = app.warning[0].value
    assert warning.startswith("We couldn't use that image link.")
    assert "save the picture and upload it" in warning


def test_link_must_be_a_web_address(app: AppTest) -> None:
    app.text_input(key="link-url").set_value("file:///etc/passwd")
    submit(app, "Search by link")
    assert "starting with http:// or https://" in app.warning[0].value
    assert app.query_params == {}


# -- more like this, product pages ----------------------------------------------------------


def test_more_like_this_names_its_product_and_pages_like_a_search(
    app: AppTest, live_api: LiveApi
) -> None:
    text_search(app, "Polo shirt")
    polo = next(c for c in cards(app) if c.name == "Polo S/S Highline")
    assert polo.more_label == "More like this: Polo S/S Highline"  # each button names its product
    assert polo.more_href.endswith("#results")  # lands on the new results

    follow(app, polo.more_href)
    assert app.query_params["mode"] == "similar"
    assert "q" not in app.query_params
    assert "More like “Polo S/S Highline”" in html_text(app)
    similar = names(app)
    assert len(similar) == 12
    assert polo.name not in similar
    assert similar[0] == "PETER POLO"

    submit(app, "Show more results")
    assert app.query_params["page"] == "2"
    more = names(app)
    assert more[:12] == similar
    assert len(more) == len(set(more)) == 23  # every other product of the 24
    assert not [b for b in app.button if b.label == "Show more results"]


def test_product_page_and_back_to_the_results(app: AppTest, live_api: LiveApi) -> None:
    text_search(app, "Rhea pump")
    results = dict(app.query_params)
    pump = live_api.product("Rhea pump")
    card = next(c for c in cards(app) if c.name == pump.name)

    follow(app, card.href)
    assert app.query_params == {**results, "product": pump.id}
    assert app.title[1].value == pump.name
    assert pump.description in texts(app, "markdown")
    page = html_text(app)
    assert "<dt>Product type</dt><dd>Pumps</dd>" in page
    assert f'alt="{pump.name}"' in page
    assert 'aria-label="More like this: Rhea pump">More like this</a>' in page
    also = names(app, "You may also like")
    assert len(also) == 4
    assert pump.name not in also
    assert not app.text_input  # the search forms make way for the product

    back = page.split('class="fs-back" href="')[1].split('"')[0]
    follow(app, back.replace("&amp;", "&"))
    assert app.query_params == results
    assert app.subheader[0].value == "Results for “Rhea pump”"


def test_a_product_gone_from_the_catalog_is_explained(app: AppTest) -> None:
    follow(app, "?product=no-such-id")
    assert "no longer in the catalog" in app.warning[0].value
    follow(app, "?mode=similar&like=no-such-id")
    assert "no longer in the catalog" in app.warning[0].value


# -- filters -------------------------------------------------------------------------------


def test_filters_are_labelled_with_counts_that_follow_the_other_filters(
    app: AppTest, live_api: LiveApi
) -> None:
    text_search(app, "Garment Upper body")
    assert app.expander[0].label == "Filters"
    colour = pills(app, "Colour")
    counts = Counter(p.tags["colour_master"] for p in live_api.products)
    assert colour.options[0] == "{} ({})".format(*counts.most_common(1)[0])

    colour.set_value(["Red"])
    run(app)
    assert app.query_params == {"q": "Garment Upper body", "colour_master": "Red"}
    assert app.expander[0].label == "Filters · 1 selected"
    reds = [p for p in live_api.products if p.tags["colour_master"] == "Red"]
    assert sorted(names(app)) == sorted(p.name for p in reds)
    # The product types offered now count red products only.
    red_types = Counter(p.tags["product_type"] for p in reds)
    offered = pills(app, "Product type").options
    assert sorted(offered) == sorted(f"{t} ({n})" for t, n in red_types.items())

    submit(app, "Clear filters")
    assert app.query_params == {"q": "Garment Upper body"}
    assert len(names(app)) == 12


def test_no_product_matches_every_filter(app: AppTest, live_api: LiveApi) -> None:
    umbrella = live_api.product("Mini Umbrella")
    other_colour = next(
        p.tags["colour_master"]
        for p in live_api.products
        if p.tags["colour_master"] != umbrella.tags["colour_master"]
    )
    follow(app, f"?q=umbrella&product_type=Umbrella&colour_master={other_colour}")
    assert "Nothing matches with these filters" in app.info[0].value
    submit(app, "Clear filters")
    assert app.query_params == {"q": "umbrella"}
    assert names(app)


# -- paging, details, engines ------------------------------------------------------------------


def test_show_more_loads_the_next_page_and_the_url_keeps_it(
    make_app: AppFactory, live_api: LiveApi
) -> None:
    at = make_app(live_api.url)
    text_search(at, "Accessories")
    first = names(at)
    submit(at, "Show more results")
    assert at.query_params == {"q": "Accessories", "page": "2"}
    more = names(at)
    assert more[:12] == first
    assert len(more) == len(set(more)) == 24
    assert notes(at)[0] == "Showing the 24 closest matches"

    reloaded = follow(make_app(live_api.url), "?q=Accessories&page=2")
    assert names(reloaded) == more


def test_details_toggle_shows_scores_timings_and_the_engine(app: AppTest) -> None:
    text_search(app, "Sweater")
    app.toggle(key="details").set_value(True)
    run(app)
    assert app.query_params == {"q": "Sweater", "details": "1"}
    assert "score " in cards(app)[0].text
    assert "engine fake-clip" in notes(app)[0]

    app.selectbox(key="engine").select_index(1)
    run(app)
    assert app.query_params["engine"] == "fake-lite"
    assert "engine fake-lite" in notes(app)[0]


def test_an_image_only_engine_takes_photos_not_words(app: AppTest, live_api: LiveApi) -> None:
    follow(app, "?engine=fake-pixels&details=1")
    assert app.text_input(key="photo-refine").disabled
    text_search(app, "Mini Umbrella")
    assert "matches photos only" in app.warning[0].value
    assert "q" not in app.query_params

    umbrella = live_api.product("Mini Umbrella")
    upload(app, "umbrella.jpg", umbrella.image)
    assert names(app)[0] == umbrella.name
    assert "engine fake-pixels" in notes(app)[0]


# -- the API down ----------------------------------------------------------------------------------


def test_api_down_is_explained_in_shopper_language(make_app: AppFactory, down_url: str) -> None:
    at = make_app(down_url)
    assert at.error[0].value == "Search is unavailable right now. Please try again in a moment."
    assert "Search is offline" in html_text(at)
    assert down_url not in html_text(at) + at.error[0].value
    assert not at.expander  # no filters without an API

    text_search(at, "black dress")
    assert at.query_params == {"q": "black dress"}
    assert len(at.error) == 1  # said once, at the top
    assert not cards(at)


def test_the_page_recovers_once_the_api_is_back(
    make_app: AppFactory, samples: list[SampleProduct]
) -> None:
    port = free_port()
    at = make_app(f"http://127.0.0.1:{port}")
    text_search(at, "Mini Umbrella")
    assert "Search is offline" in html_text(at)

    with running_api(samples, encoder_ids=["fake-clip"], port=port):
        at.run()  # the status is asked again (errors are never cached)
        assert "Search is online" in html_text(at)
        assert names(at)[0] == "Mini Umbrella"


def test_no_close_matches_is_said_when_the_api_says_so(app: AppTest) -> None:
    follow(app, "?q=purple+dinosaur+spaceship")  # no product has these words or is near
    assert app.info[0].value.startswith("No close matches.")
    assert names(app)  # the nearest products are still shown
    # ... and not called matches above the notice that says there are none
    assert notes(app)[0] == f"Showing the {len(names(app))} nearest products"
    text_search(app, "Mini Umbrella")
    assert not app.info
