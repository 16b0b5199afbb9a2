"""GraphQL multipart uploads read with limits (issue 16): a file part that the ``map`` field
does not assign to a variable is refused as soon as its headers arrive, before its bytes are
read; files before the map are unmapped; the number of files and fields is capped. The body
is streamed chunk by chunk, so the tests see how much of it the server read."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence

import pytest

from tests.api.helpers import Api, make_api, png

BOUNDARY = "fs-test-boundary"
CHUNK = 64 * 1024
SEARCH = """query($image: ImageInput!) { searchByImage(image: $image, topK: 2) {
  hits { product { id } } } }"""
OPERATIONS = json.dumps({"query": SEARCH, "variables": {"image": {"upload": None}}})
MAP_ONE = json.dumps({"0": ["variables.image.upload"]})

Part = tuple[str, bytes, bool]
"""(field name, content, is a file)."""


def part_bytes(name: str, content: bytes, is_file: bool) -> bytes:
    filename = f'; filename="{name}.png"' if is_file else ""
    kind = "Content-Type: application/octet-stream\r\n" if is_file else ""
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"{filename}\r\n{kind}\r\n'
    return head.encode() + content + b"\r\n"


class StreamedBody:
    """A multipart body sent in CHUNK-sized pieces, counting the pieces the server pulled."""

    def __init__(self, parts: Sequence[Part]) -> None:
        body = b"".join(part_bytes(*p) for p in parts) + f"--{BOUNDARY}--\r\n".encode()
        self.chunks = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.pulled += 1
            yield chunk


async def post(api: Api, body: StreamedBody) -> tuple[int, list[str], list[str]]:
    response = await api.client.post(
        "/graphql",
        content=body.__aiter__(),
        headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    result = response.json()
    errors = result.get("errors") or []
    codes = [e.get("extensions", {}).get("code") for e in errors]
    return response.status_code, codes, [e["message"] for e in errors]


async def test_a_mapped_upload_works(api: Api) -> None:
    body = StreamedBody(
        [
            ("operations", OPERATIONS.encode(), False),
            ("map", MAP_ONE.encode(), False),
            ("0", png(), True),
        ]
    )
    status, codes, _ = await post(api, body)
    assert (status, codes) == (200, [])


async def test_an_unmapped_file_is_refused_before_its_bytes_are_read(api: Api) -> None:
    calls = api.world.encoder.calls
    big = b"\x89PNG" + b"\x00" * (8 * 1024 * 1024)  # 8 MB: 128 chunks
    body = StreamedBody(
        [
            ("operations", OPERATIONS.encode(), False),
            ("map", MAP_ONE.encode(), False),
            ("0", png(), True),
            ("stowaway", big, True),
        ]
    )
    status, codes, messages = await post(api, body)
    assert (status, codes) == (400, ["BAD_USER_INPUT"])
    assert "'stowaway' is not mapped to a variable" in messages[0]
    assert body.pulled <= 2, f"{body.pulled} of {len(body.chunks)} chunks read"
    assert api.world.encoder.calls == calls


async def test_900_unmapped_files_are_refused_at_the_first(api: Api) -> None:
    files: list[Part] = [(f"f{i}", b"x" * 100_000, True) for i in range(900)]
    body = StreamedBody([("operations", OPERATIONS.encode(), False), ("map", b"{}", False), *files])
    status, codes, messages = await post(api, body)
    assert (status, codes) == (400, ["BAD_USER_INPUT"])
    assert "'f0' is not mapped" in messages[0]
    assert body.pulled <= 2, f"{body.pulled} of {len(body.chunks)} chunks read"


async def test_files_before_the_map_are_unmapped(api: Api) -> None:
    body = StreamedBody(
        [
            ("operations", OPERATIONS.encode(), False),
            ("0", png(), True),
            ("map", MAP_ONE.encode(), False),
        ]
    )
    status, codes, messages = await post(api, body)
    assert (status, codes) == (400, ["BAD_USER_INPUT"])
    assert "'0' is not mapped" in messages[0]


@pytest.mark.parametrize("bad_map", [b"[1, 2]", b"not json", b"[" * 100_000 + b"]" * 100_000])
async def test_a_map_that_is_not_an_object_maps_nothing(api: Api, bad_map: bytes) -> None:
    body = StreamedBody(
        [("operations", OPERATIONS.encode(), False), ("map", bad_map, False), ("0", png(), True)]
    )
    status, codes, _ = await post(api, body)
    assert (status, codes) == (400, ["BAD_USER_INPUT"])


async def test_the_number_of_files_is_capped() -> None:
    api = await make_api(max_upload_files=2)
    mapping = {str(i): ["variables.image.upload"] for i in range(3)}
    files: list[Part] = [(str(i), png(), True) for i in range(3)]
    map_part: Part = ("map", json.dumps(mapping).encode(), False)
    body = StreamedBody([("operations", OPERATIONS.encode(), False), map_part, *files])
    async with api.client:
        status, codes, messages = await post(api, body)
    assert (status, codes) == (400, ["BAD_USER_INPUT"])
    assert "Too many files. Maximum number of files is 2." in messages[0]


async def test_the_number_of_fields_is_capped(api: Api) -> None:
    fields: list[Part] = [(f"extra{i}", b"x", False) for i in range(20)]
    body = StreamedBody(
        [("operations", OPERATIONS.encode(), False), ("map", MAP_ONE.encode(), False), *fields]
    )
    status, codes, messages = await post(api, body)
    assert (status, codes) == (400, ["BAD_USER_INPUT"])
    assert "Too many fields. Maximum number of fields is 8." in messages[0]
