"""Fixtures for the UI tests: sample products, a live API over the fakes, and AppTest."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from api.config import ApiConfig
from tests.ui.live import LiveApi, SampleProduct, dead_url, load_samples, running_api

APP_PATH = Path(__file__).resolve().parents[2] / "ui" / "app.py"


@pytest.fixture(scope="session")
def samples(hm_demo: Path) -> list[SampleProduct]:
    return load_samples(hm_demo)


@pytest.fixture(scope="session")
def live_api(samples: list[SampleProduct]) -> Iterator[LiveApi]:
    with running_api(samples) as api:
        yield api


AppFactory = Callable[..., AppTest]


@pytest.fixture
def make_app(monkeypatch: pytest.MonkeyPatch) -> AppFactory:
    """An AppTest of ui/app.py talking to `api_url`, already run once."""

    def make(api_url: str) -> AppTest:
        monkeypatch.setenv("FASHION_SEARCH_API_URL", api_url)
        at = AppTest.from_file(str(APP_PATH), default_timeout=30)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return make


@pytest.fixture
def app(make_app: AppFactory, live_api: LiveApi) -> AppTest:
    return make_app(live_api.url)


@pytest.fixture
def down_url() -> str:
    return dead_url()


SMALL_IMAGE_BYTES = 20_000
SMALL_BODY_BYTES = 200_000


@pytest.fixture(scope="session")
def strict_api(samples: list[SampleProduct]) -> Iterator[LiveApi]:
    """A live API with tiny limits: images up to 20 kB, request bodies up to 200 kB."""
    config = ApiConfig(max_image_bytes=SMALL_IMAGE_BYTES, max_body_bytes=SMALL_BODY_BYTES)
    with running_api(samples[:4], config) as api:
        yield api
