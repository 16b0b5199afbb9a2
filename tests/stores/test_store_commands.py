"""`fashion-search config` and `fashion-search pinecone ...` against the test servers."""

from __future__ import annotations

import asyncio
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fashion_search import wiring
from fashion_search.cli import app
from fashion_search.settings import Settings
from stores.images.s3 import S3ImageStore
from stores.vectors.pinecone_index import PineconeVectorIndex
from tests.fakes import FakeEncoderProvider, HashingEncoder
from tests.stores.pinecone_fake import FakePinecone
from tests.stores.servers import (
    AWS_TEST_CREDENTIALS,
    AWS_TEST_REGION,
    MongoServer,
    S3Server,
    free_port,
    mongo_server,
    pinecone_server,
    s3_server,
    unique_name,
)

__all__ = ["mongo_server", "pinecone_server", "s3_server"]

STORE_VARS = (
    "PINECONE_API_KEY",
    "PINECONE_INDEX",
    "PINECONE_HOST",
    "PINECONE_CONTROLLER_HOST",
    "MONGODB_URI",
    "MONGODB_DB",
    "S3_BUCKET",
    "S3_ENDPOINT_URL",
    "S3_PUBLIC_BASE_URL",
    "S3_PRESIGN_EXPIRY_S",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "FASHION_SEARCH_API_KEYS",
    "FASHION_SEARCH_STORE_TIMEOUT_S",
)


FASHION_LITE_DIM = 384
HEALTHY_CALL_TIMEOUT_S = "30"
"""Healthy stores must pass their check on a loaded CI runner: a 1 s budget did not always."""
REFUSED_STORE_TIMEOUT_S = "8"
"""With a refused MongoDB port: long enough for the healthy stores checked beside it."""


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def default_encoder_dim() -> int:
    """The default encoder's real dimension (its committed heads; no model is loaded)."""
    return wiring.build_encoders(Settings(), load_entry_points=False).get().dim


def run(env: dict[str, str], *args: str) -> tuple[int, str]:
    clean: dict[str, str | None] = dict.fromkeys(STORE_VARS)
    clean.update(env)
    result = CliRunner().invoke(app, list(args), env=clean)
    return result.exit_code, result.output


def test_config_masks_secrets() -> None:
    code, output = run(
        {
            "PINECONE_API_KEY": "pc-supersecret",
            "PINECONE_HOST": "https://products-abc.svc.aped-1.pinecone.io",
            "MONGODB_URI": "mongodb+srv://app:hunter2@cluster0.x.mongodb.net/?authSource=admin",
            "S3_BUCKET": "shop-images",
            "FASHION_SEARCH_API_KEYS": '["admin-key-1", "admin-key-2"]',
        },
        "config",
        "--json",
    )
    assert code == 0, output
    for secret in ("pc-supersecret", "hunter2", "admin-key-1", "authSource"):
        assert secret not in output
    config = json.loads(output)
    settings = config["settings"]
    assert settings["PINECONE_API_KEY"] == "********"
    assert settings["FASHION_SEARCH_API_KEYS"] == ["********", "********"]
    assert settings["MONGODB_URI"] == "mongodb+srv://***@cluster0.x.mongodb.net/"
    assert settings["S3_PRESIGN_EXPIRY_S"] == 3600
    assert settings["FASHION_SEARCH_STORE_TIMEOUT_S"] == 5.0
    stores = config["stores"]
    assert stores["vector_index"].startswith("pinecone (https://products-abc")
    assert stores["catalog"].startswith("mongodb (mongodb+srv://***@cluster0")
    assert stores["images"].startswith("s3 (s3://shop-images, presigned URLs valid 3600 s")


def test_config_without_production_settings_is_embedded() -> None:
    code, output = run({}, "config", "--json", "--check")
    assert code == 0, output
    config = json.loads(output)
    assert config["stores"]["vector_index"].startswith("faiss (")
    assert config["stores"]["catalog"].startswith("sqlite (")
    assert config["stores"]["images"].startswith("local (")
    assert config["checks"] == {}
    code, table = run({}, "config")
    assert code == 0
    assert "PINECONE_API_KEY" in table


def test_config_check_reaches_every_store(
    pinecone_server: FakePinecone, mongo_server: MongoServer, s3_server: S3Server
) -> None:
    bucket = unique_name("bucket")
    store = S3ImageStore(
        bucket,
        endpoint_url=s3_server.endpoint_url,
        region=AWS_TEST_REGION,
        credentials=AWS_TEST_CREDENTIALS,
    )
    asyncio.run(store.create_bucket())
    env = {
        "PINECONE_API_KEY": pinecone_server.api_key,
        "PINECONE_HOST": pinecone_server.create_index(unique_name("idx"), default_encoder_dim()),
        "MONGODB_URI": mongo_server.uri,
        "MONGODB_DB": unique_name("db").replace("-", "_"),
        "S3_BUCKET": bucket,
        "S3_ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_REGION": AWS_TEST_REGION,
        "AWS_ACCESS_KEY_ID": AWS_TEST_CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": AWS_TEST_CREDENTIALS["aws_secret_access_key"],
        "FASHION_SEARCH_STORE_TIMEOUT_S": HEALTHY_CALL_TIMEOUT_S,
    }
    code, output = run(env, "config", "--json", "--check")
    assert code == 0, output
    assert json.loads(output)["checks"] == {"vector_index": "ok", "catalog": "ok", "images": "ok"}

    # PyMongo's server selection retries a refused port until the timeout, so a shorter one
    # keeps this step short; the healthy stores beside it still need a loaded runner's margin
    dead = {
        **env,
        "MONGODB_URI": f"mongodb://127.0.0.1:{free_port()}/",
        "FASHION_SEARCH_STORE_TIMEOUT_S": REFUSED_STORE_TIMEOUT_S,
    }
    code, output = run(dead, "config", "--json", "--check")
    assert code == 1
    checks = json.loads(output)["checks"]
    assert checks["vector_index"] == "ok"
    assert "MONGODB_URI" in checks["catalog"]


def test_config_check_catches_a_dimension_mismatch_before_any_encoding(
    pinecone_server: FakePinecone,
) -> None:
    """An index of 128 dimensions for the 384-d default encoder: named with both dimensions
    and the variable, by the check alone (no vector was ever written)."""
    assert default_encoder_dim() == FASHION_LITE_DIM
    host = pinecone_server.create_index(unique_name("idx"), 128)
    env = {"PINECONE_API_KEY": pinecone_server.api_key, "PINECONE_HOST": host}
    code, output = run(env, "config", "--json", "--check")
    assert code == 1
    problem = json.loads(output)["checks"]["vector_index"]
    assert f"PINECONE_HOST={host}" in problem
    assert "dimension 128" in problem
    assert f"{FASHION_LITE_DIM}-d" in problem
    assert pinecone_server.requests_to(host.rsplit("/", 1)[-1], "/vectors/upsert") == []


def test_config_check_reports_every_store_when_one_is_misconfigured(
    pinecone_server: FakePinecone, mongo_server: MongoServer
) -> None:
    env = {
        "PINECONE_API_KEY": pinecone_server.api_key,
        "PINECONE_HOST": pinecone_server.create_index(unique_name("idx"), default_encoder_dim()),
        "MONGODB_URI": "mongodb://app:p@ss@db.example.com/",
        "S3_BUCKET": "shop-images",
        "S3_ENDPOINT_URL": "127.0.0.1:18333",
    }
    code, output = run(env, "config", "--json", "--check")
    assert code == 1
    checks = json.loads(output)["checks"]
    assert checks["vector_index"] == "ok"
    assert checks["catalog"].startswith("MONGODB_URI is invalid: ")
    assert checks["images"].startswith("S3_ENDPOINT_URL='127.0.0.1:18333' is not an http(s) URL")
    assert "http://127.0.0.1:18333" in checks["images"]
    for message in checks.values():
        assert "\n" not in message
    assert "ss@" not in output


def test_serve_refuses_misconfigured_stores_in_one_line() -> None:
    env = {"S3_BUCKET": "shop-images", "S3_ENDPOINT_URL": "127.0.0.1:18333"}
    code, output = run(env, "serve", "--port", str(free_port()))
    assert code == 2
    assert output.strip().splitlines() == [
        "Error: images: S3_ENDPOINT_URL='127.0.0.1:18333' is not an http(s) URL: write it "
        "with its scheme, e.g. http://127.0.0.1:18333"
    ]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("S3_PRESIGN_EXPIRY_S", "an hour", "S3_PRESIGN_EXPIRY_S=an hour: Input should be"),
        ("FASHION_SEARCH_STORE_TIMEOUT_S", "-1", "FASHION_SEARCH_STORE_TIMEOUT_S=-1: Input"),
        ("FASHION_SEARCH_API_KEYS", "key-1,key-2", "FASHION_SEARCH_API_KEYS cannot be read"),
    ],
)
def test_unreadable_settings_are_one_line_errors(variable: str, value: str, expected: str) -> None:
    for command in (["config"], ["ingest", "nowhere"], ["pinecone", "stats"]):
        code, output = run({variable: value}, *command)
        assert code == 2
        lines = output.strip().splitlines()
        assert len(lines) == 1, output
        assert lines[0].startswith(f"Error: {expected}")
        assert "key-1" not in output
    code, output = run({variable: value}, "config", "--help")
    assert code == 0
    assert "--check" in output


def test_ingest_refuses_a_mismatched_index_before_encoding(
    pinecone_server: FakePinecone, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    encoder = HashingEncoder("default-enc", 32)
    monkeypatch.setattr(wiring, "build_encoders", lambda *_: FakeEncoderProvider(encoder))
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "red-dress.png").write_bytes(png_bytes())
    name = unique_name("idx")
    env = {
        "PINECONE_API_KEY": pinecone_server.api_key,
        "PINECONE_HOST": pinecone_server.create_index(name, 16),
        "FASHION_SEARCH_HOME": str(tmp_path / "home"),
    }
    code, output = run(env, "ingest", str(catalog))
    assert code == 1
    assert "dimension 16 but encoder 'default-enc' makes 32-d vectors" in " ".join(output.split())
    assert encoder.calls == 0
    assert pinecone_server.requests_to(name, "/vectors/upsert") == []


def test_create_index_takes_the_encoders_dimension(
    pinecone_server: FakePinecone, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fashion_search.wiring

    encoders = FakeEncoderProvider(HashingEncoder("default-enc", 32), HashingEncoder("wide", 48))
    monkeypatch.setattr(fashion_search.wiring, "build_encoders", lambda *_: encoders)
    env = {
        "PINECONE_API_KEY": pinecone_server.api_key,
        "PINECONE_CONTROLLER_HOST": pinecone_server.base_url,
    }
    for encoder_args, dim in (([], 32), (["--encoder", "wide"], 48)):
        name = unique_name("made")
        code, output = run(env, "pinecone", "create-index", "--name", name, *encoder_args)
        assert code == 0, output
        created = pinecone_server.indexes[name]
        assert (created.dimension, created.metric) == (dim, "cosine")
        assert f"PINECONE_HOST={pinecone_server.host_of(name)}" in output.replace("\n", "")
    code, output = run(env, "pinecone", "create-index", "--name", "x", "--encoder", "nope")
    assert code == 2
    assert "nope" in output


@pytest.mark.parametrize("name", ["Shop_Index", "shop.v2", "s" * 46])
def test_create_index_refuses_names_pinecone_refuses(
    pinecone_server: FakePinecone, name: str
) -> None:
    env = {
        "PINECONE_API_KEY": pinecone_server.api_key,
        "PINECONE_CONTROLLER_HOST": pinecone_server.base_url,
    }
    code, output = run(env, "pinecone", "create-index", "--name", name, "--dimension", "8")
    assert code == 1
    assert f"Pinecone refused to create {name!r}" in output
    assert name not in pinecone_server.indexes


def test_create_index_is_idempotent_and_checks_an_existing_index(
    pinecone_server: FakePinecone,
) -> None:
    name = unique_name("made")
    env = {
        "PINECONE_API_KEY": pinecone_server.api_key,
        "PINECONE_CONTROLLER_HOST": pinecone_server.base_url,
        "PINECONE_INDEX": name,
    }
    code, output = run(env, "pinecone", "create-index", "--dimension", "12")
    assert code == 0, output
    assert pinecone_server.indexes[name].dimension == 12
    code, output = run(env, "pinecone", "create-index", "--dimension", "12")
    assert code == 0, output
    assert "already exists" in output
    code, output = run(env, "pinecone", "create-index", "--dimension", "16")
    assert code == 1
    assert "dimension 12" in output
    code, output = run({}, "pinecone", "create-index", "--dimension", "16")
    assert code == 2
    assert "PINECONE_API_KEY" in output


def test_pinecone_stats(pinecone_server: FakePinecone) -> None:
    host = pinecone_server.create_index(unique_name("idx"), 4)
    index = PineconeVectorIndex(pinecone_server.api_key, host=host)

    async def fill() -> None:
        await index.upsert("fashion-lite", ["a", "b"], np.eye(4, dtype=np.float32)[:2], [{}, {}])
        await index.close()

    asyncio.run(fill())
    env = {"PINECONE_API_KEY": pinecone_server.api_key, "PINECONE_HOST": host}
    code, output = run(env, "pinecone", "stats")
    assert code == 0, output
    assert "dimension: 4" in output
    assert re.search(r"fashion-lite\W+2\W", output), output


@pytest.mark.parametrize("command", [["pinecone", "stats"]])
def test_pinecone_commands_need_the_api_key(command: list[str]) -> None:
    code, output = run({}, *command)
    assert code == 2
    assert "PINECONE_API_KEY" in output
