"""End to end: the real API (uvicorn, over the in-memory fakes with real H&M photos), the UI
started by `fashion-search ui` (a real `streamlit run`), and Debian's Chromium driven by
Playwright. Every page runs offline: requests to any host but this one are blocked and
recorded, and a test fails if one was attempted. Accessibility is checked with axe-core
(vendored in tests/e2e/vendor/). Screenshots land in test-artifacts/ui/ (the README's come
from there: docs/screenshots/)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    FilePayload,
    Locator,
    Page,
    Route,
    expect,
    sync_playwright,
)

from encoders.fashion_lite.heads import DEFAULT_HEADS
from tests.ui.live import LiveApi, dead_url, free_port, load_samples, running_api

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "ui"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1366, "height": 1000}
PHONE = {"width": 390, "height": 844}
AXE = Path(__file__).resolve().parent / "vendor" / "axe-core" / "axe.min.js"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
SERIOUS = frozenset({"serious", "critical"})
TIMEOUT_MS = 30_000
FASHION_LITE_HEADS = DEFAULT_HEADS
# The real encoder: fashion-lite (words and photos) once its trained heads are in the tree;
# until then the photo-only EfficientNet-Lite0 baseline, which needs no trained artifact.
REAL_ENCODER = "fashion-lite" if FASHION_LITE_HEADS.exists() else "effnet-lite0"
REAL_CATALOG_SIZE = 12

expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def api(hm_demo: Path) -> Iterator[LiveApi]:
    with running_api(load_samples(hm_demo)) as live:
        yield live


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fashion_search.cli", *args]


def start_ui(api_url: str, name: str) -> tuple[subprocess.Popen[bytes], str]:
    """`fashion-search ui` on a free port; returns the process and the UI's URL."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = cli("ui", "--port", str(port), "--api-url", api_url)
    log = (ARTIFACTS / f"{name}.log").open("wb")
    process = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the UI exited with {process.returncode}: see {log.name}")
        try:
            if httpx.get(f"{url}/_stcore/health", timeout=1).text == "ok":
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    stop(process)
    pytest.fail(f"the UI did not start within 60 s: see {log.name}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)  # its own session: streamlit and nothing else
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


@pytest.fixture(scope="module")
def ui_url(api: LiveApi) -> Iterator[str]:
    process, url = start_ui(api.url, "streamlit")
    yield url
    stop(process)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: apt-get install -y chromium (.ci/run does)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Offline:
    """Blocks every request to another host, and remembers it."""

    def __init__(self) -> None:
        self.attempted: list[str] = []

    def handle(self, route: Route) -> None:
        url = route.request.url
        host = urlsplit(url).hostname or ""
        if url.startswith(("data:", "blob:")) or host in LOCAL_HOSTS:
            route.continue_()
        else:
            self.attempted.append(url)
            route.abort("blockedbyclient")


@contextmanager
def open_page(browser: Browser, viewport: dict[str, int]) -> Iterator[tuple[Page, Offline]]:
    context = browser.new_context(viewport=viewport)  # type: ignore[arg-type]
    offline = Offline()
    context.route("**/*", offline.handle)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page, offline
    context.close()
    assert offline.attempted == [], "requests left the host"


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with open_page(browser, VIEWPORT) as (page, _):
        yield page


@pytest.fixture
def phone(browser: Browser) -> Iterator[Page]:
    with open_page(browser, PHONE) as (page, _):
        yield page


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def params(page: Page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query)


def card_names(page: Page, label: str = "Search results") -> Locator:
    return page.locator(f'ul.fs-grid[aria-label="{label}"] .fs-name')


def expect_cards(page: Page, names: list[str]) -> None:
    """The grid shows exactly ``names``. Waits out Streamlit's rerun: the URL and the filter
    label change before the new grid replaces the old one."""
    expect(card_names(page)).to_have_text(names)
    assert cards(page) == names


def cards(page: Page, label: str = "Search results") -> list[str]:
    """Product names on the cards, once every card's image has loaded."""
    grid = page.locator(f'ul.fs-grid[aria-label="{label}"]')
    expect(grid).to_be_visible()
    page.wait_for_function(  # the first photo shows (the others load as they scroll in)
        """(label) => {
            const image = document.querySelector(`ul[aria-label="${label}"] img`);
            return image !== null && image.complete && image.naturalWidth > 0;
        }""",
        arg=label,
    )
    names: list[str] = grid.locator(".fs-name").all_inner_texts()
    return names


def search(page: Page, words: str) -> None:
    box = page.get_by_label("What are you looking for?")
    box.fill(words)
    box.press("Enter")
    expect(page.get_by_role("heading", name=f"Results for “{words}”")).to_be_visible()


def axe_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page as it is now."""
    page.add_script_tag(path=str(AXE))
    report = page.evaluate("async () => JSON.stringify(await axe.run(document))")
    violations: list[dict[str, Any]] = json.loads(report)["violations"]
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["html"][:120] for n in v["nodes"]]}
        for v in violations
        if v["impact"] in SERIOUS
    ]


# -- a shopper's journey and the URL -------------------------------------------------------------


def test_url_round_trip_back_forward_and_reload(page: Page, ui_url: str) -> None:
    page.goto(ui_url)
    expect(page.get_by_text("Search is online · 24 products")).to_be_visible()
    search(page, "Garment Upper body")
    assert params(page) == {"q": ["Garment Upper body"]}
    unfiltered = cards(page)
    assert len(unfiltered) == 12
    page.set_viewport_size({"width": VIEWPORT["width"], "height": 1400})
    page.wait_for_function("() => [...document.images].every(i => i.complete)")
    shot(page, "01-desktop")  # docs/screenshots/desktop.png
    page.set_viewport_size(VIEWPORT)  # type: ignore[arg-type]

    page.get_by_text("Filters", exact=True).click()
    colour = page.get_by_role("button", name=re.compile(r"^Red \(\d+\)$"))
    counted = re.search(r"\((\d+)\)", colour.inner_text())
    assert counted is not None
    red_count = int(counted.group(1))
    assert 0 < red_count < len(unfiltered)
    colour.click()
    expect(page.get_by_text("Filters · 1 selected")).to_be_visible()
    page.wait_for_url(re.compile(r"colour_master=Red"))
    expect(card_names(page)).to_have_count(red_count)  # the facet's count, once redrawn
    red = cards(page)

    first = red[0]
    page.get_by_role("link", name=first, exact=True).first.click()
    expect(page.get_by_role("heading", name=first, level=1)).to_be_visible()
    assert params(page)["colour_master"] == ["Red"]
    assert "product" in params(page)

    page.go_back()
    expect(page.get_by_role("heading", name="Results for “Garment Upper body”")).to_be_visible()
    expect_cards(page, red)
    page.go_back()
    page.wait_for_url(lambda url: "colour_master" not in url)
    expect(page.get_by_text("Filters", exact=True)).to_be_visible()
    expect_cards(page, unfiltered)
    page.go_forward()
    page.wait_for_url(re.compile(r"colour_master=Red"))
    expect(page.get_by_text("Filters · 1 selected")).to_be_visible()
    expect_cards(page, red)
    page.reload()
    expect(page.get_by_text("Filters · 1 selected")).to_be_visible()
    expect_cards(page, red)
    expect(page.get_by_label("What are you looking for?")).to_have_value("Garment Upper body")


def test_photo_search_and_more_like_this(page: Page, ui_url: str, api: LiveApi) -> None:
    page.goto(ui_url)
    fedora = api.product("Hat Frank Fedora(1)")
    page.get_by_role("tab", name="Upload a photo").click()
    photo: FilePayload = {"name": "my-hat.jpg", "mimeType": "image/jpeg", "buffer": fedora.image}
    page.locator('input[type="file"]').set_input_files(files=[photo])
    expect(page.get_by_text("my-hat.jpg")).to_be_visible()
    page.get_by_role("button", name="Find similar").click()
    expect(page.get_by_role("heading", name="Like your photo")).to_be_visible()
    found = cards(page)
    assert found[0] == fedora.name
    assert params(page)["mode"] == ["photo"]

    second = found[1]
    page.get_by_role("link", name=f"More like this: {second}").click()
    heading = page.get_by_role("heading", name=f"More like “{second}”")
    expect(heading).to_be_in_viewport()  # the new results are on screen, not mid-grid
    similar = cards(page)
    assert len(similar) == 12
    assert second not in similar
    page.get_by_role("button", name="Show more results").click()
    page.wait_for_url(re.compile(r"page=2"))
    page.wait_for_function(
        "() => document.querySelectorAll('ul[aria-label=\"Search results\"] li').length > 12"
    )
    more = cards(page)
    assert more[:12] == similar
    assert len(more) == len(set(more)) == 23
    shot(page, "02-more-like-this")


def test_keyboard_path_through_search_results_and_detail(page: Page, ui_url: str) -> None:
    page.goto(ui_url)
    box = page.get_by_label("What are you looking for?")
    expect(box).to_be_visible()
    box.focus()
    page.keyboard.type("Polo shirt")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Results for “Polo shirt”")).to_be_visible()
    first = cards(page)[0]
    for _ in range(60):  # Tab from the search box to the first product's link
        page.keyboard.press("Tab")
        focused = page.evaluate("() => document.activeElement.className")
        if "fs-product" in str(focused):
            break
    else:
        pytest.fail("no product link reachable with Tab")
    assert page.evaluate("() => document.activeElement.innerText").strip() == first
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name=first, level=1)).to_be_visible()
    back = page.get_by_role("link", name="← Back to results")
    back.focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Results for “Polo shirt”")).to_be_visible()


# -- phones, accessibility ---------------------------------------------------------------------


def test_phone_layout_has_two_columns_and_a_labelled_filters_control(
    phone: Page, ui_url: str
) -> None:
    phone.goto(ui_url)
    search(phone, "Accessories")
    cards(phone)
    lefts = phone.eval_on_selector_all(
        'ul[aria-label="Search results"] li',
        "cards => cards.map(c => c.getBoundingClientRect().left)",
    )
    assert len(set(lefts)) == 2  # two columns
    assert phone.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
    expect(phone.get_by_text("Filters", exact=True)).to_be_visible()
    phone.get_by_text("Filters", exact=True).scroll_into_view_if_needed()
    phone.wait_for_function("() => [...document.images].slice(0, 4).every(i => i.complete)")
    shot(phone, "03-phone")  # docs/screenshots/phone.png


@pytest.mark.parametrize("viewport", [VIEWPORT, PHONE], ids=["desktop", "phone"])
def test_axe_finds_no_serious_or_critical_violations(
    browser: Browser, ui_url: str, viewport: dict[str, int]
) -> None:
    with open_page(browser, viewport) as (page, _):
        page.goto(ui_url)
        expect(page.get_by_text("Search is online")).to_be_visible()
        assert axe_violations(page) == [], "start page"
        search(page, "Polo shirt")
        first = cards(page)[0]
        page.get_by_text("Filters", exact=True).click()
        assert axe_violations(page) == [], "results"
        page.get_by_role("link", name=first, exact=True).first.click()
        expect(page.get_by_role("heading", name=first, level=1)).to_be_visible()
        cards(page, "You may also like")
        assert axe_violations(page) == [], "product page"


# -- error and empty states ------------------------------------------------------------------------


def test_no_match_and_api_down_states(page: Page, ui_url: str) -> None:
    page.goto(f"{ui_url}/?q=purple+dinosaur+spaceship")
    expect(page.get_by_text("No close matches.")).to_be_visible()
    assert cards(page)  # the nearest products, said to be such

    page.goto(f"{ui_url}/?q=umbrella&product_type=Umbrella&colour_master=Black")
    expect(page.get_by_text("Nothing matches with these filters")).to_be_visible()
    page.get_by_role("button", name="Clear filters").first.click()
    page.wait_for_url(lambda url: "colour_master" not in url)
    assert cards(page)

    down = dead_url()
    process, url = start_ui(down, "streamlit-api-down")
    try:
        page.goto(url)
        message = page.get_by_text("Search is unavailable right now. Please try again in a moment.")
        expect(message).to_be_visible()
        expect(page.get_by_text("Search is offline")).to_be_visible()
        search_box = page.get_by_label("What are you looking for?")
        search_box.fill("red dress")
        search_box.press("Enter")
        page.wait_for_url(re.compile(r"q=red"))
        expect(message).to_have_count(1)  # the failed search does not repeat it
        assert page.get_by_text("Traceback").count() == 0
        assert down not in page.content()
        shot(page, "04-api-down")
    finally:
        stop(process)


@pytest.fixture(scope="module")
def real_stack(
    tmp_path_factory: pytest.TempPathFactory, hm_demo: Path
) -> Iterator[tuple[str, str]]:
    """What `make demo` runs, on a tiny catalog: `fashion-search ingest` into a fresh home
    (SQLite, FAISS, local images, a real encoder), `fashion-search serve`, `fashion-search ui`.
    Yields the API's and the UI's URLs."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "FASHION_SEARCH_HOME": str(tmp_path_factory.mktemp("real-home")),
        "FASHION_SEARCH_ENCODER": REAL_ENCODER,
        "FASHION_SEARCH_PUBLIC_URL": api_url,
    }
    ingest = subprocess.run(
        cli("ingest", str(hm_demo), "--limit", str(REAL_CATALOG_SIZE)),
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=300,
    )
    assert ingest.returncode == 0, ingest.stdout.decode() + ingest.stderr.decode()
    log = (ARTIFACTS / "api-real.log").open("wb")
    api = subprocess.Popen(
        cli("serve", "--port", str(port)),
        env=env,
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if api.poll() is not None:
                pytest.fail(f"the API exited with {api.returncode}: see {log.name}")
            try:
                if httpx.get(f"{api_url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the API was not ready within 120 s: see {log.name}")
            time.sleep(0.25)
        ui, ui_url = start_ui(api_url, "streamlit-real")
        try:
            yield api_url, ui_url
        finally:
            stop(ui)
    finally:
        stop(api)


# -- GraphiQL and Swagger UI offline -------------------------------------------------------------


def test_graphiql_and_swagger_ui_work_offline(
    browser: Browser, real_stack: tuple[str, str]
) -> None:
    api_url, _ = real_stack  # `fashion-search serve`, as shipped
    with open_page(browser, VIEWPORT) as (page, offline):
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(f"{api_url}/graphql")
        expect(page.locator(".graphiql-container .graphiql-query-editor")).to_be_visible()
        expect(page.get_by_role("button", name="Execute query (Ctrl-Enter)")).to_be_visible()
        page.goto(f"{api_url}/docs")
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("fashion-search")
        expect(page.get_by_role("link", name="/get_image_by_text")).to_be_visible()
        assert offline.attempted == []
        assert any("/static/vendor/graphiql/graphiql.min.js" in u for u in requested)
        assert any("/static/vendor/swagger-ui-dist/swagger-ui-bundle.js" in u for u in requested)
        shot(page, "05-swagger-offline")


# -- the real stack: ingest, serve, ui ---------------------------------------------------------------


def test_real_catalog_in_a_real_browser(
    page: Page, real_stack: tuple[str, str], hm_demo: Path
) -> None:
    _, ui_url = real_stack
    samples = load_samples(hm_demo, REAL_CATALOG_SIZE)
    page.goto(ui_url)
    expect(page.get_by_text(f"Search is online · {REAL_CATALOG_SIZE} products")).to_be_visible()
    if REAL_ENCODER == "fashion-lite":
        search(page, "brown felt hat")
        assert len(cards(page)) == REAL_CATALOG_SIZE
        shot(page, "07-real-text-search")

    # The same photo as a catalog product: a real encoder maps it to that product's vector.
    hat = next(p for p in samples if p.name == "Hat Frank Fedora(1)")
    page.get_by_role("tab", name="Upload a photo").click()
    photo: FilePayload = {"name": "hat.jpg", "mimeType": "image/jpeg", "buffer": hat.image}
    page.locator('input[type="file"]').set_input_files(files=[photo])
    expect(page.get_by_text("hat.jpg")).to_be_visible()
    page.get_by_role("button", name="Find similar").click()
    expect(page.get_by_role("heading", name="Like your photo")).to_be_visible()
    found = cards(page)
    assert found[0] == hat.name
    shot(page, "08-real-photo-search")

    page.get_by_role("link", name=f"More like this: {hat.name}").click()
    expect(page.get_by_role("heading", name=f"More like “{hat.name}”")).to_be_in_viewport()
    similar = cards(page)
    assert len(similar) == REAL_CATALOG_SIZE - 1
    assert hat.name not in similar
