"""The synonym lexicon: reading Solr-style files (with clear errors), and the query variants
it makes (the words typed first, alternatives matched on the index's own terms)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fashion_search.settings import InvalidSettings, Settings, load_settings
from fashion_search.wiring import build_catalog, synonym_lexicon
from stores import synonyms
from stores.lexical import QueryTerms
from stores.synonyms import (
    MAX_PHRASE_WORDS,
    MAX_VARIANTS,
    SYNONYM_CREDIT,
    SYNONYM_WEIGHT,
    Lexicon,
    LexiconError,
    built_in,
    load_lexicon,
)


def searched(lexicon: Lexicon, text: str) -> list[tuple[list[str], float]]:
    return [(v.terms.all(), v.weight) for v in lexicon.variants(text)]


def test_equivalence_searches_every_member_from_any() -> None:
    lexicon = Lexicon.parse(["sweater, jumper, pullover"])
    assert searched(lexicon, "sweater") == [
        (["sweater"], 1.0),
        (["jumper"], SYNONYM_WEIGHT),
        (["pullov"], SYNONYM_WEIGHT),
    ]
    assert [t for t, _ in searched(lexicon, "Jumpers")] == [["jumper"], ["sweater"], ["pullov"]]


def test_one_directional_rule_is_not_reversed() -> None:
    lexicon = Lexicon.parse(["pants, slacks => trousers"])
    assert [t for t, _ in searched(lexicon, "blue pants")][1] == ["blue", "trouser", "bluetrous"]
    assert searched(lexicon, "blue trousers") == [(QueryTerms.of("blue trousers").all(), 1.0)]


def test_multi_word_phrases_replace_the_words_they_stand_for() -> None:
    lexicon = Lexicon.parse(["tank top, vest top", "hoodie, hooded sweatshirt"])
    variants = searched(lexicon, "black tank top")
    assert variants[0] == (QueryTerms.of("black tank top").all(), 1.0)
    assert variants[1] == (QueryTerms.of("black vest top").all(), SYNONYM_WEIGHT)
    hooded = lexicon.variants("hoodie")[1].terms
    assert "hoodedsweatshirt" in hooded.all()  # the pair a name "Hooded Sweatshirt" is indexed by


def test_phrases_match_as_the_index_joins_words() -> None:
    lexicon = Lexicon.parse(["tee, t-shirt"])
    for typed in ("T-shirts", "t shirt", "tshirt"):
        assert [t for t, _ in searched(lexicon, typed)][1] == ["tee"], typed
    assert "tshirt" in lexicon.variants("tees")[1].terms.all()


def test_two_replacements_weigh_less_and_variants_are_capped() -> None:
    lexicon = Lexicon.parse(["grey, gray", "sweater, jumper"])
    weights = {tuple(t): w for t, w in searched(lexicon, "grey sweater")}
    assert weights[tuple(QueryTerms.of("gray jumper").all())] == SYNONYM_WEIGHT**2
    credits = [v.credit for v in lexicon.variants("grey sweater")]
    assert credits == [1.0, SYNONYM_CREDIT, SYNONYM_CREDIT, SYNONYM_CREDIT**2]
    many = Lexicon.parse([", ".join(f"word{i}x" for i in range(20))])
    assert len(many.variants("word0x")) == MAX_VARIANTS


def test_a_long_query_repeating_a_phrase_tries_few_variants(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 1,000-character query repeating "t-shirt" has 125 places to replace it: trying
    each and every pair of them, each a new reading of the whole query, took seconds of
    CPU per search (8.7 s with the built-in lexicon)."""
    tried: list[object] = []
    replaced = synonyms._replaced

    def counted(words: list[str], combo: list[object]) -> list[str]:
        tried.append(combo)
        return replaced(words, combo)  # type: ignore[arg-type]

    monkeypatch.setattr(synonyms, "_replaced", counted)
    lexicon = Lexicon.parse(["tee, t-shirt", "tshirt => t shirt"])
    variants = lexicon.variants("t-shirt " * 125)
    assert "tee" in variants[1].terms.all()
    assert len(tried) <= synonyms.MAX_VARIANT_TRIES
    tried.clear()
    assert len(built_in().variants("t-shirt " * 125)) > 1
    assert len(tried) <= synonyms.MAX_VARIANT_TRIES


def test_a_variant_counts_its_matched_words_at_its_credit() -> None:
    variant = Lexicon.parse(["sweater, jumper"]).variants("black sweater")[1]
    assert variant.matched_share(["black", "jumper"]) == pytest.approx(SYNONYM_CREDIT)
    assert variant.matched_share(["black"]) == pytest.approx(SYNONYM_CREDIT / 2)


def test_queries_without_entries_are_searched_as_typed() -> None:
    assert len(built_in().variants("asdfgh")) == 1
    assert len(built_in().variants("")) == 1
    assert len(Lexicon.empty().variants("black sweater")) == 1


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("sweater", "two phrases"),
        ("a, , b", "empty phrase"),
        ("a => b => c", "more than one '=>'"),
        ("the => jumper", "empty phrase"),
        (", ".join(["one two three four", "x"]), f"more than {MAX_PHRASE_WORDS} words"),
    ],
)
def test_malformed_lines_name_file_and_line(line: str, says: str) -> None:
    with pytest.raises(LexiconError, match=f"shop.txt:3: .*{says}"):
        Lexicon.parse(["# comment", "", line], "shop.txt")


def test_the_built_in_lexicon_reads_shoppers_words() -> None:
    lexicon = built_in()
    for typed, catalog_word in [
        ("sweater", "jumper"),
        ("pants", "trouser"),
        ("sneakers", "trainer"),
        ("gray", "grey"),
        ("hoodie", "hoodedsweatshirt"),
        ("tee", "tshirt"),
        ("tank top", "vesttop"),
    ]:
        alternatives = {t for v in lexicon.variants(typed)[1:] for t in v.terms.all()}
        assert catalog_word in alternatives, typed
    assert len(lexicon.variants("trousers")) == 1  # "pants" is underwear in British English


def test_an_operator_file_extends_or_replaces_the_built_in(tmp_path: Path) -> None:
    own = tmp_path / "synonyms.txt"
    own.write_text("# our house words\nbasics, essentials\n", encoding="utf-8")
    extended = load_lexicon(own)
    assert len(extended.variants("essentials")) == 2
    assert len(extended.variants("sweater")) > 1
    replaced = load_lexicon(own, replace=True)
    assert len(replaced.variants("essentials")) == 2
    assert len(replaced.variants("sweater")) == 1
    settings = Settings(home=tmp_path, synonyms_file=own, synonyms_mode="replace")
    assert len(synonym_lexicon(settings).variants("sweater")) == 1
    assert len(synonym_lexicon(Settings(home=tmp_path, synonyms_mode="off"))) == 0


def test_an_unusable_synonym_file_stops_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FASHION_SEARCH_SYNONYMS_FILE", str(tmp_path / "missing.txt"))
    with pytest.raises(InvalidSettings, match=r"FASHION_SEARCH_SYNONYMS_FILE.*cannot be read"):
        load_settings()
    bad = tmp_path / "bad.txt"
    bad.write_text("jumper\n", encoding="utf-8")
    monkeypatch.setenv("FASHION_SEARCH_SYNONYMS_FILE", str(bad))
    settings = load_settings()
    with pytest.raises(LexiconError, match=r"bad.txt:1: an equivalence needs two phrases"):
        build_catalog(settings)
    monkeypatch.delenv("FASHION_SEARCH_SYNONYMS_FILE")
    monkeypatch.setenv("FASHION_SEARCH_SYNONYMS_MODE", "replace")
    with pytest.raises(InvalidSettings, match="needs FASHION_SEARCH_SYNONYMS_FILE"):
        load_settings()
