"""The packaged weights read without torch: the same arrays as torch.load, and a checkpoint
whose pickle asks for anything but a state dict is refused before it runs."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest

from domain.errors import EncoderUnavailable
from encoders.backbones import weights_path
from encoders.weight_files import LEGACY_MAGIC, read_torch_checkpoint


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite2"])
def test_checkpoint_arrays_are_torch_loads(name: str) -> None:
    torch = pytest.importorskip("torch")
    path = Path(weights_path(name))
    arrays = read_torch_checkpoint(path)
    reference = torch.load(path, map_location="cpu", weights_only=True)
    assert list(arrays) == list(reference)
    for key, tensor in reference.items():
        np.testing.assert_array_equal(arrays[key], tensor.numpy(), err_msg=key)


class _RunsACommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    buffer = io.BytesIO()
    for header in (LEGACY_MAGIC, 1001, {"little_endian": True}):
        pickle.dump(header, buffer)
    pickle.dump({"weight": _RunsACommand(marker)}, buffer)
    path = tmp_path / "evil.pth"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(EncoderUnavailable, match=r"does not contain (posix|os)\.system"):
        read_torch_checkpoint(path)
    assert not marker.exists()


def test_a_file_that_is_not_a_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.pth"
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(EncoderUnavailable, match="cannot read the weights"):
        read_torch_checkpoint(path)
