"""Embedded catalog on SQLite (standard library), in WAL mode.

Schema (``PRAGMA user_version`` = 3)
    ``products(id PRIMARY KEY, name, description, tags JSON, image_keys JSON, colour BLOB)``:
    the products as the domain knows them (``colour``: the photo's colour histogram, NULL
    for products written before version 3, which added the column on first open); ``tags(product_id, key, value)`` with an index on
    ``(key, value, product_id)``: the same tags, one row each, so filters and facets are
    indexed lookups instead of JSON scans; ``ledger(encoder_id, product_id, content_hash)``:
    what ingest has already indexed with which encoder (no foreign key: ingest may record an
    item in either order, ``delete`` removes a product's entries explicitly);
    ``products_fts``: an FTS5 table of each product's name, description and tag values as
    the terms of ``stores.lexical`` (folded, stemmed, compounds joined), its rowid given by
    ``lexical_ids(rowid, product_id)`` (the product table has no rowid). Version 1 catalogs
    get it filled on first open.

Lexical search
    ``search_text`` ORs the query's terms in one FTS5 MATCH and ranks by ``bm25()`` with the
    name weighted above description and tags (``stores.lexical.NAME_WEIGHT``); the filter is
    the same ``IN`` clause as listings. A query with synonyms (``stores.synonyms``) is one
    MATCH per variant, each product keeping its best weighted score. Scores are returned positive (FTS5's are negative).
    FTS5 scores every row matching any term before taking the top (20-30 ms when a term is
    a tag value most products have), so searches are answered from a ``Bm25Snapshot``
    (``stores.catalog.bm25_snapshot``: the same scores from numpy arrays, under a
    millisecond) while it is of the current ``lexical_generation``, a counter every lexical
    write bumps in its transaction. A stale or missing snapshot sends the search to FTS5
    and starts a rebuild in a thread, on a connection of its own (at most every
    ``BM25_REBUILD_INTERVAL_S``; not above ``BM25_SNAPSHOT_MAX_PRODUCTS``).

Filters
    ``equals`` and ``any_of`` become ``id IN (SELECT product_id FROM tags WHERE key = ? AND
    value ...)`` clauses, ANDed. Listing pages by id (``id > after_id ORDER BY id LIMIT
    n + 1``, the extra row telling whether a next page exists) with ``Cursor(after_id=...)``
    as the cursor: stable under concurrent inserts and deletes, and O(page) at any depth.
    Lists of ids and values travel as one JSON parameter (``json_each``), so ``get_many`` is
    one statement whatever the number of ids (no bound-variable limit).

Threads
    One connection, guarded by a lock, used from worker threads (``asyncio.to_thread``).
    Most calls take well under a millisecond, but bulk upserts of thousands of products,
    facet counts over a large catalog and commits that hit the disk take milliseconds to
    seconds: running them inline would stall every other request on the event loop. The
    exception is ``get_many`` of a page of ids (at most ``INLINE_GET_MANY``, as a search
    asks for its hits): a primary-key lookup of about 0.1 ms, cheaper than the hand-off to a
    thread and back (0.2-0.5 ms of a search, measured with bench/api_overhead.py), so it runs
    on the event loop when the connection is open and free, in a thread otherwise. One
    connection (rather than a pool) keeps writes serialised inside the process without
    ``database is locked`` retries; WAL mode lets other processes (the CLI ingesting while
    the API serves) read while one writes, and ``busy_timeout`` absorbs short write
    contention between processes. Writes use ``BEGIN IMMEDIATE`` transactions: a bulk
    upsert is all or nothing.

Several processes
    Every read runs in its own transaction (autocommit mode), so each worker of a server
    answers from the newest commit of any process: the same products, counts and ledger.
    ``synchronous = FULL``: a commit is fsynced before the call returns, so whatever the
    API or ingest acknowledges after it survives a crash of the process or of the machine
    (with ``NORMAL`` WAL commits survive a killed process but may be lost with the power).
    The home's writers are serialised above this (the ``WriteLock``), so ``busy_timeout``
    only covers the moments when a checkpoint or a reader's schema check meets a writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from domain.errors import BadInput
from domain.model import Cursor, LexicalHit, Product, ProductFilter, ProductPage
from domain.ports import ProductRows
from stores.catalog.bm25_snapshot import Bm25Snapshot
from stores.lexical import (
    DESCRIPTION_WEIGHT,
    NAME_WEIGHT,
    TAGS_WEIGHT,
    ProductTerms,
    fts5_query,
)
from stores.synonyms import Lexicon, Variant, built_in

LexicalHits = list[LexicalHit]  # (the classes' own ``list`` method shadows the builtin)
SCHEMA_VERSION = 3
LEXICAL_SCHEMA_VERSION = 2
"""The first schema version with the FTS5 table (older catalogs are filled on open)."""
COLOUR_SCHEMA_VERSION = 3
"""The first schema version with the products' colour histograms."""
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS products (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    description TEXT,
    tags TEXT NOT NULL DEFAULT '{}',
    image_keys TEXT NOT NULL DEFAULT '[]',
    colour BLOB
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tags (
    product_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (product_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tags_by_key_value ON tags (key, value, product_id);
CREATE TABLE IF NOT EXISTS ledger (
    encoder_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    PRIMARY KEY (encoder_id, product_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ledger_by_product ON ledger (product_id);
CREATE TABLE IF NOT EXISTS lexical_ids (
    rowid INTEGER PRIMARY KEY,
    product_id TEXT NOT NULL UNIQUE
);
CREATE VIRTUAL TABLE IF NOT EXISTS products_fts USING fts5(
    name, description, tags, tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TABLE IF NOT EXISTS lexical_generation (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n INTEGER NOT NULL
);
INSERT INTO lexical_generation (id, n) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
"""
_BM25 = f"bm25(products_fts, {NAME_WEIGHT}, {DESCRIPTION_WEIGHT}, {TAGS_WEIGHT})"
_FTS5_FILTERED = (  # the filter joins every match, then the top is taken
    f"SELECT f.rowid, l.product_id, -{_BM25}, f.name, f.description, f.tags, p.name "
    "FROM products_fts f JOIN lexical_ids l ON l.rowid = f.rowid "
    "JOIN products p ON p.id = l.product_id "
    f"WHERE products_fts MATCH ? AND {{where}} ORDER BY {_BM25} LIMIT ?"
)
_FTS5_TOP = (  # the top rows first (FTS5 ranks in C), then the joins for those rows only
    f"WITH top AS (SELECT rowid, {_BM25} AS s FROM products_fts "
    "WHERE products_fts MATCH ? ORDER BY s LIMIT ?) "
    "SELECT top.rowid, l.product_id, -top.s, f.name, f.description, f.tags, p.name "
    "FROM top JOIN lexical_ids l ON l.rowid = top.rowid "
    "JOIN products_fts f ON f.rowid = top.rowid "
    "JOIN products p ON p.id = l.product_id ORDER BY top.s"
)

_COLUMNS = "p.id, p.name, p.description, p.tags, p.image_keys, p.colour"

INLINE_GET_MANY = 100
"""get_many of at most this many ids runs on the event loop when the connection is free."""
BM25_SNAPSHOT_MAX_PRODUCTS = 200_000
"""Larger catalogs keep ranking in FTS5 (the snapshot holds every term of every product)."""
BM25_REBUILD_INTERVAL_S = 5.0
"""A stale snapshot is rebuilt at most this often (an ingest commits every few seconds)."""


def _filter_sql(flt: ProductFilter | None, id_column: str) -> tuple[str, list[Any]]:
    """A WHERE fragment (``1`` when there is nothing to filter) and its parameters."""
    if flt is None or flt.is_empty:
        return "1", []
    clauses: list[str] = []
    params: list[Any] = []
    for key, value in flt.equals.items():
        clauses.append(f"{id_column} IN (SELECT product_id FROM tags WHERE key = ? AND value = ?)")
        params += [key, value]
    for key, values in flt.any_of.items():
        clauses.append(
            f"{id_column} IN (SELECT product_id FROM tags WHERE key = ? "
            "AND value IN (SELECT value FROM json_each(?)))"
        )
        params += [key, json.dumps(list(values))]
    return " AND ".join(clauses), params


Row = tuple[Any, ...]
"""A product row as ``_COLUMNS`` reads it."""
_COLOUR_COLUMN = 5


class _Rows:
    """``ProductRows`` of the SQLite catalog: rows decoded into products on demand."""

    def __init__(self, rows: dict[str, Row]) -> None:
        self._rows = rows

    def colour(self, product_id: str) -> bytes | None:
        row = self._rows.get(product_id)
        return row[_COLOUR_COLUMN] if row is not None else None

    def product(self, product_id: str) -> Product | None:
        row = self._rows.get(product_id)
        return _product(row) if row is not None else None


def _product(row: Sequence[Any]) -> Product:
    pid, name, description, tags, image_keys, colour = row
    return Product(
        id=pid,
        name=name,
        description=description,
        tags=json.loads(tags),
        image_keys=tuple(json.loads(image_keys)),
        colour=colour,
    )


class SqliteCatalog:
    """The embedded ``Catalog`` (see the module docstring for the design)."""

    def __init__(self, path: Path | str, synonyms: Lexicon | None = None) -> None:
        """``synonyms``: the lexicon query words are expanded with (default: the built-in
        one, ``stores.synonyms``)."""
        self.path = path if str(path) == ":memory:" else Path(path)
        self._synonyms = synonyms if synonyms is not None else built_in()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._bm25: Bm25Snapshot | None = None
        self._bm25_builder: threading.Thread | None = None
        self._bm25_started = -BM25_REBUILD_INTERVAL_S

    # -- connection ----------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """The connection, opened (and the schema created) on first use. Lock held."""
        if self._conn is None:
            if isinstance(self.path, Path):
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=30
            )
            try:
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise RuntimeError(
                        f"catalog {self.path} has schema version {version}; this version of "
                        f"fashion-search reads up to {SCHEMA_VERSION}"
                    )
                conn.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;")
                if version < COLOUR_SCHEMA_VERSION:
                    self._add_colour_column(conn)
                if version < LEXICAL_SCHEMA_VERSION:
                    self._fill_lexical_index(conn)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    @staticmethod
    def _add_colour_column(conn: sqlite3.Connection) -> None:
        """The colour column of a catalog written before it existed (NULL: no histogram)."""
        columns = {row[1] for row in conn.execute("PRAGMA table_info(products)")}
        if "colour" not in columns:
            conn.execute("ALTER TABLE products ADD COLUMN colour BLOB")

    @staticmethod
    def _fill_lexical_index(conn: sqlite3.Connection) -> None:
        """Index the words of a catalog written before the lexical index existed."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM products p").fetchall()
            _write_lexical(conn, [_product(row) for row in rows])
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._connection()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: committed when the block ends, rolled back on error."""
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # -- the port (async: every call runs in a worker thread) ---------------------------

    async def upsert_many(self, products: Sequence[Product]) -> None:
        await asyncio.to_thread(self.upsert_many_sync, products)

    async def get(self, product_id: str) -> Product | None:
        return await asyncio.to_thread(self.get_sync, product_id)

    async def get_many(self, ids: Sequence[str]) -> dict[str, Product]:
        return {pid: _product(row) for pid, row in (await self._rows(ids)).items()}

    async def get_rows(self, ids: Sequence[str]) -> ProductRows:
        """The rows of ``get_many``, decoded into products only when asked for."""
        return _Rows(await self._rows(ids))

    async def _rows(self, ids: Sequence[str]) -> dict[str, Row]:
        if len(ids) <= INLINE_GET_MANY and self._lock.acquire(blocking=False):
            try:
                if self._conn is not None:  # open (opening it is left to a thread)
                    return self._get_rows(self._conn, ids)
            finally:
                self._lock.release()
        return await asyncio.to_thread(self._get_rows_sync, ids)

    def _get_rows_sync(self, ids: Sequence[str]) -> dict[str, Row]:
        if not ids:
            return {}
        with self._read() as conn:
            return self._get_rows(conn, ids)

    async def delete(self, product_id: str) -> bool:
        return await asyncio.to_thread(self.delete_sync, product_id)

    async def list(
        self, filter: ProductFilter | None = None, cursor: str | None = None, limit: int = 20
    ) -> ProductPage:
        return await asyncio.to_thread(self.list_sync, filter, cursor, limit)

    async def count(self, filter: ProductFilter | None = None) -> int:
        return await asyncio.to_thread(self.count_sync, filter)

    async def facets(
        self, keys: Sequence[str] | None = None, filter: ProductFilter | None = None
    ) -> dict[str, dict[str, int]]:
        return await asyncio.to_thread(self.facets_sync, keys, filter)

    async def search_text(
        self, text: str, top_k: int, filter: ProductFilter | None = None
    ) -> LexicalHits:
        return await asyncio.to_thread(self.search_text_sync, text, top_k, filter)

    async def count_tags(
        self, ids: Sequence[str], keys: Sequence[str] | None = None
    ) -> dict[str, dict[str, int]]:
        return await asyncio.to_thread(self.count_tags_sync, ids, keys)

    async def indexed_hashes(self, encoder_id: str) -> dict[str, str]:
        return await asyncio.to_thread(self.indexed_hashes_sync, encoder_id)

    async def ledger_entries(
        self, encoder_ids: Sequence[str], ids: Sequence[str]
    ) -> dict[str, dict[str, str]]:
        return await asyncio.to_thread(self.ledger_entries_sync, encoder_ids, ids)

    async def ledger_page(self, encoder_id: str, after: str | None, limit: int) -> dict[str, str]:
        return await asyncio.to_thread(self.ledger_page_sync, encoder_id, after, limit)

    async def mark_indexed(self, encoder_id: str, hashes: Mapping[str, str]) -> None:
        await asyncio.to_thread(self.mark_indexed_sync, encoder_id, hashes)

    async def forget_indexed(self, ids: Sequence[str], encoder_id: str | None = None) -> None:
        await asyncio.to_thread(self.forget_indexed_sync, ids, encoder_id)

    async def close(self) -> None:
        await asyncio.to_thread(self.close_sync)

    # -- the same, synchronous ----------------------------------------------------------

    def upsert_many_sync(self, products: Sequence[Product]) -> None:
        if not products:
            return
        latest = {p.id: p for p in products}  # the last version of a repeated id wins
        rows = [
            (
                p.id,
                p.name,
                p.description,
                json.dumps(dict(p.tags), ensure_ascii=False),
                json.dumps(list(p.image_keys), ensure_ascii=False),
                p.colour,
            )
            for p in latest.values()
        ]
        tag_rows = [(p.id, k, v) for p in latest.values() for k, v in p.tags.items()]
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO products (id, name, description, tags, image_keys, colour) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET name = excluded.name, "
                "description = excluded.description, tags = excluded.tags, "
                "image_keys = excluded.image_keys, colour = excluded.colour",
                rows,
            )
            conn.execute(
                "DELETE FROM tags WHERE product_id IN (SELECT value FROM json_each(?))",
                (json.dumps(list(latest)),),
            )
            conn.executemany("INSERT INTO tags (product_id, key, value) VALUES (?, ?, ?)", tag_rows)
            _write_lexical(conn, list(latest.values()))

    def get_sync(self, product_id: str) -> Product | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM products p WHERE p.id = ?", (product_id,)
            ).fetchone()
        return _product(row) if row is not None else None

    def get_many_sync(self, ids: Sequence[str]) -> dict[str, Product]:
        if not ids:
            return {}
        with self._read() as conn:
            return self._get_many(conn, ids)

    @staticmethod
    def _get_many(conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, Product]:
        """Lock held."""
        return {pid: _product(row) for pid, row in SqliteCatalog._get_rows(conn, ids).items()}

    @staticmethod
    def _get_rows(conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, Row]:
        """The rows of these ids, in their order (absent ids left out). Lock held."""
        if not ids:
            return {}
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM products p WHERE p.id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(dict.fromkeys(ids))),),
        ).fetchall()
        found = {row[0]: row for row in rows}
        return {pid: found[pid] for pid in dict.fromkeys(ids) if pid in found}

    def delete_sync(self, product_id: str) -> bool:
        with self._write() as conn:
            deleted = conn.execute("DELETE FROM products WHERE id = ?", (product_id,)).rowcount
            conn.execute("DELETE FROM tags WHERE product_id = ?", (product_id,))
            conn.execute("DELETE FROM ledger WHERE product_id = ?", (product_id,))
            _forget_lexical(conn, [product_id])
            conn.execute("DELETE FROM lexical_ids WHERE product_id = ?", (product_id,))
        return deleted > 0

    def list_sync(
        self, filter: ProductFilter | None = None, cursor: str | None = None, limit: int = 20
    ) -> ProductPage:
        if limit < 1:
            raise BadInput(f"limit must be at least 1, got {limit}")
        after = Cursor.decode(cursor).after_id
        where, params = _filter_sql(filter, "p.id")
        if after is not None:
            where += " AND p.id > ?"
            params.append(after)
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM products p WHERE {where} ORDER BY p.id LIMIT ?",
                [*params, limit + 1],
            ).fetchall()
        items = tuple(_product(row) for row in rows[:limit])
        more = len(rows) > limit
        return ProductPage(
            items=items, next_cursor=Cursor(after_id=items[-1].id).encode() if more else None
        )

    def count_sync(self, filter: ProductFilter | None = None) -> int:
        where, params = _filter_sql(filter, "p.id")
        with self._read() as conn:
            row = conn.execute(f"SELECT COUNT(*) FROM products p WHERE {where}", params).fetchone()
        return int(row[0])

    def facets_sync(
        self, keys: Sequence[str] | None = None, filter: ProductFilter | None = None
    ) -> dict[str, dict[str, int]]:
        where, params = _filter_sql(filter, "t.product_id")
        if keys is not None:
            where += " AND t.key IN (SELECT value FROM json_each(?))"
            params.append(json.dumps(list(keys)))
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT t.key, t.value, COUNT(*) FROM tags t WHERE {where} "
                "GROUP BY t.key, t.value ORDER BY t.key, COUNT(*) DESC, t.value",
                params,
            ).fetchall()
        facets: dict[str, dict[str, int]] = {}
        for key, value, n in rows:
            facets.setdefault(key, {})[value] = int(n)
        return facets

    def count_tags_sync(
        self, ids: Sequence[str], keys: Sequence[str] | None = None
    ) -> dict[str, dict[str, int]]:
        """One GROUP BY over the tags table's rows of those products (its primary key leads
        with the product id), rather than loading the products."""
        if not ids:
            return {}
        where = ""
        params: list[Any] = [json.dumps(list(dict.fromkeys(ids)))]
        if keys is not None:
            where = " AND t.key IN (SELECT value FROM json_each(?))"
            params.append(json.dumps(list(keys)))
        with self._read() as conn:
            rows = conn.execute(
                "SELECT t.key, t.value, COUNT(*) FROM tags t "
                f"WHERE t.product_id IN (SELECT value FROM json_each(?)){where} "
                "GROUP BY t.key, t.value",
                params,
            ).fetchall()
        counts: dict[str, dict[str, int]] = {}
        for key, value, n in rows:
            counts.setdefault(key, {})[value] = int(n)
        return counts

    def search_text_sync(
        self, text: str, top_k: int, filter: ProductFilter | None = None
    ) -> LexicalHits:
        """From the BM25 snapshot when it is of the current lexical generation (the same
        ranking and scores as FTS5, see ``bm25_snapshot``), from FTS5 otherwise (and a new
        snapshot is built in the background). Each variant of the query
        (``stores.synonyms``) is searched; a product keeps its best weighted score."""
        variants = self._synonyms.variants(text)
        if variants[0].terms.is_empty or top_k < 1:
            return []
        where, params = _filter_sql(filter, "l.product_id")
        with self._read() as conn:
            found = self._from_snapshot(conn, variants, top_k, filter)
            if found is not None:
                return found
            self._build_bm25_soon()
            sql = _FTS5_FILTERED.format(where=where) if params else _FTS5_TOP
            best: dict[int, tuple[float, Sequence[Any]]] = {}
            for variant in variants:
                for row in conn.execute(sql, [fts5_query(variant.terms), *params, top_k]):
                    score = float(row[2]) * variant.weight  # (x * 1.0 is x)
                    if row[0] not in best or score > best[row[0]][0]:
                        best[row[0]] = (score, row)
        top = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[0]))[:top_k]
        return [
            LexicalHit(
                product_id=pid,
                score=score,
                matched=max(v.matched_share(f"{n} {d} {t}".split()) for v in variants),
                name=product_name,
            )
            for _, (score, (_, pid, _, n, d, t, product_name)) in top
        ]

    def search_text_now(
        self, text: str, top_k: int, filter: ProductFilter | None = None
    ) -> LexicalHits | None:
        """``search_text_sync`` when the connection is open and free and the BM25 snapshot is
        current (well under a millisecond); None otherwise (FTS5 or a wait: a thread's job)."""
        variants = self._synonyms.variants(text)
        if variants[0].terms.is_empty or top_k < 1:
            return []
        if self._bm25 is None or not self._lock.acquire(blocking=False):
            return None
        try:
            if self._conn is None:  # opening it is left to a thread
                return None
            return self._from_snapshot(self._conn, variants, top_k, filter)
        finally:
            self._lock.release()

    def _from_snapshot(
        self,
        conn: sqlite3.Connection,
        variants: Sequence[Variant],
        top_k: int,
        flt: ProductFilter | None,
    ) -> LexicalHits | None:
        """The BM25 snapshot's answer, None when it is not of the current lexical generation.
        Lock held."""
        snapshot = self._bm25
        if snapshot is None or snapshot.generation != _lexical_generation(conn):
            return None
        allowed = None
        where, params = _filter_sql(flt, "l.product_id")
        if params:
            sql = f"SELECT l.rowid FROM lexical_ids l WHERE {where}"
            allowed = snapshot.positions([r[0] for r in conn.execute(sql, params)])
        return snapshot.search(variants, top_k, allowed)

    def _build_bm25_soon(self) -> None:
        """Start building a snapshot in a thread, unless one is being built or the last
        started less than BM25_REBUILD_INTERVAL_S ago. Lock held."""
        now = time.monotonic()
        building = self._bm25_builder is not None and self._bm25_builder.is_alive()
        if building or now - self._bm25_started < BM25_REBUILD_INTERVAL_S:
            return
        self._bm25_started = now
        self._bm25_builder = threading.Thread(
            target=self._build_bm25_quietly, name="bm25-snapshot", daemon=True
        )
        self._bm25_builder.start()

    def _build_bm25_quietly(self) -> None:
        with contextlib.suppress(Exception):  # searches keep using FTS5
            self.build_bm25_snapshot_sync()

    def build_bm25_snapshot_sync(self) -> bool:
        """Read the lexical index into a new BM25 snapshot (one read transaction, on a
        connection of its own so searches are not held up; under the lock for an in-memory
        catalog, which has no other connection). False when the catalog is too large."""
        with self._read() as conn:
            if self.path == ":memory:":
                snapshot = _read_bm25_snapshot(conn)
                self._bm25 = snapshot
                return snapshot is not None
        side = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        try:
            side.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            side.execute("BEGIN")
            try:
                snapshot = _read_bm25_snapshot(side)
            finally:
                side.execute("COMMIT")
        finally:
            side.close()
        self._bm25 = snapshot
        return snapshot is not None

    def indexed_hashes_sync(self, encoder_id: str) -> dict[str, str]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT product_id, content_hash FROM ledger WHERE encoder_id = ?", (encoder_id,)
            ).fetchall()
        return {pid: digest for pid, digest in rows}

    def ledger_entries_sync(
        self, encoder_ids: Sequence[str], ids: Sequence[str]
    ) -> dict[str, dict[str, str]]:
        if not encoder_ids or not ids:
            return {}
        with self._read() as conn:
            rows = conn.execute(
                "SELECT encoder_id, product_id, content_hash FROM ledger "
                "WHERE encoder_id IN (SELECT value FROM json_each(?)) "
                "AND product_id IN (SELECT value FROM json_each(?))",
                (json.dumps(list(encoder_ids)), json.dumps(list(dict.fromkeys(ids)))),
            ).fetchall()
        entries: dict[str, dict[str, str]] = {}
        for encoder_id, pid, digest in rows:
            entries.setdefault(encoder_id, {})[pid] = digest
        return entries

    def ledger_page_sync(self, encoder_id: str, after: str | None, limit: int) -> dict[str, str]:
        if limit < 1:
            raise BadInput(f"limit must be at least 1, got {limit}")
        with self._read() as conn:
            rows = conn.execute(
                "SELECT product_id, content_hash FROM ledger WHERE encoder_id = ? "
                "AND product_id > ? ORDER BY product_id LIMIT ?",
                (encoder_id, after if after is not None else "", limit),
            ).fetchall()
        return {pid: digest for pid, digest in rows}

    def forget_indexed_sync(self, ids: Sequence[str], encoder_id: str | None = None) -> None:
        if not ids:
            return
        where = "product_id IN (SELECT value FROM json_each(?))"
        params: list[Any] = [json.dumps(list(dict.fromkeys(ids)))]
        if encoder_id is not None:
            where += " AND encoder_id = ?"
            params.append(encoder_id)
        with self._write() as conn:
            conn.execute(f"DELETE FROM ledger WHERE {where}", params)

    def mark_indexed_sync(self, encoder_id: str, hashes: Mapping[str, str]) -> None:
        if not hashes:
            return
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO ledger (encoder_id, product_id, content_hash) VALUES (?, ?, ?) "
                "ON CONFLICT (encoder_id, product_id) DO UPDATE "
                "SET content_hash = excluded.content_hash",
                [(encoder_id, pid, digest) for pid, digest in hashes.items()],
            )

    def close_sync(self) -> None:
        builder = self._bm25_builder
        if builder is not None:
            builder.join()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _lexical_generation(conn: sqlite3.Connection) -> int:
    generation: int = conn.execute("SELECT n FROM lexical_generation").fetchone()[0]
    return generation


def _read_bm25_snapshot(conn: sqlite3.Connection) -> Bm25Snapshot | None:
    """The lexical index as a BM25 snapshot (None when the catalog is too large); in a
    read transaction."""
    count = conn.execute("SELECT count(*) FROM lexical_ids").fetchone()[0]
    if count > BM25_SNAPSHOT_MAX_PRODUCTS:
        return None
    return Bm25Snapshot.read(conn, _lexical_generation(conn))


def _forget_lexical(conn: sqlite3.Connection, ids: Sequence[str]) -> None:
    """Remove the products' rows of the lexical index, and bump the lexical generation
    (every lexical write comes through here), so BM25 snapshots of the previous state are
    no longer used, in this process and in any other. Write transaction held."""
    conn.execute("UPDATE lexical_generation SET n = n + 1")
    conn.execute(
        "DELETE FROM products_fts WHERE rowid IN (SELECT rowid FROM lexical_ids "
        "WHERE product_id IN (SELECT value FROM json_each(?)))",
        (json.dumps(list(ids)),),
    )


def _write_lexical(conn: sqlite3.Connection, products: Sequence[Product]) -> None:
    """(Re)index the products' words. Write transaction held."""
    if not products:
        return
    ids = [p.id for p in products]
    _forget_lexical(conn, ids)
    conn.executemany(
        "INSERT INTO lexical_ids (product_id) VALUES (?) ON CONFLICT (product_id) DO NOTHING",
        [(pid,) for pid in ids],
    )
    rowids = dict(
        conn.execute(
            "SELECT product_id, rowid FROM lexical_ids "
            "WHERE product_id IN (SELECT value FROM json_each(?))",
            (json.dumps(ids),),
        ).fetchall()
    )
    rows = []
    for product in products:
        words = ProductTerms.of(product)
        rows.append((rowids[product.id], words.name, words.description, words.tags))
    conn.executemany(
        "INSERT INTO products_fts (rowid, name, description, tags) VALUES (?, ?, ?, ?)", rows
    )
