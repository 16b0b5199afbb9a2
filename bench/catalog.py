"""The benchmark catalog: the Kaggle zip and hm-dev ingested together (about 21k products)
into a scratch data directory that is reused between runs (ingest is idempotent: a rerun
reads and hashes the images, finds them in the ledger and writes nothing)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    RESULTS_DIR,
    EncoderChoice,
    Json,
    app_env,
    choose_encoder,
    console,
    hm_dev,
    kaggle_zip,
    read_ingest_report,
    run_cli,
    tree_env,
)


def catalog_home(
    work_dir: Path, encoder: EncoderChoice, kaggle_limit: int | None, hm_limit: int | None
) -> Path:
    """One data directory per encoder and size, so spaces of other encoders never load."""
    size = "full" if kaggle_limit is None and hm_limit is None else f"k{kaggle_limit}-h{hm_limit}"
    return work_dir / f"catalog-{encoder.slug}-{size}"


def prepare_catalog(
    home: Path,
    encoder: EncoderChoice,
    datasets: Path,
    kaggle_limit: int | None = None,
    hm_limit: int | None = None,
) -> Json:
    """Ingest both sources into ``home`` with the `fashion-search ingest` command; returns
    the products per source (indexed now + already there) and the ingest seconds."""
    sources = {
        "kaggle": (kaggle_zip(datasets), kaggle_limit),
        "hm-dev": (hm_dev(datasets), hm_limit),
    }
    counts: Json = {}
    env = app_env(home, encoder)
    for name, (path, limit) in sources.items():
        report = home / "reports" / f"bench-ingest-{name}.json"
        args = ["ingest", str(path), "--report", str(report)]
        if limit is not None:
            args += ["--limit", str(limit)]
        console.print(f"  ingesting {name} into {home} (reused when already done) ...")
        wall = run_cli(args, env, home / "logs" / f"ingest-{name}.log")
        summary = read_ingest_report(report)["summary"]
        counts[name] = {
            "products": summary["indexed"] + summary["skipped_unchanged"] + summary["updated"],
            "indexed_now": summary["indexed"],
            "failed": summary["failed"],
            "wall_s": round(wall, 1),
        }
    counts["total_products"] = sum(v["products"] for v in counts.values() if isinstance(v, dict))
    return counts


_PREPARE_IN_TREE = """
import json, sys
from pathlib import Path
from bench.catalog import catalog_home, prepare_catalog
from bench.common import choose_encoder
work, datasets = Path(sys.argv[1]), Path(sys.argv[2])
kaggle, hm = (None if a == "all" else int(a) for a in sys.argv[3:5])
encoder = choose_encoder(None, work)
home = catalog_home(work, encoder, kaggle, hm)
counts = prepare_catalog(home, encoder, datasets, kaggle, hm)
print(json.dumps({"home": str(home), "encoder": encoder.to_json(), "counts": counts}))
"""


@dataclass(frozen=True)
class TreeCatalog:
    """A catalog another checkout prepared with its own code (its encoder, its formats)."""

    tree: Path
    home: Path
    encoder: EncoderChoice
    counts: Json


def prepare_catalog_in_tree(
    tree: Path,
    work_dir: Path,
    datasets: Path,
    kaggle_limit: int | None = None,
    hm_limit: int | None = None,
) -> TreeCatalog:
    """``prepare_catalog`` as the checkout ``tree`` does it (its bench code, its default
    encoder, its ingest), into ``work_dir``: so that an older revision is timed on the same
    products in the catalog format it reads."""
    limits = ["all" if n is None else str(n) for n in (kaggle_limit, hm_limit)]
    work_dir.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        [sys.executable, "-c", _PREPARE_IN_TREE, str(work_dir), str(datasets), *limits],
        env={**os.environ, **tree_env(tree)},
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(
            f"preparing the catalog with {tree}'s code failed:\n{out.stderr[-2000:]}"
        )
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    return TreeCatalog(
        tree, Path(answer["home"]), EncoderChoice(**answer["encoder"]), answer["counts"]
    )


BENCH_WORK_DIR = Path("/tmp/hrel-bench")


def catalog_bench_parser(module: str, description: str | None, out: str) -> argparse.ArgumentParser:
    """The options of an in-process bench on the latency bench's catalog: ``--work-dir``
    (where ``python -m bench latency`` built it), ``--home`` (another catalog) and ``--out``
    (the result file, ``out`` in bench/results by default)."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("--work-dir", type=Path, default=BENCH_WORK_DIR)
    parser.add_argument("--home", type=Path, default=None, help="A catalog's data directory.")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / out)
    return parser


@dataclass(frozen=True)
class BenchCatalog:
    home: Path
    encoder: EncoderChoice
    command: str
    """The command line that reproduces the run (for the result file)."""


def bench_catalog(
    args: argparse.Namespace, module: str, argv: Sequence[str] | None
) -> BenchCatalog | None:
    """The catalog the parsed options name, None (said on the console) when it is not built."""
    encoder = choose_encoder(None, args.work_dir)
    home = args.home or catalog_home(args.work_dir, encoder, None, None)
    if not (home / "catalog.sqlite3").is_file():
        console.print(f"no catalog in {home}: run `python -m bench latency` first")
        return None
    words = sys.argv[1:] if argv is None else argv
    command = f"PYTHONPATH=. .venv/bin/python -m {module} " + " ".join(words)
    return BenchCatalog(home, encoder, command.strip())
