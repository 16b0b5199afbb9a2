"""Readers: layout detection and what each layout yields."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from domain.errors import BadInput, PayloadTooLarge
from ingest.readers import (
    DEFAULT_COLUMN_MAP,
    FileImage,
    ImageUnavailable,
    MissingImage,
    RemoteImage,
    SourceItem,
    SourceNotFound,
    UnknownLayout,
    ZipImage,
    canonical_tags,
    colour_group,
    open_source,
)
from tests.fakes import fake_image

STYLES_HEADER = (
    "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,"
    "productDisplayName\n"
)
# The real Kaggle styles.csv has rows like the second one: commas in the last column, unquoted.
STYLES_ROWS = (
    "15970,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,Turtle Check Men Navy Blue Shirt\n"
    "11949,Women,Apparel,Bottomwear,Skirts,Black,Summer,2012,Casual,"
    "Puma Women Black, White & Grey Skirt, Pleated\n"
    '21379,Men,Footwear,Shoes,Sports Shoes,White,Fall,2011,Sports,"Nike Men, quoted, Shoe"\n'
    "53759,Men,Apparel,Topwear,Tshirts,Grey,,2012,,\n"
)


def kaggle_files() -> dict[str, bytes]:
    return {
        "styles.csv": (STYLES_HEADER + STYLES_ROWS).encode(),
        "images/15970.jpg": fake_image("navy shirt"),
        "images/11949.jpg": fake_image("black skirt"),
        "images/21379.jpg": fake_image("white shoe"),
        # 53759 has no image, as some rows of the real file
    }


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def items_of(path: Path) -> list[SourceItem]:
    with open_source(path) as source:
        return list(source)


def check_kaggle_items(items: list[SourceItem]) -> None:
    assert [i.id for i in items] == ["15970", "11949", "21379", "53759"]
    shirt, skirt, shoe, tee = items
    assert shirt.name == "Turtle Check Men Navy Blue Shirt"
    assert shirt.tags == {
        "gender": "Men",
        "masterCategory": "Apparel",
        "subCategory": "Topwear",
        "articleType": "Shirts",
        "baseColour": "Navy Blue",
        "season": "Fall",
        "year": "2011",
        "usage": "Casual",
        # the canonical keys these columns map to (DEFAULT_COLUMN_MAP)
        "colour": "Navy Blue",
        "colour_group": "Blue",
        "type": "Shirts",
        "category": "Topwear",
        "audience": "Men",
    }
    assert skirt.name == "Puma Women Black, White & Grey Skirt, Pleated"
    assert skirt.tags["baseColour"] == "Black"
    assert skirt.tags["usage"] == "Casual"
    assert shoe.name == "Nike Men, quoted, Shoe"
    assert tee.name == "53759"  # no display name: the id stands in
    assert "season" not in tee.tags
    assert "usage" not in tee.tags
    assert isinstance(skirt.image, FileImage | ZipImage)
    assert isinstance(tee.image, FileImage | ZipImage)
    assert skirt.image.read(10_000) == fake_image("black skirt")
    with pytest.raises(ImageUnavailable):
        tee.image.read(10_000)


def test_kaggle_folder_nested_one_level(tmp_path: Path) -> None:
    write_tree(tmp_path / "myntradataset", kaggle_files())
    with open_source(tmp_path) as source:
        assert source.layout == "kaggle"
        assert source.count() == 4
        items = list(source)
    check_kaggle_items(items)
    assert isinstance(items[0].image, FileImage)


def test_kaggle_zip_read_without_unpacking(tmp_path: Path) -> None:
    archive = tmp_path / "fashion-product-images-small.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in kaggle_files().items():
            zf.writestr(f"myntradataset/{name}", data)
    with open_source(archive) as source:
        assert source.layout == "kaggle"
        assert source.count() == 4
        items = list(source)
        assert isinstance(items[1].image, ZipImage)
        check_kaggle_items(items)
        with pytest.raises(PayloadTooLarge):
            items[1].image.read(5)
    assert sorted(p.name for p in tmp_path.iterdir()) == [archive.name]  # nothing unpacked


def test_the_shared_kaggle_zip(kaggle_zip: Path) -> None:
    with open_source(kaggle_zip) as source:
        assert source.layout == "kaggle"
        assert source.count() == 14_888
        first = next(iter(source))
        assert first.id.isdigit()
        assert first.name
        assert "articleType" in first.tags
        assert isinstance(first.image, ZipImage)
        assert first.image.read(1_000_000)[:3] == b"\xff\xd8\xff"


def test_the_shared_hm_dev_manifest_keeps_string_ids(hm_dev: Path) -> None:
    with open_source(hm_dev) as source:
        assert source.layout == "manifest"
        first = next(iter(source))
    assert first.id == "0111586001"
    assert first.name == "Shape Up 30 den 1p Tights"
    assert first.description
    assert first.description.startswith("Tights with built-in support")
    assert first.tags["product_code"] == "111586"
    assert first.tags["colour"] == "Black"
    assert set(first.tags) >= {"product_type", "product_group", "section", "pattern"}
    assert "image" not in first.tags
    assert "name" not in first.tags
    assert first.image == FileImage(hm_dev / "images" / "0111586001.jpg")


def test_csv_manifest_paths_urls_and_tags(tmp_path: Path) -> None:
    write_tree(tmp_path / "cat", {"pics/a.jpg": fake_image("a")})
    absolute = write_tree(tmp_path / "elsewhere", {"b.png": b"png"}) / "b.png"
    manifest = tmp_path / "cat" / "my-products.csv"
    manifest.write_text(
        "id,image,name,description,colour,fit\n"
        "007,pics/a.jpg,Red dress,A red dress,Red,\n"
        f"8,{absolute},,,Blue,Slim\n"
        "9,https://cdn.example.com/9.jpg,Shoe,,,\n"
        "10,,No image,,,\n"
        "11,ftp://example.com/11.jpg,Ftp,,,\n"
        ",pics/a.jpg,No id,,,\n",
        "utf-8",
    )
    items = items_of(manifest)
    assert [i.id for i in items] == ["007", "8", "9", "10", "11", ""]
    dress, blue, shoe, no_image, ftp, no_id = items
    assert dress.name == "Red dress"
    assert dress.description == "A red dress"
    assert dress.tags == {"colour": "Red", "colour_group": "Red"}
    assert dress.image == FileImage(tmp_path / "cat" / "pics" / "a.jpg")
    assert dress.image.read(100) == fake_image("a")
    assert blue.name == "8"
    assert blue.description is None
    assert blue.tags == {"colour": "Blue", "fit": "Slim", "colour_group": "Blue"}
    assert blue.image == FileImage(absolute)
    assert shoe.image == RemoteImage("https://cdn.example.com/9.jpg")
    assert isinstance(no_image.image, MissingImage)
    assert isinstance(ftp.image, MissingImage)
    assert "ftp" in ftp.image.reason
    assert no_id.problem is not None
    assert "row 7" in no_id.problem
    for item in items[:5]:
        assert item.problem is None


def test_jsonl_manifest(tmp_path: Path) -> None:
    lines = [
        json.dumps({"id": 42, "image": "x.jpg", "name": "Bag", "size": 3, "meta": {"a": 1}}),
        "",
        "{not json",
        json.dumps({"id": "0043", "image": "http://example.com/43.webp", "description": "d"}),
        json.dumps(["not", "an", "object"]),
    ]
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines) + "\n", "utf-8")
    with open_source(tmp_path) as source:  # a folder with manifest.jsonl is that manifest
        assert source.layout == "manifest"
        assert source.count() == 4
        items = list(source)
    bag, broken, remote, array = items
    assert bag.id == "42"
    assert bag.name == "Bag"
    assert bag.tags == {"size": "3"}
    assert bag.image == FileImage(tmp_path / "x.jpg")
    assert broken.problem is not None
    assert "line 3" in broken.problem
    assert remote.id == "0043"
    assert remote.description == "d"
    assert remote.image == RemoteImage("http://example.com/43.webp")
    assert array.problem is not None
    assert "line 5" in array.problem


def test_plain_image_folder(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "red-dress.jpg": fake_image("red dress"),
            "shoes/sneaker.PNG": b"\x89PNG\r\n\x1a\nxx",
            "shoes/notes.txt": b"not an image",
            ".hidden/skip.jpg": fake_image("hidden"),
        },
    )
    with open_source(tmp_path) as source:
        assert source.layout == "image-folder"
        assert source.count() == 2
        items = list(source)
    assert [(i.id, i.name, dict(i.tags)) for i in items] == [
        ("red-dress", "red-dress", {}),
        ("sneaker", "sneaker", {"folder": "shoes"}),
    ]


def test_iterating_reads_no_image(tmp_path: Path) -> None:
    """Items carry handles, not bytes: a manifest of missing files still iterates."""
    (tmp_path / "products.csv").write_text(
        "id,image\n" + "".join(f"{i},gone/{i}.jpg\n" for i in range(100)), "utf-8"
    )
    items = items_of(tmp_path)
    assert len(items) == 100
    assert all(isinstance(i.image, FileImage) for i in items)


def test_file_image_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    path.write_bytes(b"\xff\xd8\xff" + b"0" * 100)
    with pytest.raises(PayloadTooLarge):
        FileImage(path).read(50)
    assert len(FileImage(path).read(103)) == 103


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFound, match="no such file"):
        open_source(tmp_path / "nope")


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("notes.txt", b"hello"),
        ("data.csv", b"sku,picture\n1,a.jpg\n"),
        ("data.zip", b"not a zip at all"),
    ],
)
def test_unknown_layouts(tmp_path: Path, name: str, content: bytes) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UnknownLayout):
        open_source(tmp_path / name)
    with pytest.raises(UnknownLayout, match="holds no catalog"):
        open_source(tmp_path)  # the folder has no images either


def test_zip_without_styles(tmp_path: Path) -> None:
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.jpg", fake_image("a"))
    with pytest.raises(UnknownLayout, match=r"styles\.csv"):
        open_source(archive)


# -- canonical facet keys -------------------------------------------------------------------


def test_hm_manifest_columns_map_to_canonical_keys(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff")
    (tmp_path / "products.csv").write_text(
        "id,image,name,product_type,product_group,colour,colour_master,pattern,section\n"
        "1,a.jpg,Bruce skinny,Trousers,Garment Lower body,Dark Blue,Blue,Denim,Menswear\n",
        encoding="utf-8",
    )
    (item,) = items_of(tmp_path)
    assert item.tags["colour"] == "Dark Blue"  # the shade stays the value
    assert item.tags["colour_group"] == "Blue"  # colour_master groups it
    assert item.tags["type"] == "Trousers"
    assert item.tags["category"] == "Garment Lower body"
    assert item.tags["audience"] == "Menswear"
    assert item.tags["pattern"] == "Denim"
    assert item.tags["product_type"] == "Trousers"  # the source's own columns stay


def test_kaggle_and_hm_colours_share_a_colour_group() -> None:
    assert colour_group("Navy Blue") == colour_group("Dark Blue") == "Blue"
    assert colour_group("Off White") == "White"
    assert colour_group("light pink") == "Pink"
    assert colour_group("Maroon") == "Red"
    assert colour_group("Multi") is None
    assert canonical_tags({"gender": "MEN"}, DEFAULT_COLUMN_MAP) == {
        "gender": "MEN",
        "audience": "Men",
    }


def test_a_columns_file_overrides_the_mapping(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff")
    (tmp_path / "products.csv").write_text(
        "id,image,kind,section\n1,a.jpg,Dress,Ladieswear\n", encoding="utf-8"
    )
    (tmp_path / "columns.json").write_text('{"kind": "type", "section": null}', encoding="utf-8")
    (item,) = items_of(tmp_path)
    assert item.tags == {"kind": "Dress", "section": "Ladieswear", "type": "Dress"}


def test_a_bad_columns_file_is_refused_clearly(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff")
    (tmp_path / "products.csv").write_text("id,image\n1,a.jpg\n", encoding="utf-8")
    (tmp_path / "columns.json").write_text('{"kind": "flavour"}', encoding="utf-8")
    with pytest.raises(BadInput, match="must map column names"):
        items_of(tmp_path)
