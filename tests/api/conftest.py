from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.api.helpers import Api, make_api


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    instance = await make_api()
    async with instance.client:
        yield instance
