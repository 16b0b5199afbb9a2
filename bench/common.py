"""What every benchmark shares: statistics, results files, machine facts, memory reads,
the encoder under test, running the CLI and a real `fashion-search serve` process."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_WORK_DIR = Path("/tmp/fs-bench")

console = Console()

Json = dict[str, Any]


# -- statistics ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    """Latency statistics in milliseconds."""

    n: int
    mean: float
    p50: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> Stats:
        if not samples_ms:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan, nan)
        values = np.asarray(samples_ms, dtype=np.float64)
        p50, p95, p99 = np.percentile(values, [50, 95, 99])
        return cls(
            n=len(values),
            mean=round(float(values.mean()), 3),
            p50=round(float(p50), 3),
            p95=round(float(p95), 3),
            p99=round(float(p99), 3),
            max=round(float(values.max()), 3),
        )

    def to_json(self) -> Json:
        return asdict(self)


# -- targets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One measured figure next to its target from issue 7."""

    name: str
    measured: float
    unit: str
    target: str
    ok: bool | None
    """None: informative only (no target)."""
    note: str = ""

    def to_json(self) -> Json:
        return asdict(self)


def at_most(name: str, measured: float, limit: float, unit: str, note: str = "") -> Check:
    ok = bool(np.isfinite(measured) and measured <= limit)
    return Check(name, measured, unit, f"<= {limit:g} {unit}".strip(), ok, note)


def at_least(name: str, measured: float, limit: float, unit: str, note: str = "") -> Check:
    ok = bool(np.isfinite(measured) and measured >= limit)
    return Check(name, measured, unit, f">= {limit:g} {unit}".strip(), ok, note)


def info(name: str, measured: float, unit: str, note: str = "") -> Check:
    return Check(name, measured, unit, "-", None, note)


def checks_table(title: str, checks: Sequence[Check]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("figure")
    table.add_column("measured", justify="right")
    table.add_column("target", justify="right")
    table.add_column("", justify="center")
    table.add_column("note", overflow="fold")
    for check in checks:
        verdict = {True: "[green]met[/]", False: "[red]MISSED[/]", None: ""}[check.ok]
        table.add_row(
            check.name, f"{fmt(check.measured)} {check.unit}", check.target, verdict, check.note
        )
    return table


def fmt(value: float) -> str:
    if not np.isfinite(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


# -- machine and results ---------------------------------------------------------------------


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _git_modified() -> list[str]:
    """Tracked files that differ from the commit (the measured code is commit + these)."""
    try:
        out = subprocess.run(
            ["git", "diff", "--name-only", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line for line in out.stdout.splitlines() if line.strip()]


def tree_revision(tree: Path) -> str:
    """The commit a checkout is at (``+modified`` when its tracked files differ from it)."""
    git = ["git", "-C", str(tree)]
    commit = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run([*git, "diff", "--quiet", "HEAD"], check=False).returncode != 0
    return commit + ("+modified" if dirty else "")


def _meminfo_total() -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return None


def machine() -> Json:
    return {
        "cpus": os.cpu_count(),
        "mem_total_bytes": _meminfo_total(),
        "load_average": load_average(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "git_modified_files": _git_modified(),
    }


@dataclass
class Result:
    """What one benchmark writes to bench/results/<name>.json."""

    name: str
    config: Json
    data: Json = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    load_before: tuple[float, float, float] = field(default_factory=load_average)

    def to_json(self) -> Json:
        return {
            "benchmark": self.name,
            "started_at": self.started_at,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "load_average_before": self.load_before,
            "config": self.config,
            "checks": [c.to_json() for c in self.checks],
            "notes": self.notes,
            "data": self.data,
        }


def write_result(result: Result, results_dir: Path = RESULTS_DIR) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{result.name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result.to_json(), indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


# -- memory (from /proc: psutil is not a dependency) -----------------------------------------


def proc_status_bytes(field_name: str, pid: int | str = "self") -> int:
    """A ``kB`` line of /proc/<pid>/status (VmRSS, VmHWM, ...) in bytes; 0 when unreadable."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1]) * 1024
    return 0


def rss_bytes(pid: int | str = "self") -> int:
    return proc_status_bytes("VmRSS", pid)


def peak_rss_bytes(pid: int | str = "self") -> int:
    return proc_status_bytes("VmHWM", pid)


def children_of(pid: int) -> list[int]:
    """Direct children (uvicorn's worker processes), from /proc/<pid>/task/*/children."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def tree_rss_bytes(pid: int) -> int:
    """RSS of a process and its children (shared pages counted in each)."""
    return rss_bytes(pid) + sum(rss_bytes(c) for c in children_of(pid))


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (/proc/<pid>/stat); 0 when
    it is gone."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    return 0.0


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a server process and its worker processes: what the requests of a
    phase cost the server, whatever else the machine is running."""
    return cpu_seconds(pid) + sum(cpu_seconds(c) for c in children_of(pid))


# -- the encoder under test ------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderChoice:
    id: str
    """The encoder id given to the CLI and the server (FASHION_SEARCH_ENCODER)."""
    standin: bool
    """True when the trained fashion-lite heads were missing and random heads of the same
    shapes stand in: every cost is the same, the search quality is not."""
    dim: int
    fingerprint: str = ""
    """For fashion-lite: the start of the heads file's SHA-256, so a catalog ingested with
    other heads (another training run) is never reused."""

    def to_json(self) -> Json:
        return asdict(self)

    @property
    def slug(self) -> str:
        name = (
            "standin"
            if self.standin
            else "".join(c if c.isalnum() or c in "-_" else "_" for c in self.id)
        )
        return f"{name}-{self.fingerprint}" if self.fingerprint else name


STANDIN_HIDDEN = 512
STANDIN_DIM = 256


def write_standin_heads(path: Path, seed: int = 7) -> Path:
    """Random fashion-lite heads with the default training architecture (2 layers, hidden
    512, 256-d output, colour statistics on): the same arithmetic as the trained heads."""
    from encoders.backbones import COLOUR_DIM
    from encoders.fashion_lite.heads import Heads, Tower

    if path.is_file():
        return path
    rng = np.random.default_rng(seed)

    def tower(inputs: int) -> Tower:
        return Tower(
            mean=np.zeros(inputs, dtype=np.float32),
            std=np.ones(inputs, dtype=np.float32),
            weights=[
                (rng.standard_normal((inputs, STANDIN_HIDDEN)) / np.sqrt(inputs)).astype(
                    np.float32
                ),
                (rng.standard_normal((STANDIN_HIDDEN, STANDIN_DIM)) / np.sqrt(512)).astype(
                    np.float32
                ),
            ],
            biases=[
                np.zeros(STANDIN_HIDDEN, dtype=np.float32),
                np.zeros(STANDIN_DIM, dtype=np.float32),
            ],
        )

    heads = Heads(
        image=tower(1280 + COLOUR_DIM),
        text=tower(384),
        meta={
            "dim": STANDIN_DIM,
            "image_backbone": "efficientnet-lite0",
            "image_size": 224,
            "colour": True,
            "colour_dim": COLOUR_DIM,
            "raw_weight": 0.0,
            "raw_dim": 1280,
            "standin": True,
            "version": 1,
        },
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    heads.save(path)
    return path


def choose_encoder(requested: str | None, work_dir: Path) -> EncoderChoice:
    """The encoder to benchmark: the one asked for, else the default fashion-lite when its
    trained heads are present, else fashion-lite with stand-in heads of the same shapes."""
    from encoders.fashion_lite.heads import DEFAULT_HEADS, Heads

    if requested:
        from fashion_search.settings import Settings
        from fashion_search.wiring import build_encoders

        encoder = build_encoders(Settings(encoder=requested)).get(requested)
        return EncoderChoice(requested, False, encoder.dim)
    if DEFAULT_HEADS.is_file():
        dim = int(Heads.read_meta(DEFAULT_HEADS)["dim"])
        return EncoderChoice("fashion-lite", False, dim, file_fingerprint(DEFAULT_HEADS))
    path = write_standin_heads(work_dir / "standin-heads.npz")
    return EncoderChoice(f"fashion-lite:{path}", True, STANDIN_DIM)


def file_fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def standin_note(choice: EncoderChoice) -> list[str]:
    if not choice.standin:
        return []
    return [
        "The trained fashion-lite heads (the default file in encoders/fashion_lite/weights) were not "
        "present: random heads of the same shapes stood in. Costs are the same; the results "
        "are not relevant to search quality."
    ]


# -- processes -------------------------------------------------------------------------------


def cli_argv(*args: str) -> list[str]:
    """`fashion-search ...` from this interpreter's environment."""
    script = Path(sys.executable).parent / "fashion-search"
    if script.is_file():
        return [str(script), *args]
    return [sys.executable, "-m", "fashion_search.cli", *args]


def app_env(
    home: Path,
    encoder: EncoderChoice,
    extra: Mapping[str, str] | None = None,
    tree: Path | None = None,
) -> dict[str, str]:
    """The environment of a CLI or server process; ``tree``: run another checkout's code
    (its folders first on the import path) with this interpreter's packages."""
    env = dict(os.environ)
    env["FASHION_SEARCH_HOME"] = str(home)
    env["FASHION_SEARCH_ENCODER"] = encoder.id
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(tree_env(tree))
    env.update(extra or {})
    return env


def tree_env(tree: Path | None) -> dict[str, str]:
    """What a process needs to run the checkout ``tree``'s code instead of this one's: its
    folders first on the import path (before the editable install's)."""
    return {} if tree is None else {"PYTHONPATH": str(tree)}


def run_cli(
    args: Sequence[str],
    env: Mapping[str, str],
    log: Path,
    timeout: float | None = None,
) -> float:
    """Run a CLI command to completion, output to ``log``; returns its wall time in seconds.
    Raises RuntimeError (with the log's tail) when it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.run(
            cli_argv(*args),
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            timeout=timeout,
            check=False,
        )
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(
            f"`fashion-search {' '.join(args)}` failed ({process.returncode}):\n{tail}"
        )
    return seconds


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """A `fashion-search serve` process on a loopback port."""

    process: subprocess.Popen[bytes]
    base_url: str
    started_at: float
    """time.perf_counter() just before the process was spawned."""
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Block until /readyz answers 200 (default encoder loaded); seconds since spawn."""
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.base_url, timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server exited early:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/readyz").status_code == 200:
                        return time.perf_counter() - self.started_at
                time.sleep(0.05)
        raise RuntimeError(f"the server was not ready within {timeout:g} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return ""

    def stop(self, timeout: float = 20.0) -> None:
        """SIGINT (uvicorn shuts its workers down), then SIGKILL to the process group this
        benchmark created, if it lingers."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


@contextlib.contextmanager
def serve(
    home: Path,
    encoder: EncoderChoice,
    *,
    workers: int = 1,
    extra_env: Mapping[str, str] | None = None,
    log_name: str = "serve.log",
    tree: Path | None = None,
) -> Iterator[Server]:
    """``tree``: serve with another checkout's code (see ``app_env``)."""
    port = free_port()
    log = home / "logs" / log_name
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = cli_argv(
        "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--log-level", "warning",
    )  # fmt: skip
    with log.open("wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(
            argv,
            env=app_env(home, encoder, extra_env, tree),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tree or REPO_ROOT,
            start_new_session=True,  # its own process group, so its workers can be stopped
        )
    server = Server(process, f"http://127.0.0.1:{port}", started, log)
    try:
        yield server
    finally:
        server.stop()


# -- datasets --------------------------------------------------------------------------------


def datasets_dir(override: Path | None = None) -> Path:
    if override is not None:
        return override
    from fashion_search.settings import Settings

    return Settings().datasets_dir


def kaggle_zip(datasets: Path) -> Path:
    return datasets / "kaggle-fashion-small.zip"


def hm_dev(datasets: Path) -> Path:
    return datasets / "hm-dev"


def read_ingest_report(path: Path) -> Json:
    document: Json = json.loads(path.read_text())
    return document


def mib(value: float) -> float:
    return value / (1024 * 1024)
