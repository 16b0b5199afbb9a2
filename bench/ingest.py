"""Benchmark 2, ingest throughput: `fashion-search ingest` of the Kaggle zip into a fresh data
directory (a subprocess, as an operator runs it), next to the raw throughput of the same
encoder's ``encode_images`` (bytes in, vectors out: decoding included) measured in this
process in the same run, once before and once after the ingest (their mean is the
reference, which evens out a machine whose load drifts)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from bench.catalog import catalog_home
from bench.common import (
    EncoderChoice,
    Json,
    Result,
    app_env,
    at_least,
    console,
    info,
    kaggle_zip,
    read_ingest_report,
    run_cli,
    standin_note,
)

INGEST_BATCH = 64  # ingest's default batch size (ingest.pipeline.DEFAULT_BATCH_SIZE)


def read_sample(zip_path: Path, n: int) -> list[bytes]:
    """The first ``n`` images of the Kaggle zip, as ingest reads them."""
    from ingest.readers import open_source

    images: list[bytes] = []
    with open_source(zip_path) as source:
        for item in source:
            if len(images) >= n:
                break
            read = getattr(item.image, "read", None)
            if read is not None:
                images.append(read(10 * 1024 * 1024))
    return images


def raw_throughput(encoder: EncoderChoice, images: list[bytes], torch_threads: int) -> Json:
    """images/s of encode_images in batches of INGEST_BATCH, after one warm-up batch."""
    from fashion_search.settings import Settings
    from fashion_search.wiring import build_encoders

    model = build_encoders(Settings(encoder=encoder.id, torch_threads=torch_threads)).get(
        encoder.id
    )
    model.encode_images(images[: min(len(images), 8)])  # load + warm up
    started = time.perf_counter()
    for start in range(0, len(images), INGEST_BATCH):
        model.encode_images(images[start : start + INGEST_BATCH])
    seconds = time.perf_counter() - started
    return {
        "images": len(images),
        "seconds": round(seconds, 3),
        "images_per_s": round(len(images) / seconds, 2),
    }


def run(
    *,
    work_dir: Path,
    datasets: Path,
    encoder: EncoderChoice,
    limit: int | None = None,
    sample: int = 1024,
    torch_threads: int = 0,
    keep_home: bool = False,
) -> Result:
    zip_path = kaggle_zip(datasets)
    sample = min(sample, limit) if limit is not None else sample
    result = Result(
        name="ingest",
        config={
            "encoder": encoder.to_json(),
            "source": str(zip_path),
            "limit": limit,
            "raw_sample": sample,
            "batch_size": INGEST_BATCH,
            "torch_threads": torch_threads,
        },
        notes=standin_note(encoder),
    )
    home = work_dir / "ingest-fresh"
    shutil.rmtree(home, ignore_errors=True)

    console.print(f"[bold]ingest[/]: raw encoder throughput on {sample} Kaggle images ...")
    images = read_sample(zip_path, sample)
    before = raw_throughput(encoder, images, torch_threads)
    console.print(f"  raw before: {before['images_per_s']:.1f} images/s")

    console.print(f"  fashion-search ingest {zip_path.name} into a fresh {home} ...")
    report = work_dir / "ingest-report.json"
    args = ["ingest", str(zip_path), "--report", str(report)]
    if limit is not None:
        args += ["--limit", str(limit)]
    env = app_env(home, encoder, {"FASHION_SEARCH_TORCH_THREADS": str(torch_threads)})
    wall = run_cli(args, env, work_dir / "logs" / "ingest-fresh.log")
    summary: Json = read_ingest_report(report)["summary"]
    pipeline_ips = float(summary["images_per_s"])
    process_ips = summary["indexed"] / wall if wall > 0 else 0.0
    console.print(
        f"  end to end: {summary['indexed']:,} images, pipeline {pipeline_ips:.1f} images/s, "
        f"process {process_ips:.1f} images/s"
    )

    after = raw_throughput(encoder, images, torch_threads)
    console.print(f"  raw after: {after['images_per_s']:.1f} images/s")
    raw = (float(before["images_per_s"]) + float(after["images_per_s"])) / 2
    if not keep_home:
        catalog = catalog_home(work_dir, encoder, None, None)
        if limit is None and not catalog.exists():
            home.rename(catalog)  # the benchmark catalog's Kaggle half, ready for `latency`
        shutil.rmtree(home, ignore_errors=True)

    result.data = {
        "raw_before": before,
        "raw_after": after,
        "raw_images_per_s": round(raw, 2),
        "ingest_summary": summary,
        "process_wall_s": round(wall, 2),
        "process_images_per_s": round(process_ips, 2),
        "ratio_pipeline_to_raw": round(pipeline_ips / raw, 3),
        "ratio_process_to_raw": round(process_ips / raw, 3),
    }
    result.checks = [
        info("raw encoder throughput (mean of before/after)", raw, "img/s"),
        info(
            "ingest end to end (pipeline)",
            pipeline_ips,
            "img/s",
            f"{summary['indexed']:,} images indexed, {summary['failed']} failed",
        ),
        at_least(
            "ingest / raw encoder",
            pipeline_ips / raw,
            0.9,
            "x",
            "pipeline time (model load included)",
        ),
        info(
            "ingest / raw encoder, whole process",
            process_ips / raw,
            "x",
            "including interpreter start and imports",
        ),
    ]
    return result
