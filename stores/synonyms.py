"""A synonym lexicon for the lexical index, applied to the query (changing it needs no
re-index).

A query is searched as *variants*: the words typed (weight 1), then the same words with one
phrase, or two that do not overlap, replaced by an alternative the lexicon gives for it
("black sweater" -> "black jumper", "black pullover"). Each catalog adapter scores every
variant as it scores any query and keeps, per product, the best of its variants' scores,
each times the variant's weight (``SYNONYM_WEIGHT`` per replaced phrase). So:

* a synonym match counts, but less than the word typed in the same place: a product saying
  "jumper" ranks below one saying "sweater" alike, and one saying both is not counted twice
  (an OR of all the alternatives in one query would add them up, and would let a rare
  synonym's high IDF outweigh the word typed);
* the engines need nothing new: each variant is a plain query of the index (FTS5 ``MATCH``,
  the BM25 snapshot's postings, MongoDB ``$text``), so the embedded and production
  adapters stay alike, and a server that needs every word of a query (nx-27017) still
  finds "jumper" for "sweater";
* the matched share of the query a product has (what the fusion reads) is the best over the
  variants, a query word matched through a synonym counting ``SYNONYM_CREDIT`` of one typed.

Phrases are matched on the index's own terms (folded, stemmed, the words of a phrase joined
as the index joins "t-shirt"), so "Sweaters", "t shirt" and "tshirt" find their entries. The
lexicon's format is a subset of Solr's synonyms.txt (``a, b, c`` equivalence; ``a, b => c``
one-directional; ``#`` comments). The built-in one is ``fashion_synonyms.txt`` beside this
module (its header says what it covers and what it leaves out); an operator's file extends
or replaces it (``FASHION_SEARCH_SYNONYMS_FILE``, ``FASHION_SEARCH_SYNONYMS_MODE``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from domain.errors import StoreMisconfigured
from stores.lexical import QueryTerms, query_words, stem_joined

BUILT_IN = Path(__file__).resolve().parent / "fashion_synonyms.txt"
SYNONYM_WEIGHT = 0.8
"""A variant's weight per phrase replaced by a synonym (below 1: the word typed counts
more; chosen on the training draws, docs/relevance.md)."""
SYNONYM_CREDIT = 0.5
"""How much a query word matched through a synonym counts in the matched share the fusion
reads (per replaced phrase; 1 would count it as typed). Below 1 because the share also sets
the fusion's trust in the words (its coverage): at full credit a description saying
"jumper" with a trim "stripe" made an H&M-style catalog's words lead "stripe sweater"
(docs/relevance.md, fifth round)."""
MAX_VARIANTS = 8
"""Variants searched per query, the words typed included (each is one more index query)."""
MAX_VARIANT_TRIES = 64
"""Replacements (one phrase or a pair) tried per query to find its variants: each is a new
reading of the whole query, and a long one has thousands of pairs."""
MAX_PHRASE_WORDS = 3
_ONE_WAY = "=>"


class LexiconError(StoreMisconfigured):
    """A synonym file that cannot be read, naming the file and line."""


Phrase = tuple[str, ...]
"""A phrase as folded words (stop words dropped), as the query's words are."""


@dataclass(frozen=True)
class Replacement:
    """Query words ``start`` .. ``end`` (exclusive) may be replaced by ``phrase``."""

    start: int
    end: int
    phrase: Phrase


@dataclass(frozen=True)
class Variant:
    """One query the adapters search: ``weight`` scales its scores, ``credit`` the share of
    the query's words a product has through it (1 for the words typed)."""

    terms: QueryTerms
    weight: float
    credit: float = 1.0

    def matched_share(self, document: Iterable[str]) -> float:
        return self.credit * self.terms.matched_share(document) if self.credit else 0.0


@dataclass(frozen=True)
class Lexicon:
    """Alternatives per phrase key (the joined stem of the phrase's words)."""

    alternatives: dict[str, tuple[Phrase, ...]]

    @classmethod
    def empty(cls) -> Lexicon:
        return cls({})

    @classmethod
    def parse(cls, lines: Iterable[str], source: str = "<synonyms>") -> Lexicon:
        """Read the lines of a synonym file (LexiconError on a malformed line)."""
        rules: dict[str, list[Phrase]] = {}
        for number, line in enumerate(lines, 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            where = f"{source}:{number}"
            if text.count(_ONE_WAY) > 1:
                raise LexiconError(f"{where}: more than one '=>' in {line.strip()!r}")
            if _ONE_WAY in text:
                left, right = (_phrases(side, where) for side in text.split(_ONE_WAY))
            else:
                left = right = _phrases(text, where)
                if len(left) < 2:
                    raise LexiconError(f"{where}: an equivalence needs two phrases or more")
            for source_phrase in left:
                key = phrase_key(source_phrase)
                known = rules.setdefault(key, [])
                for target in right:
                    if phrase_key(target) != key and target not in known:
                        known.append(target)
        return cls({k: tuple(v) for k, v in rules.items() if v})

    @classmethod
    def read(cls, path: Path) -> Lexicon:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise LexiconError(f"synonym file {path} cannot be read: {exc}") from exc
        return cls.parse(text.splitlines(), str(path))

    def merged(self, other: Lexicon) -> Lexicon:
        """This lexicon extended by ``other`` (its alternatives after this one's)."""
        rules = {k: list(v) for k, v in self.alternatives.items()}
        for key, phrases in other.alternatives.items():
            known = rules.setdefault(key, [])
            known.extend(p for p in phrases if p not in known)
        return Lexicon({k: tuple(v) for k, v in rules.items()})

    def __len__(self) -> int:
        return len(self.alternatives)

    def replacements(self, words: Sequence[str]) -> list[Replacement]:
        """Every phrase of the query (words as ``query_words`` gives them) the lexicon has
        alternatives for, longest phrases first, then in the query's order; a phrase that
        comes again is replaced at its first place only (elsewhere it adds nothing new)."""
        found = []
        seen: set[tuple[Phrase, Phrase]] = set()
        for size in range(MAX_PHRASE_WORDS, 0, -1):
            for start in range(len(words) - size + 1):
                typed = tuple(words[start : start + size])
                for phrase in self.alternatives.get(phrase_key(typed), ()):
                    if (typed, phrase) not in seen:
                        seen.add((typed, phrase))
                        found.append(Replacement(start, start + size, phrase))
        return found

    def variants(self, text: str) -> tuple[Variant, ...]:
        """The query typed (weight 1) and its variants, at most MAX_VARIANTS in all: one
        phrase replaced, then two that do not overlap (weight SYNONYM_WEIGHT per phrase)."""
        words = query_words(text)
        typed = QueryTerms.of_words(words)
        options = self.replacements(words) if self.alternatives else []
        if not options or typed.is_empty:
            return (Variant(typed, 1.0),)
        out = [Variant(typed, 1.0)]
        seen = {typed.all_key()}
        combos = itertools.chain(
            ((r,) for r in options),
            ((a, b) for a, b in itertools.combinations(options, 2) if a.end <= b.start),
        )
        for combo in itertools.islice(combos, MAX_VARIANT_TRIES):
            if len(out) >= MAX_VARIANTS:
                break
            terms = QueryTerms.of_words(_replaced(words, combo))
            if terms.is_empty or terms.all_key() in seen:
                continue
            seen.add(terms.all_key())
            out.append(Variant(terms, SYNONYM_WEIGHT ** len(combo), SYNONYM_CREDIT ** len(combo)))
        return tuple(out)


def _replaced(words: Sequence[str], combo: Sequence[Replacement]) -> list[str]:
    out: list[str] = []
    at = 0
    for r in combo:
        out += [*words[at : r.start], *r.phrase]
        at = r.end
    return out + list(words[at:])


def _phrases(side: str, where: str) -> list[Phrase]:
    phrases = []
    for raw in side.split(","):
        words = tuple(query_words(raw))
        if not words:
            raise LexiconError(f"{where}: empty phrase in {side.strip()!r}")
        if len(words) > MAX_PHRASE_WORDS:
            raise LexiconError(f"{where}: {raw.strip()!r} has more than {MAX_PHRASE_WORDS} words")
        phrases.append(words)
    return phrases


def phrase_key(words: Phrase) -> str:
    """The stem of a phrase's words joined ("t shirts" and "tshirt" -> "tshirt")."""
    return stem_joined("".join(words))


@lru_cache(maxsize=1)
def built_in() -> Lexicon:
    return Lexicon.read(BUILT_IN)


def load_lexicon(path: Path | None = None, replace: bool = False) -> Lexicon:
    """The built-in lexicon, extended by ``path`` (replaced by it when ``replace``)."""
    if path is None:
        return Lexicon.empty() if replace else built_in()
    own = Lexicon.read(path)
    return own if replace else built_in().merged(own)
