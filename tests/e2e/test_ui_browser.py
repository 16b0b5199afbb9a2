"""End to end: the real API (uvicorn, over the in-memory fakes with real H&M photos), the UI
started by `fashion-search ui` (a real `streamlit run`), and Debian's Chromium driven by
Playwright. Screenshots land in test-artifacts/ui/."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, FilePayload, Page, expect, sync_playwright

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
VIEWPORT = {"width": 1366, "height": 1900}
HM_IMAGE_WIDTH = 360  # every hm-demo photo is 360x540
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


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


def settle(page: Page) -> None:
    """Wait until Streamlit has finished the current run (no 'Running...' status, no stale
    elements left from the previous run)."""
    page.wait_for_function(
        """() => !document.querySelector('[data-testid="stStatusWidget"]')
                 && !document.querySelector('[data-stale="true"]')""",
        timeout=TIMEOUT_MS,
    )


def rendered_widths(page: Page, count: int, where: str = "results") -> list[int]:
    """naturalWidth of every result card image, once `count` cards are there and every image
    has finished loading (or failed to: a broken image is complete with naturalWidth 0)."""
    selector = f'[class*="st-key-card-{where}-"] img'
    page.wait_for_function(
        """([selector, count]) => {
            const images = [...document.querySelectorAll(selector)];
            return images.length === count && images.every(i => i.complete);
        }""",
        arg=[selector, count],
        timeout=TIMEOUT_MS,
    )
    widths: list[int] = page.eval_on_selector_all(
        selector, "images => images.map(i => i.naturalWidth)"
    )
    return widths


def card_names(page: Page, where: str = "results") -> list[str]:
    names: list[str] = page.eval_on_selector_all(
        f'[class*="st-key-{where}-detail-"] button',
        "buttons => buttons.map(b => b.innerText.trim())",
    )
    return names


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def test_shopper_journey_in_a_real_browser(page: Page, ui_url: str, api: LiveApi) -> None:
    page.goto(ui_url)
    search_box = page.get_by_label("What are you looking for?")
    expect(search_box).to_be_visible()
    expect(page.get_by_text("Connected · 24 products")).to_be_visible()
    settle(page)
    shot(page, "01-start")

    # 1. Words.
    search_box.fill("Polo shirt")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.get_by_text("12 results for “Polo shirt”")).to_be_visible()
    settle(page)
    assert rendered_widths(page, 12) == [HM_IMAGE_WIDTH] * 12
    assert set(card_names(page)[:2]) == {"Polo S/S Highline", "PETER POLO"}
    shot(page, "02-text-search")

    # 2. A photo.
    fedora = api.product("Hat Frank Fedora(1)")
    page.get_by_role("tab", name="Upload a photo").click()
    photo: FilePayload = {"name": "my-hat.jpg", "mimeType": "image/jpeg", "buffer": fedora.image}
    page.locator('input[type="file"]').set_input_files(files=[photo])
    expect(page.get_by_text("my-hat.jpg")).to_be_visible()
    page.get_by_role("button", name="Find similar").click()
    expect(page.get_by_text("12 results like your photo")).to_be_visible()
    settle(page)
    assert rendered_widths(page, 12) == [HM_IMAGE_WIDTH] * 12
    assert card_names(page)[0] == fedora.name
    shot(page, "03-photo-search")

    # 3. More like this, on the second result.
    second = card_names(page)[1]
    page.locator('[class*="st-key-results-more-"] button').nth(1).click()
    expect(page.get_by_text(f"12 results like “{second}”")).to_be_visible()
    settle(page)
    assert rendered_widths(page, 12) == [HM_IMAGE_WIDTH] * 12
    assert second not in card_names(page)
    shot(page, "04-more-like-this")

    # 4. A product's details.
    first = card_names(page)[0]
    page.locator('[class*="st-key-results-detail-"] button').first.click()
    expect(page.get_by_role("heading", name=first)).to_be_visible()
    expect(page.get_by_text("You may also like")).to_be_visible()
    settle(page)
    assert rendered_widths(page, 4, "also") == [HM_IMAGE_WIDTH] * 4
    shot(page, "05-product-details")


def test_api_down_message_in_a_real_browser(page: Page) -> None:
    down = dead_url()
    process, url = start_ui(down, "streamlit-api-down")
    try:
        page.goto(url)
        message = page.get_by_text("We can't reach the search service")
        expect(message).to_be_visible()
        expect(page.get_by_text("API offline")).to_be_visible()
        page.get_by_label("What are you looking for?").fill("red dress")
        page.get_by_role("button", name="Search", exact=True).click()
        settle(page)
        expect(message).to_have_count(1)  # the failed search does not repeat it
        assert page.get_by_text("Traceback").count() == 0
        shot(page, "06-api-down")
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


def test_real_catalog_in_a_real_browser(
    page: Page, real_stack: tuple[str, str], hm_demo: Path
) -> None:
    _, ui_url = real_stack
    samples = load_samples(hm_demo, REAL_CATALOG_SIZE)
    page.goto(ui_url)
    expect(page.get_by_text(f"Connected · {REAL_CATALOG_SIZE} products")).to_be_visible()
    settle(page)
    expect(page.get_by_label("Search engine")).to_have_count(0)  # one indexed encoder

    search_box = page.get_by_label("What are you looking for?")
    search_box.fill("brown felt hat")
    page.get_by_role("button", name="Search", exact=True).click()
    if REAL_ENCODER == "fashion-lite":
        expect(page.get_by_text("12 results for “brown felt hat”")).to_be_visible()
        settle(page)
        assert rendered_widths(page, 12) == [HM_IMAGE_WIDTH] * 12
        shot(page, "07-real-text-search")
    else:
        expect(
            page.get_by_text(f"The {REAL_ENCODER} search engine matches photos only")
        ).to_be_visible()

    # The same photo as a catalog product: a real encoder maps it to that product's vector.
    hat = next(p for p in samples if p.name == "Hat Frank Fedora(1)")
    page.get_by_role("tab", name="Upload a photo").click()
    photo: FilePayload = {"name": "hat.jpg", "mimeType": "image/jpeg", "buffer": hat.image}
    page.locator('input[type="file"]').set_input_files(files=[photo])
    expect(page.get_by_text("hat.jpg")).to_be_visible()
    page.get_by_role("button", name="Find similar").click()
    expect(page.get_by_text("12 results like your photo")).to_be_visible()
    settle(page)
    assert rendered_widths(page, 12) == [HM_IMAGE_WIDTH] * 12
    assert card_names(page)[0] == hat.name
    expect(page.get_by_text("Match 1.00 · #1")).to_be_visible()
    shot(page, "08-real-photo-search")

    page.locator('[class*="st-key-results-more-"] button').first.click()
    expect(page.get_by_text(f"11 results like “{hat.name}”")).to_be_visible()
    settle(page)
    assert rendered_widths(page, 11) == [HM_IMAGE_WIDTH] * 11
    assert hat.name not in card_names(page)
    shot(page, "09-real-more-like-this")
