"""ONNX Runtime against torch for the default encoder (issue 19), in one run:

- encoding at batch 1 on one thread: one image (bytes to vector) and one query text, each
  runtime in a process of its own (``encoders.cost.measure_cost``);
- ingest throughput: `fashion-search ingest` of the same hm-demo products into a new data
  directory, images per second of wall time (exports made beforehand, not counted);
- cold start: from spawning `fashion-search serve --workers 1` to the first answered
  searchByText, then to the first answered searchByImage (an upload sent right after the text
  answer: the image tower warms up in the background meanwhile), with the runtime venv's own
  `fashion-search` when one is given, so that the ONNX figure is the one a torch-less
  install gets; the runtimes' runs alternate, so both see the same load;
- sizes: the runtime venv (`make runtime`: `pip install .`, no extras), the dev venv, the
  exported models.

Run: ``python -m bench.onnx [--runtime-venv .venv-runtime]``; results go to
bench/results/onnx.json. ``--photos hm-dev`` times the encoding on the latency bench's
uploads (every 150th hm-dev photo, 240x360 JPEG: what its "encode image alone" figure
encodes, without its catalog) instead of hm-demo's 360x540 photos; ``--encode-only`` skips
ingest, cold start and sizes; ``--torch-tree DIR`` times the torch side with another
checkout's code (the revision an issue's "today" figures were measured at), so that an old
baseline and today's ONNX Runtime path are compared in one run, under the same load. The machine is shared: figures are medians of repeated runs,
and the encoding runs alternate between the runtimes (``--rounds``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.common import RESULTS_DIR, free_port, tree_revision
from bench.latency import query_image_files

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNTIMES = ("torch", "onnx")
TEXT_QUERY = "query Q($text: String!) { searchByText(text: $text, topK: 5) { hits { score } } }"
IMAGE_QUERY = (
    "query Q($image: Upload!) { searchByImage(image: {upload: $image}, topK: 5) "
    "{ hits { score } } }"
)
POLL_S = 0.05
MODELS_DIR = REPO_ROOT / ".fashion-search" / "models"

_COST = """
import json, sys
from encoders.cost import measure_cost
from fashion_search.settings import Settings
from fashion_search.wiring import build_encoders
from fashion_search.commands.encoder_commands import COST_QUERIES
from pathlib import Path
images = [Path(p).read_bytes() for p in sys.argv[2:]]
encoder = build_encoders(Settings(torch_threads=1)).get(None)
cost = measure_cost(encoder, images, COST_QUERIES, repeats=int(sys.argv[1]), threads=1)
print(json.dumps(cost.__dict__ | {"torch_imported": "torch" in sys.modules}))
"""


def _env(runtime: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["FASHION_SEARCH_ENCODER_RUNTIME"] = runtime
    env["FASHION_SEARCH_TORCH_THREADS"] = "1"
    # the models are built beforehand (by the first run), not timed in ingest or cold start
    env.setdefault("FASHION_SEARCH_MODELS_DIR", str(MODELS_DIR))
    env.update(extra)
    return env


PHOTO_SETS = ("hm-demo", "hm-dev")
"""hm-demo: its 360x540 photos, in order; hm-dev: the latency bench's uploads (240x360)."""


def photo_files(datasets: Path, photos: str, count: int) -> list[Path]:
    if photos == "hm-dev":
        return query_image_files(datasets, count)
    files = sorted((datasets / "hm-demo" / "images").glob("*.jpg"))[:count]
    if not files:
        raise SystemExit(f"no JPEG files under {datasets / 'hm-demo' / 'images'}")
    return files


def encode_cost(
    runtime: str, images: Sequence[Path], repeats: int, tree: Path = REPO_ROOT
) -> dict[str, Any]:
    """One runtime's encoding cost, measured by the code of ``tree`` (a checkout of this
    repository: this one, or an older revision's, with its own encoders and preprocessing)."""
    out = subprocess.run(
        [sys.executable, "-c", _COST, str(repeats), *map(str, images)],
        env=_env(runtime, PYTHONPATH=str(tree)),
        capture_output=True,
        text=True,
        check=True,
        cwd=tree,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _manifest(hm_demo: Path, count: int, folder: Path) -> Path:
    with (hm_demo / "products.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))[:count]
    path = folder / "products.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "image": str(hm_demo / row["image"])})
    return path


def ingest_rate(cli: str, runtime: str, manifest: Path, count: int, work: Path) -> float:
    """Images per second of `fashion-search ingest` into a new data directory."""
    home = work / f"ingest-{runtime}"
    started = time.perf_counter()
    subprocess.run(
        [cli, "ingest", str(manifest)],
        env=_env(runtime, FASHION_SEARCH_HOME=str(home)),
        capture_output=True,
        check=True,
        cwd=work,
    )
    return count / (time.perf_counter() - started)


def _answered(response: httpx.Response, field: str) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return bool(body.get("data") and body["data"][field]["hits"])


def _image_upload(client: httpx.Client, image: bytes) -> httpx.Response:
    operations = {"query": IMAGE_QUERY, "variables": {"image": None}}
    return client.post(
        "/graphql",
        data={"operations": json.dumps(operations), "map": '{"0": ["variables.image"]}'},
        files={"0": ("query.jpg", image, "image/jpeg")},
    )


def cold_start(
    cli: str, runtime: str, home: Path, image: bytes, timeout: float = 300
) -> dict[str, float]:
    """Seconds from spawning `serve` to the first searchByText answered with hits, then to
    the first searchByImage (sent right after) answered with hits."""
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen(
        [cli, "serve", "--port", str(port), "--workers", "1", "--log-level", "warning"],
        env=_env(runtime, FASHION_SEARCH_HOME=str(home)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=home.parent,
    )
    payload = {"query": TEXT_QUERY, "variables": {"text": "black dress"}}
    times: dict[str, float] = {}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=timeout) as client:
            while time.perf_counter() - started < timeout:
                if process.poll() is not None:
                    raise RuntimeError(f"serve ({runtime}) exited with {process.returncode}")
                try:
                    if "first_text_s" not in times:
                        if _answered(client.post("/graphql", json=payload), "searchByText"):
                            times["first_text_s"] = time.perf_counter() - started
                            continue
                    elif _answered(_image_upload(client, image), "searchByImage"):
                        times["first_image_s"] = time.perf_counter() - started
                        return times
                except httpx.TransportError:
                    pass
                time.sleep(POLL_S)
        raise RuntimeError(f"serve ({runtime}) did not answer within {timeout} s")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


def _median_cost(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per field, the median over rounds (numbers) or the first round's value."""
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        numbers = [r[key] for r in runs if isinstance(r[key], int | float)]
        if isinstance(value, float) and len(numbers) == len(runs):
            out[key] = round(statistics.median(numbers), 2)
        else:
            out[key] = value
    return out


def du_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def run(args: argparse.Namespace) -> dict[str, Any]:
    hm_demo = args.datasets / "hm-demo"
    dev_cli = str(Path(sys.executable).parent / "fashion-search")
    runtime_cli = (
        str(args.runtime_venv / "bin" / "fashion-search") if args.runtime_venv else dev_cli
    )
    result: dict[str, Any] = {
        "command": "python -m bench.onnx " + " ".join(args.argv),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "photos": {"set": args.photos, "count": args.count},
    }
    files = photo_files(args.datasets, args.photos, args.count)
    trees = {"torch": args.torch_tree or REPO_ROOT, "onnx": REPO_ROOT}
    result["trees"] = {runtime: tree_revision(tree) for runtime, tree in trees.items()}
    costs: dict[str, list[dict[str, Any]]] = {runtime: [] for runtime in RUNTIMES}
    for _ in range(args.rounds):  # alternating, so that both runtimes see the same load
        for runtime in RUNTIMES:
            costs[runtime].append(encode_cost(runtime, files, args.repeats, trees[runtime]))
    result["encode_batch1_1thread"] = {
        runtime: _median_cost(rounds) | {"rounds": len(rounds)} for runtime, rounds in costs.items()
    }
    if args.encode_only:
        return result
    image = sorted((hm_demo / "images").glob("*.jpg"))[0].read_bytes()
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as scratch:
        work = Path(scratch)
        manifest = _manifest(hm_demo, args.ingest, work)
        result["ingest_images_per_s"] = {
            runtime: round(
                ingest_rate(
                    runtime_cli if runtime == "onnx" else dev_cli,
                    runtime,
                    manifest,
                    args.ingest,
                    work,
                ),
                2,
            )
            for runtime in RUNTIMES
        }
        starts: dict[str, list[dict[str, float]]] = {runtime: [] for runtime in RUNTIMES}
        for _ in range(args.runs):  # alternating
            for runtime in RUNTIMES:
                cli = runtime_cli if runtime == "onnx" else dev_cli
                home = work / f"ingest-{runtime}"
                starts[runtime].append(cold_start(cli, runtime, home, image))
        result["cold_start_s"] = {
            runtime: {
                "first_text_median": round(statistics.median(r["first_text_s"] for r in runs), 2),
                "first_image_median": round(statistics.median(r["first_image_s"] for r in runs), 2),
                "runs": [{k: round(v, 2) for k, v in r.items()} for r in runs],
                "cli": runtime_cli if runtime == "onnx" else dev_cli,
            }
            for runtime, runs in starts.items()
        }
    sizes: dict[str, Any] = {"dev_venv_mb": round(du_bytes(Path(sys.prefix)) / 1e6)}
    if args.runtime_venv:
        sizes["runtime_venv_mb"] = round(du_bytes(args.runtime_venv) / 1e6)
    models = Path(os.environ.get("FASHION_SEARCH_MODELS_DIR", MODELS_DIR))
    if models.is_dir():
        sizes["exported_models_mb"] = {
            d.name: round(du_bytes(d) / 1e6, 1) for d in sorted(models.iterdir()) if d.is_dir()
        }
    result["sizes"] = sizes
    return result


def add_datasets_argument(parser: argparse.ArgumentParser) -> None:
    """``--datasets``: FASHION_SEARCH_DATASETS_DIR, else ``shared/datasets`` beside the repo."""
    parser.add_argument(
        "--datasets",
        type=Path,
        default=Path(
            os.environ.get("FASHION_SEARCH_DATASETS_DIR", REPO_ROOT.parent / "shared/datasets")
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runtime-venv", type=Path, default=None)
    add_datasets_argument(parser)
    parser.add_argument("--photos", choices=PHOTO_SETS, default="hm-demo", help="Photos to encode.")
    parser.add_argument("--count", type=int, default=20, help="Photos timed per runtime.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--rounds", type=int, default=3, help="Encoding runs per runtime, alternating."
    )
    parser.add_argument("--ingest", type=int, default=60, help="Products ingested per runtime.")
    parser.add_argument("--runs", type=int, default=5, help="Cold starts per runtime.")
    parser.add_argument(
        "--encode-only", action="store_true", help="Only the encoding at batch 1, one thread."
    )
    parser.add_argument(
        "--torch-tree",
        type=Path,
        default=None,
        help="Time the torch side with the code of this checkout (e.g. the revision an issue "
        "was filed at: git worktree add --detach DIR REV); default: this one.",
    )
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "onnx.json")
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    result = run(args)
    result["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
