"""Configuration, from the environment (and a .env file). With nothing set, every store is
embedded under one data directory; setting PINECONE_*, MONGODB_URI or S3_BUCKET switches
each store to its production adapter independently."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from domain.errors import StoreMisconfigured

REPO_ROOT = Path(__file__).resolve().parent.parent


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus_client's multiprocess directory: ``serve`` sets it before any worker imports
prometheus_client (which reads it at import), so /metrics sums every worker's values."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FASHION_SEARCH_", env_file=".env", extra="ignore", populate_by_name=True
    )

    home: Path = Field(default=Path(".fashion-search"), description="Data directory.")
    encoder: str = Field(default="fashion-lite", description="Default encoder id.")
    datasets_dir: Path = Field(
        default=REPO_ROOT.parent / "shared" / "datasets",
        description="Where the shared datasets live (hm-dev, hm-demo, the Kaggle zip).",
    )
    demo_catalog: Path | None = Field(
        default=None, description="Catalog `make demo` ingests; default DATASETS_DIR/hm-demo."
    )
    torch_threads: int = Field(
        default=0,
        ge=0,
        description="Intra-op threads of the encoders' runtime, ONNX Runtime or torch (0: its default).",
    )
    encoder_runtime: Literal["onnx", "torch"] = Field(
        default="onnx",
        description=(
            "What runs the built-in encoders' networks: ONNX Runtime (the default install) or "
            "torch (needs the [train] extra; the reference the ONNX export is checked against)."
        ),
    )
    exported_models_dir: Path | None = Field(
        default=None,
        validation_alias=_env("FASHION_SEARCH_MODELS_DIR"),
        description="Exported ONNX models (`fashion-search export-encoder`); default HOME/models.",
    )

    # Lexical search
    synonyms_file: Path | None = Field(
        default=None,
        description=(
            "A synonym file (Solr synonyms.txt format: 'a, b, c' or 'a, b => c') that extends "
            "the built-in fashion lexicon (or replaces it: SYNONYMS_MODE=replace)."
        ),
    )
    synonyms_mode: Literal["extend", "replace", "off"] = Field(
        default="extend",
        description=(
            "extend: the built-in lexicon plus SYNONYMS_FILE; replace: SYNONYMS_FILE alone; "
            "off: no synonyms."
        ),
    )

    # Vector index
    faiss_hnsw_threshold: int = Field(
        default=100_000, ge=1, description="Above this many vectors FAISS switches to HNSW."
    )
    faiss_hnsw_storage: Literal["float16", "float32"] = Field(
        default="float16",
        description=(
            "How an HNSW space stores its vectors: float16 halves their memory (at 1M x 384-d: "
            "0.81x the raw float32 bytes instead of 1.30x, recall@10 0.999 instead of 1.000)."
        ),
    )
    faiss_prefilter: Literal["int8", "float16", "off"] = Field(
        default="int8",
        description=(
            "How an exact (flat) space chooses the rows its float32 scan scores: an 8-bit or a "
            "float16 copy scanned first with proven score bounds (the same answers as the "
            "full scan), or off (the full float32 scan)."
        ),
    )

    # API
    api_keys: list[SecretStr] = Field(default_factory=list, description="Keys for mutations.")
    public_url: str | None = Field(
        default=None, description="Base URL clients reach the API at (for absolute image URLs)."
    )
    max_image_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    max_images_per_request: int = Field(
        default=4, ge=1, description="Images one request may send or name (aliases included)."
    )
    max_request_pixels: int = Field(
        default=40_000_000, ge=1, description="Decoded pixels of one request's images together."
    )
    max_url_fetches_per_request: int = Field(
        default=1, ge=0, description="Image URLs one request may have fetched (0: none)."
    )
    allow_private_urls: bool = False
    max_concurrent_url_fetches: int = Field(
        default=8, ge=1, description="Image URL fetches in flight per process; more get a 503."
    )
    url_connect_timeout_s: float = 3.0
    url_read_timeout_s: float = 10.0
    cors_origins: list[str] = Field(default_factory=list)
    body_idle_timeout_s: float = Field(
        default=15.0,
        gt=0,
        description="Seconds without a byte of a request body before the client is cut off (408).",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a client has to send a request's headers before its connection is closed.",
    )

    # UI
    api_url: str = Field(default="http://127.0.0.1:8000", description="API the UI talks to.")

    # Production stores (no FASHION_SEARCH_ prefix: the names operators already use)
    pinecone_api_key: SecretStr | None = Field(
        default=None, validation_alias=_env("PINECONE_API_KEY")
    )
    pinecone_index: str | None = Field(default=None, validation_alias=_env("PINECONE_INDEX"))
    pinecone_host: str | None = Field(default=None, validation_alias=_env("PINECONE_HOST"))
    pinecone_controller_host: str | None = Field(
        default=None,
        validation_alias=_env("PINECONE_CONTROLLER_HOST"),
        description="Pinecone's control plane (index lookups, create-index); default: Pinecone's.",
    )
    mongodb_uri: SecretStr | None = Field(default=None, validation_alias=_env("MONGODB_URI"))
    mongodb_db: str = Field(default="fashion_search", validation_alias=_env("MONGODB_DB"))
    s3_bucket: str | None = Field(default=None, validation_alias=_env("S3_BUCKET"))
    s3_endpoint_url: str | None = Field(default=None, validation_alias=_env("S3_ENDPOINT_URL"))
    s3_public_base_url: str | None = Field(
        default=None, validation_alias=_env("S3_PUBLIC_BASE_URL")
    )
    s3_presign_expiry_s: int = Field(
        default=3600, ge=1, validation_alias=_env("S3_PRESIGN_EXPIRY_S")
    )
    aws_region: str | None = Field(
        default=None, validation_alias=_env("AWS_REGION", "AWS_DEFAULT_REGION")
    )
    store_timeout_s: float = Field(default=5.0, gt=0, description="Per call to a remote store.")
    write_wait_s: float = Field(
        default=5.0,
        gt=0,
        description="Embedded home: how long a mutation waits for another writer (e.g. an "
        "ingest batch) before failing with the retryable WRITER_BUSY.",
    )
    ingest_write_wait_s: float = Field(
        default=300.0,
        gt=0,
        description="Embedded home: how long an ingest batch waits for another writer (a "
        "second ingest interleaves batch by batch) before stopping with a message naming it.",
    )

    @field_validator("synonyms_file")
    @classmethod
    def _synonyms_readable(cls, path: Path | None) -> Path | None:
        """A synonym file that is missing stops the service at start (its lines are checked
        when the catalog is built: ``wiring.synonym_lexicon``)."""
        if path is not None and not path.is_file():
            raise ValueError(f"synonym file {path} cannot be read: no such file")
        return path

    @model_validator(mode="after")
    def _replace_needs_a_file(self) -> Settings:
        if self.synonyms_mode == "replace" and self.synonyms_file is None:
            raise ValueError(
                "FASHION_SEARCH_SYNONYMS_MODE=replace needs FASHION_SEARCH_SYNONYMS_FILE "
                "(use 'off' for no synonyms)"
            )
        return self

    @property
    def demo_catalog_path(self) -> Path:
        return self.demo_catalog or self.datasets_dir / "hm-demo"

    @property
    def vectors_dir(self) -> Path:
        return self.home / "vectors"

    @property
    def catalog_path(self) -> Path:
        return self.home / "catalog.sqlite3"

    @property
    def images_dir(self) -> Path:
        return self.home / "images"

    @property
    def write_lock_path(self) -> Path:
        return self.home / "writer.lock"

    @property
    def models_dir(self) -> Path:
        return self.exported_models_dir or self.home / "models"


class InvalidSettings(StoreMisconfigured):
    """Settings that cannot even be read (a number that is not one, a list that is not JSON):
    one line per setting, naming its variable, instead of pydantic's traceback."""


def env_name(field_name: str) -> str:
    """The environment variable that sets a Settings field."""
    field = Settings.model_fields.get(field_name)
    choices = getattr(field.validation_alias, "choices", None) if field is not None else None
    if choices:
        return str(choices[0])
    return f"FASHION_SEARCH_{field_name.upper()}"


def _is_secret(name: str) -> bool:
    field = Settings.model_fields.get(name) or next(
        (f for n, f in Settings.model_fields.items() if env_name(n) == name), None
    )
    return field is not None and "SecretStr" in str(field.annotation)


def load_settings() -> Settings:
    """Settings(), with unreadable values as one InvalidSettings naming each variable (and
    its value, unless it is a secret)."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            name = str(error["loc"][0]) if error["loc"] else "settings"
            variable = env_name(name) if name in Settings.model_fields else name
            shown = "" if _is_secret(name) else f"={error.get('input')!s}"
            problems.append(f"{variable}{shown}: {error['msg']}")
        raise InvalidSettings("; ".join(problems)) from None
    except SourceError as exc:  # a list or mapping setting that is not valid JSON
        field = re.search(r'field "(\w+)"', str(exc))
        variable = env_name(field[1]) if field else "a setting"
        raise InvalidSettings(
            f'{variable} cannot be read: write it as JSON, e.g. ["a", "b"]'
        ) from None
