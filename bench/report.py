"""Tables from the results files: Rich tables for the terminal, Markdown for the README."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rich.table import Table

from bench.common import RESULTS_DIR, Check, Json, checks_table, console, fmt

ORDER = ("latency", "ingest", "index", "coldstart")
TITLES = {
    "latency": "1. Query latency (real server, loopback client)",
    "ingest": "2. Ingest throughput (Kaggle zip, fresh data directory)",
    "index": "3. Index scale (FAISS adapter, clustered synthetic vectors)",
    "coldstart": "4. Cold start (fashion-search serve -> first answer)",
}


def load(name: str, results_dir: Path = RESULTS_DIR) -> Json | None:
    path = results_dir / f"{name}.json"
    if not path.is_file():
        return None
    document: Json = json.loads(path.read_text())
    return document


def checks_of(document: Json) -> list[Check]:
    return [Check(**c) for c in document["checks"]]


def latency_table(document: Json) -> Table:
    table = Table(title="Latency per phase (ms) and throughput", title_justify="left")
    for column in ("server", "query", "clients", "p50", "p95", "p99", "q/s", "errors"):
        table.add_column(column, justify="left" if column in ("server", "query") else "right")
    for run in document["data"]["runs"]:
        for phase in run["phases"]:
            ms = phase["latency_ms"]
            table.add_row(
                run["server"],
                phase["kind"],
                str(phase["clients"]),
                fmt(ms["p50"]),
                fmt(ms["p95"]),
                fmt(ms["p99"]),
                fmt(phase["qps"]),
                str(phase["errors"]),
            )
    return table


def index_table(document: Json) -> Table:
    table = Table(title="Index scale, efSearch sweep", title_justify="left")
    for column in ("vectors", "kind", "efSearch", "p50 ms", "p99 ms", "recall@10"):
        table.add_column(column, justify="right")
    for row in document["data"]["sizes"]:
        table.add_row(
            f"{row['n']:,}",
            _kind(row),
            str(row["hnsw"]["ef_search"]) if row["kind"] == "hnsw" else "-",
            fmt(row["query_ms"]["p50"]),
            fmt(row["query_ms"]["p99"]),
            f"{row['recall_at_10']:.3f}",
        )
        for s in row["ef_sweep"]:
            table.add_row(
                "",
                "",
                str(s["ef_search"]),
                fmt(s["latency_ms"]["p50"]),
                fmt(s["latency_ms"]["p99"]),
                f"{s['recall_at_10']:.3f}",
            )
    return table


def _kind(row: Json) -> str:
    if row["kind"] == "hnsw":
        return f"hnsw, {row.get('storage', 'float32')}"
    return str(row["kind"])


def print_document(document: Json) -> None:
    name = document["benchmark"]
    load_avg = document.get("load_average_before")
    title = f"{TITLES.get(name, name)}  [dim](load average before: {load_avg})[/]"
    console.print(checks_table(title, checks_of(document)))
    if name == "latency":
        console.print(latency_table(document))
    if name == "index":
        console.print(index_table(document))
    for note in document.get("notes", []):
        console.print(f"[yellow]note:[/] {note}")


def print_all(names: Sequence[str] = ORDER, results_dir: Path = RESULTS_DIR) -> None:
    for name in names:
        document = load(name, results_dir)
        if document is not None:
            print_document(document)


# -- Markdown (the README's Performance section) -----------------------------------------------


def _md_checks(document: Json) -> list[str]:
    lines = ["| figure | measured | target | |", "|---|---:|---:|---|"]
    for check in checks_of(document):
        verdict = {True: "met", False: "**missed**", None: ""}[check.ok]
        measured = f"{fmt(check.measured)} {check.unit}".strip()
        note = f" ({check.note})" if check.note else ""
        lines.append(f"| {check.name}{note} | {measured} | {check.target} | {verdict} |")
    return lines


def _md_check_matrix(document: Json) -> list[str]:
    """Checks named ``figure [column]`` as one row per figure and one column per bracketed
    tag (the server configurations of the latency benchmark)."""
    columns: list[str] = []
    rows: dict[str, dict[str, Check]] = {}
    targets: dict[str, str] = {}
    for check in checks_of(document):
        figure, _, tag = check.name.partition(" [")
        tag = tag.rstrip("]")
        if tag not in columns:
            columns.append(tag)
        rows.setdefault(figure, {})[tag] = check
        targets[figure] = check.target
    lines = [
        "| figure | target | " + " | ".join(columns) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for figure, by_column in rows.items():
        cells = []
        for column in columns:
            found = by_column.get(column)
            if found is None:
                cells.append("")
                continue
            verdict = {True: "", False: " **missed**", None: ""}[found.ok]
            cells.append(f"{fmt(found.measured)} {found.unit}".strip() + verdict)
        lines.append(f"| {figure} | {targets[figure]} | " + " | ".join(cells) + " |")
    return lines


def _md_latency(document: Json) -> list[str]:
    lines = [
        "| server | query | clients | p50 ms | p95 ms | p99 ms | q/s | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in document["data"]["runs"]:
        for p in run["phases"]:
            ms = p["latency_ms"]
            lines.append(
                f"| {run['server']} | {p['kind']} | {p['clients']} | {fmt(ms['p50'])} | "
                f"{fmt(ms['p95'])} | {fmt(ms['p99'])} | {fmt(p['qps'])} | {p['errors']} |"
            )
    return lines


def _md_index(document: Json) -> list[str]:
    lines = [
        "| vectors | kind | efSearch | build s | memory (x raw) | p50 ms | p99 ms | recall@10 |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in document["data"]["sizes"]:
        ef = str(row["hnsw"]["ef_search"]) if row["kind"] == "hnsw" else "-"
        lines.append(
            f"| {row['n']:,} | {_kind(row)} | {ef} | {fmt(row['build_s'])} | "
            f"{row['rss_delta_ratio']:.2f} | {fmt(row['query_ms']['p50'])} | "
            f"{fmt(row['query_ms']['p99'])} | {row['recall_at_10']:.3f} |"
        )
        for s in row["ef_sweep"]:
            lines.append(
                f"| | | {s['ef_search']} | | | {fmt(s['latency_ms']['p50'])} | "
                f"{fmt(s['latency_ms']['p99'])} | {s['recall_at_10']:.3f} |"
            )
    return lines


def markdown(names: Sequence[str] = ORDER, results_dir: Path = RESULTS_DIR) -> str:
    parts: list[str] = []
    for name in names:
        document = load(name, results_dir)
        if document is None:
            continue
        machine = document["machine"]
        parts.append(f"#### {TITLES.get(name, name)}")
        parts.append("")
        parts.append(
            f"Measured {document['started_at'][:16].replace('T', ' ')} UTC at commit "
            f"`{machine.get('git_commit')}`, {machine.get('cpus')} cores, load average before "
            f"{document.get('load_average_before')}."
        )
        parts.append("")
        if name == "latency":
            parts += _md_check_matrix(document)
            parts += ["", *_md_latency(document)]
        else:
            parts += _md_checks(document)
        if name == "index":
            parts += ["", *_md_index(document)]
        for note in document.get("notes", []):
            parts += ["", f"Note: {note}"]
        parts.append("")
    return "\n".join(parts)
