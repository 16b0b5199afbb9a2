"""The Streamlit app, driven with AppTest against a live API (the real FastAPI app over the
in-memory fakes on a loopback port): every shopper interaction, and the friendly messages."""

from __future__ import annotations

from collections import Counter
from typing import Any

from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.element_tree import Block

from tests.ui.conftest import AppFactory
from tests.ui.live import LiveApi, SampleProduct, free_port, noisy_png, running_api
from ui.client import Product
from ui.shop import SearchRequest


def submit(at: AppTest, label: str) -> AppTest:
    button = next(b for b in at.button if b.label == label)
    button.click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def text_search(at: AppTest, text: str) -> AppTest:
    at.text_input(key="text-query").set_value(text)
    return submit(at, "Search")


def upload(at: AppTest, name: str, data: bytes, mime: str = "image/jpeg") -> AppTest:
    at.file_uploader(key="photo").set_value((name, data, mime))
    return submit(at, "Find similar")


def card_names(at: AppTest, where: str = "results") -> list[str]:
    """Product names on the result cards, in grid order (the name is the details button)."""
    return [str(b.label) for b in at.button if str(b.key or "").startswith(f"{where}-detail-")]


def hits(at: AppTest) -> list[Any]:
    return list(at.session_state["results"].hits)


def texts(at: AppTest | Block, kind: str) -> list[str]:
    return [str(e.value) for e in getattr(at, kind)]


def test_start_page_offers_filters_from_facets_topk_and_encoders(
    app: AppTest, live_api: LiveApi
) -> None:
    filters = {m.label: m for m in app.sidebar.multiselect}
    assert list(filters) == ["Product type", "Colour", "Section", "Product group"]
    # colour_master is preferred over the finer colour; the options are the catalog's values
    # with their counts, most frequent first.
    counts = Counter(p.tags["colour_master"] for p in live_api.products)
    expected = [f"{v} ({n})" for v, n in sorted(counts.items(), key=lambda vn: (-vn[1], vn[0]))]
    assert filters["Colour"].options == expected
    assert not any("Dark Grey" in o for o in filters["Colour"].options)
    assert "Ladieswear (" in " ".join(filters["Section"].options)

    engine = app.sidebar.selectbox(key="encoder")
    assert engine.options == [
        "fake-clip (24 products)",
        "fake-lite (24 products)",
        "fake-pixels (24 products)",
    ]
    assert app.sidebar.slider(key="top_k").value == 12
    assert any("Connected" in c and "24 products" in c for c in texts(app.sidebar, "caption"))
    assert not app.error
    assert "a few words, a photo, or a link" in app.info[0].value


def test_text_search_shows_a_grid_of_images_names_scores_and_tags(
    app: AppTest, live_api: LiveApi
) -> None:
    text_search(app, "Mini Umbrella")

    assert app.subheader[0].value == "12 results for “Mini Umbrella”"
    names = card_names(app)
    assert len(names) == 12
    assert names[0] == "Mini Umbrella"
    images = [i.value[0] for i in app.image]
    assert len(images) == 12
    assert all(url.startswith(f"{live_api.url}/images/") for url in images)
    assert images[0] == live_api.image_url(live_api.product("Mini Umbrella"))
    markdown = texts(app, "markdown")
    assert ":gray-badge[Umbrella] :gray-badge[Pink] :gray-badge[Ladieswear]" in markdown
    scores = [h.score for h in hits(app)]
    assert scores == sorted(scores, reverse=True)
    assert any(f"Match {scores[0]:.2f} · #1" in m for m in markdown)
    assert "fake-clip" in app.caption[1].value  # took ms · encoder


def test_empty_text_asks_for_words_instead_of_searching(app: AppTest) -> None:
    text_search(app, "   ")
    assert "Type a few words first" in app.warning[0].value
    assert app.session_state["request"] is None
    assert not app.image


def test_uploaded_photo_finds_that_product_first(app: AppTest, live_api: LiveApi) -> None:
    fedora = live_api.product("Hat Frank Fedora(1)")
    upload(app, "my-hat.jpg", fedora.image)

    assert app.subheader[0].value == "12 results like your photo"
    assert card_names(app)[0] == fedora.name
    assert hits(app)[0].score > 0.999
    # The shopper's own photo is previewed next to the results (as a data URL).
    assert app.image[0].value[0].startswith("data:image/jpeg;base64,")


def test_photo_steered_with_words(app: AppTest, live_api: LiveApi) -> None:
    tie = live_api.product("Bowtie Kalle")
    app.text_input(key="photo-refine").set_value("Umbrella Pink")
    upload(app, "tie.jpg", tie.image)

    assert "steered by “Umbrella Pink”" in app.subheader[0].value
    # Half photo, half words: the tie itself, then the pink umbrella the words describe.
    assert card_names(app)[:2] == ["Bowtie Kalle", "Mini Umbrella"]
    assert hits(app)[0].score < 0.99  # the words moved the query away from the photo


def test_not_an_image_gets_a_friendly_message(app: AppTest) -> None:
    upload(app, "holiday.jpg", b"these bytes are not a picture")

    assert not app.exception
    warning = app.warning[0].value
    assert warning.startswith("We couldn't read that picture.")
    assert "JPEG, PNG or WebP" in warning
    assert not card_names(app)


def test_too_large_photo_gets_a_friendly_message(make_app: AppFactory, strict_api: LiveApi) -> None:
    at = make_app(strict_api.url)
    upload(at, "huge.png", noisy_png(300), "image/png")

    assert at.warning[0].value.startswith("That image is too large")
    assert not card_names(at)


def test_image_link_search(app: AppTest, live_api: LiveApi) -> None:
    parka = live_api.product("Peter softshell parka")
    app.text_input(key="link-url").set_value(live_api.image_url(parka))
    submit(app, "Search by link")

    assert app.subheader[0].value == "12 results like the linked image"
    assert card_names(app)[0] == parka.name


def test_refused_image_link_gets_a_friendly_message(app: AppTest) -> None:
    app.text_input(key="link-url").set_value("http://10.0.0.7/photo.jpg")
    submit(app, "Search by link")

    warning = app.warning[0].value
    assert warning.startswith("We couldn't use that image link.")
    assert "private or reserved address" in warning
    assert "save the picture and upload it" in warning
    assert not card_names(app)


def test_link_must_be_a_web_address(app: AppTest) -> None:
    app.text_input(key="link-url").set_value("file:///etc/passwd")
    submit(app, "Search by link")
    assert "starting with http:// or https://" in app.warning[0].value
    assert app.session_state["request"] is None


def test_more_like_this_searches_by_that_product(app: AppTest, live_api: LiveApi) -> None:
    text_search(app, "Polo shirt")
    polo = live_api.product("Polo S/S Highline")
    assert polo.name in card_names(app)

    app.button(key=f"results-more-{polo.id}").click()
    app.run()

    assert app.subheader[0].value == f"12 results like “{polo.name}”"
    names = card_names(app)
    assert polo.name not in names  # the product itself is excluded
    assert names[0] == "PETER POLO"  # shares "Polo shirt" and "Garment Upper body"
    assert app.image[0].value[0] == live_api.image_url(polo)  # the product it started from


def test_product_detail_view_and_back(app: AppTest, live_api: LiveApi) -> None:
    text_search(app, "Rhea pump")
    pump = live_api.product("Rhea pump")
    app.button(key=f"results-detail-{pump.id}").click()
    app.run()

    assert app.title[1].value == pump.name
    assert pump.description in texts(app, "markdown")
    details = next(m for m in texts(app, "markdown") if m.startswith("- **"))
    assert details.splitlines() == [
        "- **Product type:** Pumps",
        "- **Colour:** Yellowish Brown",
        "- **Colour group:** Brown",
        "- **Section:** Ladieswear",
        "- **Product group:** Shoes",
    ]
    assert f"Product id {pump.id}" in texts(app, "caption")
    assert "You may also like" in texts(app, "subheader")
    also = card_names(app, "also")
    assert len(also) == 4
    assert pump.name not in also
    assert not app.text_input  # the search forms make way for the product

    app.button(key="detail-more").click()
    app.run()
    assert app.subheader[0].value.endswith(f"like “{pump.name}”")

    first = card_names(app)[0]
    next(b for b in app.button if b.label == first).click()
    app.run()
    assert app.title[1].value == first
    submit(app, "Back to results")
    assert app.subheader[0].value.endswith(f"like “{pump.name}”")


def test_filters_restrict_the_results(app: AppTest, live_api: LiveApi) -> None:
    text_search(app, "Garment Upper body")
    colour = next(m for m in app.sidebar.multiselect if m.label == "Colour")
    red = next(o for o in colour.options if o.startswith("Red ("))
    colour.set_value([red.split(" (")[0]])
    app.run()

    found = hits(app)
    expected = [p for p in live_api.products if p.tags["colour_master"] == "Red"]
    assert len(found) == len(expected) == int(red.split("(")[1].rstrip(")"))
    assert {h.product.tag("colour_master") for h in found} == {"Red"}

    submit(app, "Clear filters")
    assert len(hits(app)) == 12


def test_topk_and_show_more(app: AppTest) -> None:
    app.sidebar.slider(key="top_k").set_value(5)
    app.run()
    text_search(app, "Accessories")
    first = card_names(app)
    assert len(first) == 5

    submit(app, "Show more")
    more = card_names(app)
    assert len(more) == 10
    assert more[:5] == first
    assert len(set(more)) == 10


def test_encoder_selector_switches_the_search_engine(app: AppTest) -> None:
    text_search(app, "Sweater")
    assert app.session_state["results"].pages[0].encoder == "fake-clip"

    app.sidebar.selectbox(key="encoder").select_index(1)
    app.run()
    assert app.session_state["results"].pages[0].encoder == "fake-lite"
    assert "fake-lite" in app.caption[1].value


def test_an_image_only_engine_takes_photos_not_words(app: AppTest, live_api: LiveApi) -> None:
    app.sidebar.selectbox(key="encoder").select_index(2)
    app.run()
    assert app.text_input(key="photo-refine").disabled
    text_search(app, "Mini Umbrella")
    assert "fake-pixels search engine matches photos only" in app.warning[0].value
    assert app.session_state["request"] is None

    umbrella = live_api.product("Mini Umbrella")
    upload(app, "umbrella.jpg", umbrella.image)
    assert card_names(app)[0] == umbrella.name
    assert app.session_state["results"].pages[0].encoder == "fake-pixels"


def test_api_down_is_explained_not_a_traceback(make_app: AppFactory, down_url: str) -> None:
    at = make_app(down_url)

    assert "We can't reach the search service" in at.error[0].value
    assert down_url in at.error[0].value
    assert "fashion-search serve" in at.error[0].value
    assert any("API offline" in c for c in texts(at.sidebar, "caption"))
    assert not at.sidebar.multiselect

    text_search(at, "black dress")
    assert not at.exception
    # The search was tried and failed for the same reason: said once, at the top.
    assert "We can't reach the search service" in at.session_state["results"].error
    assert len(at.error) == 1
    assert not at.image


def test_searching_again_retries_once_the_api_is_back(
    make_app: AppFactory, samples: list[SampleProduct]
) -> None:
    port = free_port()
    at = make_app(f"http://127.0.0.1:{port}")
    text_search(at, "Mini Umbrella")
    assert "We can't reach the search service" in at.session_state["results"].error

    # The API comes up at that address (one encoder: nothing else on the page changes).
    with running_api(samples, encoder_ids=["fake-clip"], port=port):
        at.run()
        assert card_names(at) == []  # nothing retried behind the shopper's back
        submit(at, "Search")
        assert not at.error
        assert card_names(at)[0] == "Mini Umbrella"


def test_a_product_gone_from_the_catalog_is_explained(app: AppTest) -> None:
    ghost = Product(id="no-such-id", name="Ghost", image_url="http://127.0.0.1/ghost.jpg")
    app.session_state["request"] = SearchRequest(kind="similar", product=ghost)
    app.run()
    assert "no longer in the catalog" in app.warning[0].value

    app.session_state["detail"] = ghost
    app.run()
    assert "no longer in the catalog" in app.warning[0].value
