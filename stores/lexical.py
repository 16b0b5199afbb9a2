"""The words of the lexical index, shared by every catalog adapter.

Both catalog adapters (SQLite FTS5 embedded, MongoDB ``$text`` in production) index and
query the *terms* this module makes, not the raw text, so they agree on what matches:

* case and accents folded ("Café" -> "cafe"), NFKD so "ﬁ" ligatures and full-width letters
  fold too;
* English Snowball stems ("trousers" -> "trouser", "dresses" -> "dress"): MongoDB stems only
  in some languages and nx-27017 not at all, FTS5's porter only where it is compiled in, so
  stemming happens here, once;
* words joined by a hyphen or slash also indexed joined ("T-Shirt" -> "t", "shirt",
  "tshirt"), adjacent words of a name too ("T Shirt" -> "tshirt"), and adjacent query
  words also searched joined ("t shirt" -> "tshirt"), so "t-shirt", "tshirt" and "t shirt"
  find each other. The name's joined pairs also favour names holding the query's words in
  its order, and let a name typed whole match on servers that need every term;
* a short list of English stop words dropped: they would make every product match
  "shirt in blue", and they say nothing about a product; an English possessive is its
  word ("women's" -> "women", not "women" and "s", which every "Men's" name has).

Synonyms ("sweater" -> "jumper") are not indexed: ``stores.synonyms`` expands the query, so
changing the lexicon needs no re-index.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

import Stemmer

from domain.model import Product

STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "in",
        "into",
        "is",
        "it",
        "of",
        "on",
        "or",
        "the",
        "to",
        "with",
        "without",
    ]
)
_WORD = re.compile(r"[^\W_]+")
_POSSESSIVE = re.compile(r"(?<=[^\W_])['\u2019]s\b")
"""An English possessive ("men's", "women’s"): the word without it, not a word "s" that
every "Men's" name has."""
_JOINED_WORDS = re.compile(r"[^\W_]+(?:[-/][^\W_]+)+")
NAME_WEIGHT = 3.0
"""How much more a term in the name counts than one in the description or the tags (the
name is what shoppers type; descriptions mention other garments: "matching trousers")."""
DESCRIPTION_WEIGHT = 1.0
TAGS_WEIGHT = 1.0


@lru_cache(maxsize=1)
def _stemmer() -> Stemmer.Stemmer:
    return Stemmer.Stemmer("english")


def fold(text: str) -> str:
    """Lower case without accents."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _stems(words: list[str]) -> list[str]:
    return list(_stemmer().stemWords(words)) if words else []


def _words(folded: str) -> list[str]:
    return [w for w in _WORD.findall(_POSSESSIVE.sub("", folded)) if w not in STOP_WORDS]


def query_words(text: str) -> list[str]:
    """A text's words as a query reads them: folded, stop words dropped, not stemmed."""
    return _words(fold(text))


def stem_joined(word: str) -> str:
    """The stem of one word (or of words written as one: "tshirts" -> "tshirt")."""
    return str(_stemmer().stemWord(word))


def _pairs(words: list[str]) -> list[str]:
    """Stems of each two adjacent words written as one."""
    return _stems([words[i] + words[i + 1] for i in range(len(words) - 1)])


def terms(text: str | None, with_pairs: bool = False) -> list[str]:
    """The terms a text is indexed under: stems of its words, stop words dropped, plus the
    joined stem of each hyphen/slash compound (and of each two adjacent words when
    ``with_pairs``: names)."""
    if not text:
        return []
    folded = fold(text)
    words = _words(folded)
    joined = ["".join(_WORD.findall(m)) for m in _JOINED_WORDS.findall(folded)]
    pairs = _pairs(words) if with_pairs else []
    return list(dict.fromkeys(_stems(words) + _stems(joined) + pairs))


@dataclass(frozen=True)
class ProductTerms:
    """A product's terms per field, as space-separated strings (what the index stores). The
    id counts as a word of the name, so a query that is an id finds its product."""

    name: str
    description: str
    tags: str

    @classmethod
    def of(cls, product: Product) -> ProductTerms:
        return cls(
            name=" ".join(terms(f"{product.name} {product.id}", with_pairs=True)),
            description=" ".join(terms(product.description)),
            tags=" ".join(terms(" ; ".join(tag_texts(product.tags)))),
        )

    def all(self) -> set[str]:
        return set(f"{self.name} {self.description} {self.tags}".split())


def tag_texts(tags: Mapping[str, str]) -> list[str]:
    """The tag values that are words (years and other bare numbers say little)."""
    return [v for v in tags.values() if not v.strip().isdigit()]


@dataclass(frozen=True)
class QueryTerms:
    """A query's words as stems (``words``), and each adjacent pair joined (``joined``: the
    joined stem and the positions of the two words it stands for)."""

    words: tuple[str, ...]
    joined: tuple[tuple[str, int, int], ...]

    @classmethod
    def of(cls, text: str) -> QueryTerms:
        return cls.of_words(_words(fold(text)))

    @classmethod
    def of_words(cls, raw: list[str]) -> QueryTerms:
        """From a query's words as ``query_words`` gives them (folded, no stop words)."""
        words = tuple(_stems(raw))
        joined = tuple((stem, i, i + 1) for i, stem in enumerate(_pairs(raw)) if stem not in words)
        return cls(words=words, joined=joined)

    @property
    def is_empty(self) -> bool:
        return not self.words

    def all(self) -> list[str]:
        """Every term to search for, each once."""
        return list(dict.fromkeys([*self.words, *(j for j, _, _ in self.joined)]))

    def all_key(self) -> tuple[str, ...]:
        """The terms searched, in a canonical order (two queries searching the same terms
        answer alike)."""
        return tuple(sorted(self.all()))

    def matched_share(self, document: Iterable[str]) -> float:
        """The share of the query's words a document has (a joined pair covers both)."""
        if not self.words:
            return 0.0
        present = set(document)
        covered = {i for i, w in enumerate(self.words) if w in present}
        for stem, first, second in self.joined:
            if stem in present:
                covered |= {first, second}
        return len(covered) / len(self.words)


def fts5_query(query: QueryTerms) -> str:
    """An FTS5 MATCH expression: any of the terms (OR), each quoted so no term is read as
    syntax."""
    return " OR ".join(f'"{t}"' for t in query.all())
