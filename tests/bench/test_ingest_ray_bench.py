"""bench.ingest_ray's CPU breakdown by role: how the processes of a Ray run are named."""

from __future__ import annotations

from bench.ingest_ray import IDLE_ROLE, ActorUse, process_role
from ingest.ray_engine import ENCODER_PROCESS_TITLE


def test_processes_are_given_their_role_and_keep_it_when_idle() -> None:
    assert process_role(ENCODER_PROCESS_TITLE, "") == "encoder actors"
    prepare = process_role(b"ray::MapBatches(prepare_images)", "")
    assert prepare == "read/prepare tasks"
    assert process_role(b"ray::IDLE", prepare) == prepare  # a worker between two tasks
    assert process_role(b"ray::IDLE", "") == IDLE_ROLE
    assert process_role(b"ray::_StatsActor", "") == "Ray Data helper actors"
    driver = b"/venv/bin/python /venv/bin/fashion-search\0ingest\0catalog.zip"
    assert process_role(driver, "") == "driver (ingest process)"
    raylet = b"/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet\0--x"
    assert process_role(raylet, "") == "Ray system (raylet, GCS, agents)"


def test_cpu_is_summed_per_role_largest_first() -> None:
    use = ActorUse()
    use.by_process = {
        1: ("driver (ingest process)", 2.0),
        2: ("encoder actors", 5.0),
        3: ("encoder actors", 4.5),
    }
    assert list(use.cpu_by_role().items()) == [
        ("encoder actors", 9.5),
        ("driver (ingest process)", 2.0),
    ]
