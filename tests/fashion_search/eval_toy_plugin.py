"""Test-only encoder plugin for ``fashion-search eval``: a hand-made catalog and two toy
encoders whose rankings are known in advance, so the test can compute every metric by hand.
tests/fashion_search/test_eval.py makes the CLI load this module through the
``fashion_search.encoders`` entry-point group, like any third-party plugin.

The catalog (``ITEMS``, gallery position = list position): each photo is a plain colour; item
11's photo is byte-identical to item 3's (distinct ids, one photo, as in the Kaggle set).

Image vectors: an encoder recognises a photo by its colour (the nearest colour of the
catalog, so augmented copies look like their original) and gives it its item's vector:

- ``toy`` (text and image): ``(e[axis] + t[type]) / sqrt(2)``: one axis per photo plus one per
  product type, so two different photos score 0.5 when they share a type and 0 otherwise;
- ``toy-image`` (images only): ``e[axis]``: different photos score 0.

Text vectors (``toy`` only): ``TEXT_RANKINGS`` lists, for each query text, the photos it
prefers, best first (weights 1.0, 0.95, 0.9, ...); every other photo scores 0 (ties are broken by
gallery position). Texts not in the table point away from every photo.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from domain.errors import BadInput
from domain.model import Modality
from domain.ports import Vectors
from encoders.hookspecs import EncoderFamily, EncoderOptions, hookimpl
from encoders.images import decode_image


@dataclass(frozen=True)
class ToyItem:
    id: str
    product_type: str
    colour: str
    pattern: str
    section: str
    description: str
    rgb: tuple[int, int, int]


ITEMS: tuple[ToyItem, ...] = (
    ToyItem("a0", "Dress", "Black", "Solid", "Ladieswear", "jersey dress", (0, 0, 0)),
    ToyItem("a1", "Dress", "Red", "Solid", "Ladieswear", "jersey dress", (255, 0, 0)),
    ToyItem("a2", "Dress", "Black", "Stripe", "Ladieswear", "striped dress", (0, 0, 255)),
    ToyItem("a3", "Trousers", "Black", "Solid", "Menswear", "slim trousers", (0, 255, 0)),
    ToyItem("a4", "Trousers", "Black", "Solid", "Menswear", "wide trousers", (255, 255, 0)),
    ToyItem("a5", "Trousers", "Blue", "Denim", "Menswear", "denim trousers", (0, 255, 255)),
    ToyItem("a6", "Shirt", "White", "Solid", "Menswear", "oxford shirt", (255, 0, 255)),
    ToyItem("a7", "Shirt", "White", "Stripe", "Ladieswear", "striped shirt", (255, 255, 255)),
    ToyItem("a8", "Shirt", "Blue", "Solid", "Ladieswear", "linen shirt", (128, 0, 0)),
    ToyItem("a9", "Dress", "Black", "Solid", "Ladieswear", "maxi dress", (0, 128, 0)),
    ToyItem("a10", "Unknown", "Black", "Solid", "Ladieswear", "", (0, 0, 128)),
    ToyItem("a11", "Trousers", "Black", "Solid", "Menswear", "slim trousers", (0, 255, 0)),
)

TEXT_RANKINGS: dict[str, tuple[int, ...]] = {
    # the products' descriptions
    "jersey dress": (1, 0, 9),
    "striped dress": (7, 2),
    "slim trousers": (4, 3),
    "wide trousers": (4,),
    "denim trousers": (8, 5),
    "oxford shirt": (6,),
    "striped shirt": (2, 7),
    "linen shirt": (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 8),
    "maxi dress": (0, 9),
    # the generated "<attribute> <type>" queries of the catalog with --min-products 3
    "black dress": (1, 5, 6, 7, 8, 10, 4, 0),
    "black trousers": (3,),
    "solid dress": (9, 0, 1),
    "solid trousers": (5, 6, 7, 8, 10, 2, 0, 1, 9),
    "ladieswear dress": (0, 1, 2, 9),
    "menswear trousers": (6,),
}

COLOURS: tuple[tuple[int, int, int], ...] = tuple(dict.fromkeys(item.rgb for item in ITEMS))
TYPES: tuple[str, ...] = tuple(dict.fromkeys(item.product_type for item in ITEMS))
AXIS_OF_COLOUR = {rgb: axis for axis, rgb in enumerate(COLOURS)}
TYPE_OF_COLOUR = {item.rgb: item.product_type for item in ITEMS}
DIM = len(COLOURS) + len(TYPES) + 1  # the last axis: texts the table does not know


def photo(item: ToyItem, size: tuple[int, int] = (24, 36)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, item.rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def nearest_colour(data: bytes) -> tuple[int, int, int]:
    mean = np.asarray(decode_image(data), dtype=np.float64).reshape(-1, 3).mean(axis=0)
    distances = [float(np.sum((mean - np.array(c)) ** 2)) for c in COLOURS]
    return COLOURS[int(np.argmin(distances))]


def _unit(vector: Vectors) -> Vectors:
    out: Vectors = (vector / np.linalg.norm(vector)).astype(np.float32)
    return out


class ToyEncoder:
    def __init__(self, encoder_id: str, with_types: bool, reads_text: bool) -> None:
        self._id = encoder_id
        self._with_types = with_types
        self._reads_text = reads_text

    @property
    def id(self) -> str:
        return self._id

    @property
    def dim(self) -> int:
        return DIM

    @property
    def modalities(self) -> frozenset[Modality]:
        if self._reads_text:
            return frozenset({Modality.TEXT, Modality.IMAGE})
        return frozenset({Modality.IMAGE})

    def image_vector(self, rgb: tuple[int, int, int]) -> Vectors:
        vector = np.zeros(DIM, dtype=np.float32)
        vector[AXIS_OF_COLOUR[rgb]] = 1.0
        if self._with_types:
            vector[len(COLOURS) + TYPES.index(TYPE_OF_COLOUR[rgb])] = 1.0
        return _unit(vector)

    def text_vector(self, text: str) -> Vectors:
        vector = np.zeros(DIM, dtype=np.float32)
        ranking = TEXT_RANKINGS.get(text)
        if ranking is None:
            vector[-1] = 1.0
            return vector
        for place, position in enumerate(ranking):
            vector[AXIS_OF_COLOUR[ITEMS[position].rgb]] = 1.0 - 0.05 * place
        return _unit(vector)

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        if not self._reads_text:
            raise BadInput(f"{self._id} encodes images only")
        return np.stack([self.text_vector(t) for t in texts]).reshape(len(texts), DIM)

    def encode_images(self, images: Sequence[bytes]) -> Vectors:
        rows = [self.image_vector(nearest_colour(data)) for data in images]
        return np.stack(rows).reshape(len(images), DIM)


def _factory(encoder_id: str, with_types: bool, reads_text: bool) -> EncoderFamily:
    def build(spec: str, options: EncoderOptions) -> ToyEncoder:
        return ToyEncoder(encoder_id, with_types, reads_text)

    modalities = {Modality.IMAGE} | ({Modality.TEXT} if reads_text else set())
    return EncoderFamily(
        name=encoder_id,
        factory=build,
        description="hand-made test encoder",
        modalities=frozenset(modalities),
        examples=(encoder_id,),
        dim=DIM,
    )


@hookimpl
def fashion_search_register_encoders() -> list[EncoderFamily]:
    return [
        _factory("toy", with_types=True, reads_text=True),
        _factory("toy-image", with_types=False, reads_text=False),
    ]
