"""Training and validation data of the fashion-lite heads: labelled catalog items read from an
hm-dev style manifest or straight from the Kaggle zip, the texts each item is paired with, and
the fixed held-out split of hm-dev."""

from __future__ import annotations

import csv
import io
import random
import re
import zipfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HELDOUT_IDS_FILE = Path(__file__).resolve().parent / "heldout_ids.txt"
KAGGLE_HELDOUT_IDS_FILE = Path(__file__).resolve().parent / "kaggle_heldout_ids.txt"
"""The held-out split of the Kaggle zip (25% of ids, fixed seed): shop-mode evaluation."""
SPLIT_SEED = 20260601
HELDOUT_FRACTION = 0.25
# a validation split carved out of the training part (for choosing settings) uses its own seed
VALIDATION_SEED = SPLIT_SEED + 1
_SKIP_VALUES = {"", "unknown", "undefined", "nan", "none", "other"}

_SPACES = re.compile(r"\s+")


def query_text(text: str) -> str:
    """The prompt template shared by training and query time: lower case, single spaces.
    (MiniLM is uncased; keeping the template trivial means a shopper's words and the training
    texts look alike.)"""
    return _SPACES.sub(" ", text.strip().lower())


@dataclass(frozen=True)
class Item:
    """One labelled catalog item: where its image is, its texts and its attributes."""

    id: str
    source: str  # "hm" or "kaggle"
    group: str  # product_code for hm; the id for kaggle (no colour-variant groups known)
    name: str
    description: str
    attributes: dict[str, str] = field(default_factory=dict)
    image_path: str = ""  # a file path (hm) or a member name inside the zip (kaggle)

    @property
    def product_type(self) -> str:
        return self.attributes.get("product_type", "")

    def attr(self, key: str) -> str:
        value = self.attributes.get(key, "")
        return "" if value.strip().lower() in _SKIP_VALUES else value.strip()


def _phrase(*parts: str) -> str:
    if any(not p for p in parts):
        return ""
    return query_text(" ".join(parts))


def item_texts(item: Item, descriptions: bool = True) -> list[str]:
    """The texts an item is paired with in training (all passed through ``query_text``):
    short shopper-style attribute phrases, the name, and (``descriptions``) the description
    and a full caption."""
    kind = item.attr("product_type")
    colour, pattern, section = item.attr("colour"), item.attr("pattern"), item.attr("section")
    master, gender = item.attr("colour_master"), item.attr("gender")
    texts = [
        _phrase(kind),
        _phrase(colour, kind),
        _phrase(master, kind),
        _phrase(pattern, kind),
        _phrase(section, kind),
        _phrase(gender, kind),
        _phrase(colour, pattern, kind),
        query_text(item.name),
    ]
    if descriptions:
        texts += [query_text(item.description), _caption(item)]
    unique: list[str] = []
    for text in texts:
        if text and text not in unique:
            unique.append(text)
    return unique


def _caption(item: Item) -> str:
    """name. colour pattern type. section. description"""
    kind = item.attr("product_type")
    colour, pattern, section = item.attr("colour"), item.attr("pattern"), item.attr("section")
    caption = ". ".join(
        p
        for p in (
            item.name,
            " ".join(x for x in (colour, pattern, kind) if x),
            section or item.attr("gender"),
            item.description,
        )
        if p
    )
    return query_text(caption)


# ---------------------------------------------------------------- readers


def read_hm_manifest(directory: Path) -> list[Item]:
    """Items of an hm-dev style folder: ``products.csv`` + ``images/<id>.jpg``."""
    items: list[Item] = []
    with (directory / "products.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            attributes = {
                key: (row.get(key) or "").strip()
                for key in (
                    "product_type",
                    "product_group",
                    "colour",
                    "colour_master",
                    "pattern",
                    "section",
                    "garment_group",
                )
            }
            items.append(
                Item(
                    id=row["id"],
                    source="hm",
                    group=row.get("product_code") or row["id"],
                    name=(row.get("name") or "").strip(),
                    description=(row.get("description") or "").strip(),
                    attributes=attributes,
                    image_path=str(directory / row["image"]),
                )
            )
    return items


def read_kaggle_zip(path: Path) -> list[Item]:
    """Items of the Kaggle "Fashion Product Images" zip, read without unpacking."""
    items: list[Item] = []
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        styles = next(n for n in names if n.endswith("styles.csv"))
        prefix = styles[: -len("styles.csv")]
        text = archive.read(styles).decode("utf-8", errors="replace")
        for row in csv.DictReader(io.StringIO(text)):
            image = f"{prefix}images/{row['id']}.jpg"
            if image not in names:
                continue
            attributes = {
                "product_type": (row.get("articleType") or "").strip(),
                "product_group": (row.get("subCategory") or "").strip(),
                "category": (row.get("masterCategory") or "").strip(),
                "colour": (row.get("baseColour") or "").strip(),
                "gender": (row.get("gender") or "").strip(),
                "usage": (row.get("usage") or "").strip(),
            }
            items.append(
                Item(
                    id=f"kaggle-{row['id']}",
                    source="kaggle",
                    group=f"kaggle-{row['id']}",
                    name=(row.get("productDisplayName") or "").strip(),
                    description="",
                    attributes=attributes,
                    image_path=image,
                )
            )
    return items


def image_loader(items: Sequence[Item], kaggle_zip: Path | None) -> Callable[[Item], bytes]:
    """A function returning the image bytes of an item (files on disk or zip members)."""
    archive = zipfile.ZipFile(kaggle_zip) if kaggle_zip is not None else None

    def load(item: Item) -> bytes:
        if item.source == "kaggle":
            if archive is None:
                raise ValueError("kaggle items need the zip")
            return archive.read(item.image_path)
        return Path(item.image_path).read_bytes()

    return load


# ---------------------------------------------------------------- the held-out split


def make_heldout_split(
    items: Sequence[Item], fraction: float = HELDOUT_FRACTION, seed: int = SPLIT_SEED
) -> list[str]:
    """Ids of about ``fraction`` of the items, whole product groups at a time (colour variants
    never cross), stratified by product_group."""
    groups_by_stratum: dict[str, set[str]] = defaultdict(set)
    for item in items:
        groups_by_stratum[item.attributes.get("product_group", "")].add(item.group)
    rng = random.Random(seed)
    heldout_groups: set[str] = set()
    for stratum in sorted(groups_by_stratum):
        groups = sorted(groups_by_stratum[stratum])
        rng.shuffle(groups)
        heldout_groups.update(groups[: round(len(groups) * fraction)])
    return sorted(item.id for item in items if item.group in heldout_groups)


def read_ids(path: Path = HELDOUT_IDS_FILE) -> set[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}
