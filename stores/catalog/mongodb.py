"""Catalog on MongoDB (or MongoDB Atlas) through PyMongo's async API.

Documents of the ``products`` collection::

    {"_id": <product id>, "name": ..., "description": ... | None,
     "tags": {<tag key>: <value>, ...}, "tag_keys": [<tag key>, ...], "image_keys": [...],
     "colour": <the photo's colour histogram: base64 of its float32 bytes> | None,
     "lexical": {"name": <terms>, "description": <terms>, "tags": <terms>}}

Filters are pushed down as ``tags.<key>`` conditions and each tag key gets an ascending index
the first time it is seen (up to ``max_tag_indexes`` keys; MongoDB allows 64 indexes per
collection). Tag keys are stored as field names with ``%``, ``.`` and a leading ``$`` escaped
(``%25``, ``%2E``, ``%24``), so any key works in paths. ``tag_keys`` keeps the original keys so
facets over every key need no ``$objectToArray``. Listings page by ``_id`` (a position, not a
snapshot). The ingest ledger lives in its own collection, one document per (encoder,
product).

Lexical search uses a ``$text`` index (named ``lexical``) over the ``lexical`` fields: the
product's words as ``stores.lexical`` makes them (folded, stemmed, compounds joined, the same
terms as the embedded FTS5 index), so the index runs with ``default_language: "none"`` (no
server-side stemming or stop words to disagree with). MongoDB matches any of the words and
ranks by ``textScore`` with the name weighted higher; a query with synonyms
(``stores.synonyms``) is one ``$text`` query per variant. See docs/production.md for how
other servers speaking the protocol differ.

Every call is bounded by ``timeout_s`` (server selection, connect, socket and PyMongo's
client-side operation timeout); a server that cannot be reached or does not answer in time
raises ``UpstreamUnavailable`` naming ``MONGODB_URI``.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import json
import logging
import re
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from pymongo import ASCENDING, TEXT, AsyncMongoClient, ReplaceOne
from pymongo.errors import (
    ConfigurationError,
    ConnectionFailure,
    ExecutionTimeout,
    InvalidURI,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WTimeoutError,
)
from pymongo.uri_parser import parse_uri

from domain.errors import BadInput, StoreMisconfigured, UpstreamUnavailable
from domain.model import Cursor, LexicalHit, Product, ProductFilter, ProductPage
from domain.ports import ProductRows
from stores.lexical import (
    DESCRIPTION_WEIGHT,
    NAME_WEIGHT,
    TAGS_WEIGHT,
    ProductTerms,
)
from stores.synonyms import Lexicon, built_in

if TYPE_CHECKING:
    from pymongo.asynchronous.collection import AsyncCollection
    from pymongo.asynchronous.database import AsyncDatabase

logger = logging.getLogger(__name__)

LexicalHits = list[LexicalHit]  # (the classes' own ``list`` method shadows the builtin)
Document = dict[str, Any]

_ERRNO = re.compile(r"\[Errno (-?\d+)\]")
_UNRESOLVABLE = frozenset(
    {socket.EAI_NONAME, socket.EAI_AGAIN, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}
)
PLAIN_SCHEME = "mongodb://"
SRV_SCHEME = "mongodb+srv://"
WRITE_BATCH = 1000
BACKSTOP_MIN_S = 1.0
"""The asyncio backstop fires half a timeout (at least this) after PyMongo's own deadline."""
DEFAULT_MAX_TAG_INDEXES = 32
AUTH_ERROR_CODES = frozenset({13, 18})  # Unauthorized, AuthenticationFailed
LEXICAL_INDEX = "lexical"
LEXICAL_WEIGHTS = {
    "lexical.name": NAME_WEIGHT,
    "lexical.description": DESCRIPTION_WEIGHT,
    "lexical.tags": TAGS_WEIGHT,
}


def tag_field(key: str) -> str:
    """A tag key as a field name usable in dotted paths (reversible, see tag_key)."""
    if key == "":
        return "%"
    escaped = key.replace("%", "%25").replace(".", "%2E")
    return "%24" + escaped[1:] if escaped.startswith("$") else escaped


def tag_key(field: str) -> str:
    return "" if field == "%" else unquote(field)


def to_mongo_filter(flt: ProductFilter | None) -> Document:
    if flt is None or flt.is_empty:
        return {}
    clauses: list[Document] = [{f"tags.{tag_field(k)}": v} for k, v in sorted(flt.equals.items())]
    clauses += [
        {f"tags.{tag_field(k)}": {"$in": list(dict.fromkeys(vs))}}
        for k, vs in sorted(flt.any_of.items())
    ]
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def redact_uri(uri: str) -> str:
    """The URI without credentials or options, safe for error messages and logs."""
    without_options = uri.split("?", 1)[0]
    return re.sub(r"//[^/]*@", "//***@", without_options)


def describe_server_error(error: Exception) -> str:
    """A monitor's error in a few words: refused, unresolvable, or PyMongo's own text without
    its list of configured timeouts."""
    text = str(error).split(" (configured timeouts", 1)[0]
    found = _ERRNO.search(text)
    if found is not None:
        code = int(found[1])
        if code == errno.ECONNREFUSED:
            return "refused the connection (is MongoDB running there?)"
        if code in _UNRESOLVABLE:
            return "does not resolve (check the host name)"
    host_prefix = text.split(": ", 1)
    return host_prefix[1] if len(host_prefix) == 2 else text


def check_uri(uri: str) -> None:
    """Raise StoreMisconfigured, in one line without the URI's secrets, for a URI PyMongo
    cannot use: found when the catalog is built, not at its first request. A
    ``mongodb+srv://`` URI is checked for its syntax only (its hosts come from DNS later)."""
    if not uri.startswith((PLAIN_SCHEME, SRV_SCHEME)):
        raise StoreMisconfigured(f"MONGODB_URI must start with {PLAIN_SCHEME} or {SRV_SCHEME}")
    is_srv = uri.startswith(SRV_SCHEME)
    try:
        if is_srv:  # the same syntax; parsing it as mongodb:// skips the DNS lookup
            parsed = parse_uri(PLAIN_SCHEME + uri[len(SRV_SCHEME) :], None, warn=True)
            nodes = parsed["nodelist"]
            if len(nodes) != 1 or nodes[0][1] is not None:
                raise InvalidURI(f"{SRV_SCHEME} URIs take exactly one host name and no port")
        else:
            parse_uri(uri, warn=True)
    except InvalidURI as exc:
        raise StoreMisconfigured(f"MONGODB_URI is invalid: {exc}") from None
    except (ConfigurationError, ValueError) as exc:
        if not is_srv:  # srv-only options are refused in the mongodb:// reading
            raise StoreMisconfigured(f"MONGODB_URI is invalid: {exc}") from None


def _to_document(product: Product) -> Document:
    words = ProductTerms.of(product)
    return {
        "lexical": {"name": words.name, "description": words.description, "tags": words.tags},
        "_id": product.id,
        "name": product.name,
        "description": product.description,
        "tags": {tag_field(k): v for k, v in product.tags.items()},
        "tag_keys": list(product.tags),
        "image_keys": list(product.image_keys),
        "colour": None if product.colour is None else base64.b64encode(product.colour).decode(),
    }


def _to_product(doc: Mapping[str, Any]) -> Product:
    return Product(
        id=doc["_id"],
        name=doc.get("name") or "",
        description=doc.get("description"),
        tags={tag_key(f): str(v) for f, v in (doc.get("tags") or {}).items()},
        image_keys=tuple(doc.get("image_keys") or ()),
        colour=_colour(doc.get("colour")),
    )


class _Documents:
    """``ProductRows`` of the MongoDB catalog: documents decoded into products on demand."""

    def __init__(self, documents: dict[str, Document]) -> None:
        self._documents = documents

    def colour(self, product_id: str) -> bytes | None:
        doc = self._documents.get(product_id)
        return _colour(doc.get("colour")) if doc is not None else None

    def product(self, product_id: str) -> Product | None:
        doc = self._documents.get(product_id)
        return _to_product(doc) if doc is not None else None


def _colour(value: Any) -> bytes | None:
    """A stored histogram (None for documents written before histograms were stored).
    Base64 text rather than BSON binary: every MongoDB-compatible server stores it."""
    return base64.b64decode(value) if value is not None else None


def _lexical_terms(doc: Mapping[str, Any]) -> list[str]:
    fields = doc.get("lexical") or {}
    return " ".join(str(fields.get(k) or "") for k in ("name", "description", "tags")).split()


def _ledger_id(encoder_id: str, product_id: str) -> str:
    return json.dumps([encoder_id, product_id], ensure_ascii=False)


class MongoCatalog:
    """The Catalog port on one MongoDB database."""

    def __init__(
        self,
        uri: str,
        db_name: str = "fashion_search",
        *,
        timeout_s: float = 5.0,
        products_collection: str = "products",
        ledger_collection: str = "ingest_ledger",
        max_tag_indexes: int = DEFAULT_MAX_TAG_INDEXES,
        client_options: Mapping[str, Any] | None = None,
        synonyms: Lexicon | None = None,
    ) -> None:
        """``client_options`` go to ``AsyncMongoClient`` as they are (TLS files, event
        listeners, ...); options in the URI work too. ``synonyms``: the lexicon query words
        are expanded with (default: the built-in one, ``stores.synonyms``)."""
        check_uri(uri)
        if not db_name:
            raise StoreMisconfigured("MONGODB_DB is empty")
        self._uri = uri
        self._db_name = db_name
        self._timeout = timeout_s
        self._products_name = products_collection
        self._ledger_name = ledger_collection
        self._max_tag_indexes = max_tag_indexes
        self._client_options = dict(client_options or {})
        self._synonyms = synonyms if synonyms is not None else built_in()
        self._client: AsyncMongoClient[Document] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._setup_done = False
        self._indexed_fields: set[str] = set()

    # -- plumbing ------------------------------------------------------------------------

    @property
    def database_name(self) -> str:
        return self._db_name

    @property
    def where(self) -> str:
        return f"MONGODB_URI={redact_uri(self._uri)}"

    def _database(self) -> AsyncDatabase[Document]:
        """The client of the running event loop (an AsyncMongoClient serves one loop)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            timeout_ms = max(1, int(self._timeout * 1000))
            try:
                self._client = AsyncMongoClient(
                    self._uri,
                    appname="fashion-search",
                    serverSelectionTimeoutMS=timeout_ms,
                    connectTimeoutMS=timeout_ms,
                    socketTimeoutMS=timeout_ms,
                    timeoutMS=timeout_ms,
                    **self._client_options,
                )
            except ConfigurationError as exc:
                raise StoreMisconfigured(f"MONGODB_URI is invalid: {exc}") from exc
            self._loop = loop
            self._setup_done = False
            self._indexed_fields = set()
        return self._client[self._db_name]

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        """Translate failures, and bound the call. PyMongo ends it at ``timeout_s`` (its
        timeoutMS and server selection timeout; selection waits in steps of half a second, so
        up to 0.5 s late). The asyncio deadline is only a backstop, half a timeout later:
        cancelling PyMongo while its own timeout is being handled (on Python 3.11, a
        cancellation landing in ``asyncio.wait_for``'s clean-up) leaves its topology lock
        held for ever, and the client never selects a server again (found by
        tests/reliability/test_backend_faults.py: no call recovered after a restart, and
        closing the client hung)."""
        try:
            async with asyncio.timeout(self._timeout + max(BACKSTOP_MIN_S, self._timeout / 2)):
                yield
        except (TimeoutError, ServerSelectionTimeoutError, ConnectionFailure) as exc:
            # PyMongo keeps retrying a refused or unresolvable host until the deadline: its
            # monitors know why, which tells the operator what to fix.
            reason = self._unreachable_reason()
            if reason:
                raise UpstreamUnavailable(
                    f"MongoDB ({self.where}) is unreachable: {reason}"
                ) from exc
            raise UpstreamUnavailable(
                f"MongoDB ({self.where}) did not answer within {self._timeout:g}s"
            ) from exc
        except ExecutionTimeout as exc:
            raise UpstreamUnavailable(
                f"MongoDB ({self.where}) did not answer within {self._timeout:g}s"
            ) from exc
        except WTimeoutError as exc:
            raise UpstreamUnavailable(f"MongoDB ({self.where}) write timed out") from exc
        except OperationFailure as exc:
            if exc.code in AUTH_ERROR_CODES:
                raise UpstreamUnavailable(
                    f"MongoDB ({self.where}) rejected the credentials in MONGODB_URI"
                ) from exc
            if exc.timeout:
                raise UpstreamUnavailable(f"MongoDB ({self.where}) timed out") from exc
            raise
        except PyMongoError as exc:
            if exc.timeout:
                raise UpstreamUnavailable(f"MongoDB ({self.where}) timed out") from exc
            raise

    def _unreachable_reason(self) -> str:
        """Why no server could be selected, from what PyMongo's monitors last saw of each
        host (a refused connection, a name that does not resolve, a replica set of another
        name); empty when they saw nothing wrong (a slow server)."""
        if self._client is None:
            return ""
        topology = self._client.topology_description
        servers = topology.server_descriptions()
        reasons = [
            f"{host}:{port} {describe_server_error(server.error)}"
            for (host, port), server in servers.items()
            if server.error is not None
        ]
        if not reasons and topology.replica_set_name and not servers:
            reasons.append(
                f"no server answered as a member of replica set {topology.replica_set_name!r} "
                "(check replicaSet in MONGODB_URI)"
            )
        return "; ".join(reasons)

    async def _collections(
        self,
    ) -> tuple[AsyncCollection[Document], AsyncCollection[Document]]:
        db = self._database()
        products, ledger = db[self._products_name], db[self._ledger_name]
        if not self._setup_done:
            async with self._guard():
                await ledger.create_index([("encoder", ASCENDING)])
                await ledger.create_index([("product", ASCENDING)])
                # the ledger read in pages, in product id order per encoder
                await ledger.create_index([("encoder", ASCENDING), ("product", ASCENDING)])
            await self._create_lexical_index(products)
            self._setup_done = True
        return products, ledger

    async def _create_lexical_index(self, products: AsyncCollection[Document]) -> None:
        """The ``$text`` index (MongoDB: a no-op when it exists with the same options)."""
        try:
            async with self._guard():
                await products.create_index(
                    [(name, TEXT) for name in LEXICAL_WEIGHTS],
                    weights={name: int(w) for name, w in LEXICAL_WEIGHTS.items()},
                    default_language="none",
                    name=LEXICAL_INDEX,
                )
        except OperationFailure as exc:  # nx-27017 refuses to create it again
            logger.info("text index %r not (re)created: %s", LEXICAL_INDEX, exc)

    async def _index_tag_fields(
        self, products: AsyncCollection[Document], fields: set[str]
    ) -> None:
        for field in sorted(fields - self._indexed_fields):
            if len(self._indexed_fields) >= self._max_tag_indexes:
                logger.warning(
                    "not indexing tag %r: already %d tag indexes",
                    tag_key(field),
                    len(self._indexed_fields),
                )
                self._indexed_fields.add(field)
                continue
            try:
                async with self._guard():
                    await products.create_index([(f"tags.{field}", ASCENDING)])
            except OperationFailure as exc:  # e.g. a server that restricts index names
                logger.warning("could not index tag %r: %s", tag_key(field), exc)
            self._indexed_fields.add(field)

    # -- the port ------------------------------------------------------------------------

    async def check(self) -> None:
        """Fails with UpstreamUnavailable naming MONGODB_URI when the database is unusable."""
        db = self._database()
        async with self._guard():
            await db.command("ping")
        await self._collections()

    async def upsert_many(self, products: Sequence[Product]) -> None:
        if not products:
            return
        latest = {p.id: p for p in products}  # the last occurrence of an id wins
        coll, _ = await self._collections()
        await self._index_tag_fields(coll, {tag_field(k) for p in latest.values() for k in p.tags})
        docs = [_to_document(p) for p in latest.values()]
        for start in range(0, len(docs), WRITE_BATCH):  # the deadline is per request
            chunk = docs[start : start + WRITE_BATCH]
            async with self._guard():
                await coll.bulk_write(
                    [ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in chunk], ordered=False
                )

    async def get(self, product_id: str) -> Product | None:
        coll, _ = await self._collections()
        async with self._guard():
            doc = await coll.find_one({"_id": product_id})
        return _to_product(doc) if doc is not None else None

    async def get_many(self, ids: Sequence[str]) -> dict[str, Product]:
        return {pid: _to_product(doc) for pid, doc in (await self._documents(ids)).items()}

    async def get_rows(self, ids: Sequence[str]) -> ProductRows:
        """The documents of ``get_many``, decoded into products only when asked for."""
        return _Documents(await self._documents(ids))

    async def _documents(self, ids: Sequence[str]) -> dict[str, Document]:
        unique = list(dict.fromkeys(ids))
        if not unique:
            return {}
        coll, _ = await self._collections()
        async with self._guard():
            cursor = coll.find({"_id": {"$in": unique}}, batch_size=len(unique))
            found = {doc["_id"]: doc async for doc in cursor}
        return {pid: found[pid] for pid in unique if pid in found}

    async def delete(self, product_id: str) -> bool:
        coll, ledger = await self._collections()
        async with self._guard():
            result = await coll.delete_one({"_id": product_id})
            await ledger.delete_many({"product": product_id})
        return result.deleted_count > 0

    async def list(
        self, filter: ProductFilter | None = None, cursor: str | None = None, limit: int = 20
    ) -> ProductPage:
        if limit < 1:
            raise BadInput("limit must be at least 1")
        after = Cursor.decode(cursor).after_id
        query = to_mongo_filter(filter)
        if after is not None:
            query = {"$and": [query, {"_id": {"$gt": after}}]} if query else {"_id": {"$gt": after}}
        coll, _ = await self._collections()
        async with self._guard():
            found = coll.find(query).sort("_id", ASCENDING).limit(limit + 1)
            docs = [doc async for doc in found]
        items = tuple(_to_product(d) for d in docs[:limit])
        more = len(docs) > limit
        return ProductPage(
            items=items, next_cursor=Cursor(after_id=items[-1].id).encode() if more else None
        )

    async def count(self, filter: ProductFilter | None = None) -> int:
        coll, _ = await self._collections()
        async with self._guard():
            return await coll.count_documents(to_mongo_filter(filter))

    async def facets(
        self, keys: Sequence[str] | None = None, filter: ProductFilter | None = None
    ) -> dict[str, dict[str, int]]:
        match = to_mongo_filter(filter)
        coll, _ = await self._collections()
        async with self._guard():
            if keys is None:
                keys = sorted(str(k) for k in await coll.distinct("tag_keys", match))
            keys = list(dict.fromkeys(keys))
            if not keys:
                return {}
            branches = {
                f"k{i}": [{"$group": {"_id": f"$tags.{tag_field(key)}", "n": {"$sum": 1}}}]
                for i, key in enumerate(keys)
            }
            pipeline: list[Document] = [{"$match": match}, {"$facet": branches}]
            rows = [row async for row in await coll.aggregate(pipeline)]
        result: dict[str, dict[str, int]] = {}
        buckets = rows[0] if rows else {}
        for i, key in enumerate(keys):
            counts = {
                str(group["_id"]): int(group["n"])
                for group in buckets.get(f"k{i}", [])
                if group.get("_id") is not None
            }
            if counts:
                result[key] = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        return result

    async def search_text(
        self, text: str, top_k: int, filter: ProductFilter | None = None
    ) -> LexicalHits:
        """Each variant of the query (``stores.synonyms``) is one ``$text`` query, one after
        the other (PyMongo is not cancelled halfway, see ``_guard``); a product keeps its best
        weighted score."""
        variants = self._synonyms.variants(text)
        if variants[0].terms.is_empty or top_k < 1:
            return []
        score: Document = {"$meta": "textScore"}
        coll, _ = await self._collections()
        best: dict[str, tuple[float, Document]] = {}
        async with self._guard():
            for variant in variants:
                match: Document = {
                    "$text": {"$search": " ".join(variant.terms.all())},
                    **to_mongo_filter(filter),
                }
                found = coll.find(match, {"score": score, "lexical": 1, "name": 1})
                async for doc in found.sort([("score", score)]).limit(top_k):
                    weighted = float(doc["score"]) * variant.weight
                    if doc["_id"] not in best or weighted > best[doc["_id"]][0]:
                        best[doc["_id"]] = (weighted, doc)
        top = sorted(best.values(), key=lambda hit: -hit[0])[:top_k]  # stable: ties as found
        return [
            LexicalHit(
                product_id=doc["_id"],
                score=weighted,
                matched=max(v.matched_share(_lexical_terms(doc)) for v in variants),
                name=str(doc.get("name") or ""),
            )
            for weighted, doc in top
        ]

    async def indexed_hashes(self, encoder_id: str) -> dict[str, str]:
        _, ledger = await self._collections()
        async with self._guard():
            found = ledger.find({"encoder": encoder_id}, {"product": 1, "hash": 1})
            return {doc["product"]: doc["hash"] async for doc in found}

    async def ledger_entries(
        self, encoder_ids: Sequence[str], ids: Sequence[str]
    ) -> dict[str, dict[str, str]]:
        unique = list(dict.fromkeys(ids))
        if not encoder_ids or not unique:
            return {}
        _, ledger = await self._collections()
        wanted = [_ledger_id(e, pid) for e in dict.fromkeys(encoder_ids) for pid in unique]
        entries: dict[str, dict[str, str]] = {}
        async with self._guard():
            found = ledger.find({"_id": {"$in": wanted}}, batch_size=len(wanted))
            async for doc in found:
                entries.setdefault(doc["encoder"], {})[doc["product"]] = doc["hash"]
        return entries

    async def ledger_page(self, encoder_id: str, after: str | None, limit: int) -> dict[str, str]:
        if limit < 1:
            raise BadInput(f"limit must be at least 1, got {limit}")
        _, ledger = await self._collections()
        query: Document = {"encoder": encoder_id}
        if after is not None:
            query["product"] = {"$gt": after}
        async with self._guard():
            found = ledger.find(query, {"product": 1, "hash": 1}, batch_size=limit)
            found = found.sort([("encoder", ASCENDING), ("product", ASCENDING)]).limit(limit)
            return {doc["product"]: doc["hash"] async for doc in found}

    async def forget_indexed(self, ids: Sequence[str], encoder_id: str | None = None) -> None:
        unique = list(dict.fromkeys(ids))
        if not unique:
            return
        _, ledger = await self._collections()
        query: Document = {"product": {"$in": unique}}
        if encoder_id is not None:
            query["encoder"] = encoder_id
        async with self._guard():
            await ledger.delete_many(query)

    async def mark_indexed(self, encoder_id: str, hashes: Mapping[str, str]) -> None:
        if not hashes:
            return
        _, ledger = await self._collections()
        ops = [
            ReplaceOne(
                {"_id": _ledger_id(encoder_id, pid)},
                {
                    "_id": _ledger_id(encoder_id, pid),
                    "encoder": encoder_id,
                    "product": pid,
                    "hash": h,
                },
                upsert=True,
            )
            for pid, h in hashes.items()
        ]
        for start in range(0, len(ops), WRITE_BATCH):  # the deadline is per request
            async with self._guard():
                await ledger.bulk_write(ops[start : start + WRITE_BATCH], ordered=False)

    async def drop(self) -> None:
        """Delete the whole database (tests, and `reset` commands)."""
        db = self._database()
        async with self._guard():
            await db.client.drop_database(self._db_name)
        self._setup_done = False
        self._indexed_fields = set()

    async def close(self) -> None:
        client, loop = self._client, self._loop
        self._client, self._loop = None, None
        # A client can only be closed on its own event loop; one left behind by an earlier
        # loop has lost its connections with that loop already.
        if client is not None and loop is asyncio.get_running_loop():
            await client.close()
