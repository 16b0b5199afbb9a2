"""The benchmark code paths at toy sizes: request documents against the real schema, the
index measurement, results files and reports. No timing is asserted here."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from bench import __main__ as cli
from bench import catalog, index_scale, latency, report
from bench import onnx as onnx_bench
from bench.common import (
    EncoderChoice,
    Result,
    Stats,
    app_env,
    at_least,
    at_most,
    cli_argv,
    cpu_seconds,
    info,
    rss_bytes,
    tree_revision,
    write_result,
)
from tests.api.helpers import make_api


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((48, 64), 40).convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


def test_stats_and_checks() -> None:
    stats = Stats.of([float(v) for v in range(1, 101)])
    assert stats.n == 100
    assert stats.p50 == pytest.approx(50.5)
    assert stats.max == 100
    assert Stats.of([]).n == 0
    assert at_most("x", 1.0, 2.0, "ms").ok is True
    assert at_most("x", float("nan"), 2.0, "ms").ok is False
    assert at_least("y", 59.0, 60.0, "q/s").ok is False
    assert info("z", 3.0, "s").ok is None


def test_query_texts_are_varied() -> None:
    texts = latency.query_texts(64)
    assert len(texts) == len(set(texts)) == 64


@pytest.mark.parametrize(
    "kind", ["graphql_text", "graphql_text_visual", "rest_text", "graphql_image"]
)
async def test_phase_requests_are_answered_by_the_app(kind: str) -> None:
    api = await make_api()
    async with api.client:
        calls = latency.make_calls(["black dress", "white sneakers"], [_jpeg()])
        phase = await latency.run_phase(
            "http://bench",
            kind,
            calls[kind],
            clients=3,
            requests=6,
            warmup=2,
            transport=httpx.ASGITransport(app=api.app),
        )
    assert phase.errors == 0, phase.error_samples
    assert phase.stats.n == 6
    assert phase.server_took.n == (0 if kind == "rest_text" else 6)


async def test_failed_requests_count_as_errors() -> None:
    api = await make_api()
    async with api.client:
        calls = latency.make_calls(["black dress"], [b"not an image"])
        phase = await latency.run_phase(
            "http://bench",
            "graphql_image",
            calls["graphql_image"],
            clients=2,
            requests=4,
            warmup=1,
            transport=httpx.ASGITransport(app=api.app),
        )
    assert phase.errors == 4
    assert phase.stats.n == 0


def test_latency_checks_from_runs() -> None:
    phase = {
        "latency_ms": {"p50": 20.0, "p99": 50.0},
        "qps": 70.0,
        "errors": 0,
    }
    stages = {
        "torch_threads": 1,
        "encode_text_ms": {"p50": 15.0},
        "encode_image_ms": {"p50": 30.0},
        "index_query_ms": {"p50": 1.0},
        "index_kind": "flat",
        "index_vectors": 100,
    }
    runs = [
        {
            "server": "workers=1",
            "stages_alone": stages,
            "phases": [
                {**phase, "kind": kind, "clients": clients}
                for kind in ("graphql_text", "rest_text", "graphql_image")
                for clients in (1, 8)
            ],
        }
    ]
    checks = {c.name: c for c in latency.latency_checks(runs, 8)}
    assert checks["text GraphQL 1 client p50 [workers=1]"].ok is True
    assert checks["overhead searchByText (GraphQL) [workers=1]"].measured == pytest.approx(1.25)
    assert checks["text GraphQL 8 clients [workers=1]"].ok is True
    assert checks["errors, all phases [workers=1]"].ok is True


def test_parse_server_configs() -> None:
    configs = latency.parse_configs("1x0,2x1")
    assert [(c.workers, c.torch_threads) for c in configs] == [(1, 0), (2, 1)]


def test_generator_is_deterministic_and_unit_length() -> None:
    spec = index_scale.Clustered(dim=16, clusters=5, rank=3)
    a, ca = index_scale.Generator(spec).chunk(0, 50)
    b, cb = index_scale.Generator(spec).chunk(0, 50)
    assert np.array_equal(a, b)
    assert np.array_equal(ca, cb)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)


def test_streaming_top_k_matches_exact_search() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((300, 8)).astype(np.float32)
    queries = rng.standard_normal((4, 8)).astype(np.float32)
    top = index_scale.TopK(queries, 5)
    for start in range(0, 300, 70):
        top.add(vectors[start : start + 70], start)
    expected = np.argsort(-(queries @ vectors.T), axis=1)[:, :5]
    assert np.array_equal(top.rows, expected)


def test_measure_size_at_toy_size() -> None:
    spec = index_scale.Clustered(dim=16, clusters=10, rank=4)
    row = index_scale.measure_size(500, asdict(spec), n_queries=10, chunk=200, ef_sweep=[16])
    assert row["kind"] == "flat"
    assert row["recall_at_10"] == 1.0  # exact search below the HNSW threshold
    assert row["query_ms"]["n"] == 10
    assert row["faiss_bytes"]["vectors"] == 500 * 16 * 4
    checks = index_scale.index_checks([row])
    assert any(c.name.startswith("recall@10") and c.ok for c in checks)


def test_results_file_and_reports(tmp_path: Path) -> None:
    result = Result(name="ingest", config={"limit": 1})
    result.checks = [at_least("ingest / raw encoder", 0.95, 0.9, "x")]
    path = write_result(result, tmp_path)
    document = json.loads(path.read_text())
    assert document["benchmark"] == "ingest"
    assert document["checks"][0]["ok"] is True
    assert "ingest / raw encoder" in report.markdown(results_dir=tmp_path)
    report.print_all(results_dir=tmp_path)


def test_command_line_options() -> None:
    args = cli.parser().parse_args(["index", "--sizes", "1000,2_000", "--ef-sweep", "16"])
    assert args.sizes == [1000, 2000]
    assert args.ef_sweep == [16]
    args = cli.parser().parse_args(["latency", "--kaggle-limit", "all", "--hm-limit", "5"])
    assert args.kaggle_limit is None
    assert args.hm_limit == 5
    assert args.kinds == ["graphql_text", "rest_text", "graphql_image"]  # the default
    assert args.prepare_only is False
    args = cli.parser().parse_args(["latency", "--kinds", "graphql_text,graphql_text_visual"])
    assert args.kinds == ["graphql_text", "graphql_text_visual"]
    assert cli.parser().parse_args(["latency", "--prepare-only"]).prepare_only is True
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["latency", "--kinds", "graphql_text,nonsense"])
    args = cli.parser().parse_args(["latency", "--baseline-tree", "/old", "--rounds", "3"])
    assert (args.baseline_tree, args.rounds, args.baseline_work_dir) == (Path("/old"), 3, None)
    args = cli.parser().parse_args(["ingest", "--engine", "ray", "--workers", "1,2"])
    assert (args.engine, args.workers) == ("ray", [1, 2])


def test_memory_reads_from_proc() -> None:
    assert rss_bytes() > 0


def test_cpu_time_reads_from_proc() -> None:
    before, spun = cpu_seconds(os.getpid()), time.process_time()
    while time.process_time() - spun < 0.1:  # 10 clock ticks of work
        pass
    assert cpu_seconds(os.getpid()) - before >= 0.05
    assert cpu_seconds(2**22 + 1) == 0.0  # no such process


async def test_a_phase_reports_the_servers_cpu_time_per_request() -> None:
    api = await make_api()
    async with api.client:  # the app runs in this process: its CPU time is the server's
        calls = latency.make_calls(["black dress"], [_jpeg()])
        phase = await latency.run_phase(
            "http://bench",
            "graphql_text",
            calls["graphql_text"],
            clients=2,
            requests=40,
            warmup=2,
            transport=httpx.ASGITransport(app=api.app),
            server_pid=os.getpid(),
        )
    assert phase.server_cpu_ms is not None
    assert phase.server_cpu_ms > 0
    assert phase.client_cpu_ms is not None
    assert phase.client_cpu_ms > 0
    assert phase.to_json()["cpu_ms_per_request"]["server"] == round(phase.server_cpu_ms, 3)


def test_latency_markdown_has_one_column_per_server(tmp_path: Path) -> None:
    result = Result(name="latency", config={})
    result.checks = [
        at_most("text p50 [workers=1]", 30.0, 25.0, "ms"),
        at_most("text p50 [workers=2]", 20.0, 25.0, "ms"),
        info("encode alone [workers=2]", 12.0, "ms"),
    ]
    result.data["runs"] = []
    write_result(result, tmp_path)
    text = report.markdown(["latency"], results_dir=tmp_path)
    assert "| figure | target | workers=1 | workers=2 |" in text
    assert "| text p50 | <= 25 ms | 30.0 ms **missed** | 20.0 ms |" in text
    assert "| encode alone | - |  | 12.0 ms |" in text


def test_the_onnx_bench_encodes_the_latency_bench_uploads_or_the_demo_photos(
    datasets_dir: Path,
) -> None:
    """``bench.onnx --photos hm-dev`` times what the latency bench's "encode image alone"
    figure encodes (its uploads), so both runtimes can be compared on it in one run."""
    uploads = onnx_bench.photo_files(datasets_dir, "hm-dev", 32)
    assert [path.read_bytes() for path in uploads] == latency.query_images(datasets_dir)
    demo = onnx_bench.photo_files(datasets_dir, "hm-demo", 5)
    assert len(demo) == 5
    with Image.open(uploads[0]) as upload, Image.open(demo[0]) as photo:
        assert upload.size == (240, 360)
        assert photo.size == (360, 540)


async def test_the_stage_bench_answers_the_graphql_layer_from_pages_computed_beforehand() -> None:
    from bench.hybrid_stages import answered_search
    from domain.model import SearchPage, SearchQuery, TextQuery
    from domain.services import SearchService
    from tests.fakes import (
        FakeEncoderProvider,
        HashingEncoder,
        InMemoryCatalog,
        InMemoryImageStore,
        InMemoryVectorIndex,
    )

    real = SearchService(
        FakeEncoderProvider(HashingEncoder()),
        InMemoryVectorIndex(),
        InMemoryCatalog(),
        InMemoryImageStore(),
    )
    page = SearchPage(hits=(), encoder_id="fake", took_ms=1.0)
    answered = answered_search(real, {"black dress": page})
    assert await answered.search(SearchQuery(text=TextQuery("black dress"))) is page
    with pytest.raises(KeyError):
        await answered.search(SearchQuery(text=TextQuery("red skirt")))


def test_the_lone_search_bench_alternates_a_and_b() -> None:
    from bench.lone_search_cores import _alternate

    calls: list[str] = []

    def timed(label: str, seconds: float) -> Callable[[int], float]:
        def run(item: int) -> float:
            calls.append(f"{label}{item}")
            return seconds * item

        return run

    medians = _alternate(2, [1, 2, 3], timed("a", 0.001), timed("b", 0.002))
    assert medians == (2.0, 4.0)
    assert calls == ["a1", "b1", "a2", "b2", "a3", "b3", "b1", "a1", "b2", "a2", "b3", "a3"]


def test_the_8bit_minilm_bench_rewrites_constant_matmuls(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from bench.minilm_8bit import eight_bit_blocks
    from encoders.onnx_models import inference_session

    rng = np.random.default_rng(5)
    weight = rng.standard_normal((64, 16)).astype(np.float32)
    odd = rng.standard_normal((16, 8)).astype(np.float32)  # 16 rows: not a multiple of 32
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="first"),
            helper.make_node("MatMul", ["h", "odd"], ["y"], name="second"),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(odd, "odd")],
    )
    source, target = tmp_path / "tiny.onnx", tmp_path / "tiny-8bit.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), source)

    assert eight_bit_blocks(source, target, block=32) == 1
    kinds = [node.op_type for node in onnx.load(str(target)).graph.node]
    assert kinds == ["MatMulNBits", "MatMul"]
    x = {"x": rng.standard_normal((1, 64)).astype(np.float32)}
    plain = inference_session(source, 1).run(None, x)[0]
    eight = inference_session(target, 1).run(None, x)[0]
    assert not np.array_equal(plain, eight)  # quantised ...
    np.testing.assert_allclose(eight, plain, rtol=0.05, atol=0.05 * np.abs(plain).max())


def _fake_checkout(root: Path) -> Path:
    """A checkout whose encoder-cost code reports which tree it came from."""
    files = {
        "encoders/__init__.py": "",
        "encoders/cost.py": (
            "import types\n"
            "def measure_cost(encoder, images, texts, repeats, threads):\n"
            "    return types.SimpleNamespace(tree='fake', images=len(images), threads=threads)\n"
        ),
        "fashion_search/__init__.py": "",
        "fashion_search/settings.py": "class Settings:\n    def __init__(self, **kw): pass\n",
        "fashion_search/wiring.py": (
            "class _Registry:\n    def get(self, name): return None\n"
            "def build_encoders(settings): return _Registry()\n"
        ),
        "fashion_search/commands/__init__.py": "",
        "fashion_search/commands/encoder_commands.py": "COST_QUERIES = ['red dress']\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


def test_the_onnx_bench_times_a_runtime_with_another_checkouts_code(
    tmp_path: Path, hm_demo: Path
) -> None:
    """``--torch-tree``: the cost is measured by the given checkout's code, not this one's."""
    images = sorted((hm_demo / "images").glob("*.jpg"))[:2]
    cost = onnx_bench.encode_cost("torch", images, 1, _fake_checkout(tmp_path / "old"))
    assert cost == {"tree": "fake", "images": 2, "threads": 1, "torch_imported": False}


def test_tree_revision_names_the_commit_and_whether_files_differ(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "a.txt").write_text("one", encoding="utf-8")
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert tree_revision(repo) == head
    (repo / "a.txt").write_text("two", encoding="utf-8")
    assert tree_revision(repo) == head + "+modified"


def _write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


def test_the_latency_bench_prepares_a_baseline_catalog_with_the_baseline_trees_code(
    tmp_path: Path,
) -> None:
    """``--baseline-tree``: the old checkout's own bench code picks its encoder and ingests."""
    old = _write_tree(
        tmp_path / "old",
        {
            "bench/__init__.py": "",
            "bench/common.py": (
                "import types\n"
                "def choose_encoder(requested, work):\n"
                "    data = {'id': 'old-encoder', 'standin': False, 'dim': 3, 'fingerprint': 'f'}\n"
                "    return types.SimpleNamespace(to_json=lambda: data)\n"
            ),
            "bench/catalog.py": (
                "def catalog_home(work, encoder, kaggle, hm):\n"
                "    return work / f'old-{kaggle}-{hm}'\n"
                "def prepare_catalog(home, encoder, datasets, kaggle, hm):\n"
                "    return {'tree': 'old', 'datasets': str(datasets)}\n"
            ),
        },
    )
    prepared = catalog.prepare_catalog_in_tree(old, tmp_path / "work", tmp_path / "data", None, 5)
    assert prepared.home == tmp_path / "work" / "old-None-5"
    assert prepared.encoder == EncoderChoice("old-encoder", False, 3, "f")
    assert prepared.counts == {"tree": "old", "datasets": str(tmp_path / "data")}


def test_a_process_started_for_another_tree_runs_that_trees_code(tmp_path: Path) -> None:
    """What `serve(tree=...)` starts: this interpreter's `fashion-search` on the tree's code."""
    old = _write_tree(
        tmp_path / "old",
        {
            "fashion_search/__init__.py": "",
            "fashion_search/cli.py": "def app():\n    print(__file__)\n",
        },
    )
    env = app_env(tmp_path / "home", EncoderChoice("e", False, 3), tree=old)
    out = subprocess.run(
        cli_argv("serve"), env=env, cwd=old, capture_output=True, text=True, check=True
    )
    assert Path(out.stdout.strip()) == old / "fashion_search" / "cli.py"


def test_the_latency_bench_compares_each_round_with_the_baseline_of_that_round() -> None:
    def phase(
        kind: str, clients: int, p50: float, qps: float, cpu: float | None = None
    ) -> dict[str, object]:
        return {
            "kind": kind,
            "clients": clients,
            "latency_ms": {"p50": p50},
            "qps": qps,
            "cpu_ms_per_request": {"server": cpu, "client": None},
        }

    def run(side: str, round_: int, phases: list[dict[str, object]]) -> dict[str, object]:
        return {"side": side, "round": round_, "workers": 2, "torch_threads": 1, "phases": phases}

    runs = [
        run("baseline", 0, [phase("graphql_text", 1, 10.0, 100.0), phase("graphql_text", 8, 40.0, 200.0, 10.0)]),
        run("this", 0, [phase("graphql_text", 1, 12.0, 80.0), phase("graphql_text", 8, 50.0, 150.0, 12.0)]),
        run("this", 1, [phase("graphql_text", 1, 15.0, 60.0), phase("graphql_text", 8, 60.0, 120.0)]),
        run("baseline", 1, [phase("graphql_text", 1, 10.0, 90.0), phase("graphql_text", 8, 45.0, 160.0)]),
    ]  # fmt: skip
    ratios = latency.baseline_ratios(runs, latency.parse_configs("2x1"), 8)
    text = ratios["workers=2, torch threads=1"]["graphql_text"]
    assert text["p50_ratio"] == {"rounds": [1.2, 1.5], "median": 1.35}
    assert text["qps_ratio"] == {"rounds": [0.75, 0.75], "median": 0.75}
    # the server's CPU per request, where both sides measured it (round 1's did not)
    assert text["server_cpu_ratio"] == {"rounds": [1.2], "median": 1.2}
    checks = {c.name: c for c in latency.baseline_checks(ratios, 8)}
    p50 = checks["searchByText (GraphQL) / baseline, 1 client p50 [workers=2, torch threads=1]"]
    assert (p50.measured, p50.ok) == (1.35, False)
    qps = checks["searchByText (GraphQL) / baseline, 8 clients q/s [workers=2, torch threads=1]"]
    assert (qps.measured, qps.ok) == (0.75, False)
    cpu = checks[
        "searchByText (GraphQL) / baseline, 8 clients server CPU per request "
        "[workers=2, torch threads=1]"
    ]
    assert cpu.measured == 1.2
    # a kind the baseline was asked too is compared with the baseline's own
    runs[0]["phases"].append(phase("graphql_text_visual", 1, 8.0, 1.0))  # type: ignore[attr-defined]
    runs[1]["phases"].append(phase("graphql_text_visual", 1, 6.0, 1.0))  # type: ignore[attr-defined]
    ratios = latency.baseline_ratios(runs, latency.parse_configs("2x1"), 8)
    assert ratios["workers=2, torch threads=1"]["graphql_text_visual"]["p50_ratio"] == {
        "rounds": [0.75],
        "median": 0.75,
    }


async def test_one_client_alternates_between_the_baseline_and_this_checkout() -> None:
    """Each side answers every request of its kind; the baseline is asked what it knows."""
    old, new = await make_api(), await make_api()
    async with old.client, new.client:
        calls = latency.make_calls(["black dress", "white sneakers"], [_jpeg()])
        sides = [
            latency.Side("baseline", Path("old"), EncoderChoice("e", False, 3), ["graphql_text"]),
            latency.Side(
                "this", Path("new"), EncoderChoice("e", False, 3), ["graphql_text_visual"]
            ),
        ]
        out = await latency.one_client_alternating(
            {"baseline": "http://old", "this": "http://new"},
            sides,
            calls,
            6,
            transports={
                "baseline": httpx.ASGITransport(app=old.app),
                "this": httpx.ASGITransport(app=new.app),
            },
        )
    figures = out["graphql_text_visual"]
    assert figures["baseline_kind"] == "graphql_text"
    assert figures["errors"] == 0
    assert {name: s["n"] for name, s in figures["latency_ms"].items()} == {"baseline": 6, "this": 6}
    p50 = figures["latency_ms"]["this"]["p50"] / figures["latency_ms"]["baseline"]["p50"]
    assert figures["p50_ratio"] == pytest.approx(p50, abs=1e-4)


def test_the_server_ab_bench_reads_each_variant() -> None:
    from bench.server_ab import Variant, main

    assert Variant.parse("main") == Variant("main")
    parsed = Variant.parse("f16:tree=../old:home=/tmp/h:env=FASHION_SEARCH_FAISS_PREFILTER=float16")
    assert parsed == Variant(
        "f16", Path("../old"), Path("/tmp/h"), {"FASHION_SEARCH_FAISS_PREFILTER": "float16"}
    )
    for bad in (":tree=x", "a:branch=x", "a:env=NOVALUE"):
        with pytest.raises(ValueError, match="variant"):
            Variant.parse(bad)
    with pytest.raises(SystemExit):  # no variant: the option is required
        main(["--home", "/nonexistent"])
