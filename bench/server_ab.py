"""Servers side by side under concurrent clients: `fashion-search serve` processes of several
variants (another checkout's code, other settings, another catalog) kept up together on the
latency bench's catalog, their concurrent-client phases alternating round by round (the order
turning), each phase's q/s and the server's CPU time per request (every worker process and
thread; it moves much less with the machine's other work than q/s does).

    PYTHONPATH=. .venv/bin/python -m bench.server_ab --variant main \\
        --variant 'float16:env=FASHION_SEARCH_FAISS_PREFILTER=float16' \\
        --variant 'before:tree=../before' [--rounds 6] [--requests 800] [--clients 8]

A variant is ``NAME[:tree=DIR][:home=DIR][:env=KEY=VALUE]...``: ``tree`` serves another
checkout's code with this interpreter's packages (as ``bench latency --baseline-tree``),
``home`` another catalog of the same products. Writes bench/results/server_ab.json (``--out``).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.catalog import bench_catalog, catalog_bench_parser
from bench.common import Json, Result, Server, console, load_average, serve, write_result
from bench.latency import KIND_LABELS, make_calls, query_texts, run_phase

TEXT_KINDS = ("graphql_text", "graphql_text_visual", "rest_text")
SERVER_ENV = {"FASHION_SEARCH_TORCH_THREADS": "1"}
"""As the latency bench's 2x1 servers: two workers, one encoder thread each."""


@dataclass(frozen=True)
class Variant:
    name: str
    tree: Path | None = None
    home: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> Variant:
        name, *parts = spec.split(":")
        tree = home = None
        env: dict[str, str] = {}
        for part in parts:
            key, _, value = part.partition("=")
            if key == "tree":
                tree = Path(value)
            elif key == "home":
                home = Path(value)
            elif key == "env" and "=" in value:
                env_key, _, env_value = value.partition("=")
                env[env_key] = env_value
            else:
                raise ValueError(f"{spec!r}: a variant is NAME[:tree=DIR][:home=DIR][:env=K=V]")
        if not name:
            raise ValueError(f"{spec!r}: a variant needs a name")
        return cls(name, tree, home, env)


def measure(
    home: Path, variants: Sequence[Variant], rounds: int, requests: int, clients: int, kind: str
) -> Json:
    from bench.common import choose_encoder

    encoder = choose_encoder(None, home.parent)
    calls = make_calls(query_texts(), [])
    phases: dict[str, list[dict[str, float]]] = {v.name: [] for v in variants}
    with contextlib.ExitStack() as stack:
        servers: list[Server] = []
        for variant in variants:
            server = stack.enter_context(
                serve(
                    variant.home or home, encoder, workers=2, extra_env={**SERVER_ENV, **variant.env},
                    tree=variant.tree, log_name=f"server-ab-{variant.name}.log",
                )
            )  # fmt: skip
            server.wait_ready()
            servers.append(server)
        for round_ in range(rounds):
            turn = round_ % len(variants)
            for variant, server in [*zip(variants, servers, strict=True)][turn:] + [
                *zip(variants, servers, strict=True)
            ][:turn]:
                phase = asyncio.run(
                    run_phase(
                        server.base_url, kind, calls[kind], clients, requests, 2 * clients,
                        server_pid=server.pid,
                    )
                )  # fmt: skip
                figures = {
                    "qps": round(phase.qps, 2),
                    "server_cpu_ms": round(phase.server_cpu_ms or 0.0, 3),
                    "p50_ms": round(phase.stats.p50, 2),
                    "errors": phase.errors,
                    "load_1m": load_average()[0],
                }
                phases[variant.name].append(figures)
                console.print(f"  round {round_ + 1} {variant.name:<16} {figures}")
    return {
        "kind": KIND_LABELS[kind],
        "clients": clients,
        "requests_per_phase": requests,
        "variants": {
            v.name: {
                "tree": str(v.tree) if v.tree else None,
                "home": str(v.home or home),
                "env": v.env,
            }
            for v in variants
        },
        "phases": phases,
        "medians": {
            name: {
                key: round(statistics.median(p[key] for p in rows), 3)
                for key in ("qps", "server_cpu_ms", "p50_ms")
            }
            for name, rows in phases.items()
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = catalog_bench_parser("bench.server_ab", __doc__, "server_ab.json")
    parser.add_argument("--variant", action="append", required=True, type=Variant.parse)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=800, help="Requests per phase.")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--kind", choices=TEXT_KINDS, default="graphql_text")
    args = parser.parse_args(argv)
    bench = bench_catalog(args, "bench.server_ab", argv)
    if bench is None:
        return 1
    config = {"home": str(bench.home), "command": bench.command, "rounds": args.rounds}
    result = Result(name=args.out.stem, config=config)
    result.data = measure(
        bench.home, args.variant, args.rounds, args.requests, args.clients, args.kind
    )
    for name, figures in result.data["medians"].items():
        console.print(f"{name:<16} median {figures}")
    console.print(f"wrote {write_result(result, args.out.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
