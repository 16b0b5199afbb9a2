"""A scaling diagnostic for the training data: a linear product-type probe on the cached
image inputs of the heads (pooled backbone features + colour stats), trained on a share of
the training pool (hm-dev's training part + hm-extra, whole product codes) for a fixed
number of steps and scored on the held-out split. Cheap (about 100 s a point on cached
features, against hours for the heads), so it shows whether more labelled images still lift
the type discrimination that bounds image-to-image search. No setting is chosen by it.

    python -m encoders.fashion_lite.type_probe --cache-dir DIR 0.25 0.5 0.75 1 dev
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from domain import evaluation as ev
from encoders.fashion_lite.data import Item, read_hm_manifest
from encoders.fashion_lite.feature_cache import _read_image_cache
from encoders.fashion_lite.train_config import TrainConfig
from encoders.fashion_lite.training import hm_tag, keep_share, split_items

F32 = npt.NDArray[np.float32]

STEPS = 300
BATCH = 256
LR = 2e-3
WEIGHT_DECAY = 1e-2
LABEL_SMOOTHING = 0.1
DROPOUT = 0.1
SEED = 7
WARMUP_SHARE = 0.1


@dataclass(frozen=True)
class ProbePoint:
    share: str  # a share of the pool, or "dev" (hm-dev's training part only)
    n_train: int
    heldout_type_accuracy: float
    probe_type_p10: float  # same-type P@10 of the probe's probabilities among held-out items


def probe_point(
    train: Sequence[Item],
    heldout: Sequence[Item],
    inputs: dict[str, F32],
    steps: int = STEPS,
    views: dict[str, F32] | None = None,
) -> tuple[Any, Any, Any]:
    """A linear type probe trained on the items' inputs (and, given ``views``, their views as
    more rows with the same labels): (the probe, the standardisation, the type index)."""
    import torch

    types = sorted({i.product_type.lower() for i in train})
    index = {t: k for k, t in enumerate(types)}
    x = np.stack([inputs[i.id] for i in train])
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-3
    y = np.array([index[i.product_type.lower()] for i in train])
    if views is not None:
        x = np.concatenate([x, np.stack([views[i.id] for i in train])])
        y = np.concatenate([y, y])
    features = torch.from_numpy(((x - mean) / std).astype(np.float32))
    labels = torch.from_numpy(y)
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    model = torch.nn.Sequential(torch.nn.Dropout(DROPOUT), torch.nn.Linear(x.shape[1], len(types)))
    optimiser = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=LR, total_steps=steps, pct_start=WARMUP_SHARE
    )
    model.train()
    for _ in range(steps):
        batch = torch.from_numpy(rng.integers(0, len(labels), BATCH))
        loss = torch.nn.functional.cross_entropy(
            model(features[batch]), labels[batch], label_smoothing=LABEL_SMOOTHING
        )
        optimiser.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        schedule.step()
    model.eval()
    return model, (mean, std), index


def probe_scores(
    probe: tuple[Any, Any, Any],
    heldout: Sequence[Item],
    inputs: dict[str, F32],
    queries: dict[str, F32] | None = None,
) -> tuple[float, float]:
    """(type accuracy, same-type P@10 of the class probabilities against the clean held-out
    items, the query itself excluded) of queries: the held-out items' clean inputs, or
    ``queries`` (e.g. photo-style copies) of the held-out items that have one."""
    model, (mean, std), index = probe
    rows = [k for k, i in enumerate(heldout) if queries is None or i.id in queries]
    source = inputs if queries is None else queries
    gallery_vectors = _probabilities(model, [inputs[i.id] for i in heldout], mean, std)
    query_logits = _logits(model, [source[heldout[k].id] for k in rows], mean, std)
    truth = np.array([index.get(heldout[k].product_type.lower(), -1) for k in rows])
    accuracy = float(np.mean(query_logits.argmax(axis=1) == truth))
    labels = [i.product_type.lower() for i in heldout]
    result = ev.retrieval_metrics(
        _normalised(query_logits),
        gallery_vectors,
        [labels[k] for k in rows],
        labels,
        ks=(10,),
        exclude_index=rows,
    )
    return accuracy, result.precision[10]


def _logits(model: Any, rows: Sequence[F32], mean: F32, std: F32) -> F32:
    import torch

    with torch.no_grad():
        out = model(torch.from_numpy(((np.stack(rows) - mean) / std).astype(np.float32)))
    logits: F32 = out.numpy().astype(np.float32)
    return logits


def _normalised(logits: F32) -> F32:
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    vectors: F32 = (probs / np.linalg.norm(probs, axis=1, keepdims=True)).astype(np.float32)
    return vectors


def _probabilities(model: Any, rows: Sequence[F32], mean: F32, std: F32) -> F32:
    return _normalised(_logits(model, rows, mean, std))


PHOTO_SHARE = 0.45  # of hm-dev's training part: about 2,000 items get a view (cost bound)
QUERY_STRIDE = 5  # photo-style copies of every 5th held-out item (the renderer is slow)


def _photo_view_probe(
    cache_dir: Path,
    hm_dev: Path,
    dev_train: Sequence[Item],
    known: Sequence[Item],
    inputs: dict[str, F32],
    steps: int,
) -> None:
    """Does a shopper-photo view per training image make the type probe robust to the
    evaluation's photo-style queries (different ranges and renderer)?"""
    from encoders.backbones import ImageBackboneSpec
    from encoders.fashion_lite.data import image_loader
    from encoders.fashion_lite.feature_cache import (
        EVAL_PHOTO_VIEW,
        SHOPPER_VIEW,
        image_features,
        view_transform,
    )
    from encoders.fashion_lite.heads import WEIGHTS_DIR
    from encoders.fashion_lite.training import EVAL_AUGMENT_SEED, SHOPPER_VIEW_SEED

    spec = ImageBackboneSpec(
        "efficientnet-lite0",
        192,
        ("avg", "max", "bands3", "mid"),
        tuned=str(WEIGHTS_DIR / "heads-v3.npz"),
    )
    tag = hm_tag(hm_dev)

    def features(items: Sequence[Item], kind: str, seed: int) -> dict[str, F32]:
        cnn, colour = image_features(
            items,
            image_loader(items, None),
            spec,
            cache_dir / f"images-{tag}-{kind}-{seed}.npz",
            transform=view_transform(kind, seed),
            crop=True,
        )
        return {i.id: np.concatenate([c, h]) for i, c, h in zip(items, cnn, colour, strict=True)}

    train = [i for i in keep_share(dev_train, PHOTO_SHARE) if ev.is_known(i.product_type)]
    views = features(train, SHOPPER_VIEW, SHOPPER_VIEW_SEED)
    queries = features(known[::QUERY_STRIDE], EVAL_PHOTO_VIEW, EVAL_AUGMENT_SEED)
    for with_views in (False, True):
        probe = probe_point(train, known, inputs, steps, views if with_views else None)
        clean = probe_scores(probe, known, inputs)
        photo = probe_scores(probe, known, inputs, queries)
        row = {
            "photo_views": with_views,
            "n_train": len(train),
            "n_photo_queries": len(queries),
            "heldout_type_accuracy": round(clean[0], 4),
            "probe_type_p10": round(clean[1], 4),
            "photo_style_type_accuracy": round(photo[0], 4),
            "photo_style_probe_p10": round(photo[1], 4),
        }
        print(json.dumps(row), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shares", nargs="+", help="shares of the pool (0-1), or 'dev'")
    parser.add_argument("--cache-dir", type=Path, required=True, help="the features' folder")
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument(
        "--photo-views",
        action="store_true",
        help="instead: hm-dev items only (PHOTO_SHARE of the training part), clean vs clean + "
        "one shopper-photo view each, scored on photo-style copies of every QUERY_STRIDE-th "
        "held-out item (the backbone features are extracted into --cache-dir if missing)",
    )
    args = parser.parse_args(argv)
    hm_dev, hm_extra = args.datasets / "hm-dev", args.datasets / "hm-extra"
    inputs: dict[str, F32] = {}
    for folder in (hm_dev, hm_extra):
        cached = _read_image_cache(args.cache_dir / f"images-{hm_tag(folder)}.npz")
        inputs |= {key: np.concatenate(value) for key, value in cached.items()}
    dev_train, heldout = split_items(TrainConfig(hm_dev=hm_dev))
    extra = read_hm_manifest(hm_extra)
    known = [i for i in heldout if ev.is_known(i.product_type)]
    if args.photo_views:
        _photo_view_probe(args.cache_dir, hm_dev, dev_train, known, inputs, args.steps)
        return
    for share in args.shares:
        pool = dev_train if share == "dev" else keep_share(dev_train, float(share))
        if share != "dev":
            pool += keep_share(extra, float(share))
        train = [i for i in pool if ev.is_known(i.product_type)]
        probe = probe_point(train, known, inputs, args.steps)
        accuracy, precision = probe_scores(probe, known, inputs)
        point = ProbePoint(share, len(train), round(accuracy, 4), round(precision, 4))
        print(json.dumps(asdict(point)), flush=True)


if __name__ == "__main__":
    main()
