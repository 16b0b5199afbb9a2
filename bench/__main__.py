"""`python -m bench [latency|ingest|index|coldstart|soak|report] [options]`.

`soak` is the hostile soak (issue 16): `python -m bench.soak --hostile --duration 600` with
any further `bench.soak` options (`--duration 120`, `--clients 16`, ...); it writes
bench/results/soak-hostile.json. It is not part of the default run.

With no benchmark named, all four run in turn at full size (what `make bench` does); each
writes bench/results/<name>.json and prints its table. `report` prints the tables of the
stored results (`--markdown` for the README)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.catalog import TreeCatalog
from bench.common import (
    DEFAULT_WORK_DIR,
    RESULTS_DIR,
    EncoderChoice,
    Result,
    choose_encoder,
    console,
    datasets_dir,
    load_average,
    write_result,
)

ALL = ("latency", "ingest", "index", "coldstart")
SOAK_DEFAULTS = ("--hostile", "--duration", "600")
"""`python -m bench soak`: 16 clients for 10 minutes, hostile requests mixed in."""


def _sizes(text: str) -> list[int]:
    return [int(part.replace("_", "")) for part in text.split(",") if part.strip()]


def _limit(text: str) -> int | None:
    return None if text in ("", "all", "none") else int(text)


def _kinds(text: str) -> list[str]:
    from bench.latency import KIND_LABELS

    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KIND_LABELS))
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"query kinds are some of {', '.join(KIND_LABELS)}")
    return kinds


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--work-dir",
        type=Path,
        default=DEFAULT_WORK_DIR,
        help="Scratch data directories (reused between runs).",
    )
    common.add_argument(
        "--datasets",
        type=Path,
        default=None,
        help="Datasets folder (default: settings' datasets_dir).",
    )
    common.add_argument(
        "--encoder",
        default=None,
        help="Encoder id (default: fashion-lite; stand-in heads of the same shapes when the trained ones are missing).",
    )
    common.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    common.add_argument(
        "--no-write", action="store_true", help="Print only; do not write the results file."
    )

    root = argparse.ArgumentParser(prog="python -m bench", description=__doc__, parents=[common])
    sub = root.add_subparsers(dest="command")

    latency = sub.add_parser("latency", parents=[common], help="Query latency over a real server.")
    latency.add_argument(
        "--servers",
        default="1x0,1x1,2x1",
        help="Server configurations, WORKERSxTORCH_THREADS (0: torch's default), comma-separated.",
    )
    latency.add_argument(
        "--kaggle-limit",
        type=_limit,
        default=None,
        help="Products from the Kaggle zip (default: all).",
    )
    latency.add_argument(
        "--hm-limit", type=_limit, default=None, help="Products from hm-dev (default: all)."
    )
    latency.add_argument(
        "--requests", type=int, default=200, help="Requests per phase with 1 client."
    )
    latency.add_argument(
        "--concurrent-requests",
        type=int,
        default=400,
        help="Requests per phase with concurrent clients.",
    )
    latency.add_argument("--concurrency", type=int, default=8)
    latency.add_argument(
        "--kinds",
        type=_kinds,
        default="graphql_text,rest_text,graphql_image",
        help="Query kinds, comma-separated: graphql_text (HYBRID, the default mode), "
        "graphql_text_visual (the same texts in mode VISUAL), rest_text, graphql_image.",
    )
    latency.add_argument(
        "--prepare-only",
        action="store_true",
        help="Only ingest (or check) the catalog and stop, writing no results: run it under "
        "`nice -n 10`, then time under `flock /work/bench.lock` with the catalog in place.",
    )
    latency.add_argument(
        "--baseline-tree",
        type=Path,
        default=None,
        help="Also time the servers of this checkout (e.g. the revision an issue was filed at: "
        "git worktree add --detach DIR REV) on the catalog its own code prepares in "
        "--baseline-work-dir, taking turns with this checkout's; only its text search "
        "(graphql_text) is asked.",
    )
    latency.add_argument(
        "--baseline-kinds",
        type=_kinds,
        default="graphql_text",
        help="What the baseline's server is asked (a revision before hybrid search has no mode "
        "VISUAL: graphql_text only).",
    )
    latency.add_argument(
        "--baseline-work-dir",
        type=Path,
        default=None,
        help="Scratch folder of the baseline's catalog (default: WORK_DIR/baseline).",
    )
    latency.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="With --baseline-tree: rounds of (baseline, this), the order flipped each round.",
    )
    latency.add_argument(
        "--stage-repeats",
        type=int,
        default=200,
        help="Queries timed for the encoder and the index alone.",
    )

    ingest = sub.add_parser(
        "ingest", parents=[common], help="Ingest throughput vs the raw encoder."
    )
    ingest.add_argument(
        "--limit", type=_limit, default=None, help="Kaggle products to ingest (default: all)."
    )
    ingest.add_argument(
        "--sample", type=int, default=1024, help="Images for the raw encoder throughput."
    )
    ingest.add_argument("--torch-threads", type=int, default=0)
    ingest.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="ray: the local engine against `ingest --engine ray` with --workers actors "
        "(results to ingest-ray.json; --limit defaults to 480 products).",
    )
    ingest.add_argument(
        "--workers", type=_sizes, default=[1, 2], help="Ray encoder actors to measure (1,2)."
    )
    ingest.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="--engine ray: rounds of (local, each --workers), interleaved so that a change in "
        "the machine's load hits every configuration alike; the median rate is compared.",
    )

    index = sub.add_parser("index", parents=[common], help="FAISS adapter at scale.")
    index.add_argument("--sizes", type=_sizes, default=[100_000, 1_000_000])
    index.add_argument(
        "--dim", type=int, default=None, help="Vector dimension (default: the encoder's)."
    )
    index.add_argument("--queries", type=int, default=200)
    index.add_argument("--chunk", type=int, default=50_000, help="Vectors per upsert.")
    index.add_argument("--ef-sweep", type=_sizes, default=[64, 128, 256])
    index.add_argument(
        "--storages",
        type=lambda text: [part.strip() for part in text.split(",") if part.strip()],
        default=["float32", "float16"],
        help="HNSW storages to measure (sizes above the HNSW threshold).",
    )
    index.add_argument("--clusters", type=int, default=1000)
    index.add_argument("--rank", type=int, default=16, help="Intrinsic dimension per cluster.")
    index.add_argument("--spread", type=float, default=0.6)
    index.add_argument(
        "--noise", type=float, default=0.15, help="Isotropic noise (larger: harder)."
    )

    coldstart = sub.add_parser("coldstart", parents=[common], help="serve -> first answered query.")
    coldstart.add_argument("--runs", type=int, default=3)
    coldstart.add_argument("--kaggle-limit", type=_limit, default=None)
    coldstart.add_argument("--hm-limit", type=_limit, default=None)

    sub.add_parser(
        "soak",
        add_help=False,
        help="Hostile soak: 16 clients, 10 min, hostile requests mixed in "
        "(python -m bench.soak --hostile --duration 600 [options]; see python -m bench.soak --help).",
    )
    report = sub.add_parser("report", parents=[common], help="Print the stored results.")
    report.add_argument("--markdown", action="store_true")
    return root


def run_one(command: str, args: argparse.Namespace, encoder: EncoderChoice) -> Result:
    datasets = datasets_dir(args.datasets)
    if command == "latency":
        from bench import latency

        return latency.run(
            work_dir=args.work_dir,
            datasets=datasets,
            encoder=encoder,
            configs=latency.parse_configs(args.servers),
            kaggle_limit=args.kaggle_limit,
            hm_limit=args.hm_limit,
            requests_1=args.requests,
            requests_8=args.concurrent_requests,
            concurrency=args.concurrency,
            stage_repeats=args.stage_repeats,
            kinds=args.kinds,
            baseline=latency_baseline(args, datasets),
            baseline_kinds=args.baseline_kinds,
            rounds=args.rounds,
        )
    if command == "ingest" and args.engine == "ray":
        from bench import ingest_ray

        return ingest_ray.run(
            work_dir=args.work_dir,
            datasets=datasets,
            encoder=encoder,
            workers=args.workers,
            limit=args.limit,
            rounds=args.rounds,
        )
    if command == "ingest":
        from bench import ingest

        return ingest.run(
            work_dir=args.work_dir,
            datasets=datasets,
            encoder=encoder,
            limit=args.limit,
            sample=args.sample,
            torch_threads=args.torch_threads,
        )
    if command == "index":
        from bench import index_scale

        return index_scale.run(
            encoder=encoder,
            sizes=args.sizes,
            dim=args.dim,
            queries=args.queries,
            chunk=args.chunk,
            ef_sweep=args.ef_sweep,
            storages=args.storages,
            clusters=args.clusters,
            rank=args.rank,
            spread=args.spread,
            noise=args.noise,
        )
    if command == "coldstart":
        from bench import coldstart

        return coldstart.run(
            work_dir=args.work_dir,
            datasets=datasets,
            encoder=encoder,
            runs=args.runs,
            kaggle_limit=args.kaggle_limit,
            hm_limit=args.hm_limit,
        )
    raise ValueError(f"unknown benchmark {command!r}")


def latency_baseline(args: argparse.Namespace, datasets: Path) -> TreeCatalog | None:
    """The catalog of ``--baseline-tree``, prepared (or checked) by that checkout's code."""
    if args.baseline_tree is None:
        return None
    from bench.catalog import prepare_catalog_in_tree

    work_dir = args.baseline_work_dir or args.work_dir / "baseline"
    console.print(f"baseline: {args.baseline_tree}'s catalog in {work_dir} ...")
    return prepare_catalog_in_tree(
        args.baseline_tree.resolve(), work_dir, datasets, args.kaggle_limit, args.hm_limit
    )


def main(argv: Sequence[str] | None = None) -> int:
    from bench import report

    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["soak"]:
        from bench import soak

        return soak.main([*SOAK_DEFAULTS, *arguments[1:]])
    root = parser()
    args = root.parse_args(argv)
    if args.command == "report":
        if args.markdown:
            print(report.markdown(results_dir=args.results_dir))
        else:
            report.print_all(results_dir=args.results_dir)
        return 0
    commands = [args.command] if args.command else list(ALL)
    if args.command is None:  # defaults of every sub-command
        defaults = {
            c: root.parse_args([c, *(argv if argv is not None else sys.argv[1:])]) for c in ALL
        }
    else:
        defaults = {args.command: args}
    args.work_dir.mkdir(parents=True, exist_ok=True)
    encoder = choose_encoder(args.encoder, args.work_dir)
    if args.command == "latency" and args.prepare_only:
        from bench.catalog import catalog_home, prepare_catalog

        home = catalog_home(args.work_dir, encoder, args.kaggle_limit, args.hm_limit)
        datasets = datasets_dir(args.datasets)
        counts = prepare_catalog(home, encoder, datasets, args.kaggle_limit, args.hm_limit)
        console.print(f"catalog in {home}: {counts}")
        baseline = latency_baseline(args, datasets)
        if baseline is not None:
            console.print(f"baseline catalog in {baseline.home}: {baseline.counts}")
        return 0
    console.print(
        f"encoder: {encoder.id}{' (stand-in heads)' if encoder.standin else ''}, dim {encoder.dim}; load average {load_average()}"
    )
    for command in commands:
        result = run_one(command, defaults[command], encoder)
        result.config["command"] = " ".join(["python -m bench", *arguments])
        if not args.no_write:
            path = write_result(result, args.results_dir)
            console.print(f"wrote {path}")
        report.print_document(result.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
