"""Ingest throughput now against an earlier revision, interleaved on the same machine:
`fashion-search ingest` of the first N Kaggle products into a fresh home, alternately with
this checkout and with ``git archive <before>`` unpacked in a scratch folder (same venv,
same exported models), ``--rounds`` times each. On a machine shared with other work the
wall-clock rate moves with the load, so the CPU seconds the ingest process used per image
(its rusage) are reported next to it: the cost the code adds, whatever the load.

    PYTHONPATH=. .venv/bin/python -m bench.ingest_ab --before 209cd70^ --limit 300 --rounds 2
    (``--output FILE``: elsewhere than bench/results/ingest_ab.json)

The default ``--before`` is the last revision without product-text vectors (ONNX runtime
and the lexical index already in). Writes bench/results/ingest_ab.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from fashion_search.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "bench" / "results" / "ingest_ab.json"
DEFAULT_BEFORE = "209cd70^"
WARM_UP_LIMIT = 8


def unpack(revision: str, into: Path) -> str:
    """The revision's tree in ``into``; returns its short hash."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", revision], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout.decode()
    archive = subprocess.run(
        ["git", "archive", "--format=tar", revision], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return commit.strip()


def ingest(checkout: Path, home: Path, limit: int, models: Path) -> dict[str, Any]:
    """One fresh ingest; its wall time, pipeline rate and CPU seconds per image."""
    shutil.rmtree(home, ignore_errors=True)
    report = home.parent / f"{home.name}-report.json"
    env = {
        **os.environ,
        "PYTHONPATH": str(checkout),
        "FASHION_SEARCH_HOME": str(home),
        "FASHION_SEARCH_MODELS_DIR": str(models),
    }
    env.pop("FASHION_SEARCH_ENCODER", None)
    kaggle = Settings().datasets_dir / "kaggle-fashion-small.zip"
    argv = [sys.executable, "-m", "fashion_search.cli", "ingest", str(kaggle)]
    argv += ["--limit", str(limit), "--report", str(report)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, env=env, cwd=checkout, check=True, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    summary = json.loads(report.read_text())["summary"]
    images = int(summary["indexed"])
    return {
        "images": images,
        "wall_s": round(wall, 2),
        "pipeline_images_per_s": float(summary["images_per_s"]),
        "cpu_s": round(cpu, 2),
        "cpu_ms_per_image": round(1000 * cpu / max(images, 1), 2),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=DEFAULT_BEFORE)
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/fs-bench/ingest-ab"))
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--note", default="", help="what else ran on the machine")
    args = parser.parse_args()
    work: Path = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    models = work / "models"
    checkouts = {"now": REPO_ROOT, "before": work / "before-tree"}
    revisions = {"before": unpack(args.before, checkouts["before"])}
    revisions["now"] = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name, checkout in checkouts.items():  # exports the models once, outside the timing
        ingest(checkout, work / f"warm-{name}", WARM_UP_LIMIT, models)
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "now": []}
    for _ in range(args.rounds):
        for name in ("before", "now"):
            runs[name].append(ingest(checkouts[name], work / f"home-{name}", args.limit, models))
            print(name, runs[name][-1], flush=True)

    def median(name: str, key: str) -> float:
        return round(float(statistics.median(r[key] for r in runs[name])), 2)

    result = {
        "benchmark": "ingest_ab",
        "revisions": {k: v.strip() for k, v in revisions.items()},
        "limit": args.limit,
        "rounds": args.rounds,
        "runs": runs,
        "pipeline_images_per_s": {n: median(n, "pipeline_images_per_s") for n in runs},
        "cpu_ms_per_image": {n: median(n, "cpu_ms_per_image") for n in runs},
        "ratio_pipeline_now_to_before": round(
            median("now", "pipeline_images_per_s") / median("before", "pipeline_images_per_s"), 3
        ),
        "ratio_cpu_before_to_now": round(
            median("before", "cpu_ms_per_image") / median("now", "cpu_ms_per_image"), 3
        ),
        "note": args.note,
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
