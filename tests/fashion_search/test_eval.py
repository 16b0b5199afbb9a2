"""`fashion-search eval` through the CLI: a hand-made catalog whose metrics are computed by hand
(toy encoders of tests/fashion_search/eval_toy_plugin.py, loaded through the entry-point
group), the Kaggle layout, clear errors, and a short run of the real encoders on the
held-out split of hm-dev."""

from __future__ import annotations

import csv
import importlib
import json
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from domain.errors import BadInput
from encoders.fashion_lite.data import KAGGLE_HELDOUT_IDS_FILE, read_ids
from fashion_search.cli import app
from fashion_search.commands.eval_commands import heldout_file
from fashion_search.evaluation import (
    EvalOptions,
    index_agreement,
    photo_style_chain,
    photo_style_copy,
)
from stores.catalog.sqlite_catalog import SqliteCatalog
from tests.fakes import InMemoryVectorIndex
from tests.fashion_search.eval_toy_plugin import ITEMS, photo
from tests.plugin_dist import write_plugin_distribution

TOY = "toy"
TOY_IMAGE = "toy-image"
IMAGE_TYPE = "image-image type P@10"
PHOTO_TYPE = "photo-style image-image type P@10"


@pytest.fixture(scope="module")
def toy_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A distribution on sys.path whose entry point is the toy plugin."""
    folder = write_plugin_distribution(
        tmp_path_factory.mktemp("toy-plugin"),
        "fs-eval-toy-plugin",
        {"toy": "tests.fashion_search.eval_toy_plugin"},
    )
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path.remove(str(folder))
        importlib.invalidate_caches()


@pytest.fixture(scope="module")
def toy_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hand-made catalog as an hm-dev style folder: products.csv + images/."""
    folder = tmp_path_factory.mktemp("toy-catalog")
    (folder / "images").mkdir()
    with (folder / "products.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["id", "image", "name", "description", "product_type", "colour", "pattern", "section"]
        )
        for item in ITEMS:
            (folder / "images" / f"{item.id}.png").write_bytes(photo(item))
            writer.writerow(
                [
                    item.id,
                    f"images/{item.id}.png",
                    f"Toy {item.product_type} {item.id}",
                    item.description,
                    item.product_type,
                    item.colour,
                    item.pattern,
                    item.section,
                ]
            )
    return folder


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {
        "FASHION_SEARCH_HOME": str(tmp_path_factory.mktemp("home")),
        "FASHION_SEARCH_TORCH_THREADS": "1",
        "COLUMNS": "200",
    }


def invoke(args: list[str], env: dict[str, str]) -> Result:
    return CliRunner().invoke(app, ["eval", *args], env=env)


@pytest.fixture(scope="module")
def toy_run(
    toy_plugin: None,
    toy_manifest: Path,
    env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict[str, Any], Path, Path]:
    """One run on the hand-made catalog: (the JSON printed, the --output file, the kept home)."""
    scratch = tmp_path_factory.mktemp("toy-run")
    output, home = scratch / "report.json", scratch / "home"
    result = invoke(
        [
            str(toy_manifest),
            "-e",
            TOY,
            "-e",
            TOY_IMAGE,
            "--min-products",
            "3",
            "--json",
            "--output",
            str(output),
            "--keep-home",
            str(home),
            "--photo-examples",
            str(scratch / "photos"),
        ],
        env,
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), output, home


# Worked by hand from the toy plugin's tables (gallery positions 0-11; a10 has no description
# and an Unknown type; a11's photo is a3's). Text rankings, ties broken by position:
#   query         ranking (first places)        relevant (same text) / exact id
#   a0  jersey    1 0 9 ...                     {0,1}: rank 1    / a0: rank 2
#   a1  jersey    1 0 9 ...                     {0,1}: rank 1    / a1: rank 1
#   a2  striped   7 2 ...                       {2}: rank 2      / rank 2
#   a3  slim      4 3 11 ...                    {3,11}: rank 2   / a3: rank 2
#   a4  wide      4 ...                         rank 1           / rank 1
#   a5  denim     8 5 ...                       rank 2           / rank 2
#   a6  oxford    6 ...                         rank 1           / rank 1
#   a7  striped   2 7 ...                       rank 2           / rank 2
#   a8  linen     0 1 2 3 11 4 5 6 7 9 10 8     rank 12          / rank 12
#   a9  maxi      0 9 ...                       rank 2           / rank 2
#   a11 slim      4 3 11 ...                    {3,11}: rank 2   / a11: rank 3
# desc: R@1 = 4/11, R@5 = R@10 = 10/11 (a8 only misses), MRR = (4 + 6/2 + 1/12) / 11 = 85/132
# exact id: R@1 = 3/11, R@5 = R@10 = 10/11, MRR = (3 + 6/2 + 1/12 + 1/3) / 11 = 7/12
TEXT_METRICS = {
    "desc R@1": 4 / 11,
    "desc R@5": 10 / 11,
    "desc R@10": 10 / 11,
    "desc MRR": 85 / 132,
    "desc exact-id R@1": 3 / 11,
    "desc exact-id R@5": 10 / 11,
    "desc exact-id R@10": 10 / 11,
    "desc exact-id MRR": 7 / 12,
}
# Pairs held by >= 3 products: black dress {0,2,9}, black trousers {3,4,11}; solid dress {0,1,9},
# solid trousers {3,4,11}; ladieswear dress {0,1,2,9}, menswear trousers {3,4,5,11}. Top 10:
#   black dress      1 5 6 7 8 10 4 0 2 3   -> 0, 2      = 0.2
#   black trousers   3 11 0 1 2 4 5 6 7 8   -> 3, 11, 4  = 0.3
#   solid dress      9 0 1 ...              -> 3 hits    = 0.3
#   solid trousers   5 6 7 8 10 2 0 1 9 3   -> 3         = 0.1
#   ladieswear dress 0 1 2 9 ...            -> 4 hits    = 0.4
#   menswear trousers 6 0 1 2 3 4 5 7 8 9   -> 3, 4, 5   = 0.3
ATTRIBUTE_METRICS = {
    "colour-type P@10": (0.2 + 0.3) / 2,
    "pattern-type P@10": (0.3 + 0.1) / 2,
    "section-type P@10": (0.4 + 0.3) / 2,
}
ATTRIBUTE_QUERIES = {
    "colour-type P@10": ["black dress", "black trousers"],
    "pattern-type P@10": ["solid dress", "solid trousers"],
    "section-type P@10": ["ladieswear dress", "menswear trousers"],
}
# Image to image, 11 queries (a10's type is Unknown), the query itself excluded:
# toy: other photos of the same type score 0.5, so each query's same-type items lead its top 10:
#   4 dresses x 3/10 + 4 trousers x 3/10 + 3 shirts x 2/10 = 3.0 -> 3/11
# toy-image: other photos score 0 (a3 and a11 score 1 with each other), so the top 10 is the
#   gallery in order without the last item (a11) unless a3/a11 lead it: dresses 4 x 0.3,
#   a3 0.3, a11 0.3, a4 0.2, a5 0.2, shirts 3 x 0.2 = 2.8 -> 2.8/11
# Augmented copies look like their original; a11's copy ties a3 and a11, a3 comes first: 11/12.
IMAGE_METRICS = {
    TOY: {"image-image type P@10": 3 / 11, "augmented R@1": 11 / 12},
    TOY_IMAGE: {"image-image type P@10": 2.8 / 11, "augmented R@1": 11 / 12},
}


def test_text_to_image_metrics_by_hand(toy_run: tuple[dict[str, Any], Path, Path]) -> None:
    report, _, _ = toy_run
    for name, expected in TEXT_METRICS.items():
        assert report["metrics"][TOY][name] == pytest.approx(expected), name
    assert report["dataset"]["query_text"] == "description"
    assert report["queries"]["desc R@1"] == 11  # a10 has no description: no query


def test_attribute_precision_by_hand(toy_run: tuple[dict[str, Any], Path, Path]) -> None:
    report, _, _ = toy_run
    assert report["attribute_queries"] == ATTRIBUTE_QUERIES
    for name, expected in ATTRIBUTE_METRICS.items():
        assert report["metrics"][TOY][name] == pytest.approx(expected), name
        assert report["queries"][name] == 2
    assert report["skipped"] == []


def test_image_to_image_metrics_by_hand(toy_run: tuple[dict[str, Any], Path, Path]) -> None:
    report, _, _ = toy_run
    for encoder, metrics in IMAGE_METRICS.items():
        for name, expected in metrics.items():
            assert report["metrics"][encoder][name] == pytest.approx(expected), (encoder, name)
    assert report["queries"]["image-image type P@10"] == 11
    assert report["queries"]["augmented R@1"] == 12


def test_photo_style_metric_beside_the_clean_one(
    toy_run: tuple[dict[str, Any], Path, Path],
) -> None:
    """The photo-style queries are the 11 products of a known type, each excluded from its own
    ranking: the same queries and chance as the clean image-to-image metric, listed after it."""
    report, _, _ = toy_run
    names = list(report["metrics"][TOY])
    clean = names.index(IMAGE_TYPE)
    assert names[clean + 1] == PHOTO_TYPE
    assert report["queries"][PHOTO_TYPE] == report["queries"][IMAGE_TYPE] == 11
    assert report["chance"][PHOTO_TYPE] == report["chance"][IMAGE_TYPE]
    for encoder in (TOY, TOY_IMAGE):
        assert 0.0 <= report["metrics"][encoder][PHOTO_TYPE] <= 1.0
        assert report["encoders"][encoder]["photo_queries"]["inputs"] == 11
    assert report["options"]["photo_style"] is True


def test_photo_examples_are_the_queries(toy_run: tuple[dict[str, Any], Path, Path]) -> None:
    """--photo-examples writes each product's stored photo beside the photo-style query the
    metric encoded for it, and the changes drawn."""
    _, output, _ = toy_run
    folder = output.parent / "photos"
    chains = json.loads((folder / "chains.json").read_text("utf-8"))
    known = [item.id for item in ITEMS if item.product_type != "Unknown"]
    assert list(chains) == known
    for pid in known:
        original = (folder / f"{pid}.png").read_bytes()  # the toy photos are PNG
        query = (folder / f"{pid}-photo.jpg").read_bytes()
        assert query == photo_style_copy(original, pid)
        assert query != original
        assert chains[pid]["jpeg_quality"] == photo_style_chain(pid).jpeg_quality


def test_without_photo_style(toy_plugin: None, toy_manifest: Path, env: dict[str, str]) -> None:
    result = invoke([str(toy_manifest), "-e", TOY_IMAGE, "--no-photo-style", "--json"], env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert PHOTO_TYPE not in report["metrics"][TOY_IMAGE]
    assert IMAGE_TYPE in report["metrics"][TOY_IMAGE]
    assert report["encoders"][TOY_IMAGE]["photo_queries"]["inputs"] == 0


def test_image_only_encoder_has_no_text_metrics(toy_run: tuple[dict[str, Any], Path, Path]) -> None:
    report, _, _ = toy_run
    text_metrics = [*TEXT_METRICS, *ATTRIBUTE_METRICS]
    assert all(report["metrics"][TOY_IMAGE][name] is None for name in text_metrics)
    assert report["encoders"][TOY_IMAGE]["modalities"] == ["image"]
    assert report["encoders"][TOY_IMAGE]["text_queries"]["inputs"] == 0
    # toy: 11 descriptions + 6 attribute phrases
    assert report["encoders"][TOY]["text_queries"]["inputs"] == 17


def test_chance_levels(toy_run: tuple[dict[str, Any], Path, Path]) -> None:
    chance = toy_run[0]["chance"]
    assert chance["desc exact-id R@1"] == pytest.approx(1 / 12)
    # 4 queries with 2 identical descriptions in the gallery, 7 with 1
    assert chance["desc R@1"] == pytest.approx((4 * 2 / 12 + 7 * 1 / 12) / 11)
    # each attribute query: 3 (colour, pattern) or 4 (section) relevant among 12
    assert chance["colour-type P@10"] == pytest.approx(3 / 12)
    assert chance["section-type P@10"] == pytest.approx(4 / 12)
    # r same-type others among the 11 others: r/11; dresses and trousers r=3, shirts r=2
    assert chance["image-image type P@10"] == pytest.approx((8 * 3 + 3 * 2) / 11 / 11)
    assert chance["augmented R@1"] == pytest.approx(1 / 12)
    assert list(chance) == list(toy_run[0]["metrics"][TOY])


def test_dataset_and_index_check(toy_run: tuple[dict[str, Any], Path, Path]) -> None:
    report, output, _ = toy_run
    dataset = report["dataset"]
    assert dataset["ids"] == [item.id for item in ITEMS]
    assert (dataset["items"], dataset["gallery"], dataset["failed"]) == (12, 12, 0)
    assert dataset["selection"] == "all"
    assert dataset["labels"] == {
        "product_type": "product_type",
        "colour": "colour",
        "pattern": "pattern",
        "section": "section",
    }
    # the index's own top 10 agrees with the evaluated ranking for every sampled query
    assert report["encoders"][TOY]["index_check"] == {"queries": 23, "agreeing": 23}
    assert report["encoders"][TOY_IMAGE]["index_check"] == {"queries": 12, "agreeing": 12}
    assert json.loads(output.read_text("utf-8")) == report


async def test_the_gallery_catalog_holds_no_text(
    toy_run: tuple[dict[str, Any], Path, Path],
) -> None:
    _, _, home = toy_run
    catalog = SqliteCatalog(home / "catalog.sqlite3")
    try:
        products = await catalog.get_many([item.id for item in ITEMS])
    finally:
        await catalog.close()
    assert len(products) == len(ITEMS)
    for item in ITEMS:
        product = products[item.id]
        assert product.name == item.id  # not "Toy Dress a0"
        assert product.description is None
        assert dict(product.tags) == {
            "product_type": item.product_type,
            "colour": item.colour,
            "pattern": item.pattern,
            "section": item.section,
        }


def test_table_output(toy_plugin: None, toy_manifest: Path, env: dict[str, str]) -> None:
    result = invoke([str(toy_manifest), "-e", TOY, "-e", TOY_IMAGE, "--min-products", "3"], env)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    mrr = next(line for line in lines if "desc MRR" in line)
    # chance MRR, 12 items: one relevant H(12)/12 = 0.2586; two relevant
    # sum_k 2(12-k)/(12*11)/k = 0.3824; (4 * 0.3824 + 7 * 0.2586) / 11 = 0.304
    assert [c.strip() for c in mrr.split("│")[1:-1]] == ["desc MRR", "11", "0.644", "n/a", "0.304"]
    image = next(line for line in lines if "image-image type P@10" in line)
    assert "0.273" in image
    assert "0.255" in image
    assert "index check" in result.output


def test_selection_by_ids_file(
    toy_plugin: None, toy_manifest: Path, env: dict[str, str], tmp_path: Path
) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("# a comment\na9\na0\na3\nnot-in-the-manifest\n", encoding="utf-8")
    result = invoke([str(toy_manifest), "-e", TOY, "--ids", str(ids), "--json"], env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dataset"]["ids"] == ["a0", "a3", "a9"]  # manifest order
    assert report["dataset"]["selection"] == f"ids from {ids}"
    # 3 products: no "<attribute> <type>" pair reaches the default 10 products
    skipped = {s["metric"]: s["reason"] for s in report["skipped"]}
    assert set(skipped) == set(ATTRIBUTE_METRICS)
    assert "10 or more products" in skipped["colour-type P@10"]
    limited = invoke([str(toy_manifest), "-e", TOY, "--limit", "5", "--json"], env)
    assert json.loads(limited.stdout)["dataset"]["ids"] == ["a0", "a1", "a2", "a3", "a4"]
    # one product: no image-to-image query has a relevant product; the metric is left out
    single = json.loads(invoke([str(toy_manifest), "-e", TOY, "-n", "1", "--json"], env).stdout)
    assert "image-image type P@10" not in single["metrics"][TOY]
    assert single["metrics"][TOY]["augmented R@1"] == 1.0
    assert {
        "metric": "image-image type P@10",
        "reason": "no query has a relevant product in the gallery",
    } in single["skipped"]


def test_kaggle_layout(toy_plugin: None, env: dict[str, str], tmp_path: Path) -> None:
    """articleType is the type, baseColour the colour, gender the section, productDisplayName
    the query text; there is no pattern."""
    archive = tmp_path / "fashion.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        rows = ["id,gender,masterCategory,subCategory,articleType,baseColour,productDisplayName"]
        for number, item in enumerate(ITEMS):
            gender = "Women" if item.section == "Ladieswear" else "Men"
            rows.append(
                f"{number},{gender},Apparel,Topwear,{item.product_type},{item.colour},"
                f"Brand {item.description or 'gift'}, size {number}"  # an unquoted comma
            )
            handle.writestr(f"myntradataset/images/{number}.jpg", photo(item))
        handle.writestr("myntradataset/styles.csv", "\n".join(rows) + "\n")
    result = invoke([str(archive), "-e", TOY, "--min-products", "3", "--json"], env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dataset"]["layout"] == "kaggle"
    assert report["dataset"]["labels"] == {
        "product_type": "articleType",
        "colour": "baseColour",
        "section": "gender",
    }
    assert report["dataset"]["query_text"] == "name"
    assert report["queries"]["name R@1"] == 12
    assert report["skipped"] == [
        {"metric": "pattern-type P@10", "reason": "the manifest has no pattern labels"}
    ]
    assert report["attribute_queries"]["section-type P@10"] == ["men trousers", "women dress"]
    # the photos are the hand-made ones: same image-to-image answers
    assert report["metrics"][TOY]["image-image type P@10"] == pytest.approx(3 / 11)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing manifest", "no such file or folder"),
        ("no labels", "has no product type labels"),
        ("unknown encoder", "no-such-encoder"),
        ("ids not in manifest", "none of the 2 selected ids"),
        ("ids and heldout", "not both"),
        ("heldout of another manifest", "none of the 1,518 selected ids (held-out split"),
        ("used home", "must be a new or empty directory"),
        ("no default manifest", "does not exist"),
        ("image folder", "has no product type labels"),
    ],
)
def test_clear_errors(
    case: str,
    message: str,
    toy_plugin: None,
    toy_manifest: Path,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text(
        f"id,image,name\na0,{toy_manifest / 'images' / 'a0.png'},A dress\n", encoding="utf-8"
    )
    ids = tmp_path / "ids.txt"
    ids.write_text("x1\nx2\n", encoding="utf-8")
    used = tmp_path / "used"
    used.mkdir()
    (used / "catalog.sqlite3").write_bytes(b"")
    manifest = str(toy_manifest)
    args = {
        "missing manifest": [str(tmp_path / "nowhere.csv")],
        "no labels": [str(unlabelled), "-e", TOY],
        "unknown encoder": [manifest, "-e", "no-such-encoder"],
        "ids not in manifest": [manifest, "-e", TOY, "--ids", str(ids)],
        "ids and heldout": [manifest, "--ids", str(ids), "--heldout"],
        "heldout of another manifest": [manifest, "-e", TOY, "--heldout"],
        "used home": [manifest, "-e", TOY, "--keep-home", str(used)],
        "no default manifest": ["-e", TOY],
        "image folder": [str(toy_manifest / "images"), "-e", TOY],
    }[case]
    case_env = {**env, "FASHION_SEARCH_DATASETS_DIR": str(tmp_path / "no-datasets")}
    result = invoke(args, case_env)
    assert result.exit_code != 0, result.output
    assert message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_options_are_checked() -> None:
    with pytest.raises(BadInput, match="text field"):
        EvalOptions(manifest=Path("x"), encoder_ids=("toy",), text_field="title")
    with pytest.raises(BadInput, match="encoder"):
        EvalOptions(manifest=Path("x"), encoder_ids=())


async def test_index_agreement_notices_a_different_ranking() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(30, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"p{i}" for i in range(30)]
    index = InMemoryVectorIndex()
    await index.upsert("enc", ids, vectors, [{}] * 30)
    await index.upsert("enc", ["outsider"], vectors[:1] * 1.0, [{}])  # not in the gallery
    queries = vectors[:5]
    assert await index_agreement(index, "enc", queries, vectors, ids) == 5
    shuffled = vectors[rng.permutation(30)]
    assert await index_agreement(index, "enc", queries, shuffled, ids) < 5


@pytest.mark.slow
def test_real_encoders_on_the_heldout_split(env: dict[str, str]) -> None:
    """The default manifest (hm-dev, held-out split) with fashion-lite and an image-only
    encoder, on a small sample."""
    result = invoke(
        [
            "-e",
            "fashion-lite",
            "-e",
            "effnet-lite0",
            "--limit",
            "24",
            "--min-products",
            "3",
            "--json",
        ],
        env,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    dataset = report["dataset"]
    assert dataset["gallery"] == 24
    assert set(dataset["ids"]) <= read_ids()
    assert dataset["selection"].startswith("held-out split")
    lite, effnet, chance = (
        report["metrics"]["fashion-lite"],
        report["metrics"]["effnet-lite0"],
        report["chance"],
    )
    assert effnet["desc R@10"] is None
    assert lite["desc R@10"] > chance["desc R@10"]
    assert lite["augmented R@1"] >= 0.9
    assert effnet["augmented R@1"] >= 0.9
    assert effnet["image-image type P@10"] > chance["image-image type P@10"]
    for run in report["encoders"].values():
        assert run["index_check"]["agreeing"] == run["index_check"]["queries"] > 0
        assert run["gallery_images"]["ms_per_input"] > 0


def test_shop_mode_reports_each_mode_side_by_side(
    toy_plugin: None, toy_manifest: Path, env: dict[str, str], tmp_path: Path
) -> None:
    """Names and descriptions are indexed, labels are not: a name typed as it is finds its
    product first when words rank (TEXT, HYBRID); every metric has the three modes."""
    output = tmp_path / "shop.json"
    result = invoke(
        [str(toy_manifest), "-e", TOY, "--mode", "shop", "--min-products", "2", "-o", str(output)],
        env,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(output.read_text(encoding="utf-8"))
    assert report["mode"] == "shop"
    assert report["gallery"] == len(ITEMS)
    metrics = report["metrics"]
    for metric in ("exact_name_r@1", "random_none", "colour_type_p@10"):
        assert set(metrics[metric]) == {"visual", "text", "hybrid"}, metric
    assert metrics["exact_name_r@1"]["text"] == 1.0
    assert metrics["exact_name_r@1"]["hybrid"] == 1.0
    assert report["queries"]["random_none"] == 50
    assert "HYBRID" in result.output


def test_the_kaggle_zip_has_its_own_committed_heldout_split() -> None:
    ids = read_ids(KAGGLE_HELDOUT_IDS_FILE)
    assert len(ids) == 3722  # 25% of the zip's 14,888 ids
    assert heldout_file(Path("kaggle-fashion-small.zip")) == KAGGLE_HELDOUT_IDS_FILE
    assert heldout_file(None) != KAGGLE_HELDOUT_IDS_FILE
