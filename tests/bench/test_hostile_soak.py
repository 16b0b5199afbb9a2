"""The hostile soak's pieces that need no server: how an answer is judged, and what
``python -m bench soak`` runs. (The soak itself is a bench, not a test: tests/reliability/
test_soak.py runs the short normal-traffic variant.)"""

from __future__ import annotations

from collections.abc import Sequence

import httpx
import pytest

from bench import __main__ as cli
from bench import soak
from bench.hostile import BAD_CURSORS, outcome_of, strip_png


def answer(status: int, body: object) -> httpx.Response:
    return httpx.Response(status, json=body)


@pytest.mark.parametrize(
    ("response", "label", "failed"),
    [
        (answer(200, {"data": {"x": 1}}), "200 ok", False),
        (answer(400, {"detail": "no", "code": "BAD_USER_INPUT"}), "400 BAD_USER_INPUT", False),
        (
            answer(200, {"errors": [{"message": "m", "extensions": {"code": "NOT_FOUND"}}]}),
            "200 NOT_FOUND",
            False,
        ),
        (answer(500, {"detail": "Internal server error"}), "500 ok", True),
        (
            answer(
                200,
                {"errors": [{"message": "x", "extensions": {"code": "INTERNAL_SERVER_ERROR"}}]},
            ),
            "200 INTERNAL_SERVER_ERROR",
            True,
        ),
        (answer(200, {"errors": [{"message": "no code"}]}), "200 ok", True),
    ],
)
def test_outcomes(response: httpx.Response, label: str, failed: bool) -> None:
    outcome = outcome_of(response)
    assert outcome.label == label
    assert (outcome.error is not None) == failed


def test_the_strip_png_is_tiny_and_long() -> None:
    data = strip_png()
    assert len(data) < 2000
    assert data.startswith(b"\x89PNG")
    assert len(set(BAD_CURSORS)) == len(BAD_CURSORS)


def test_bench_soak_runs_the_hostile_soak_for_ten_minutes(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Sequence[str]] = []

    def fake_main(argv: Sequence[str]) -> int:
        seen.append(list(argv))
        return 0

    monkeypatch.setattr(soak, "main", fake_main)
    assert cli.main(["soak", "--duration", "120"]) == 0
    args = soak.parser().parse_args(seen[0])
    assert args.hostile
    assert args.duration == 120.0  # the caller's figure wins over the 600 s default
    assert args.clients == 16
    assert soak.parser().parse_args(list(cli.SOAK_DEFAULTS)).duration == 600.0
