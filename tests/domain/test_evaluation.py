from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from domain import evaluation as ev


def unit(*rows: list[float]) -> np.ndarray:
    array = np.array(rows, dtype=np.float32)
    out: np.ndarray = array / np.linalg.norm(array, axis=1, keepdims=True)
    return out


# Gallery of 4 items on distinct axes; queries are mixtures with a known ranking.
GALLERY = unit([1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1])


def test_recall_precision_and_mrr_by_hand() -> None:
    # query 0 ranks gallery 0 > 1 > 2 > 3; query 1 ranks 3 > 2 > 1 > 0
    queries = unit([0.8, 0.5, 0.3, 0.1], [0.1, 0.3, 0.5, 0.8])
    gallery_labels = ["a", "b", "a", "c"]
    # query 0 looks for "b": first hit at rank 2; query 1 looks for "a": hit at rank 2 (item 2)
    result = ev.retrieval_metrics(queries, GALLERY, ["b", "a"], gallery_labels, ks=(1, 2, 3))
    assert result.recall == {1: 0.0, 2: 1.0, 3: 1.0}
    assert result.mrr == pytest.approx(0.5)
    # precision@3: query 0 has one "b" in its top 3; query 1 has item 2 ("a") in top 3 -> 1/3
    # ... and item 1 ("b") -> still one "a": top 3 of query 1 is 3, 2, 1
    assert result.precision[3] == pytest.approx(1 / 3)
    assert result.precision[1] == 0.0
    assert result.n_queries == 2


def test_identical_texts_count_as_hits_but_exact_ids_do_not() -> None:
    # two colour variants share one description; the query is variant 1's description but
    # the encoder ranks variant 0 first
    queries = unit([1.0, 0.9, 0.0, 0.0])
    descriptions = ["soft jumper", "soft jumper", "dress", "shoe"]
    by_text = ev.retrieval_metrics(queries, GALLERY, ["soft jumper"], descriptions, ks=(1,))
    by_id = ev.retrieval_metrics(queries, GALLERY, ["id1"], ["id0", "id1", "id2", "id3"], ks=(1,))
    assert by_text.recall[1] == 1.0
    assert by_id.recall[1] == 0.0
    assert by_id.mrr == pytest.approx(0.5)


def test_queries_without_relevant_items_are_skipped() -> None:
    queries = unit([1, 0, 0, 0], [0, 1, 0, 0])
    result = ev.retrieval_metrics(queries, GALLERY, ["a", "zzz"], ["a", "b", "c", "d"], ks=(1,))
    assert result.n_queries == 1
    assert result.n_skipped == 1
    assert result.recall[1] == 1.0


def test_excluding_the_query_item() -> None:
    labels = ["dress", "dress", "shoe", "shoe"]
    vectors = unit([1, 0.2, 0, 0], [0.2, 1, 0, 0], [0, 0, 1, 0.1], [0, 0.3, 0.1, 1])
    result = ev.same_label_precision(vectors, labels, k=1)
    # without exclusion every item would find itself; with it: 0->1 (dress), 1->0 (dress),
    # 2->3 (shoe), 3->1 (dress, wrong)
    assert result.precision[1] == pytest.approx(0.75)


def test_ties_are_broken_by_gallery_position() -> None:
    queries = unit([1, 1, 0, 0])
    first = ev.retrieval_metrics(queries, GALLERY, ["x"], ["x", "y", "z", "w"], ks=(1,))
    second = ev.retrieval_metrics(queries, GALLERY, ["y"], ["x", "y", "z", "w"], ks=(1,))
    assert first.recall[1] == 1.0
    assert second.recall[1] == 0.0


def test_chunking_does_not_change_results() -> None:
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(37, 8)).astype(np.float32)
    gallery = rng.normal(size=(50, 8)).astype(np.float32)
    q_labels = rng.integers(0, 5, size=37).tolist()
    g_labels = rng.integers(0, 5, size=50).tolist()
    whole = ev.retrieval_metrics(queries, gallery, q_labels, g_labels, chunk_size=1000)
    chunked = ev.retrieval_metrics(queries, gallery, q_labels, g_labels, chunk_size=4)
    assert whole.recall == chunked.recall
    assert whole.precision == pytest.approx(chunked.precision)
    assert whole.mrr == pytest.approx(chunked.mrr)


def test_chance_formulas_match_enumeration() -> None:
    n, r, k = 6, 2, 3
    rankings = list(itertools.permutations(range(n)))
    relevant = {0, 1}
    recall = np.mean([any(x in relevant for x in p[:k]) for p in rankings])
    precision = np.mean([sum(x in relevant for x in p[:k]) / k for p in rankings])
    mrr = np.mean([1 / (next(i for i, x in enumerate(p) if x in relevant) + 1) for p in rankings])
    assert ev.chance_recall_at_k(n, r, k) == pytest.approx(recall)
    assert ev.chance_precision_at_k(n, r, k) == pytest.approx(precision)
    assert ev.chance_mrr(n, r) == pytest.approx(mrr)


def test_chance_levels_match_random_rankings() -> None:
    rng = np.random.default_rng(1)
    labels = ["a"] * 5 + ["b"] * 15 + ["c"] * 30
    chance = ev.chance_levels(labels, labels, ks=(1, 10), exclude_index=list(range(50)))
    observed = [
        ev.same_label_precision(rng.normal(size=(50, 16)).astype(np.float32), labels, k=10)
        for _ in range(200)
    ]
    mean_p10 = float(np.mean([o.precision[10] for o in observed]))
    # P@10 of "same label, self excluded" at random: (4*5 + 14*15 + 29*30) / 49 / 50
    expected = (4 * 5 + 14 * 15 + 29 * 30) / 49 / 50
    assert chance.precision[10] == pytest.approx(expected)
    assert mean_p10 == pytest.approx(expected, abs=0.02)


def test_attribute_queries_need_enough_products_and_known_values() -> None:
    tags = (
        [{"colour": "Black", "product_type": "Trousers"}] * 10
        + [{"colour": "Black", "product_type": "Dress"}] * 9
        + [{"colour": "Unknown", "product_type": "Dress"}] * 12
        + [{"colour": "Red", "product_type": "Dress"}] * 11
    )
    queries = ev.attribute_queries(tags, ("colour", "product_type"), min_count=10)
    assert [q.text for q in queries] == ["black trousers", "red dress"]
    assert [q.n_relevant for q in queries] == [10, 11]


def test_attribute_precision_counts_hits_naming_all_values() -> None:
    tags = [
        {"colour": "Black", "product_type": "Trousers"},
        {"colour": "Black", "product_type": "Dress"},
        {"colour": "Red", "product_type": "Trousers"},
        {"colour": "Black", "product_type": "Trousers"},
    ]
    queries = ev.attribute_queries(tags, ("colour", "product_type"), min_count=2)
    assert [q.text for q in queries] == ["black trousers"]
    # the query vector ranks 0, 1, 2, 3: top 2 = {black trousers, black dress} -> P@2 = 0.5
    vectors = unit([0.8, 0.5, 0.3, 0.1])
    assert ev.attribute_precision(vectors, GALLERY, queries, tags, k=2) == pytest.approx(0.5)
    assert ev.chance_attribute_precision(queries, tags, k=2) == pytest.approx(0.5)


def test_augmented_recall_at_1() -> None:
    augmented = unit([1, 0.1, 0, 0], [0.9, 0.8, 0, 0], [0, 0, 1, 0.2], [0, 0, 0.1, 1])
    # copy 1 is nearer to gallery 0 (0.9 vs 0.8): one miss in four
    assert ev.augmented_recall_at_1(augmented, GALLERY) == pytest.approx(0.75)


def test_bad_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="width"):
        ev.retrieval_metrics(unit([1, 0]), GALLERY, ["a"], ["a"] * 4)
    with pytest.raises(ValueError, match="label"):
        ev.retrieval_metrics(GALLERY, GALLERY, ["a"], ["a"] * 4)
    with pytest.raises(ValueError, match="positive"):
        ev.retrieval_metrics(GALLERY, GALLERY, ["a"] * 4, ["a"] * 4, ks=(0,))


def test_as_dict_names_metrics() -> None:
    result = ev.RetrievalResult(recall={1: 0.5}, precision={1: 0.5}, mrr=0.75, n_queries=2)
    assert result.as_dict("desc ") == {"desc R@1": 0.5, "desc P@1": 0.5, "desc MRR": 0.75}
    assert not math.isnan(result.mrr)


def test_same_label_precision_on_some_query_rows() -> None:
    labels = ["dress", "dress", "shoe", "shoe"]
    vectors = unit([1, 0.2, 0, 0], [0.2, 1, 0, 0], [0, 0, 1, 0.1], [0, 0.3, 0.1, 1])
    # item 3 (whose nearest other item is a dress) is not a query
    result = ev.same_label_precision(vectors, labels, k=1, query_rows=[0, 1, 2])
    assert result.precision[1] == 1.0
    assert result.n_queries == 3


def test_labelled_gallery_suite() -> None:
    gallery = ev.LabelledGallery(
        ids=["a", "b", "c", "d"],
        texts=["soft jumper", "soft jumper", "dress", ""],
        attributes=[
            {"product_type": "Jumper"},
            {"product_type": "Jumper"},
            {"product_type": "Dress"},
            {"product_type": "Unknown"},
        ],
    )
    assert gallery.text_rows == [0, 1, 2]
    assert gallery.type_rows == [0, 1, 2]
    # both jumper texts rank b first; "dress" ranks d, c
    queries = unit([0.5, 1, 0, 0], [0.5, 1, 0, 0], [0, 0, 0.5, 1])
    metrics = ev.text_to_image_metrics(queries, GALLERY, gallery, prefix="desc")
    assert metrics["desc R@1"] == pytest.approx(2 / 3)
    assert metrics["desc exact-id R@1"] == pytest.approx(1 / 3)
    assert metrics["desc exact-id MRR"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert "desc P@1" not in metrics
    chance = ev.text_to_image_chance(gallery)
    assert chance["desc exact-id R@1"] == ev.Baseline(1 / 4, 3)
    # image to image: the jumpers find each other; the dress has no other dress (no query)
    image = ev.image_to_image_metrics(GALLERY, GALLERY, gallery)
    assert image[ev.AUGMENTED_METRIC] == 1.0
    image_chance = ev.image_to_image_chance(gallery)
    assert image_chance[ev.IMAGE_TYPE_METRIC].n_queries == 2
    assert image_chance[ev.AUGMENTED_METRIC] == ev.Baseline(1 / 4, 4)
    with pytest.raises(ValueError, match="one id"):
        ev.LabelledGallery(ids=["a"], texts=[], attributes=[])


def test_photo_style_precision_queries_the_clean_gallery_without_the_item_itself() -> None:
    gallery = ev.LabelledGallery(
        ids=["a", "b", "c", "d"],
        texts=["", "", "", ""],
        attributes=[
            {"product_type": "Jumper"},
            {"product_type": "Jumper"},
            {"product_type": "Dress"},
            {"product_type": "Unknown"},
        ],
    )
    # one photo per item of a known type (rows 0, 1, 2); each photo looks most like its own
    # item, which is excluded, then: photo of a -> b (a jumper: hit), photo of b -> c (a
    # dress: miss), photo of c -> no other dress (not counted)
    photos = unit([1, 0.5, 0.1, 0], [0, 1, 0.6, 0.1], [0, 0.2, 1, 0.1])
    value = ev.photo_style_type_precision(photos, GALLERY, gallery, k=1)
    assert value == pytest.approx(1 / 2)
    with pytest.raises(ValueError, match="one photo vector"):
        ev.photo_style_type_precision(GALLERY, GALLERY, gallery)
