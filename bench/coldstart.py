"""Benchmark 4, cold start: from spawning `fashion-search serve` (over the ~21k-product
benchmark catalog) to the first answered searchByText, then to the first answered
searchByImage (upload) once /readyz says the encoders are warm, timed against the second
one (the lifespan warm-up runs both towers, so the first should be no slower). The client polls /healthz from the moment the process is spawned
(every 50 ms) and then sends the query; an unanswered query is retried. Each run is a new process;
the median and the worst run are reported (the OS file cache is warm after the first run, as
on a restarted server)."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import httpx

from bench.catalog import catalog_home, prepare_catalog
from bench.common import (
    EncoderChoice,
    Json,
    Result,
    at_most,
    console,
    info,
    mib,
    rss_bytes,
    serve,
    standin_note,
)
from bench.latency import IMAGE_QUERY, TEXT_QUERY, query_images

POLL_S = 0.05


def _answered(response: httpx.Response, field: str) -> bool:
    if response.status_code != 200:
        return False
    body = response.json()
    return not body.get("errors") and bool(body["data"][field]["hits"])


def one_run(home: Path, encoder: EncoderChoice, image: bytes, timeout: float, index: int) -> Json:
    """Spawn, poll /healthz until the app answers (process start, imports, app built), then
    send searchByText until it is answered, then one searchByImage upload."""
    with serve(home, encoder, log_name=f"coldstart-{index}.log") as server:
        deadline = time.monotonic() + timeout
        first_text: float | None = None
        with httpx.Client(base_url=server.base_url, timeout=timeout) as client:
            while True:
                if time.monotonic() > deadline or server.process.poll() is not None:
                    raise RuntimeError(f"the server did not come up:\n{server.log_tail()}")
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(POLL_S)
            listening = time.perf_counter() - server.started_at
            payload = {"query": TEXT_QUERY, "variables": {"text": "black dress", "topK": 10}}
            while time.monotonic() < deadline:
                if _answered(client.post("/graphql", json=payload), "searchByText"):
                    first_text = time.perf_counter() - server.started_at
                    break
                time.sleep(POLL_S)
            if first_text is None:
                raise RuntimeError(f"no answer within {timeout:g} s:\n{server.log_tail()}")
            ready = _wait_ready(client, deadline) - server.started_at
            first_image_ms = _image_search_ms(client, image)
            first_image = time.perf_counter() - server.started_at
            second_image_ms = _image_search_ms(client, image)
            rss = rss_bytes(server.pid)
    return {
        "app_listening_s": round(listening, 3),
        "first_text_answer_s": round(first_text, 3),
        "ready_s": round(ready, 3),
        "first_image_answer_s": round(first_image, 3),
        "first_image_search_ms": round(first_image_ms, 1),
        "second_image_search_ms": round(second_image_ms, 1),
        "rss_mib_after": round(mib(rss), 1),
    }


def _wait_ready(client: httpx.Client, deadline: float) -> float:
    """Poll /readyz until 200 (the lifespan warm-up has loaded and run both encoder towers);
    returns the perf_counter time it answered."""
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return time.perf_counter()
        time.sleep(POLL_S)
    raise RuntimeError("/readyz did not answer 200 in time")


def _image_search_ms(client: httpx.Client, image: bytes) -> float:
    """One searchByImage upload, timed by the client (request sent -> answer read)."""
    operations = {"query": IMAGE_QUERY, "variables": {"image": None, "topK": 10}}
    started = time.perf_counter()
    response = client.post(
        "/graphql",
        data={"operations": json.dumps(operations), "map": '{"0": ["variables.image"]}'},
        files={"0": ("query.jpg", image, "image/jpeg")},
    )
    took = (time.perf_counter() - started) * 1000
    if not _answered(response, "searchByImage"):
        raise RuntimeError(f"image search failed: {response.text[:300]}")
    return took


def run(
    *,
    work_dir: Path,
    datasets: Path,
    encoder: EncoderChoice,
    runs: int = 3,
    kaggle_limit: int | None = None,
    hm_limit: int | None = None,
    timeout: float = 120.0,
) -> Result:
    result = Result(
        name="coldstart",
        config={
            "encoder": encoder.to_json(),
            "runs": runs,
            "kaggle_limit": kaggle_limit,
            "hm_limit": hm_limit,
            "workers": 1,
        },
        notes=standin_note(encoder),
    )
    home = catalog_home(work_dir, encoder, kaggle_limit, hm_limit)
    console.print(f"[bold]coldstart[/]: catalog in {home}")
    result.data["catalog"] = prepare_catalog(home, encoder, datasets, kaggle_limit, hm_limit)
    image = query_images(datasets, 1)[0]
    measured: list[Json] = []
    for i in range(runs):
        row = one_run(home, encoder, image, timeout, i)
        console.print(
            f"  run {i + 1}: app listening {row['app_listening_s']:.2f} s, first text answer "
            f"{row['first_text_answer_s']:.2f} s, first image answer {row['first_image_answer_s']:.2f} s"
        )
        measured.append(row)
    text = [float(r["first_text_answer_s"]) for r in measured]
    image_s = [float(r["first_image_answer_s"]) for r in measured]
    result.data["runs"] = measured
    result.data["first_text_answer_s"] = {"median": statistics.median(text), "max": max(text)}
    result.data["first_image_answer_s"] = {
        "median": statistics.median(image_s),
        "max": max(image_s),
    }
    first_ms = [float(r["first_image_search_ms"]) for r in measured]
    second_ms = [float(r["second_image_search_ms"]) for r in measured]
    result.data["first_image_search_ms"] = {"median": statistics.median(first_ms)}
    result.data["second_image_search_ms"] = {"median": statistics.median(second_ms)}
    result.checks = [
        at_most(
            "serve -> first text answer (median)",
            statistics.median(text),
            10,
            "s",
            f"worst {max(text):.2f} s of {runs}",
        ),
        info(
            "serve -> first image answer (median)",
            statistics.median(image_s),
            "s",
            f"worst {max(image_s):.2f} s",
        ),
        info(
            "first image search once ready (median)",
            statistics.median(first_ms),
            "ms",
            f"the next one: {statistics.median(second_ms):.0f} ms (encoders warmed at start)",
        ),
        info(
            "serve -> app listening (median)",
            statistics.median(float(r["app_listening_s"]) for r in measured),
            "s",
            "process start, imports, app built (/healthz answers)",
        ),
    ]
    return result
