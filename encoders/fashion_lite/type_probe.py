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
    train: Sequence[Item], heldout: Sequence[Item], inputs: dict[str, F32], steps: int = STEPS
) -> tuple[float, float]:
    """(held-out type accuracy, same-type P@10 of the class probabilities) of a linear probe."""
    import torch

    types = sorted({i.product_type.lower() for i in train})
    index = {t: k for k, t in enumerate(types)}
    x = np.stack([inputs[i.id] for i in train])
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-3
    features = torch.from_numpy(((x - mean) / std).astype(np.float32))
    labels = torch.from_numpy(np.array([index[i.product_type.lower()] for i in train]))
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
    held = np.stack([inputs[i.id] for i in heldout])
    with torch.no_grad():
        logits = model(torch.from_numpy(((held - mean) / std).astype(np.float32))).numpy()
    truth = np.array([index.get(i.product_type.lower(), -1) for i in heldout])
    accuracy = float(np.mean(logits.argmax(axis=1) == truth))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    vectors = (probs / np.linalg.norm(probs, axis=1, keepdims=True)).astype(np.float32)
    gallery = ev.LabelledGallery(
        ids=[i.id for i in heldout],
        texts=[i.description for i in heldout],
        attributes=[i.attributes for i in heldout],
    )
    precision = ev.image_to_image_metrics(vectors, vectors, gallery)[ev.IMAGE_TYPE_METRIC]
    return accuracy, precision


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shares", nargs="+", help="shares of the pool (0-1), or 'dev'")
    parser.add_argument("--cache-dir", type=Path, required=True, help="the features' folder")
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args(argv)
    hm_dev, hm_extra = args.datasets / "hm-dev", args.datasets / "hm-extra"
    inputs: dict[str, F32] = {}
    for folder in (hm_dev, hm_extra):
        cached = _read_image_cache(args.cache_dir / f"images-{hm_tag(folder)}.npz")
        inputs |= {key: np.concatenate(value) for key, value in cached.items()}
    dev_train, heldout = split_items(TrainConfig(hm_dev=hm_dev))
    extra = read_hm_manifest(hm_extra)
    known = [i for i in heldout if ev.is_known(i.product_type)]
    for share in args.shares:
        pool = dev_train if share == "dev" else keep_share(dev_train, float(share))
        if share != "dev":
            pool += keep_share(extra, float(share))
        train = [i for i in pool if ev.is_known(i.product_type)]
        accuracy, precision = probe_point(train, known, inputs, args.steps)
        point = ProbePoint(share, len(train), round(accuracy, 4), round(precision, 4))
        print(json.dumps(asdict(point)), flush=True)


if __name__ == "__main__":
    main()
