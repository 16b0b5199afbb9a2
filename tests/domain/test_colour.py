"""The colour words' bins, the colour shares and the colour re-rank, on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest

from domain.colour import (
    COLOUR_WORDS,
    GREY_LEVELS,
    HISTOGRAM_BINS,
    ColourRerank,
    asks_plain,
    colour_mask,
    colour_order,
    colour_shares,
    histogram_bytes,
    pattern_phrases,
    rank_share,
    says_patterned,
)


def hue_bin(sector: int, saturated: int, bright: int) -> int:
    return GREY_LEVELS + (sector * 2 + saturated) * 2 + bright


def histogram(shares: dict[int, float]) -> bytes:
    """A stored histogram whose garment has these pixel shares per bin (square roots)."""
    values = np.zeros(HISTOGRAM_BINS)
    for b, share in shares.items():
        values[b] = np.sqrt(share)
    return histogram_bytes(values)


def bins(text: str) -> set[int]:
    mask = colour_mask(text)
    assert mask is not None
    return set(np.flatnonzero(mask).tolist())


def test_a_query_without_colour_words_has_no_mask() -> None:
    assert colour_mask("slim trousers") is None
    assert colour_mask("") is None
    assert colour_mask("bluebird print") is None  # whole words only


def test_colour_words_map_to_their_bins_whatever_the_case_and_punctuation() -> None:
    assert bins("Black trousers") == {0, 1}
    assert bins("white") == {5}
    blue = {hue_bin(h, s, v) for h in (7, 8) for s in (0, 1) for v in (0, 1)}
    assert bins("BLUE, t-shirt") == blue
    assert bins("blue and white") == blue | {5}


def test_dark_and_light_keep_one_brightness_half() -> None:
    assert bins("dark blue jeans") == {hue_bin(h, s, 0) for h in (7, 8) for s in (0, 1)}
    assert bins("light-blue jeans") == {hue_bin(h, s, 1) for h in (7, 8) for s in (0, 1)}
    assert bins("dark grey") == {2}
    assert bins("light grey") == {3, 4}


def test_off_white_is_cream_not_white() -> None:
    assert bins("off white top") == set(COLOUR_WORDS["cream"])
    assert bins("off-white top") == set(COLOUR_WORDS["cream"])


def test_every_colour_word_names_bins_of_the_histogram() -> None:
    for word, named in COLOUR_WORDS.items():
        assert named, word
        assert all(0 <= b < HISTOGRAM_BINS for b in named), word


def test_colour_share_is_the_share_of_garment_pixels_in_the_named_bins() -> None:
    mask = colour_mask("blue")
    assert mask is not None
    blue, red = hue_bin(8, 1, 1), hue_bin(0, 1, 1)
    shares = colour_shares(
        [histogram({blue: 0.75, red: 0.25}), histogram({red: 1.0}), None, b"short"], mask
    )
    assert shares[0] == pytest.approx(0.75, abs=1e-6)
    assert shares[1] == 0.0
    assert np.isnan(shares[2])  # no histogram
    assert np.isnan(shares[3])  # not a histogram of this layout


def test_a_histogram_of_another_size_is_refused() -> None:
    with pytest.raises(ValueError, match="54"):
        histogram_bytes(np.zeros(HISTOGRAM_BINS - 1))


def test_the_gate_applies_only_where_the_words_do_not_answer() -> None:
    config = ColourRerank(gate=0.5)
    assert config.applies(0.0)
    assert config.applies(0.49)
    assert not config.applies(0.5)
    assert not config.applies(1.0)


def test_a_product_of_the_colour_moves_up_by_its_share() -> None:
    shares = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    # rank 5 with every pixel of the colour: key 0.5 - 0.35 passes ranks 2..4, not 0 and 1
    assert colour_order(shares, ColourRerank(depth=10, weight=0.35)) == [0, 1, 5, 2, 3, 4]
    # a larger weight moves it further; half the colour moves it half as far
    assert colour_order(shares, ColourRerank(depth=10, weight=0.8)) == [5, 0, 1, 2, 3, 4]
    half = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.5])
    assert colour_order(half, ColourRerank(depth=10, weight=0.7)) == [0, 1, 5, 2, 3, 4]


def test_equal_shares_keep_the_fused_order() -> None:
    config = ColourRerank(depth=30, weight=0.4)
    assert colour_order(np.full(7, 0.3), config) == list(range(7))
    assert colour_order(np.zeros(0), config) == []


def test_a_product_without_histogram_counts_the_mean_share() -> None:
    config = ColourRerank(depth=10, weight=0.4)
    # the unknown one counts the mean share of the others (1/3 here): it neither sinks as if
    # it had none of the colour nor rises as if it were all of it
    assert colour_order(np.array([1.0, np.nan, 0.0, 0.0]), config) == [0, 1, 2, 3]
    assert colour_order(np.array([0.0, 0.0, 1.0, np.nan]), config) == [2, 0, 1, 3]
    # nobody known: the fused order
    assert colour_order(np.array([np.nan, np.nan, np.nan]), config) == [0, 1, 2]


def test_plain_is_asked_by_its_words_whatever_the_case() -> None:
    assert asks_plain("Solid trousers")
    assert asks_plain("black plain t-shirt")
    assert not asks_plain("striped trousers")
    assert not asks_plain("solidarity tee")  # whole words only


def test_a_product_is_patterned_when_its_words_say_so() -> None:
    assert says_patterned("Bruce shirt", "Shirt in a striped cotton weave.")
    assert says_patterned("Tee", None, ["All over pattern"])
    assert says_patterned("Checked skirt", "")
    assert not says_patterned("Bruce shirt", "Shirt in a cotton weave with a collar.")
    assert not says_patterned("Tee", None)


def test_a_patterned_product_moves_down_when_plain_is_asked() -> None:
    config = ColourRerank(depth=10, weight=0.4, patterned_weight=0.25)
    patterned = np.array([True, False, False, False, False])
    # rank 0 patterned: key 0.25 falls behind ranks 1 and 2 (0.1, 0.2), ties keep rank order
    assert colour_order(np.full(5, np.nan), config, patterned) == [1, 2, 0, 3, 4]
    assert colour_order(np.full(5, np.nan), config, ~patterned) == [0, 1, 2, 3, 4]
    # with a colour named too, both apply
    shares = np.array([0.0, 0.0, 0.0, 0.0, 1.0])
    assert colour_order(shares, config, patterned) == [4, 1, 2, 0, 3]


def test_surface_phrases_are_read_longest_first() -> None:
    assert pattern_phrases("All over pattern dress") == ("all over pattern",)
    assert pattern_phrases("solid t-shirt") == ("solid",)
    assert pattern_phrases("stripe top with front print") == ("stripe", "front print")
    assert pattern_phrases("black trousers") == ()
    assert pattern_phrases("overall") == ()  # whole words only


def test_the_rank_share_runs_from_one_for_the_closest_to_zero() -> None:
    assert rank_share(np.array([0.1, 0.3, 0.2])).tolist() == [0.0, 1.0, 0.5]
    assert rank_share(np.array([0.4])).tolist() == [1.0]


def test_the_closest_to_the_surface_moves_up_by_at_most_its_weight() -> None:
    # depth 10, weight 0.2: the closest (the last) gains 0.2 x 10 places, the furthest
    # (fourth) none, the others by their rank between
    config = ColourRerank(depth=10, weight=0.4, pattern_prompt_weight=0.2)
    no_colour = np.full(5, np.nan)
    surface = np.array([0.2, 0.3, 0.4, 0.1, 0.9])
    assert colour_order(no_colour, config, surface=surface) == [0, 1, 2, 4, 3]
    # weight 0: the fused order; no cosine known: the fused order
    off = ColourRerank(depth=10, pattern_prompt_weight=0.0)
    assert colour_order(no_colour, off, surface=surface) == list(range(5))
    assert colour_order(no_colour, config, surface=np.full(5, np.nan)) == list(range(5))


def test_a_product_without_image_vector_counts_the_mean_cosine() -> None:
    config = ColourRerank(depth=10, pattern_prompt_weight=0.3)
    # the unknown counts the mean of the others (0.5): half the closest's gain
    order = colour_order(np.full(3, np.nan), config, surface=np.array([0.0, 1.0, np.nan]))
    assert order == [1, 0, 2]  # keys: 0 - 0, 0.1 - 0.3, 0.2 - 0.15
