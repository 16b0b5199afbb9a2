"""Benchmark: `fashion-search ingest --engine ray` with 1, 2, ... encoder actors against the
local engine, the same Kaggle products into a fresh data directory each (subprocesses, as an
operator runs them; a local Ray started by each run).

The figure compared is the pipeline's images/s from the ingest report (model loading
included, Ray's start-up and the interpreter's not); the whole-process rate is kept beside
it. Targets (issue 17): 2 actors >= 1.7x 1 actor on a 2-core machine, 1 actor >= 0.85x the
local engine. ``per_actor_images_per_s`` is what the README's cluster sizing uses;
``cpu_s_by_role`` sums the CPU of every process a run started (driver, encoder actors,
read/prepare tasks, Ray Data's helper actors, Ray's system processes): where the work
outside the actors goes.
"""

from __future__ import annotations

import os
import resource
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    EncoderChoice,
    Json,
    Result,
    app_env,
    at_least,
    console,
    info,
    kaggle_zip,
    mib,
    read_ingest_report,
    rss_bytes,
    run_cli,
    standin_note,
)
from ingest.ray_engine import ENCODER_PROCESS_TITLE

DEFAULT_LIMIT = 480
"""Kaggle products per run: several batches per actor, and a few minutes in all on a loaded
machine (the whole zip is 14,888)."""
SAMPLE_INTERVAL_S = 0.5
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
RAY_WORKER_TITLE = b"ray::"
TWO_ACTOR_SCALING = 1.7
ONE_ACTOR_VS_LOCAL = 0.85


@dataclass
class ActorUse:
    """What the encoder actor processes used, sampled from /proc while a run goes on."""

    peak_rss: int = 0
    cpu_s: dict[int, float] = field(default_factory=dict)
    """Per actor process: its CPU seconds (user + system) when last seen."""
    ray_cpu_s: dict[int, float] = field(default_factory=dict)
    """Per Ray worker process of this bench's runs (actors, read and prepare tasks, Ray's
    own helpers): its CPU seconds when last seen."""
    by_process: dict[int, tuple[str, float]] = field(default_factory=dict)
    """Every process the run started (the driver, Ray's system processes and workers): its
    role (``process_role``) and CPU seconds when last seen."""

    def cpu_by_role(self) -> dict[str, float]:
        roles: dict[str, float] = {}
        for role, seconds in self.by_process.values():
            roles[role] = round(roles.get(role, 0.0) + seconds, 1)
        return dict(sorted(roles.items(), key=lambda kv: -kv[1]))


def cpu_seconds(pid: str) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


@contextmanager
def actor_use() -> Iterator[ActorUse]:
    """The encoder actors' largest resident size and CPU time while the block runs (read
    from /proc every SAMPLE_INTERVAL_S; actors show their title in their command line).
    CPU time is the robust figure on a loaded machine: rates follow the share of the cores
    the other processes leave, CPU seconds per image do not."""
    use = ActorUse()
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(SAMPLE_INTERVAL_S):
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    title = (proc / "cmdline").read_bytes()
                    ours = descends_from_us(proc.name)
                    if ours:
                        pid = int(proc.name)
                        role = process_role(title, use.by_process.get(pid, ("", 0.0))[0])
                        use.by_process[pid] = (role, cpu_seconds(proc.name))
                    if title.startswith(RAY_WORKER_TITLE) and ours:
                        use.ray_cpu_s[int(proc.name)] = cpu_seconds(proc.name)
                    if title.startswith(ENCODER_PROCESS_TITLE):
                        use.peak_rss = max(use.peak_rss, rss_bytes(proc.name))
                        use.cpu_s[int(proc.name)] = cpu_seconds(proc.name)
                except (OSError, IndexError, ValueError):
                    continue

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield use
    finally:
        stop.set()
        sampler.join()


ROLES = (
    ("EncodeImages", "encoder actors"),
    ("prepare_images", "read/prepare tasks"),
    ("hash_images", "ledger-check tasks"),
    ("fashion-search", "driver (ingest process)"),
    ("fashion_search.cli", "driver (ingest process)"),
    ("_StatsActor", "Ray Data helper actors"),
    ("ActorLocationTracker", "Ray Data helper actors"),
    ("AutoscalingCoordinator", "Ray Data helper actors"),
    ("raylet", "Ray system (raylet, GCS, agents)"),
    ("gcs_server", "Ray system (raylet, GCS, agents)"),
    ("Agent", "Ray system (raylet, GCS, agents)"),
    ("ray/_private/", "Ray system (raylet, GCS, agents)"),
    ("ray/dashboard/", "Ray system (raylet, GCS, agents)"),
)
"""Substrings of a process's command line (Ray workers retitle theirs with what they run)
and the role they give it, first match first."""
IDLE_ROLE = "other Ray workers"


def process_role(title: bytes, before: str) -> str:
    """What a process of the run does: a worker seen running a stage keeps that role when
    it goes back to ``ray::IDLE``."""
    text = title.decode(errors="replace")
    for needle, role in ROLES:
        if needle in text:
            return role
    return before or IDLE_ROLE


def descends_from_us(pid: str) -> bool:
    """Whether the process was started (through any chain) by this bench."""
    ours, current = os.getpid(), int(pid)
    while current > 1:
        stat = Path(f"/proc/{current}/stat").read_text()
        current = int(stat.rsplit(")", 1)[1].split()[1])  # the parent's pid
        if current == ours:
            return True
    return False


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_run(
    work_dir: Path, zip_path: Path, encoder: EncoderChoice, limit: int, workers: int | None
) -> Json:
    """One ingest into a fresh home: its report's summary and the process wall time."""
    label = "local" if workers is None else f"ray-{workers}"
    home = work_dir / f"ingest-{label}"
    shutil.rmtree(home, ignore_errors=True)
    report = work_dir / f"ingest-{label}-report.json"
    args = ["ingest", str(zip_path), "--report", str(report), "--limit", str(limit)]
    if workers is not None:
        args += ["--engine", "ray", "--workers", str(workers)]
    env = app_env(home, encoder, {"RAY_USAGE_STATS_ENABLED": "0"})
    env.pop("RAY_ADDRESS", None)  # a local Ray on this machine's cores
    console.print(f"  {label}: fashion-search {' '.join(args[2:])} ...")
    cpu_before = children_cpu_s()
    with actor_use() as use:
        wall = run_cli(args, env, work_dir / "logs" / f"ingest-{label}.log")
    process_cpu_s = children_cpu_s() - cpu_before
    summary: Json = read_ingest_report(report)["summary"]
    shutil.rmtree(home, ignore_errors=True)
    rate = float(summary["images_per_s"])
    console.print(f"    {summary['indexed']:,} images, {rate:.1f} images/s (wall {wall:.0f} s)")
    return {
        "engine": "local" if workers is None else "ray",
        "workers": workers,
        "ingest_summary": summary,
        "images_per_s": rate,
        "process_wall_s": round(wall, 2),
        "process_images_per_s": round(summary["indexed"] / wall, 2) if wall > 0 else 0.0,
        "process_cpu_s": round(process_cpu_s, 1),
        "actor_peak_rss_mib": round(mib(use.peak_rss), 1) if workers is not None else None,
        "actor_cpu_s": round(sum(use.cpu_s.values()), 1) if workers is not None else None,
        "ray_workers_cpu_s": round(sum(use.ray_cpu_s.values()), 1) if workers is not None else None,
        "cpu_s_by_role": use.cpu_by_role(),
        "images_per_cpu_s": round(
            summary["indexed"] / (sum(use.cpu_s.values()) if workers else process_cpu_s), 2
        ),
    }


def median_run(runs: list[Json]) -> Json:
    """The run whose rate is the median (the lower middle one of an even count)."""
    ordered = sorted(runs, key=lambda r: float(r["images_per_s"]))
    return ordered[(len(ordered) - 1) // 2]


def run(
    *,
    work_dir: Path,
    datasets: Path,
    encoder: EncoderChoice,
    workers: list[int],
    limit: int | None = None,
    rounds: int = 2,
) -> Result:
    zip_path = kaggle_zip(datasets)
    limit = limit or DEFAULT_LIMIT
    result = Result(
        name="ingest-ray",
        config={
            "encoder": encoder.to_json(),
            "source": str(zip_path),
            "limit": limit,
            "workers": workers,
            "rounds": rounds,
            "threads_per_actor": 1,
            "cpus": os.cpu_count(),
            "engine": "Ray Data (ledger check on the driver + hash tasks; read/prepare tasks, "
            "encoder actor pool running the networks only)",
        },
        notes=[
            *standin_note(encoder),
            "Measured on a shared 2-core machine busy with other work (see the load average): "
            "absolute rates are low and noisy, ratios less so. Runs are interleaved (rounds of "
            "local, then each actor count) and each configuration's median run is compared.",
        ],
    )
    console.print(
        f"[bold]ingest-ray[/]: {limit} Kaggle products, local engine vs Ray Data actors, "
        f"{rounds} interleaved round(s)"
    )
    all_runs: dict[str, list[Json]] = {"local": [], **{str(n): [] for n in workers}}
    for _ in range(rounds):
        all_runs["local"].append(one_run(work_dir, zip_path, encoder, limit, None))
        for n in workers:
            all_runs[str(n)].append(one_run(work_dir, zip_path, encoder, limit, n))
    local = median_run(all_runs["local"])
    runs = {n: median_run(all_runs[str(n)]) for n in workers}
    result.data = {
        "local": local,
        "ray": {str(n): r for n, r in runs.items()},
        "all_runs": {label: [r["images_per_s"] for r in done] for label, done in all_runs.items()},
    }
    local_rate = float(local["images_per_s"])
    result.checks = [
        info("local engine", local_rate, "img/s", "default ONNX threads"),
        info(
            "local engine, images per process CPU second",
            float(local["images_per_cpu_s"]),
            "img/s",
            "reading and writing included",
        ),
    ]
    for n, data in runs.items():
        result.checks.append(
            info(f"ray, {n} actor(s)", float(data["images_per_s"]), "img/s", "1 thread per actor")
        )
    if 1 in runs:
        one = float(runs[1]["images_per_s"])
        result.data["per_actor_images_per_s"] = one
        result.checks.append(
            info("encoder actor peak RSS", float(runs[1]["actor_peak_rss_mib"]), "MiB")
        )
        result.checks.append(
            info(
                "images per actor CPU second",
                float(runs[1]["images_per_cpu_s"]),
                "img/s",
                "sizing figure: independent of the load",
            )
        )
        indexed = float(runs[1]["ingest_summary"]["indexed"]) or 1.0
        result.checks.append(
            info(
                "Ray workers' CPU per image, 1 actor",
                1000 * float(runs[1]["ray_workers_cpu_s"]) / indexed,
                "ms",
                "actor + read/prepare tasks + Ray's helpers (the driver apart)",
            )
        )
        result.checks.append(
            at_least("ray 1 actor / local", one / local_rate, ONE_ACTOR_VS_LOCAL, "x")
        )
        if 2 in runs:
            two = float(runs[2]["images_per_s"])
            result.checks.append(
                at_least("ray 2 actors / 1 actor", two / one, TWO_ACTOR_SCALING, "x")
            )
    return result
