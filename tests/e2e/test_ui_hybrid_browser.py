"""The shop UI over a mixed catalog (hm-demo and Kaggle products: terse and descriptive
names, two photo styles), as `make demo` runs it (`fashion-search serve` and `fashion-search
ui` on a home the CLI ingested), in Debian's Chromium: a shopper typing "black trousers"
sees trousers first. The assertions read the labels the cards show."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.e2e.test_ui_browser import (
    ARTIFACTS,
    VIEWPORT,
    browser,
    cards,
    cli,
    open_page,
    search,
    shot,
    start_ui,
    stop,
)
from tests.ui.live import free_port

__all__ = ["browser"]  # the fixture, shared with the other browser tests

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FIRST_CARDS = 3
"""How many of the first cards must be trousers."""


@pytest.fixture(scope="module")
def mixed_ui(mixed_catalog_home: Path) -> Iterator[str]:
    """`fashion-search serve` over the mixed catalog and `fashion-search ui` in front of it;
    yields the UI's URL."""
    import subprocess

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "FASHION_SEARCH_HOME": str(mixed_catalog_home),
        "FASHION_SEARCH_PUBLIC_URL": api_url,
    }
    env.pop("FASHION_SEARCH_ENCODER", None)
    log = (ARTIFACTS / "api-mixed.log").open("wb")
    api = subprocess.Popen(
        cli("serve", "--port", str(port)),
        env=env,
        cwd=Path(__file__).resolve().parents[2],
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
        ui, ui_url = start_ui(api_url, "streamlit-mixed")
        try:
            yield ui_url
        finally:
            stop(ui)
    finally:
        stop(api)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with open_page(browser, VIEWPORT) as (page, _):
        yield page


def card_labels(page: Page) -> list[str]:
    """The labels line of each result card ("Trousers · Black"), in the grid's order."""
    cards(page)  # the grid is there and its first photo has loaded
    grid = page.locator('ul.fs-grid[aria-label="Search results"]')
    return [
        card.locator(".fs-tags").inner_text() if card.locator(".fs-tags").count() else ""
        for card in grid.locator("li.fs-card").all()
    ]


@pytest.mark.timeout(1800)
def test_black_trousers_shows_trousers_first(page: Page, mixed_ui: str) -> None:
    page.goto(mixed_ui)
    search(page, "black trousers")
    expect(page.get_by_text("No close matches.")).to_have_count(0)
    labels = card_labels(page)
    shot(page, "09-mixed-black-trousers")
    kinds = [label.split(" · ")[0] for label in labels]
    assert kinds[:FIRST_CARDS] == ["Trousers"] * FIRST_CARDS, labels
    assert any("Black" in label for label in labels[:FIRST_CARDS]), labels
