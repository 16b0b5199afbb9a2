"""Fine-tuning the last blocks of the image backbone on catalog labels.

Frozen ImageNet features cap how well unseen products of one type find each other (a type
classifier on them reaches about 0.72 held-out accuracy; tuned as below, 0.73, and the
"<colour|pattern|section> <type>" queries gain about 0.02 each: see the model card). This module
retrains the backbone's last ``blocks`` MBConv blocks and its final 1x1 layer on the
training items' labels (product type first, then pattern, colour, section, garment group:
one linear classifier per label on the average and maximum of the last feature map).

The frozen lower blocks are run once per image and view: their output (the input of the
first tuned block; 112 x 12 x 12 at 192 px for EfficientNet-Lite0) is cached as float16, so
an epoch costs only the tuned blocks, which work at 1/32 resolution. Augmentation comes
from the cached augmented views (one drawn per step) and a horizontal flip of the map.
Batch-norm statistics stay frozen (small batches of few labels would only make them worse);
their scale and shift are trained.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from encoders.backbones import ImageBackboneSpec, efficientnet, image_array
from encoders.fashion_lite.data import Item
from encoders.images import decode_image

F32 = npt.NDArray[np.float32]
F16 = npt.NDArray[np.float16]
Progress = Callable[[str, int, int], None]

NO_LABEL = -1  # the target of an item without the label
# label -> weight of its classification loss
DEFAULT_LABELS: dict[str, float] = {
    "product_type": 1.0,
    "pattern": 0.5,
    "colour": 0.3,
    "section": 0.3,
    "garment_group": 0.3,
}


@dataclass(frozen=True)
class TuneConfig:
    blocks: int = 5  # the last this many MBConv blocks (and the final 1x1 layer) are trained
    epochs: int = 10
    lr: float = 6e-4  # of the tuned layers; the classifiers use lr_classifier
    lr_classifier: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 64
    dropout: float = 0.3
    label_smoothing: float = 0.1
    drop_connect: float = 0.2  # stochastic depth of the tuned blocks, as EfficientNet trains
    labels: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LABELS))
    seed: int = 7


def tuned_modules(model: Any, blocks: int) -> dict[str, Any]:
    """The modules of an EfficientNet that tuning trains, by their state-dict prefix."""
    total = len(model._blocks)
    if not 0 < blocks <= total:
        raise ValueError(f"blocks to tune must be in 1..{total}, not {blocks}")
    modules = {f"_blocks.{i}": model._blocks[i] for i in range(total - blocks, total)}
    modules["_conv_head"] = model._conv_head
    modules["_bn1"] = model._bn1
    return modules


def block_inputs(
    items: Sequence[Item],
    load: Callable[[Item], bytes],
    spec: ImageBackboneSpec,
    blocks: int,
    cache_file: Path,
    crop: bool,
    transform: Callable[[Item, bytes], bytes] | None = None,
    progress: Progress | None = None,
    batch_size: int = 16,
) -> F16:
    """[n, C, H, W] float16: the input of the first tuned block for each item's image (the
    ImageNet weights' lower blocks), read from / added to ``cache_file`` (keyed by id)."""
    import torch

    cached: dict[str, F16] = {}
    if cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as data:
            cached = {str(k): row for k, row in zip(data["ids"], data["maps"], strict=True)}
    missing = [item for item in items if item.id not in cached]
    if missing:
        model = efficientnet(ImageBackboneSpec(spec.name, spec.size))
        first_tuned = len(model._blocks) - blocks
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            arrays = []
            for item in chunk:
                data = load(item)
                if transform is not None:
                    data = transform(item, data)
                arrays.append(image_array(decode_image(data), spec.size, crop))
            with torch.inference_mode():
                h = model._swish(model._bn0(model._conv_stem(torch.from_numpy(np.stack(arrays)))))
                for block in model._blocks[:first_tuned]:
                    h = block(h)
            for item, row in zip(chunk, h.numpy().astype(np.float16), strict=True):
                cached[item.id] = row
            if progress is not None:
                progress(f"backbone maps ({cache_file.stem})", start + len(chunk), len(missing))
            if (start // batch_size) % 64 == 63:  # keep the work done so far if interrupted
                _save_maps(cached, cache_file)
        _save_maps(cached, cache_file)
    return np.stack([cached[item.id] for item in items])


def _save_maps(cached: dict[str, F16], cache_file: Path) -> None:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    ids = sorted(cached)
    tmp = cache_file.with_suffix(".tmp.npz")
    np.savez(tmp, ids=np.array(ids), maps=np.stack([cached[i] for i in ids]))
    tmp.replace(cache_file)


@dataclass
class TuneResult:
    state: dict[str, F32]  # the tuned layers' tensors, by state-dict name
    losses: list[float]
    seconds: float
    heldout_accuracy: list[float]  # product-type accuracy per epoch (when held-out maps given)


def tune_backbone(
    spec: ImageBackboneSpec,
    items: Sequence[Item],
    views: Sequence[F16],
    config: TuneConfig,
    heldout: tuple[Sequence[Item], F16] | None = None,
    progress: Progress | None = None,
) -> TuneResult:
    """Train the last ``config.blocks`` blocks on ``items``' labels; ``views[v][i]`` is the
    input of the first tuned block for view v of item i (``block_inputs``)."""
    import torch
    import torch.nn.functional as functional

    started = time.perf_counter()
    if not views or any(len(view) != len(items) for view in views):
        raise ValueError("every view needs one map per item")
    torch.manual_seed(config.seed)
    model = efficientnet(ImageBackboneSpec(spec.name, spec.size))
    modules = tuned_modules(model, config.blocks)
    first_tuned = len(model._blocks) - config.blocks
    n_blocks = len(model._blocks)
    tail_blocks = [modules[f"_blocks.{i}"] for i in range(first_tuned, n_blocks)]
    labels = {k: w for k, w in config.labels.items() if w > 0}
    # an item without a label (another catalog's items) adds nothing to that label's loss
    vocab = {
        k: sorted({item.attributes[k] for item in items if k in item.attributes}) for k in labels
    }
    if missing := [k for k in labels if not vocab[k]]:
        raise ValueError(f"no item has the labels {missing}")
    targets = {
        k: torch.tensor(
            [
                vocab[k].index(item.attributes[k]) if k in item.attributes else NO_LABEL
                for item in items
            ]
        )
        for k in labels
    }
    width = int(model._conv_head.out_channels) * 2
    classifiers = torch.nn.ModuleDict({k: torch.nn.Linear(width, len(vocab[k])) for k in labels})
    dropout = torch.nn.Dropout(config.dropout)
    tuned = torch.nn.ModuleList(list(modules.values()))

    def pooled(x: Any) -> Any:
        h = x
        for offset, block in enumerate(tail_blocks):
            rate = config.drop_connect * (first_tuned + offset) / n_blocks
            h = block(h, drop_connect_rate=rate if tuned.training else None)
        h = model._swish(model._bn1(model._conv_head(h)))  # ReLU6 in the Lite models
        return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)

    optimiser = torch.optim.AdamW(
        [
            {"params": classifiers.parameters(), "lr": config.lr_classifier},
            {"params": tuned.parameters(), "lr": config.lr},
        ],
        weight_decay=config.weight_decay,
    )
    n = len(items)
    steps_per_epoch = (n + config.batch_size - 1) // config.batch_size
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=[config.lr_classifier, config.lr], total_steps=total, pct_start=0.1
    )
    view_tensors = [torch.from_numpy(view) for view in views]
    generator = torch.Generator().manual_seed(config.seed)
    losses: list[float] = []
    accuracy: list[float] = []
    step = 0
    for _epoch in range(config.epochs):
        tuned.train()
        for module in tuned.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
        classifiers.train()
        order = torch.randperm(n, generator=generator)
        epoch_loss = 0.0
        for start in range(0, n, config.batch_size):
            index = order[start : start + config.batch_size]
            pick = torch.randint(len(view_tensors), (len(index),), generator=generator)
            x = torch.stack(
                [view_tensors[int(v)][int(i)] for v, i in zip(pick, index, strict=True)]
            ).float()
            flip = torch.rand(len(index), generator=generator) < 0.5
            x[flip] = x[flip].flip(-1)
            features = dropout(pooled(x))
            loss: Any = torch.zeros(())
            for k, weight in labels.items():
                target, rows = targets[k][index], features
                labelled = target != NO_LABEL
                if not labelled.all():  # (all labelled: the same arithmetic as without masks)
                    target, rows = target[labelled], features[labelled]
                if len(target):
                    loss = loss + weight * functional.cross_entropy(
                        classifiers[k](rows), target, label_smoothing=config.label_smoothing
                    )
            if loss.requires_grad:  # (not when no item of the batch has any of the labels)
                epoch_loss += optimiser_step(optimiser, scheduler, loss)
            step += 1
            if progress is not None:
                progress("tuning backbone", step, total)
        losses.append(epoch_loss / steps_per_epoch)
        if heldout is not None and "product_type" in labels:
            accuracy.append(_type_accuracy(pooled, tuned, classifiers, vocab, heldout))
    tuned.eval()
    state = {
        f"{prefix}.{key}": value.detach().numpy().astype(np.float32)
        for prefix, module in modules.items()
        for key, value in module.state_dict().items()
        if value.is_floating_point()
    }
    return TuneResult(state, losses, time.perf_counter() - started, accuracy)


def optimiser_step(optimiser: Any, scheduler: Any, loss: Any) -> float:
    """One gradient step on ``loss``; returns its value."""
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    scheduler.step()
    return float(loss.detach())


def _type_accuracy(
    pooled: Callable[[Any], Any],
    tuned: Any,
    classifiers: Any,
    vocab: dict[str, list[str]],
    heldout: tuple[Sequence[Item], F16],
) -> float:
    import torch

    items, maps = heldout
    tuned.eval()
    classifiers.eval()
    with torch.inference_mode():
        predicted = [
            int(k)
            for start in range(0, len(items), 128)
            for k in classifiers["product_type"](
                pooled(torch.from_numpy(maps[start : start + 128]).float())
            ).argmax(dim=1)
        ]
    names = vocab["product_type"]
    hits = sum(
        names[k] == item.attributes.get("product_type", "")
        for k, item in zip(predicted, items, strict=True)
    )
    return hits / max(len(items), 1)
