from __future__ import annotations

from encoders.cost import measure_cost
from tests.fakes import HashingEncoder


def test_measure_cost_times_single_images_and_texts() -> None:
    encoder = HashingEncoder()
    cost = measure_cost(encoder, [b"IMG:red dress"] * 3, ["red dress", "black trousers"], 2)
    assert cost.encoder_id == "fake"
    assert cost.threads == 1
    for value in (cost.ms_per_image_median, cost.ms_per_text_median, cost.ms_per_text_min):
        assert value is not None
        assert value >= 0.0
    assert cost.cpu_ms_per_image_median is not None
    # one warm-up call per modality, then repeats x inputs calls of one item each
    assert encoder.calls == (1 + 2 * 3) + (1 + 2 * 2)
