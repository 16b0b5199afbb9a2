"""Image references written the way Windows and macOS users write them: `.JPG` and `.png`
in a Kaggle layout, backslashes in a manifest, file names saved in Unicode's decomposed form
(NFD) by a Mac. Each used to be reported ``missing`` though the photo was there."""

from __future__ import annotations

import os
import unicodedata
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.pipeline import IngestOptions, IngestPipeline
from ingest.readers import FileImage, ImageUnavailable, RemoteImage, SourceItem, open_source
from ingest.report import IngestSummary
from tests.fakes import (
    HashingEncoder,
    InMemoryCatalog,
    InMemoryImageStore,
    InMemoryVectorIndex,
    fake_image,
)

CAFE_NFC = unicodedata.normalize("NFC", "café")
CAFE_NFD = unicodedata.normalize("NFD", "café")
ETE_NFD = unicodedata.normalize("NFD", "Été")


def items_of(path: Path) -> list[SourceItem]:
    with open_source(path) as source:
        return list(source)


def read(item: SourceItem) -> bytes:
    assert not isinstance(item.image, RemoteImage)
    return item.image.read(10_000)


def unreadable(item: SourceItem) -> bool:
    try:
        read(item)
    except ImageUnavailable:
        return True
    return False


# Kaggle ids and the image files a Windows or macOS export left beside them.
KAGGLE_IMAGES = {
    "1": ["1.jpg"],
    "2": ["2.JPG"],
    "3": ["3.jpeg"],
    "4": ["4.JPEG"],
    "5": ["5.png"],
    "6": [],  # no image at all
    "7": ["7.png", "7.JPG", "7.jpg"],  # <id>.jpg wins
    "8": ["8.png", "8.JPEG"],  # .jpeg before .png
    "Ab": ["AB.png", "Ab.png", "ab.jpg"],  # spelt like the id before .jpg
    "sku": ["SKU.Jpg", "sku.txt"],  # only photo extensions count
    CAFE_NFC: [CAFE_NFD + ".jpg"],  # a Mac wrote the name decomposed
    "9": ["sub/9.jpg", "9.jpg.bak"],  # not images/<id>.<photo>
}
KAGGLE_WINNERS = {
    "1": "1.jpg",
    "2": "2.JPG",
    "3": "3.jpeg",
    "4": "4.JPEG",
    "5": "5.png",
    "7": "7.jpg",
    "8": "8.JPEG",
    "Ab": "Ab.png",
    "sku": "SKU.Jpg",
    CAFE_NFC: CAFE_NFD + ".jpg",
}


def kaggle_files() -> dict[str, bytes]:
    styles = "id,productDisplayName\n" + "".join(f"{i},Item {i}\n" for i in KAGGLE_IMAGES)
    files = {"styles.csv": styles.encode()}
    for names in KAGGLE_IMAGES.values():
        files.update({f"images/{name}": fake_image(name) for name in names})
    return files


def kaggle_catalog(tmp_path: Path, packed: bool) -> Path:
    if packed:
        archive = tmp_path / "kaggle.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            for name, data in kaggle_files().items():
                zf.writestr(f"myntradataset/{name}", data)
        return archive
    for name, data in kaggle_files().items():
        path = tmp_path / "kaggle" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return tmp_path / "kaggle"


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "zip"])
def test_kaggle_images_are_found_whatever_their_extension_and_case(
    tmp_path: Path, packed: bool
) -> None:
    with open_source(kaggle_catalog(tmp_path, packed)) as source:  # a zip is read open
        items = list(source)
        found = {i.id: read(i) for i in items if not unreadable(i)}
        missing = next(i for i in items if i.id == "6")
        with pytest.raises(ImageUnavailable, match=r"images/6\.jpg"):
            read(missing)

    assert [i.id for i in items] == list(KAGGLE_IMAGES)  # ids kept as written
    assert found == {i: fake_image(name) for i, name in KAGGLE_WINNERS.items()}


def test_kaggle_images_folder_is_listed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tens of thousands of ids: one listing of images/, not one per item."""
    catalog = kaggle_catalog(tmp_path, packed=False)
    listed: list[str] = []
    real_scandir = os.scandir

    def counting_scandir(path: str | os.PathLike[str]) -> Iterator[os.DirEntry[str]]:
        listed.append(os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", counting_scandir)
    monkeypatch.setattr(os, "listdir", lambda *_: pytest.fail("listdir"))

    items = items_of(catalog)

    assert len([i for i in items if not unreadable(i)]) == len(KAGGLE_WINNERS)
    assert [Path(p).name for p in listed].count("images") <= 1


def test_backslashed_manifest_paths_are_read_as_relative_paths(tmp_path: Path) -> None:
    shop = tmp_path / "shop"
    for name in ("images/0001.jpg", "images/sub/0002.jpg", "outside.jpg", "C:/photos/4.jpg"):
        (shop / name).parent.mkdir(parents=True, exist_ok=True)
        (shop / name).write_bytes(fake_image(name))
    (tmp_path / "beside.jpg").write_bytes(fake_image("beside"))
    (shop / "images" / "5.jpg").write_bytes(fake_image("images/5.jpg"))
    (shop / "images\\5.jpg").write_bytes(fake_image("literal"))  # one Linux file name
    manifest = shop / "products.csv"
    manifest.write_text(
        "id,image\n"
        "1,images\\0001.jpg\n"
        "2,.\\images/sub\\0002.jpg\n"
        "3,..\\beside.jpg\n"  # as far as ../beside.jpg would reach
        "4,C:\\photos\\4.jpg\n"  # a Windows absolute path is not under the manifest
        "5,images\\5.jpg\n"  # the file named so is read, as before
        "6,\\images\\0001.jpg\n"  # rooted: not relative, never /images/0001.jpg
        "7,images\\gone.jpg\n",
        "utf-8",
    )

    items = {i.id: i for i in items_of(manifest)}

    assert read(items["1"]) == fake_image("images/0001.jpg")
    assert read(items["2"]) == fake_image("images/sub/0002.jpg")
    assert read(items["3"]) == fake_image("beside")
    assert read(items["5"]) == fake_image("literal")
    for missing in ("4", "6", "7"):
        assert unreadable(items[missing]), missing
    assert items["7"].image == FileImage(shop / "images\\gone.jpg")  # reported as written


def test_a_jsonl_manifest_with_backslashes(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(fake_image("a"))
    (tmp_path / "manifest.jsonl").write_text('{"id": "a", "image": "images\\\\a.jpg"}\n')

    (item,) = items_of(tmp_path)

    assert read(item) == fake_image("a")


def mac_shop(root: Path) -> Path:
    """Photos named on a Mac (NFD, file and folder), listed by a manifest typed on a PC (NFC)."""
    (root / "images" / ETE_NFD).mkdir(parents=True)
    (root / "images" / f"{CAFE_NFD}.jpg").write_bytes(fake_image("cafe"))
    (root / "images" / ETE_NFD / "robe.jpg").write_bytes(fake_image("robe"))
    manifest = root / "products.csv"
    manifest.write_text(
        f"id,image\n{CAFE_NFC},images/{CAFE_NFC}.jpg\n"
        f"robe-{CAFE_NFC},images\\{unicodedata.normalize('NFC', ETE_NFD)}\\robe.jpg\n"
        "gone,images/gone.jpg\n",
        "utf-8",
    )
    return manifest


Stores = tuple[InMemoryCatalog, InMemoryVectorIndex, InMemoryImageStore]


def new_stores() -> Stores:
    return InMemoryCatalog(), InMemoryVectorIndex(), InMemoryImageStore()


async def ingest(path: Path, stores: Stores) -> IngestSummary:
    catalog, index, images = stores
    pipeline = IngestPipeline([HashingEncoder()], index, catalog, images, options=IngestOptions())
    with open_source(path) as source:
        return await pipeline.run(source, source.count())


async def test_an_nfc_manifest_finds_photos_a_mac_named_and_keeps_its_ids(tmp_path: Path) -> None:
    manifest = mac_shop(tmp_path)
    stores = new_stores()

    first = await ingest(manifest, stores)
    again = await ingest(manifest, stores)

    assert (first.indexed, first.failed) == (2, 1)
    assert set(stores[0].products) == {CAFE_NFC, f"robe-{CAFE_NFC}"}  # stored as written
    assert (again.indexed, again.updated, again.skipped_unchanged) == (0, 0, 2)


async def test_photo_folder_ids_keep_the_form_their_file_names_have(tmp_path: Path) -> None:
    """A home that ingested a Mac's folder holds NFD ids: normalising them would make every
    such product new (and leave the old ones behind)."""
    (tmp_path / f"{CAFE_NFD}.jpg").write_bytes(fake_image("cafe"))
    stores = new_stores()

    first = await ingest(tmp_path, stores)
    again = await ingest(tmp_path, stores)

    assert list(stores[0].products) == [CAFE_NFD]
    assert (first.indexed, again.skipped_unchanged) == (1, 1)
