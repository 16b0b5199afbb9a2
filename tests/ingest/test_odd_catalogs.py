"""Messy real-world catalogs: what an operator's files look like when they were not made for
us (Windows encodings, broken quoting, typed JSON, ids that look like paths). Each bad row is
one reported item or one clear error, never a traceback, a lost run or silently wrong data."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest

from domain.errors import BadInput
from domain.model import MAX_PRODUCT_ID_CHARS
from ingest.pipeline import IngestOptions, IngestPipeline
from ingest.readers import (
    FileImage,
    ImageUnavailable,
    RemoteImage,
    SourceItem,
    UnknownLayout,
    open_source,
)
from ingest.report import IngestSummary, report_document, write_report
from tests.fakes import (
    HashingEncoder,
    InMemoryCatalog,
    InMemoryImageStore,
    InMemoryVectorIndex,
    fake_image,
)


def items_of(path: Path) -> list[SourceItem]:
    with open_source(path) as source:
        items = list(source)
        assert source.count() == len(items)
        return items


async def ingest_source(path: Path) -> tuple[InMemoryCatalog, IngestSummary]:
    catalog = InMemoryCatalog()
    pipeline = IngestPipeline(
        [HashingEncoder()],
        InMemoryVectorIndex(),
        catalog,
        InMemoryImageStore(),
        options=IngestOptions(batch_size=2),
    )
    with open_source(path) as source:
        summary = await pipeline.run(source, source.count())
    return catalog, summary


def failures(summary: IngestSummary) -> list[tuple[str, str]]:
    return [(f.id, f.reason.value) for f in summary.failures]


async def test_an_image_path_with_a_nul_byte_is_one_missing_item(tmp_path: Path) -> None:
    for name in ("a", "c"):
        (tmp_path / f"{name}.jpg").write_bytes(fake_image(name))
    manifest = tmp_path / "products.csv"
    manifest.write_text("id,image\na,a.jpg\nb,b\x00.jpg\nc,c.jpg\n", "utf-8")

    catalog, summary = await ingest_source(manifest)

    assert set(catalog.products) == {"a", "c"}
    assert failures(summary) == [("b", "missing")]
    with pytest.raises(ImageUnavailable):
        FileImage(tmp_path / "b\x00.jpg").read(100)


def test_kaggle_ids_never_name_files_outside_images(tmp_path: Path) -> None:
    catalog = tmp_path / "kaggle"
    (catalog / "images").mkdir(parents=True)
    (catalog / "images" / "1.jpg").write_bytes(fake_image("shirt"))
    (catalog / "secret").mkdir()
    (catalog / "secret" / "hidden.jpg").write_bytes(fake_image("hidden"))
    (tmp_path / "outside.jpg").write_bytes(fake_image("outside"))
    (catalog / "images" / "sub").mkdir()
    (catalog / "images" / "sub" / "2.jpg").write_bytes(fake_image("nested"))
    escaping = ["../secret/hidden", "../../outside", str(tmp_path / "outside"), "sub/2"]
    (catalog / "styles.csv").write_text(
        "id,articleType,productDisplayName\n1,Shirts,Shirt\n"
        + "".join(f"{i},Shirts,Escape {n}\n" for n, i in enumerate(escaping)),
        "utf-8",
    )

    shirt, *others = items_of(catalog)

    assert not isinstance(shirt.image, RemoteImage)
    assert shirt.image.read(100) == fake_image("shirt")
    assert [i.id for i in others] == escaping  # the ids themselves are kept as given
    for item in others:
        assert not isinstance(item.image, RemoteImage)
        with pytest.raises(ImageUnavailable, match="file name"):
            item.image.read(100)


async def test_a_file_name_that_is_not_utf8_is_one_bad_row(tmp_path: Path) -> None:
    """An old Windows zip unpacked on Linux: the name's Latin-1 byte cannot become an id."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "ok.jpg").write_bytes(fake_image("ok"))
    (folder / os.fsdecode(b"caf\xe9.jpg")).write_bytes(fake_image("cafe"))
    (folder / "sub" / "zz.jpg").write_bytes(fake_image("zz"))

    catalog, summary = await ingest_source(folder)

    assert set(catalog.products) == {"ok", "zz"}
    assert failures(summary) == [("", "bad_row")]
    assert "0xe9" in summary.failures[0].message
    assert summary.failures[0].image.endswith("caf\\xe9.jpg")  # printable


def test_a_report_on_a_source_whose_name_is_not_utf8_is_written(tmp_path: Path) -> None:
    """The run is done by then: a name it cannot encode is escaped, not a traceback."""
    source = str(tmp_path / os.fsdecode(b"caf\xe9.csv"))
    document = report_document(IngestSummary(encoders=["fake"]), source, "manifest")

    report = write_report(tmp_path / "report.json", document)

    assert json.loads(report.read_text("utf-8"))["source"] == source


def latin1_manifest(folder: Path, layout: str) -> Path:
    """Rows 0 and 38 hold Windows-1252 bytes (one inside the first 8 KB, one after)."""
    folder.mkdir()
    rows = [f"{i},img/{i}.jpg,Plain {i},{'padding ' * 30}" for i in range(60)]
    rows[0] = "0,img/0.jpg,Caf\xe9 shirt,r\xe9sum\xe9"
    rows[38] = "38,img/38.jpg,Blouse \u2013 silk,na\xefve"
    if layout == "jsonl":
        path = folder / "manifest.jsonl"
        lines = [
            json.dumps(
                dict(zip(["id", "image", "name", "description"], r.split(","), strict=True)),
                ensure_ascii=False,
            )
            for r in rows
        ]
        path.write_bytes("\n".join(lines).encode("cp1252") + b"\n")
    elif layout == "kaggle":
        path = folder / "styles.csv"
        body = "".join(f"{r.split(',')[0]},Tops,{r.split(',')[2]}\n" for r in rows)
        path.write_bytes(("id,articleType,productDisplayName\n" + body).encode("cp1252"))
    else:
        path = folder / "products.csv"
        body = "\r\n".join(rows)
        path.write_bytes(("id,image,name,description\r\n" + body + "\r\n").encode("cp1252"))
    return path


@pytest.mark.parametrize("layout", ["csv", "jsonl", "kaggle"])
def test_rows_that_are_not_utf8_are_bad_rows_not_a_crash(tmp_path: Path, layout: str) -> None:
    path = latin1_manifest(tmp_path / "cat", layout)

    items = items_of(path)

    assert [i.id for i in items] == [str(i) for i in range(60)]
    bad = [i for i in items if i.problem is not None]
    assert len(bad) == 2
    for item in bad:
        assert "UTF-8" in (item.problem or "")
    assert "0xe9" in (bad[0].problem or "")
    good = [i for i in items if i.problem is None]
    assert len(good) == 58
    assert all(i.name.startswith("Plain ") for i in good)


def test_an_unclosed_quote_is_refused_with_its_line(tmp_path: Path) -> None:
    rows = ['1,a.jpg,"12 inch shirt,desc'] + [f"{i},{i}.jpg,Name {i},d" for i in range(2, 8)]
    (tmp_path / "products.csv").write_text("id,image,name,description\n" + "\n".join(rows))

    with pytest.raises(BadInput, match=r"line 2.*never closed"), open_source(tmp_path) as source:
        source.count()
    with pytest.raises(BadInput, match=r"line 2.*never closed"):
        items_of(tmp_path)


def test_a_multi_line_description_is_read_as_one_field(tmp_path: Path) -> None:
    (tmp_path / "products.csv").write_text(
        'id,image,description\r\n1,a.jpg,"two\r\nlines, ""quoted"""\r\n2,b.jpg,"last\nrow"',
        "utf-8",
    )
    one, two = items_of(tmp_path)
    assert one.description == 'two\r\nlines, "quoted"'
    assert two.description == "last\nrow"


def test_a_field_over_the_csv_limit_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "products.csv").write_text(
        f"id,image,description\n1,a.jpg,{'x' * 200_000}\n2,b.jpg,ok\n", "utf-8"
    )
    with pytest.raises(BadInput, match=r"products\.csv line 2"):
        items_of(tmp_path)


def test_jsonl_values_of_the_wrong_type(tmp_path: Path) -> None:
    records: list[object] = [
        {"id": 15970.0, "image": "a.jpg", "name": 42, "description": 0, "sale": True},
        {"id": [1, 2], "image": "a.jpg"},
        {"id": {"sku": 1}, "image": "a.jpg"},
        {"id": True, "image": "a.jpg"},
        {"id": "n", "image": "a.jpg", "name": ["Red", "dress"]},
        {"id": "d", "image": "a.jpg", "description": {"en": "Dress"}},
        {"id": "i", "image": ["a.jpg"]},
        {"id": "s", "image": "a.jpg", "name": "half an emoji \ud83d"},  # valid JSON
        {"id": 7, "image": "a.jpg", "price": 9.5, "none": None},
    ]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records), "utf-8")

    first, *wrong, last = items_of(manifest)

    assert (first.id, first.name, first.description) == ("15970", "42", "0")
    assert first.tags == {"sale": "true"}
    assert first.problem is None
    assert [(i.id, i.problem is not None) for i in wrong] == [
        ("", True),
        ("", True),
        ("", True),
        ("n", True),
        ("d", True),
        ("i", True),
        ("s", True),
    ]
    assert "list" in (wrong[0].problem or "")
    assert "name" in (wrong[3].problem or "")
    assert "image" in (wrong[5].problem or "")
    assert "surrogate" in (wrong[6].problem or "")  # the text tower cannot encode it
    assert (last.id, last.tags, last.problem) == ("7", {"price": "9.5"}, None)


async def test_a_broken_photo_does_not_shadow_a_good_one_with_the_same_id(
    tmp_path: Path,
) -> None:
    """An image folder's id is the file stem: a text file saved as shirt.jpg beside the real
    shirt.png used to make the real one a 'duplicate' and index neither."""
    (tmp_path / "shirt.jpg").write_text("not a photo")
    (tmp_path / "shirt.png").write_bytes(fake_image("shirt"))
    (tmp_path / "skirt.jpg").write_bytes(fake_image("skirt"))
    (tmp_path / "skirt.png").write_bytes(fake_image("another skirt"))

    catalog, summary = await ingest_source(tmp_path)

    assert set(catalog.products) == {"shirt", "skirt"}
    assert failures(summary) == [("shirt", "invalid_image"), ("skirt", "duplicate_id")]
    assert summary.failures[1].image.endswith("skirt.png")


def test_a_manifest_row_with_an_unquoted_comma_is_a_bad_row(tmp_path: Path) -> None:
    """``Shirt, blue`` unquoted put " blue" in description and the description in colour."""
    (tmp_path / "products.csv").write_text(
        "id,image,name,description,colour\n"
        "1,a.jpg,Shirt, blue,A cotton shirt,Red\n"
        "2,b.jpg,Skirt,Pleated,Black,,\n"  # trailing empty values, as Excel writes: fine
        '3,c.jpg,"Dress, long",Maxi,Green\n',
        "utf-8",
    )

    shifted, skirt, dress = items_of(tmp_path)

    assert shifted.id == "1"
    assert "6 values for 5 columns" in (shifted.problem or "")
    assert (skirt.problem, skirt.description, skirt.tags["colour"]) == (None, "Pleated", "Black")
    assert (dress.problem, dress.name, dress.tags["colour"]) == (None, "Dress, long", "Green")


@pytest.mark.parametrize("separator", [";", "\t", "|"])
def test_a_csv_with_another_separator_is_read(tmp_path: Path, separator: str) -> None:
    """Excel writes ';' where the decimal mark is a comma; such a manifest was refused as
    having no id and image columns (or, in a folder of photos, ignored for the photos)."""
    rows = [["id", "image", "name", "price"], ["0042", "a.jpg", "Robe, longue", "12,50"]]
    (tmp_path / "a.jpg").write_bytes(fake_image("robe"))
    (tmp_path / "products.csv").write_text(
        "".join(separator.join(row) + "\r\n" for row in rows), "utf-8"
    )

    (robe,) = items_of(tmp_path)

    assert (robe.id, robe.name, robe.tags) == ("0042", "Robe, longue", {"price": "12,50"})
    assert robe.image == FileImage(tmp_path / "a.jpg")


def with_member_header(archive: Path, member: str, *, flags: int = 0, method: int = 0) -> None:
    """Set a member's general-purpose flags and compression method in both of its headers
    (what an encrypted or Windows Deflate64 entry looks like to the reader)."""
    data = bytearray(archive.read_bytes())
    name = member.encode()
    for signature, to_flags, to_name in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
        at = data.find(signature)
        while at >= 0:
            if data[at + to_name : at + to_name + len(name)] == name:
                old_flags = int.from_bytes(data[at + to_flags : at + to_flags + 2], "little")
                data[at + to_flags : at + to_flags + 2] = (old_flags | flags).to_bytes(2, "little")
                if method:
                    data[at + to_flags + 2 : at + to_flags + 4] = method.to_bytes(2, "little")
            at = data.find(signature, at + 4)
    archive.write_bytes(bytes(data))


async def test_an_encrypted_or_deflate64_zip_member_is_one_missing_item(tmp_path: Path) -> None:
    archive = tmp_path / "kaggle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("styles.csv", "id,productDisplayName\n1,Shirt\n2,Locked\n3,Deflate64\n")
        for product_id in ("1", "2", "3"):
            zf.writestr(f"images/{product_id}.jpg", fake_image(product_id))
    with_member_header(archive, "images/2.jpg", flags=0x1)  # encrypted
    with_member_header(archive, "images/3.jpg", method=9)  # Deflate64: not in zipfile

    catalog, summary = await ingest_source(archive)

    assert set(catalog.products) == {"1"}
    assert failures(summary) == [("2", "missing"), ("3", "missing")]
    assert "encrypted" in summary.failures[0].message


def test_an_encrypted_styles_csv_is_a_clear_error(tmp_path: Path) -> None:
    archive = tmp_path / "kaggle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("styles.csv", "id,productDisplayName\n1,Shirt\n")
    with_member_header(archive, "styles.csv", flags=0x1)

    with pytest.raises(BadInput, match="encrypted"):
        items_of(archive)


def test_a_column_named_twice_is_refused_and_an_unnamed_one_left_out(tmp_path: Path) -> None:
    """Two 'colour' columns (a join of two exports): the second silently replaced the first."""
    (tmp_path / "products.csv").write_text(
        "id,image,colour,size,colour\n1,a.jpg,Red,M,Blue\n", "utf-8"
    )
    with pytest.raises(BadInput, match=r"line 1: the column 'colour' appears more than once"):
        items_of(tmp_path)

    (tmp_path / "products.csv").write_text("id,image,,colour\n1,a.jpg,x,Red\n", "utf-8")
    (item,) = items_of(tmp_path)
    assert item.tags == {"colour": "Red", "colour_group": "Red"}  # no tag named ""


def test_json_lines_the_json_module_refuses_are_bad_rows(tmp_path: Path) -> None:
    """Not JSONDecodeError: an integer of 5,000 digits (ValueError) and an array nested
    100,000 deep (RecursionError) stopped the run."""
    (tmp_path / "manifest.jsonl").write_text(
        '{"id": "1", "image": "a.jpg"}\n'
        f'{{"id": {"9" * 5000}, "image": "a.jpg"}}\n'
        f'{{"id": "3", "image": "a.jpg", "sizes": {"[" * 100_000}}}\n'
        '{"id": "4", "image": "a.jpg"}\n',
        "utf-8",
    )

    first, digits, deep, last = items_of(tmp_path)

    assert (first.id, first.problem, last.id, last.problem) == ("1", None, "4", None)
    assert "line 2: invalid JSON" in (digits.problem or "")
    assert "line 3: invalid JSON" in (deep.problem or "")


def test_a_products_csv_that_is_not_a_manifest_is_not_skipped_for_the_photos(
    tmp_path: Path,
) -> None:
    """'photo' for 'image': the folder was ingested as a folder of photos, ids and names
    taken from the file names and every row of products.csv ignored."""
    (tmp_path / "products.csv").write_text("id,name,photo\n1,Red dress,a.jpg\n", "utf-8")
    (tmp_path / "a.jpg").write_bytes(fake_image("dress"))

    with pytest.raises(UnknownLayout, match=r"products\.csv is not a manifest.*'image'"):
        open_source(tmp_path)


def test_excel_unicode_text_and_a_notepad_columns_file_are_read(tmp_path: Path) -> None:
    """Excel's "Unicode Text" is tab-separated UTF-16 (.txt); Notepad saves JSON with a BOM."""
    manifest = tmp_path / "export.txt"
    manifest.write_bytes(
        "id\timage\tname\tkleur\r\n0042\ta.jpg\tRobe d'été\tRouge\r\n".encode("utf-16")
    )
    (tmp_path / "columns.json").write_bytes(b'\xef\xbb\xbf{"kleur": "colour"}')

    (robe,) = items_of(manifest)

    assert (robe.id, robe.name, robe.problem) == ("0042", "Robe d'été", None)
    assert robe.tags == {"kleur": "Rouge", "colour": "Rouge"}
    assert robe.image == FileImage(tmp_path / "a.jpg")


async def test_products_the_api_could_not_address_are_bad_rows(tmp_path: Path) -> None:
    """The API refuses ids over MAX_PRODUCT_ID_CHARS (product, deleteProduct, similar
    products) and filters on tag keys or values it deems invalid: ingest stored such products,
    which no client could then fetch, delete or filter on."""
    long_id = "x" * (MAX_PRODUCT_ID_CHARS + 1)
    rows = [
        ["ok", "Shirt", "colour", "Red"],
        [long_id, "Long id", "colour", "Red"],
        ["nul", "Nul\x00name", "colour", "Red"],
        ["ctl", "Control key", "col\x01our", "Red"],
        ["key", "Long key", "k" * 200, "Red"],
        ["value", "Long value", "colour", "r" * 2000],
    ]
    for row in rows:
        (tmp_path / f"{len(row[0])}-{row[0][:8]}.jpg").write_bytes(fake_image(row[1]))
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"id": i, "image": f"{len(i)}-{i[:8]}.jpg", "name": n, k: v}) + "\n"
            for i, n, k, v in rows
        ),
        "utf-8",
    )

    catalog, summary = await ingest_source(manifest)

    assert set(catalog.products) == {"ok"}
    assert failures(summary) == [(row[0], "bad_row") for row in rows[1:]]
    messages = [f.message for f in summary.failures]
    assert "limit is 256" in messages[0]
    assert "NUL" in messages[1]
    assert "control character" in messages[2]
    assert "limit is 128" in messages[3]
    assert "limit is 1,000" in messages[4]
