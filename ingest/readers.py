"""Catalog readers: find out what layout a path holds and yield its products lazily.

Three layouts are understood:

* the Kaggle "Fashion Product Images" layout, ``styles.csv`` beside ``images/<id>.jpg``, as a
  folder or as the downloaded zip (read in place, never unpacked), possibly nested one
  folder deep (``myntradataset/styles.csv``); the photo may be any of
  ``KAGGLE_PHOTO_SUFFIXES`` in any case (``<id>.JPG``);
* a manifest, CSV or JSONL, with ``id,image[,name,description,<tag columns>]`` where
  ``image`` is a path relative to the manifest, an http(s) URL or an ``s3://bucket/key``; a
  folder holding ``products.csv``, ``manifest.csv`` or ``manifest.jsonl`` is read as that
  manifest; the manifest itself may be an ``s3://`` URI (its relative image paths are then
  keys beside it in the bucket; see ``ingest.s3``); a local relative path may be written with
  Windows backslashes;
* a plain folder of images: the id and the name are the file stem (files in sub-folders get a
  ``folder`` tag).

Image names are looked up whatever their Unicode form (a Mac writes them NFD), but ids are
kept as written: a home keeps the ids it was ingested with.

Items carry a handle to their image, not its bytes, so a catalog of any size streams through
in batches.

Canonical facet keys: beside its own columns, each product of a Kaggle or manifest catalog
gets the canonical keys its columns map to (``DEFAULT_COLUMN_MAP``: Kaggle ``baseColour`` and
hm-dev ``colour`` are both ``colour``, ``articleType`` and ``product_type`` both ``type``,
``gender`` and ``section`` both ``audience``, ...), with normalised values, and a coarse
``colour_group`` ("Navy Blue" and "Dark Blue" stay values of ``colour``, grouped as "Blue"),
so facets and filters read the same across sources. A catalog overrides the mapping with a
JSON file beside it, ``<catalog file>.columns.json`` or ``columns.json`` in its folder:
``{"my_colour_column": "colour", "gender": null}`` (null: do not map that column).
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import json
import os
import shutil
import tempfile
import threading
import unicodedata
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import TracebackType
from typing import IO, Protocol, Self
from urllib.parse import urlparse

from domain.errors import BadInput, NotFound, PayloadTooLarge
from ingest.s3 import S3Access, S3ReadError, is_s3_uri, split_s3_uri

KAGGLE_PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
"""The extensions (any case) a Kaggle ``images/<id>`` photo may have, in the order they win
when one id has several."""
IMAGE_SUFFIXES = frozenset(KAGGLE_PHOTO_SUFFIXES)
MANIFEST_NAMES = ("products.csv", "manifest.csv", "manifest.jsonl", "products.jsonl")
KAGGLE_STYLES = "styles.csv"
KAGGLE_NAME_COLUMN = "productDisplayName"
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
CSV_DELIMITERS = (",", ";", "\t", "|")
"""Separators a CSV header is looked at for, in this order."""
JSON_ERRORS = (ValueError, RecursionError)
"""What json.loads raises for a bad line: JSONDecodeError (a ValueError), ValueError for an
integer of more than 4,300 digits, RecursionError for arrays nested thousands deep."""
PROBLEM_KEY = "__problem__"
"""Set in a row read from a manifest when it cannot become a product (the reason)."""
TEXT_ENCODING = "utf-8-sig"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
"""How a UTF-16 file starts (Excel's "Unicode Text" export: tab-separated UTF-16)."""
CSV_SUFFIXES = frozenset({".csv", ".tsv", ".txt"})
UNDECODABLE = "surrogateescape"
"""How catalog text files are decoded: UTF-8 (with or without a BOM); bytes that are not
UTF-8 (a Windows-1252 export) become lone surrogates, so the file still parses and only the
rows holding them are reported (``not_utf8``), instead of the whole run stopping."""

CANONICAL_KEYS = (
    "colour",
    "colour_group",
    "type",
    "category",
    "audience",
    "pattern",
    "season",
    "usage",
)
"""The facet keys every catalog speaks (README, Facets)."""
DEFAULT_COLUMN_MAP: dict[str, str] = {
    # Kaggle "Fashion Product Images" styles.csv
    "baseColour": "colour",
    "articleType": "type",
    "subCategory": "category",
    "gender": "audience",
    # H&M-style manifests (hm-dev, hm-demo)
    "colour_master": "colour_group",
    "product_type": "type",
    "product_group": "category",
    "section": "audience",
    "graphical_appearance": "pattern",
    # common spellings
    "color": "colour",
    "product type": "type",
}
"""Source column -> canonical key. Columns already named by a canonical key (colour,
pattern, season, usage) are canonical as they are."""
COLUMN_MAP_FILE = "columns.json"
BASE_COLOURS = (
    "Beige",
    "Black",
    "Blue",
    "Brown",
    "Gold",
    "Green",
    "Grey",
    "Orange",
    "Pink",
    "Purple",
    "Red",
    "Silver",
    "White",
    "Yellow",
)
COLOUR_GROUPS = {
    "navy": "Blue",
    "teal": "Blue",
    "turquoise": "Blue",
    "maroon": "Red",
    "burgundy": "Red",
    "wine": "Red",
    "rust": "Orange",
    "peach": "Orange",
    "coral": "Orange",
    "mustard": "Yellow",
    "cream": "White",
    "off white": "White",
    "khaki": "Beige",
    "nude": "Beige",
    "skin": "Beige",
    "tan": "Brown",
    "taupe": "Brown",
    "coffee": "Brown",
    "bronze": "Brown",
    "copper": "Brown",
    "charcoal": "Grey",
    "gray": "Grey",
    "steel": "Grey",
    "magenta": "Pink",
    "rose": "Pink",
    "fuchsia": "Pink",
    "lavender": "Purple",
    "mauve": "Purple",
    "lilac": "Purple",
    "olive": "Green",
    "lime": "Green",
}
"""Colour words that name a shade of a base colour (the last word wins otherwise:
"Light Pink" -> Pink)."""


def _composed(name: str) -> str:
    """A file name as looked up: the same whichever Unicode form it was written in (macOS
    names files decomposed, NFD; text typed elsewhere is composed, NFC)."""
    return unicodedata.normalize("NFC", name)


def _folder_names(folder: Path) -> list[str]:
    """The names in a folder, listed once; none when it cannot be listed."""
    try:
        with os.scandir(folder) as entries:
            return sorted(entry.name for entry in entries)
    except (OSError, ValueError):
        return []


class _KagglePhotos:
    """The photos of a Kaggle ``images/`` folder (or zip folder), listed once: an id finds
    ``<id>.<ext>`` whatever the case and Unicode form of the name and the case of the
    extension (``KAGGLE_PHOTO_SUFFIXES``)."""

    def __init__(self, names: Iterable[str]) -> None:
        self._by_id: dict[str, list[str]] = {}
        for name in names:
            stem, suffix = os.path.splitext(name)
            if suffix.lower() in KAGGLE_PHOTO_SUFFIXES:
                self._by_id.setdefault(_composed(stem).casefold(), []).append(name)

    def find(self, product_id: str) -> str | None:
        """The photo's name; of several, one spelt exactly like the id first, then by
        extension order, lower-case extension first (so ``<id>.jpg`` always wins)."""
        names = self._by_id.get(_composed(product_id).casefold())
        if not names:
            return None

        def rank(name: str) -> tuple[bool, int, bool, str]:
            stem, suffix = os.path.splitext(name)
            order = KAGGLE_PHOTO_SUFFIXES.index(suffix.lower())
            return (stem != product_id, order, suffix != suffix.lower(), name)

        return min(names, key=rank)


class _ComposedNames:
    """Folders listed at most once each, by composed name: a path typed in one Unicode form
    finds the file a Mac named in the other."""

    def __init__(self) -> None:
        self._folders: dict[Path, dict[str, str]] = {}

    def find(self, start: Path, parts: Iterable[str]) -> Path | None:
        """The existing path ``start/parts`` names up to the Unicode form of each part (``.``
        and ``..`` as they are, so it reaches no further than the path itself), or None."""
        path = start
        for part in parts:
            if part in (".", "..") or (path / part).exists():
                path = path / part
                continue
            if path not in self._folders:
                names = _folder_names(path)
                self._folders[path] = {_composed(n): n for n in reversed(names)}
            name = self._folders[path].get(_composed(part))
            if name is None:
                return None
            path = path / name
        return path


class UnknownLayout(BadInput):
    """A path that holds none of the catalog layouts ingest understands."""


class SourceNotFound(NotFound):
    """The path to ingest does not exist."""


class ImageUnavailable(Exception):
    """A source item's image could not be read (missing file, unsupported reference)."""


# -- images ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileImage:
    path: Path

    @property
    def ref(self) -> str:
        return str(self.path)

    def read(self, max_bytes: int) -> bytes:
        try:
            size = self.path.stat().st_size
            if size > max_bytes:
                raise PayloadTooLarge(
                    f"image of {size:,} bytes is above the limit of {max_bytes:,}"
                )
            with self.path.open("rb") as handle:
                data = handle.read(max_bytes + 1)
        except FileNotFoundError:
            raise ImageUnavailable(f"image file not found: {self.path}") from None
        except IsADirectoryError:
            raise ImageUnavailable(f"image path is a directory: {self.path}") from None
        except OSError as exc:
            raise ImageUnavailable(f"cannot read {self.path}: {exc.strerror or exc}") from None
        except ValueError as exc:  # a NUL byte in the path
            raise ImageUnavailable(f"cannot read {self.path!r}: {exc}") from None
        if len(data) > max_bytes:
            raise PayloadTooLarge(f"image is above the limit of {max_bytes:,} bytes")
        return data


@dataclass(frozen=True)
class ZipImage:
    archive: _ZipArchive
    member: str

    @property
    def ref(self) -> str:
        return f"{self.archive.path}!{self.member}"

    def read(self, max_bytes: int) -> bytes:
        return self.archive.read(self.member, max_bytes)


@dataclass(frozen=True)
class RemoteImage:
    """An http(s) URL; the pipeline fetches it through the domain's ImageFetcher."""

    url: str

    @property
    def ref(self) -> str:
        return self.url


@dataclass(frozen=True)
class S3Image:
    """An object in S3 (``s3://bucket/key``), read with the run's S3 settings."""

    access: S3Access
    bucket: str
    key: str

    @property
    def ref(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def read(self, max_bytes: int) -> bytes:
        try:
            return self.access.get(self.bucket, self.key, max_bytes)
        except S3ReadError as exc:
            raise ImageUnavailable(str(exc)) from None


@dataclass(frozen=True)
class MissingImage:
    """A reference that cannot be loaded at all (empty cell, unsupported URL scheme)."""

    ref: str
    reason: str

    def read(self, max_bytes: int) -> bytes:
        raise ImageUnavailable(self.reason)


ImageHandle = FileImage | ZipImage | S3Image | RemoteImage | MissingImage


@dataclass(frozen=True)
class SourceItem:
    """One product as the source describes it. ``problem`` is set for rows that cannot become
    a product (no id): the pipeline reports them instead of indexing them."""

    id: str
    name: str
    image: ImageHandle
    description: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    problem: str | None = None


# -- sources ---------------------------------------------------------------------------------


class Source(Protocol):
    """A catalog to ingest: iterate it for items; ``count`` is cheap (no image is read)."""

    @property
    def layout(self) -> str: ...

    @property
    def location(self) -> str: ...

    def count(self) -> int: ...

    def __iter__(self) -> Iterator[SourceItem]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class _SourceBase:
    layout = "unknown"

    def __init__(self, location: Path) -> None:
        self._location = location

    @property
    def location(self) -> str:
        return str(self._location)

    def close(self) -> None:
        return None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


ZIP_MEMBER_ERRORS = (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError)
"""What reading one zip member raises: corrupt data, and members zipfile cannot open at all
(encrypted: RuntimeError; Deflate64, which Windows' own zip writes: NotImplementedError)."""


class _ZipArchive:
    """A zip opened once; members are read under a lock so reader threads never interleave."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._zip = zipfile.ZipFile(path)
        except zipfile.BadZipFile as exc:
            raise UnknownLayout(f"{path} is not a readable zip file: {exc}") from None
        self._lock = threading.Lock()
        self._infos = {info.filename: info for info in self._zip.infolist() if not info.is_dir()}

    @property
    def names(self) -> list[str]:
        return list(self._infos)

    def has(self, name: str) -> bool:
        return name in self._infos

    def open_text(self, name: str) -> IO[str]:
        try:
            member = self._zip.open(name)
        except ZIP_MEMBER_ERRORS as exc:
            raise BadInput(f"cannot read {name} from {self.path.name}: {exc}") from None
        return io.TextIOWrapper(member, encoding=TEXT_ENCODING, errors=UNDECODABLE, newline="")

    def read(self, name: str, max_bytes: int) -> bytes:
        info = self._infos.get(name)
        if info is None:
            raise ImageUnavailable(f"{name} is not in {self.path.name}")
        if info.file_size > max_bytes:
            raise PayloadTooLarge(
                f"image of {info.file_size:,} bytes is above the limit of {max_bytes:,}"
            )
        try:
            with self._lock:
                return self._zip.read(info)
        except ZIP_MEMBER_ERRORS as exc:
            raise ImageUnavailable(f"cannot read {name} from {self.path.name}: {exc}") from None

    def close(self) -> None:
        self._zip.close()

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        """Pickled as its path (the Ray engine ships items to other processes), and opened
        once per process there."""
        return (_open_archive, (self.path,))


@functools.lru_cache(maxsize=8)
def _open_archive(path: Path) -> _ZipArchive:
    return _ZipArchive(path)


def open_text(path: Path) -> IO[str]:
    """A catalog text file opened for reading: UTF-8 (``UNDECODABLE``), or UTF-16 when it
    starts with a UTF-16 byte-order mark."""
    with path.open("rb") as handle:
        utf16 = handle.read(2) in UTF16_BOMS
    encoding = "utf-16" if utf16 else TEXT_ENCODING
    return path.open(encoding=encoding, errors=UNDECODABLE, newline="")


class _Lines:
    """The lines of a text file, noting when they ran out: a CSV record completed only by the
    end of the file is one whose quoted field was never closed."""

    def __init__(self, handle: Iterator[str]) -> None:
        self._handle = handle
        self.ended = False

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> str:
        try:
            return next(self._handle)
        except StopIteration:
            self.ended = True
            raise


def read_csv_rows(
    handle: IO[str], overflow_into_last: bool = False, name: str = "the CSV file"
) -> Iterator[dict[str, str]]:
    """Rows as dicts of stripped strings (ids keep their leading zeros). With
    ``overflow_into_last``, a row with more fields than the header (unquoted commas in the last
    column, as in Kaggle's styles.csv) has its extra fields joined back into the last one;
    without it, such a row (whose values after the comma sit in the wrong columns) carries
    ``PROBLEM_KEY``, saying so.
    A file the csv module cannot parse, whose quote is never closed (which would swallow
    every later row into one field) or whose header names a column twice (which of the two
    is the colour?) raises BadInput naming ``name`` and the line. Columns without a name are
    left out."""
    lines, reader = _csv_reader(handle)
    for fields in _parsed(reader, lines, name):
        header = fields
        break
    else:
        return
    columns = [c.strip() for c in header]
    repeated = [c for i, c in enumerate(columns) if c and c in columns[:i]]
    if repeated:
        raise BadInput(
            f"{name} line 1: the column {repeated[0]!r} appears more than once; rename or "
            "remove the repeats"
        )
    width = len(columns)
    for fields in _parsed(reader, lines, name):
        if not fields or all(not f.strip() for f in fields):
            continue
        extra = len(fields) > width and any(f.strip() for f in fields[width:])
        if len(fields) > width and overflow_into_last:
            fields = [*fields[: width - 1], ",".join(fields[width - 1 :])]
        row = {
            col: (fields[i].strip() if i < len(fields) else "")
            for i, col in enumerate(columns)
            if col
        }
        if extra and not overflow_into_last:
            row[PROBLEM_KEY] = (
                f"{len(fields)} values for {width} columns: an unquoted comma moved the values "
                "after it into the wrong columns; quote that value"
            )
        yield row


def _csv_reader(handle: IO[str]) -> tuple[_Lines, Iterator[list[str]]]:
    """A CSV reader of the handle, its separator found from the header line: a comma, unless
    the header has none and has another separator (Excel writes ';' where the decimal mark is
    a comma)."""
    first = handle.readline()
    delimiter = next((d for d in CSV_DELIMITERS if d in first), CSV_DELIMITERS[0])
    lines = _Lines(itertools.chain([first] if first else [], handle))
    return lines, csv.reader(lines, delimiter=delimiter)


def _parsed(reader: Iterator[list[str]], lines: _Lines, name: str) -> Iterator[list[str]]:
    """The reader's records, its errors as BadInput with the line they are on."""
    while True:
        start = getattr(reader, "line_num", 0) + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            line = getattr(reader, "line_num", start)
            raise BadInput(f"{name} line {line}: {exc}") from None
        if lines.ended:
            raise BadInput(
                f"{name} line {start}: a quoted field is never closed (a stray '\"' took the "
                "rest of the file into one field); fix the quoting and ingest again"
            )
        yield fields


def not_utf8(
    record: Mapping[str, object], advice: str = "save the file as UTF-8 (Excel: CSV UTF-8)"
) -> str | None:
    """Why a row read with ``UNDECODABLE`` (or a file name) is unusable: bytes that are not
    UTF-8 in one of its texts, which no store or tokenizer takes; None when it is fine."""
    for key, value in record.items():
        for text in (key, value):
            if not isinstance(text, str):
                continue
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                code = ord(text[exc.start])
                if not 0xDC80 <= code <= 0xDCFF:  # from a JSON escape such as \ud83d
                    return f"a lone surrogate in {text!r} (half of a character)"
                return f"not UTF-8 text (byte 0x{code - 0xDC00:02x} in {text!r}); {advice}"
    return None


def normalised_value(value: str) -> str:
    """Spacing collapsed; ALL-CAPS or all-lower-case words title-cased ("MEN" -> "Men")."""
    text = " ".join(value.split())
    return text.title() if text.isupper() or text.islower() else text


def colour_group(colour: str) -> str | None:
    """The base colour a colour value belongs to ("Navy Blue" -> "Blue"), None when unknown."""
    folded = " ".join(colour.casefold().replace("-", " ").split())
    if folded in COLOUR_GROUPS:
        return COLOUR_GROUPS[folded]
    words = folded.split()
    for word in reversed(words):
        for base in BASE_COLOURS:
            if word == base.casefold():
                return base
        if word in COLOUR_GROUPS:
            return COLOUR_GROUPS[word]
    return None


def canonical_tags(tags: Mapping[str, str], column_map: Mapping[str, str]) -> dict[str, str]:
    """The source's tags, as they are, plus the canonical keys they map to (values
    normalised; a source column already named like a canonical key is left alone) and the
    colour's ``colour_group``."""
    out = dict(tags)
    for column, value in tags.items():
        key = column_map.get(column)
        if key and key not in tags:
            out.setdefault(key, normalised_value(value))
    if "colour" in out and "colour_group" not in out:
        group = colour_group(out["colour"])
        if group is not None:
            out["colour_group"] = group
    return out


def column_map_for(path: Path) -> dict[str, str]:
    """DEFAULT_COLUMN_MAP with the catalog's own overrides, if it has a columns file."""
    folder = path if path.is_dir() else path.parent
    candidates = [path.with_name(path.name + ".columns.json"), folder / COLUMN_MAP_FILE]
    mapping = dict(DEFAULT_COLUMN_MAP)
    for candidate in candidates:
        if candidate.is_file():
            try:
                overrides = json.loads(candidate.read_text(encoding=TEXT_ENCODING))
            except (OSError, json.JSONDecodeError) as exc:
                raise BadInput(f"cannot read the column map {candidate}: {exc}") from None
            if not isinstance(overrides, dict) or not all(
                isinstance(k, str) and (v is None or v in CANONICAL_KEYS)
                for k, v in overrides.items()
            ):
                raise BadInput(
                    f"{candidate} must map column names to one of {', '.join(CANONICAL_KEYS)} "
                    "or null"
                )
            for column, key in overrides.items():
                if key is None:
                    mapping.pop(column, None)
                else:
                    mapping[column] = key
            break
    return mapping


def _clean_tags(pairs: Iterable[tuple[str, object]]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for key, value in pairs:
        text = (json_text(value) or "").strip()  # lists and objects are not tags
        if text:
            tags[key] = text
    return tags


def json_text(value: object) -> str | None:
    """A JSON scalar as text, written the JSON way (``true``; ``15970.0``, as pandas writes
    an id column, is ``15970``); "" for null, None for a list or an object."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str | int | float):
        return str(value)
    return None


def _wrong_type(record: Mapping[str, object], keys: Iterable[str]) -> str | None:
    """Why one of the row's text fields is unusable (a list or an object; a boolean id)."""
    for key in keys:
        value = record.get(key)
        if json_text(value) is None or (key == "id" and isinstance(value, bool)):
            kind = {bool: "a boolean", list: "a list", dict: "an object"}.get(type(value))
            return f"{key} must be text or a number, not {kind or type(value).__name__}"
    return None


def is_file_name(text: str) -> bool:
    """Whether ``text`` names a file in a folder, not a path that leaves it."""
    return text not in ("", ".", "..") and not any(c in text for c in "/\\\x00")


class KaggleSource(_SourceBase):
    """``styles.csv`` + ``images/<id>.jpg``, from a folder or a zip."""

    layout = "kaggle"

    def __init__(
        self,
        location: Path,
        styles: Path | None = None,
        archive: _ZipArchive | None = None,
        member_prefix: str = "",
    ) -> None:
        super().__init__(location)
        self._styles = styles
        self._archive = archive
        self._prefix = member_prefix
        self._column_map = column_map_for(styles if styles is not None else location)

    @classmethod
    def from_zip(cls, path: Path) -> KaggleSource | None:
        archive = _ZipArchive(path)
        candidates = [
            n
            for n in archive.names
            if PurePosixPath(n).name == KAGGLE_STYLES and len(PurePosixPath(n).parts) <= 2
        ]
        if not candidates:
            archive.close()
            return None
        styles = min(candidates, key=lambda n: (len(PurePosixPath(n).parts), n))
        parent = str(PurePosixPath(styles).parent)
        prefix = "" if parent == "." else parent + "/"
        return cls(path, archive=archive, member_prefix=prefix)

    @classmethod
    def find_styles(cls, folder: Path) -> Path | None:
        direct = folder / KAGGLE_STYLES
        if direct.is_file():
            return direct
        nested = sorted(folder.glob(f"*/{KAGGLE_STYLES}"))
        return nested[0] if nested else None

    def _open_styles(self) -> IO[str]:
        if self._archive is not None:
            return self._archive.open_text(self._prefix + KAGGLE_STYLES)
        assert self._styles is not None
        return open_text(self._styles)

    @functools.cached_property
    def _photos(self) -> _KagglePhotos:
        """The images folder, listed on first use (``count`` needs no image)."""
        if self._archive is not None:
            folder = f"{self._prefix}images/"
            return _KagglePhotos(
                n[len(folder) :]
                for n in self._archive.names
                if n.startswith(folder) and "/" not in n[len(folder) :]
            )
        assert self._styles is not None
        return _KagglePhotos(_folder_names(self._styles.parent / "images"))

    def _image(self, product_id: str) -> ImageHandle:
        if not is_file_name(product_id):
            return MissingImage(
                product_id,
                f"id {product_id!r} is not a file name, so it names no images/<id>.jpg",
            )
        name = self._photos.find(product_id) or f"{product_id}.jpg"
        if self._archive is not None:
            return ZipImage(self._archive, f"{self._prefix}images/{name}")
        assert self._styles is not None
        return FileImage(self._styles.parent / "images" / name)

    def _rows(self, handle: IO[str]) -> Iterator[dict[str, str]]:
        return read_csv_rows(handle, overflow_into_last=True, name=KAGGLE_STYLES)

    def count(self) -> int:
        with self._open_styles() as handle:
            return sum(1 for _ in self._rows(handle))

    def __iter__(self) -> Iterator[SourceItem]:
        with self._open_styles() as handle:
            for line, row in enumerate(self._rows(handle), start=2):
                product_id = row.get("id", "")
                name = row.get(KAGGLE_NAME_COLUMN, "")
                tags = canonical_tags(
                    _clean_tags(
                        (k, v) for k, v in row.items() if k not in ("id", KAGGLE_NAME_COLUMN)
                    ),
                    self._column_map,
                )
                problem = "no id" if not product_id else not_utf8(row)
                if problem is not None:
                    where = f"{KAGGLE_STYLES} row {line}"
                    yield SourceItem(
                        id="" if not_utf8({"id": product_id}) else product_id,
                        name="",
                        image=MissingImage(where, problem),
                        problem=f"{where}: {problem}",
                    )
                    continue
                yield SourceItem(
                    id=product_id,
                    name=name or product_id,
                    image=self._image(product_id),
                    tags=tags,
                )

    def close(self) -> None:
        if self._archive is not None:
            self._archive.close()


class ManifestSource(_SourceBase):
    """A CSV or JSONL manifest: ``id``, ``image`` and optionally ``name``, ``description`` and
    any tag columns."""

    layout = "manifest"
    RESERVED = frozenset({"id", "image", "name", "description"})

    def __init__(
        self, manifest: Path, s3: S3Access | None = None, s3_base: str | None = None
    ) -> None:
        """``s3``: how ``s3://`` images are read; ``s3_base``: the ``s3://bucket/folder/``
        relative image paths are keys under (a manifest read from S3)."""
        super().__init__(manifest)
        self._manifest = manifest
        self._base = manifest.parent
        self._jsonl = manifest.suffix.lower() in JSONL_SUFFIXES
        self._column_map = column_map_for(manifest)
        self._s3 = s3 or S3Access()
        self._s3_base = s3_base
        self._names = _ComposedNames()

    def _rows(self) -> Iterator[tuple[str, dict[str, object]]]:
        with open_text(self._manifest) as handle:
            if self._jsonl:
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    where = f"{self._manifest.name} line {number}"
                    try:
                        record = json.loads(line)
                    except JSON_ERRORS as exc:
                        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else exc
                        yield where, {PROBLEM_KEY: f"invalid JSON: {reason}"}
                        continue
                    if not isinstance(record, dict):
                        yield where, {PROBLEM_KEY: "not a JSON object"}
                        continue
                    yield where, record
            else:
                rows = read_csv_rows(handle, name=self._manifest.name)
                for number, row in enumerate(rows, start=2):
                    yield f"{self._manifest.name} row {number}", dict(row)

    def count(self) -> int:
        return sum(1 for _ in self._rows())

    def _image(self, value: object) -> ImageHandle:
        text = (json_text(value) or "").strip()
        if not text:
            return MissingImage("", "no image given")
        parsed = urlparse(text)
        if parsed.scheme in ("http", "https"):
            return RemoteImage(text)
        if is_s3_uri(text):
            return self._s3_image(text)
        if parsed.scheme and len(parsed.scheme) > 1:  # not a Windows drive letter
            return MissingImage(text, f"unsupported image URL scheme {parsed.scheme!r}")
        if self._s3_base is not None:
            return self._s3_image(self._s3_base + text.lstrip("/"))
        return FileImage(self._local_file(text))

    def _local_file(self, text: str) -> Path:
        """The file a local reference names: as written when that exists; otherwise a
        relative path written with Windows backslashes (``images\\1.jpg``) as the same path
        with slashes, and names looked up whatever their Unicode form (a Mac's NFD). Never
        further than the path as written reaches: a drive (``C:\\``) or a root (``\\x``) is
        not relative; ``..`` stays ``..``."""
        path = Path(text)
        written = path if path.is_absolute() else self._base / path
        if ("\\" not in text and text.isascii()) or written.exists():
            return written
        windows = PureWindowsPath(text)
        if "\\" in text and not windows.drive and not windows.root:
            path = Path(*windows.parts)
        start = Path(path.anchor) if path.is_absolute() else self._base
        parts = path.parts[1:] if path.is_absolute() else path.parts
        return self._names.find(start, parts) or written

    def _s3_image(self, uri: str) -> ImageHandle:
        try:
            bucket, key = split_s3_uri(uri)
        except BadInput as exc:
            return MissingImage(uri, str(exc))
        return S3Image(self._s3, bucket, key)

    def __iter__(self) -> Iterator[SourceItem]:
        for where, record in self._rows():
            id_problem = _wrong_type(record, ["id"]) or not_utf8({"id": record.get("id")})
            product_id = "" if id_problem else (json_text(record.get("id")) or "").strip()
            problem = (
                record.get(PROBLEM_KEY)
                or id_problem
                or ("no id" if not product_id else None)
                or _wrong_type(record, sorted(self.RESERVED))
                or not_utf8(record)
            )
            if problem is not None:
                yield SourceItem(
                    id=product_id,
                    name="",
                    image=MissingImage(where, str(problem)),
                    problem=f"{where}: {problem}",
                )
                continue
            name = (json_text(record.get("name")) or "").strip() or product_id
            description = (json_text(record.get("description")) or "").strip() or None
            tags = canonical_tags(
                _clean_tags((k, v) for k, v in record.items() if k not in self.RESERVED),
                self._column_map,
            )
            yield SourceItem(
                id=product_id,
                name=name,
                description=description,
                tags=tags,
                image=self._image(record.get("image")),
            )

    @staticmethod
    def looks_like_manifest(path: Path) -> bool:
        try:
            with open_text(path) as handle:
                if path.suffix.lower() in JSONL_SUFFIXES:
                    for line in handle:
                        if line.strip():
                            record = json.loads(line)
                            return isinstance(record, dict) and "id" in record
                    return False
                header = next(_csv_reader(handle)[1], [])
        except (OSError, *JSON_ERRORS):
            return False
        columns = {c.strip() for c in header}
        return {"id", "image"} <= columns


class S3ManifestSource(ManifestSource):
    """A manifest at ``s3://bucket/key``: copied to a temporary file (streamed, then read
    like a local one, with its ``.columns.json`` if the bucket has one beside it); relative
    image paths are keys in the manifest's folder of the bucket."""

    def __init__(self, uri: str, s3: S3Access | None = None) -> None:
        s3 = s3 or S3Access()
        bucket, key = split_s3_uri(uri)
        name = PurePosixPath(key).name
        folder = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
        self._temp = Path(tempfile.mkdtemp(prefix="fs-s3-manifest-"))
        local = self._temp / name
        try:
            if not s3.download(bucket, key, local):
                raise SourceNotFound(f"no such manifest: {uri}")
            for beside in (key + ".columns.json", folder + COLUMN_MAP_FILE):
                s3.download(bucket, beside, self._temp / PurePosixPath(beside).name)
        except S3ReadError as exc:
            self.close()
            raise SourceNotFound(str(exc)) from None
        except BaseException:
            self.close()
            raise
        if (
            local.suffix.lower() not in CSV_SUFFIXES | JSONL_SUFFIXES
            or not self.looks_like_manifest(local)
        ):
            self.close()
            raise UnknownLayout(
                f"{uri} is not a CSV/JSONL manifest with 'id' and 'image' columns (only "
                "manifests are read from S3)"
            )
        super().__init__(local, s3=s3, s3_base=f"s3://{bucket}/{folder}")
        self._uri = uri

    @property
    def location(self) -> str:
        return self._uri

    def close(self) -> None:
        shutil.rmtree(self._temp, ignore_errors=True)


class ImageFolderSource(_SourceBase):
    """Every JPEG/PNG/WebP file under a folder; id and name are the file stem."""

    layout = "image-folder"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self._folder = folder

    def _files(self) -> Iterator[Path]:
        for root, dirs, files in os.walk(self._folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                    yield Path(root) / name

    def count(self) -> int:
        return sum(1 for _ in self._files())

    def has_images(self) -> bool:
        return next(self._files(), None) is not None

    def __iter__(self) -> Iterator[SourceItem]:
        for path in self._files():
            relative = path.relative_to(self._folder).as_posix()
            problem = not_utf8({"file": relative}, "rename the file or folder")
            if problem is not None:
                shown = os.fsencode(path).decode("utf-8", "backslashreplace")
                yield SourceItem(
                    id="",
                    name="",
                    image=MissingImage(shown, problem),
                    problem=f"the name of {shown} is {problem}",
                )
                continue
            relative_parent = path.parent.relative_to(self._folder)
            tags = {} if relative_parent == Path(".") else {"folder": relative_parent.as_posix()}
            yield SourceItem(id=path.stem, name=path.stem, image=FileImage(path), tags=tags)


# -- detection -------------------------------------------------------------------------------

LAYOUT_HELP = (
    "expected one of: the Kaggle layout (styles.csv + images/<id>.jpg, as a folder or zip), "
    "a CSV/JSONL manifest with id and image columns (or a folder holding products.csv or "
    "manifest.jsonl), or a folder of JPEG/PNG/WebP images"
)


def open_source(path: Path | str, s3: S3Access | None = None) -> Source:
    """The source a path (or an ``s3://`` manifest URI) holds; ``s3`` reads ``s3://``
    manifests and images (default: AWS with boto3's credential chain). Raises SourceNotFound
    or UnknownLayout."""
    if isinstance(path, str) and is_s3_uri(path):
        return S3ManifestSource(path, s3)
    path = Path(path).expanduser()
    if not path.exists():
        raise SourceNotFound(f"no such file or folder: {path}")
    if path.is_dir():
        return _open_folder(path, s3)
    suffix = path.suffix.lower()
    if suffix == ".zip":
        source = KaggleSource.from_zip(path)
        if source is None:
            raise UnknownLayout(f"{path} holds no {KAGGLE_STYLES}; {LAYOUT_HELP}")
        return source
    if suffix in CSV_SUFFIXES or suffix in JSONL_SUFFIXES:
        if ManifestSource.looks_like_manifest(path):
            return ManifestSource(path, s3)
        if path.name == KAGGLE_STYLES:
            return KaggleSource(path.parent, styles=path)
        raise UnknownLayout(f"{path} has no 'id' and 'image' columns; {LAYOUT_HELP}")
    raise UnknownLayout(f"cannot read {path}; {LAYOUT_HELP}")


def _open_folder(folder: Path, s3: S3Access | None = None) -> Source:
    styles = KaggleSource.find_styles(folder)
    if styles is not None:
        return KaggleSource(folder, styles=styles)
    manifests = [folder / name for name in MANIFEST_NAMES if (folder / name).is_file()]
    for candidate in manifests:
        if ManifestSource.looks_like_manifest(candidate):
            return ManifestSource(candidate, s3)
    if manifests:  # meant as the manifest: read as a folder of photos, its rows would be lost
        raise UnknownLayout(
            f"{manifests[0]} is not a manifest: its header needs 'id' and 'image' columns "
            f"(rename the file to ingest {folder} as a folder of photos)"
        )
    images = ImageFolderSource(folder)
    if images.has_images():
        return images
    raise UnknownLayout(f"{folder} holds no catalog; {LAYOUT_HELP}")
