"""Training the fashion-lite heads: contrastive (InfoNCE with a learned temperature) alignment
of image features (EfficientNet-Lite + colour histogram) and frozen text features
(all-MiniLM-L6-v2) on catalog image-text pairs, plus a supervised contrastive term on the
product type between images. Validation on the fixed held-out split of hm-dev.

First, unless ``tune_blocks`` is 0, the backbone's last blocks are fine-tuned on the training
items' labels (``tuning``); the heads are then trained on the tuned backbone's features, and
the heads file carries the tuned layers.

Backbone features are cached under ``cache_dir`` so that reruns only train the heads.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from domain import evaluation as ev
from encoders.augment import augment_image
from encoders.backbones import (
    COLOUR_DIM,
    TUNED_PREFIX,
    ImageBackboneSpec,
    configure_torch_threads,
    image_backbone,
    image_inputs,
    read_tuned_state,
    text_backbone,
)
from encoders.fashion_lite.data import (
    VALIDATION_SEED,
    Item,
    image_loader,
    item_texts,
    make_heldout_split,
    query_text,
    read_hm_manifest,
    read_ids,
    read_kaggle_zip,
)
from encoders.fashion_lite.heads import Heads, Tower
from encoders.fashion_lite.tuning import (
    DEFAULT_LABELS,
    TuneConfig,
    block_inputs,
    optimiser_step,
    tune_backbone,
)
from encoders.images import decode_image

F32 = npt.NDArray[np.float32]
Progress = Callable[[str, int, int], None]
FEATURES_VERSION = "v1"


@dataclass
class TrainConfig:
    hm_dev: Path
    kaggle_zip: Path | None = None
    cache_dir: Path = Path(".fashion-search/cache/fashion-lite")
    heldout_ids: Path | None = None
    image_backbone: str = "efficientnet-lite0"
    image_size: int = 192
    # pooled backbone features (see POOLED_PARTS)
    image_parts: tuple[str, ...] = ("avg", "max", "bands3", "mid")
    colour: bool = True
    dim: int = 256
    hidden: int = 768
    layers: int = 2
    epochs: int = 80
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-4
    supcon_weight: float = 0.5
    input_dropout: float = 0.1
    raw_weight: float = 0.0
    extra_dim: int = 128  # an image-only tower for image-to-image search (0: none)
    extra_weight: float = 0.5
    extra_hidden: int = 512
    extra_supcon: float = 1.0
    aug_instance_weight: float = 0.5  # extra tower: augmented view <-> its original
    aug_input_prob: float = 0.3  # shared head: train on the augmented view this often
    train_augmented: bool = True  # extract augmented views of the hm training images
    aug_views: int = 3  # augmented views per training image (seeds 99, 100, ...); one per step
    hard_batches: float = 0.0  # this share of epochs batches items of few product types together
    crop: bool = True  # crop images to their content before padding to square
    tune_blocks: int = 5  # fine-tune the backbone's last this many blocks first (0: frozen)
    tune_epochs: int = 10
    tune_lr: float = 6e-4
    # label -> weight of its classifier's loss while tuning (see tuning.DEFAULT_LABELS)
    tune_labels: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LABELS))
    colour_scale: float = 1.0  # colour stats count this much more than a backbone feature
    seed: int = 7
    limit: int | None = None  # at most this many training items (smoke tests)
    eval_limit: int | None = None  # at most this many held-out items in validation
    # > 0: validate on this share of the training part's product codes (carved out, not
    # trained on) instead of on the held-out split, which then is not read at all
    validation: float = 0.0
    threads: int = 1


class TrainingSetupError(ValueError):
    """Settings that cannot work with the data (found before any long work starts)."""


@dataclass
class TrainResult:
    heads: Heads
    losses: list[float]
    metrics: dict[str, float]
    random_metrics: dict[str, float]
    chance: dict[str, float]
    n_train: int
    n_heldout: int  # items the metrics were computed on
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- feature caches


def _fingerprint(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def image_features(
    items: Sequence[Item],
    load: Callable[[Item], bytes],
    spec: ImageBackboneSpec,
    cache_file: Path,
    progress: Progress | None = None,
    transform: Callable[[Item, bytes], bytes] | None = None,
    batch_size: int = 32,
    crop: bool = False,
) -> tuple[F32, F32]:
    """Backbone features [n, 1280] and colour stats [n, COLOUR_DIM] of the items' images,
    read from / added to ``cache_file`` (keyed by item id)."""
    cached: dict[str, tuple[F32, F32]] = {}
    if cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as data:
            for key, cnn, colour in zip(data["ids"], data["cnn"], data["colour"], strict=True):
                cached[str(key)] = (cnn, colour)
    missing = [item for item in items if item.id not in cached]
    if missing:
        backbone = image_backbone(spec)
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            arrays, colours = [], []
            for item in chunk:
                data = load(item)
                if transform is not None:
                    data = transform(item, data)
                array, colour = image_inputs(decode_image(data), spec.size, crop)
                arrays.append(array)
                colours.append(colour)
            cnn = backbone.features(arrays)
            for item, row, colour in zip(chunk, cnn, colours, strict=True):
                cached[item.id] = (row, colour)
            if progress is not None:
                progress(f"image features ({cache_file.stem})", start + len(chunk), len(missing))
            if (start // batch_size) % 64 == 63:  # keep work done so far if interrupted
                _save_image_cache(cached, cache_file)
        _save_image_cache(cached, cache_file)
    cnn_out = np.stack([cached[item.id][0] for item in items]).astype(np.float32)
    colour_out = np.stack([cached[item.id][1] for item in items]).astype(np.float32)
    return cnn_out, colour_out


def _save_image_cache(cached: dict[str, tuple[F32, F32]], cache_file: Path) -> None:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    ids = sorted(cached)
    tmp = cache_file.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        ids=np.array(ids),
        cnn=np.stack([cached[i][0] for i in ids]).astype(np.float32),
        colour=np.stack([cached[i][1] for i in ids]).astype(np.float32),
    )
    tmp.replace(cache_file)


def text_features(texts: Sequence[str], cache_file: Path, progress: Progress | None = None) -> F32:
    """MiniLM features [n, 384] of the texts, read from / added to ``cache_file``."""
    cached: dict[str, F32] = {}
    if cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as data:
            for text, row in zip(data["texts"], data["features"], strict=True):
                cached[str(text)] = row
    missing = sorted({t for t in texts if t not in cached}, key=len)
    if missing:
        backbone = text_backbone()
        batch = 64
        for start in range(0, len(missing), batch):
            chunk = missing[start : start + batch]
            for text, row in zip(chunk, backbone.features(chunk), strict=True):
                cached[text] = row
            if progress is not None:
                progress("text features", start + len(chunk), len(missing))
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        if cache_file.is_file():  # keep what another run added meanwhile
            with np.load(cache_file, allow_pickle=False) as data:
                for text, row in zip(data["texts"], data["features"], strict=True):
                    cached.setdefault(str(text), row)
        keys = sorted(cached)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(
            tmp,
            texts=np.array(keys),
            features=np.stack([cached[k] for k in keys]).astype(np.float32),
        )
        tmp.replace(cache_file)
    return np.stack([cached[t] for t in texts]).astype(np.float32)


def _augment_transform(seed: int) -> Callable[[Item, bytes], bytes]:
    def transform(item: Item, data: bytes) -> bytes:
        rng = random.Random(f"{seed}:{item.id}")
        return augment_image(decode_image(data), rng)

    return transform


# ---------------------------------------------------------------- the model being trained


def _torch_towers(image_in: int, text_in: int, config: TrainConfig) -> tuple[Any, Any, Any]:
    import torch
    from torch import nn

    def tower(n_in: int) -> nn.Sequential:
        layers: list[nn.Module] = [nn.Dropout(config.input_dropout)]
        width = n_in
        for _ in range(config.layers - 1):
            layers += [nn.Linear(width, config.hidden), nn.GELU(approximate="tanh")]
            width = config.hidden
        layers.append(nn.Linear(width, config.dim))
        return nn.Sequential(*layers)

    logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))
    return tower(image_in), tower(text_in), logit_scale


def _as_stored(array: F32) -> F32:
    """The values as the heads file keeps them (float16), so validation sees what ships."""
    stored: F32 = array.astype(np.float16).astype(np.float32)
    return stored


def _export_tower(module: Any, mean: F32, std: F32) -> Tower:
    from torch import nn

    linears = [m for m in module if isinstance(m, nn.Linear)]
    return Tower(
        mean=mean.astype(np.float32),
        std=std.astype(np.float32),
        weights=[_as_stored(m.weight.detach().numpy().T) for m in linears],
        biases=[_as_stored(m.bias.detach().numpy()) for m in linears],
    )


def _multi_positive_nce(logits: Any, positives: Any) -> Any:
    """-log(sum over positives / sum over all) per row, averaged over rows with a positive."""
    import torch

    valid = positives.any(dim=1)
    if not bool(valid.any()):
        return torch.zeros((), dtype=logits.dtype)
    logits = logits[valid]
    positives = positives[valid]
    all_terms = torch.logsumexp(logits, dim=1)
    pos_terms = torch.logsumexp(logits.masked_fill(~positives, float("-inf")), dim=1)
    return (all_terms - pos_terms).mean()


# ---------------------------------------------------------------- evaluation


@dataclass
class EvalData:
    gallery: ev.LabelledGallery
    cnn: F32
    colour: F32
    aug_cnn: F32
    aug_colour: F32
    description_features: F32  # one row per gallery.text_rows item
    attribute_queries: dict[str, list[ev.AttributeQuery]]
    attribute_features: dict[str, F32]


def evaluate(heads: Heads, data: EvalData) -> dict[str, float]:
    """The validation metrics of the issue (the suite of ``fashion-search eval``, from
    ``domain.evaluation``), computed through the run-time heads code on cached features."""
    gallery = heads.embed_images(data.cnn, data.colour)
    metrics = ev.text_to_image_metrics(
        heads.embed_texts(data.description_features), gallery, data.gallery
    )
    for name, queries in data.attribute_queries.items():
        vectors = heads.embed_texts(data.attribute_features[name])
        metrics[f"{name} P@10"] = ev.attribute_precision(
            vectors, gallery, queries, data.gallery.attributes
        )
    augmented = heads.embed_images(data.aug_cnn, data.aug_colour)
    return metrics | ev.image_to_image_metrics(gallery, augmented, data.gallery)


def chance_metrics(data: EvalData) -> dict[str, float]:
    baselines = ev.text_to_image_chance(data.gallery) | ev.image_to_image_chance(data.gallery)
    baselines |= {
        f"{name} P@10": ev.attribute_chance(queries, data.gallery)
        for name, queries in data.attribute_queries.items()
    }
    return {name: baseline.chance for name, baseline in baselines.items()}


def prepare_eval(
    items: Sequence[Item],
    load: Callable[[Item], bytes],
    spec: ImageBackboneSpec,
    cache_dir: Path,
    tag: str,
    progress: Progress | None = None,
    crop: bool = False,
) -> EvalData:
    items = list(items)
    cnn, colour = image_features(
        items, load, spec, cache_dir / f"images-{tag}.npz", progress, crop=crop
    )
    aug_cnn, aug_colour = image_features(
        items,
        load,
        spec,
        cache_dir / f"images-{tag}-augmented.npz",
        progress,
        transform=_augment_transform(seed=1234),
        crop=crop,
    )
    gallery = ev.LabelledGallery(
        ids=[item.id for item in items],
        texts=[item.description for item in items],
        attributes=[item.attributes for item in items],
    )
    text_cache = cache_dir / "texts-minilm.npz"
    description_features = text_features(
        [query_text(gallery.texts[i]) for i in gallery.text_rows], text_cache, progress
    )
    attribute_queries = gallery.attribute_queries(min_count=10)
    attribute_features = {
        name: text_features([query_text(q.text) for q in queries], text_cache, progress)
        if queries
        else np.zeros((0, 384), dtype=np.float32)
        for name, queries in attribute_queries.items()
    }
    return EvalData(
        gallery=gallery,
        cnn=cnn,
        colour=colour,
        aug_cnn=aug_cnn,
        aug_colour=aug_colour,
        description_features=description_features,
        attribute_queries=attribute_queries,
        attribute_features=attribute_features,
    )


# ---------------------------------------------------------------- training


def split_items(config: TrainConfig) -> tuple[list[Item], list[Item]]:
    """(training items, held-out items) of hm-dev, by the committed id list."""
    items = read_hm_manifest(config.hm_dev)
    heldout_ids = read_ids(config.heldout_ids) if config.heldout_ids else read_ids()
    heldout_groups = {item.group for item in items if item.id in heldout_ids}
    train = [i for i in items if i.id not in heldout_ids and i.group not in heldout_groups]
    heldout = [i for i in items if i.id in heldout_ids]
    return train, heldout


def validation_split(train_items: Sequence[Item], fraction: float) -> tuple[list[Item], list[Item]]:
    """(items to train on, validation items): about ``fraction`` of the training part's
    product codes, chosen as the held-out split was (whole codes, stratified by product
    group) but with their own seed, so settings can be chosen without the held-out split."""
    if not 0.0 < fraction < 1.0:
        raise TrainingSetupError(f"the validation share must be between 0 and 1, not {fraction}")
    validation_ids = set(make_heldout_split(train_items, fraction, seed=VALIDATION_SEED))
    kept = [item for item in train_items if item.id not in validation_ids]
    validation = [item for item in train_items if item.id in validation_ids]
    return kept, validation


def train(config: TrainConfig, progress: Progress | None = None) -> TrainResult:
    import torch

    started = time.perf_counter()
    configure_torch_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    spec = ImageBackboneSpec(config.image_backbone, config.image_size, config.image_parts)
    crop_tag = "-crop" if config.crop else ""

    train_items, heldout = split_items(config)
    split_tag, validated_on = "heldout", "the held-out split"
    if config.validation > 0:
        train_items, heldout = validation_split(train_items, config.validation)
        split_tag = "validation"
        validated_on = f"the validation split ({config.validation:g} of the training codes)"
    if config.tune_blocks > 0:
        known = {key for item in train_items for key in item.attributes}
        if unknown := sorted(set(config.tune_labels) - known):
            raise TrainingSetupError(
                f"no training item has the labels {unknown} to tune on; "
                f"known: {', '.join(sorted(known))}"
            )
    hm_tag = "hm-" + _fingerprint(str(config.hm_dev.resolve()))
    load_hm = image_loader(train_items, None)
    if config.eval_limit is not None:
        heldout = heldout[: config.eval_limit]
    tuning: dict[str, Any] = {}
    tuned_tag = ""
    if config.tune_blocks > 0:
        spec, tuning = _tune_backbone(
            config, spec, train_items[: config.limit], heldout, load_hm, hm_tag, progress
        )
        tuned_tag = "-tuned-" + Path(spec.tuned).stem.removeprefix("backbone-")
    cache_dir = config.cache_dir / f"{spec.tag}{crop_tag}{tuned_tag}-{FEATURES_VERSION}"
    sources: list[tuple[list[Item], Callable[[Item], bytes], str]] = [
        (train_items, load_hm, hm_tag)
    ]
    if config.kaggle_zip is not None:
        kaggle_items = read_kaggle_zip(config.kaggle_zip)
        kaggle_tag = "kaggle-" + _fingerprint(str(config.kaggle_zip.resolve()))
        sources.append((kaggle_items, image_loader(kaggle_items, config.kaggle_zip), kaggle_tag))

    all_items: list[Item] = []
    cnn_parts, colour_parts = [], []
    for items, load, tag in sources:
        if config.limit is not None:
            items = items[: max(config.limit - len(all_items), 0)]
        if not items:
            continue
        cnn, colour = image_features(
            items, load, spec, cache_dir / f"images-{tag}.npz", progress, crop=config.crop
        )
        all_items.extend(items)
        cnn_parts.append(cnn)
        colour_parts.append(colour)
    cnn_all = np.concatenate(cnn_parts)
    colour_all = np.concatenate(colour_parts)
    image_x = np.concatenate([cnn_all, colour_all], axis=1) if config.colour else cnn_all
    has_aug = np.zeros(len(all_items), dtype=bool)
    views = max(config.aug_views, 1)
    aug_x = np.zeros((views, *image_x.shape), dtype=np.float32)
    if config.train_augmented:
        hm_rows = [i for i, item in enumerate(all_items) if item.source == "hm"]
        for view in range(views):
            seed = 99 + view
            suffix = "" if view == 0 else f"-{seed}"
            aug_cnn, aug_colour = image_features(
                [all_items[i] for i in hm_rows],
                load_hm,
                spec,
                cache_dir / f"images-{hm_tag}-augmented-train{suffix}.npz",
                progress,
                transform=_augment_transform(seed=seed),
                crop=config.crop,
            )
            aug_x[view, hm_rows] = (
                np.concatenate([aug_cnn, aug_colour], axis=1) if config.colour else aug_cnn
            )
        has_aug[hm_rows] = True

    # Texts: every item's variants, indexed in one table.
    text_table: dict[str, int] = {}
    variants: list[list[int]] = []
    for item in all_items:
        variants.append([text_table.setdefault(t, len(text_table)) for t in item_texts(item)])
    texts = sorted(text_table, key=lambda t: text_table[t])
    text_x = text_features(texts, cache_dir / "texts-minilm.npz", progress)
    max_variants = max(len(v) for v in variants)
    variant_array = np.full((len(variants), max_variants), -1, dtype=np.int64)
    for row, ids in enumerate(variants):
        variant_array[row, : len(ids)] = ids
    type_table: dict[str, int] = {}
    type_codes = np.array(
        [type_table.setdefault(item.product_type.lower(), len(type_table)) for item in all_items]
    )

    image_mean = image_x.mean(axis=0)
    image_std = image_x.std(axis=0) + 1e-3
    if config.colour:
        image_std[-COLOUR_DIM:] /= config.colour_scale
    text_mean = text_x.mean(axis=0)
    text_std = text_x.std(axis=0) + 1e-3
    image_t = torch.from_numpy(((image_x - image_mean) / image_std).astype(np.float32))
    aug_t = torch.from_numpy(((aug_x - image_mean) / image_std).astype(np.float32))
    has_aug_t = torch.from_numpy(has_aug)
    text_t = torch.from_numpy(((text_x - text_mean) / text_std).astype(np.float32))
    variants_t = torch.from_numpy(variant_array)
    counts_t = torch.from_numpy((variant_array >= 0).sum(axis=1))
    types_t = torch.from_numpy(type_codes)

    torch.manual_seed(config.seed)  # here: loading the backbones above draws from torch's RNG
    image_tower, text_tower, logit_scale = _torch_towers(image_x.shape[1], text_x.shape[1], config)
    extra_tower = (
        _torch_towers(
            image_x.shape[1], 1, replace(config, dim=config.extra_dim, hidden=config.extra_hidden)
        )[0]
        if config.extra_dim > 0
        else None
    )
    random_heads = _make_heads(
        extra_tower,
        image_tower,
        text_tower,
        image_mean,
        image_std,
        text_mean,
        text_std,
        config,
        logit_scale,
        random=True,
    )
    parameters = [*image_tower.parameters(), *text_tower.parameters(), logit_scale]
    if extra_tower is not None:
        parameters += list(extra_tower.parameters())
    optimiser = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    n = len(all_items)
    batch = min(config.batch_size, n)
    steps_per_epoch = max(n // batch, 1)
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.lr, total_steps=total_steps, pct_start=0.1
    )
    supcon_scale = 1 / 0.1
    losses: list[float] = []
    towers = [t for t in (image_tower, text_tower, extra_tower) if t is not None]
    for tower in towers:
        tower.train()
    step = 0
    for _epoch in range(config.epochs):
        if config.hard_batches > 0 and rng.random() < config.hard_batches:
            order = torch.from_numpy(_type_grouped_order(type_codes, rng))
        else:
            order = torch.from_numpy(rng.permutation(n))
        epoch_loss = 0.0
        for b in range(steps_per_epoch):
            index = order[b * batch : (b + 1) * batch]
            pick = (torch.from_numpy(rng.random(len(index))) * counts_t[index]).long()
            chosen = variants_t[index, pick]
            image_in = image_t[index]
            batch_has_aug = has_aug_t[index]
            if views > 1:
                aug_in = aug_t[torch.from_numpy(rng.integers(0, views, len(index))), index]
            else:
                aug_in = aug_t[0, index]
            if config.aug_input_prob > 0 and bool(batch_has_aug.any()):
                use_aug = batch_has_aug & (torch.rand(len(index)) < config.aug_input_prob)
                image_in = torch.where(use_aug[:, None], aug_in, image_in)
            image_z = torch.nn.functional.normalize(image_tower(image_in), dim=-1)
            text_z = torch.nn.functional.normalize(text_tower(text_t[chosen]), dim=-1)
            # positives[i, j]: text i describes image j (it is one of item j's texts)
            positives = (chosen[:, None, None] == variants_t[index][None, :, :]).any(dim=-1)
            scale = logit_scale.exp().clamp(max=100)
            logits = scale * text_z @ image_z.T
            loss = 0.5 * (
                _multi_positive_nce(logits, positives) + _multi_positive_nce(logits.T, positives.T)
            )
            types = types_t[index]
            same = types[:, None] == types[None, :]
            eye = torch.eye(len(index), dtype=torch.bool)
            if config.supcon_weight > 0:
                sim = (image_z @ image_z.T) * supcon_scale
                sim = sim.masked_fill(eye, float("-inf"))
                loss = loss + config.supcon_weight * _multi_positive_nce(sim, same & ~eye)
            if extra_tower is not None:
                extra_z = torch.nn.functional.normalize(extra_tower(image_t[index]), dim=-1)
                sim = (extra_z @ extra_z.T) * supcon_scale
                sim = sim.masked_fill(eye, float("-inf"))
                loss = loss + config.extra_supcon * _multi_positive_nce(sim, same & ~eye)
                if config.aug_instance_weight > 0 and bool(batch_has_aug.any()):
                    aug_z = torch.nn.functional.normalize(
                        extra_tower(aug_in[batch_has_aug]), dim=-1
                    )
                    logits_aug = (aug_z @ extra_z.T) * 20.0
                    targets = torch.nonzero(batch_has_aug).squeeze(1)
                    loss = loss + config.aug_instance_weight * torch.nn.functional.cross_entropy(
                        logits_aug, targets
                    )
            epoch_loss += optimiser_step(optimiser, scheduler, loss)
            step += 1
        losses.append(epoch_loss / steps_per_epoch)
        if progress is not None:
            progress("training heads", step, total_steps)

    for tower in towers:
        tower.eval()
    heads = _make_heads(
        extra_tower,
        image_tower,
        text_tower,
        image_mean,
        image_std,
        text_mean,
        text_std,
        config,
        logit_scale,
        random=False,
    )
    if tuning:
        heads.backbone = read_tuned_state(Path(spec.tuned))
        heads.meta["backbone_tuning"] = tuning
    heads.meta.update(
        {
            "n_train_items": n,
            "n_train_texts": len(texts),
            "final_loss": losses[-1] if losses else None,
            "train_seconds": round(time.perf_counter() - started, 1),
        }
    )

    metrics: dict[str, float] = {}
    random_metrics: dict[str, float] = {}
    chance: dict[str, float] = {}
    if heldout:
        data = prepare_eval(
            heldout,
            load_hm,
            spec,
            cache_dir,
            f"hm-{split_tag}-" + _fingerprint(str(config.hm_dev.resolve())),
            progress,
            crop=config.crop,
        )
        metrics = evaluate(heads, data)
        random_metrics = evaluate(random_heads, data)
        chance = chance_metrics(data)
        heads.meta["validation"] = {k: round(v, 4) for k, v in metrics.items()}
        heads.meta["n_heldout"] = len(heldout)
        heads.meta["validated_on"] = validated_on
    return TrainResult(
        heads=heads,
        losses=losses,
        metrics=metrics,
        random_metrics=random_metrics,
        chance=chance,
        n_train=n,
        n_heldout=len(heldout),
        seconds=time.perf_counter() - started,
    )


def _tune_backbone(
    config: TrainConfig,
    spec: ImageBackboneSpec,
    items: Sequence[Item],
    heldout: Sequence[Item],
    load: Callable[[Item], bytes],
    hm_tag: str,
    progress: Progress | None,
) -> tuple[ImageBackboneSpec, dict[str, Any]]:
    """Fine-tune the backbone's last blocks on the training items (see ``tuning``); returns
    the spec of the tuned backbone and the facts of the run for the heads' meta. The tuned
    layers are written, as float16 (what the heads file stores, so training features equal
    run-time ones), to a file in the cache named by everything that determines them: a rerun
    with the same settings reuses it."""
    blocks = config.tune_blocks
    crop_tag = "-crop" if config.crop else ""
    maps_dir = (
        config.cache_dir / f"{spec.name}-{spec.size}{crop_tag}-maps{blocks}-{FEATURES_VERSION}"
    )
    seeds = [99 + view for view in range(config.aug_views if config.train_augmented else 0)]
    tune = TuneConfig(
        blocks=blocks,
        epochs=config.tune_epochs,
        lr=config.tune_lr,
        labels=dict(config.tune_labels),
        seed=config.seed,
    )
    key = _fingerprint(
        maps_dir.name,
        hm_tag,
        json.dumps(asdict(tune), sort_keys=True),
        ",".join(map(str, seeds)),
        ",".join(item.id for item in items),
    )
    path = config.cache_dir / f"backbone-{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as stored_file:
            facts: dict[str, Any] = json.loads(bytes(stored_file["facts"].tobytes()).decode())
        return replace(spec, tuned=str(path)), facts

    def maps(
        subset: Sequence[Item], name: str, transform: Callable[[Item, bytes], bytes] | None = None
    ) -> Any:
        return block_inputs(
            subset, load, spec, blocks, maps_dir / f"{name}.npz", config.crop, transform, progress
        )

    views = [maps(items, hm_tag)]
    views += [maps(items, f"{hm_tag}-augmented-{s}", _augment_transform(s)) for s in seeds]
    # validation items are training items: their maps are in the training cache
    heldout_name = hm_tag if config.validation > 0 else hm_tag + "-heldout"
    heldout_maps = maps(heldout, heldout_name) if heldout else None
    result = tune_backbone(
        spec,
        items,
        views,
        tune,
        heldout=(heldout, heldout_maps) if heldout_maps is not None else None,
        progress=progress,
    )
    facts = {
        "blocks": blocks,
        "epochs": tune.epochs,
        "lr": tune.lr,
        "labels": tune.labels,
        "views": len(views),
        "losses": [round(x, 4) for x in result.losses],
        "heldout_type_accuracy": [round(x, 4) for x in result.heldout_accuracy],
        "seconds": round(result.seconds, 1),
    }
    stored: dict[str, Any] = {
        TUNED_PREFIX + k: v.astype(np.float16) for k, v in sorted(result.state.items())
    }
    stored["facts"] = np.frombuffer(json.dumps(facts, sort_keys=True).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **stored)
    tmp.replace(path)
    return replace(spec, tuned=str(path)), facts


def _type_grouped_order(type_codes: npt.NDArray[np.int64], rng: np.random.Generator) -> Any:
    """A permutation in which items of one product type stand together (types in random
    order, items shuffled within a type): consecutive batches then hold few types, so the
    contrastive terms must tell apart colours and details within a type (hard negatives)."""
    type_rank = rng.permutation(int(type_codes.max()) + 1)[type_codes]
    return np.lexsort((rng.random(len(type_codes)), type_rank))


def _make_heads(
    extra_tower: Any,
    image_tower: Any,
    text_tower: Any,
    image_mean: F32,
    image_std: F32,
    text_mean: F32,
    text_std: F32,
    config: TrainConfig,
    logit_scale: Any,
    random: bool,
) -> Heads:
    meta: dict[str, Any] = {
        "version": 1,
        "image_backbone": config.image_backbone,
        "image_size": config.image_size,
        "image_parts": list(config.image_parts),
        "colour": config.colour,
        "colour_dim": COLOUR_DIM,
        "text_backbone": "all-MiniLM-L6-v2",
        "text_template": "lowercase, single spaces",
        "raw_weight": config.raw_weight,
        "extra_weight": config.extra_weight if extra_tower is not None else 0.0,
        "crop": config.crop,
        "raw_dim": int(image_mean.shape[0]) - (COLOUR_DIM if config.colour else 0),
        "temperature": float(1 / np.exp(float(logit_scale.detach()))),
        "random": random,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
    }
    heads = Heads(
        image=_export_tower(image_tower, image_mean, image_std),
        text=_export_tower(text_tower, text_mean, text_std),
        meta=meta,
        extra=_export_tower(extra_tower, image_mean, image_std)
        if extra_tower is not None
        else None,
    )
    meta["dim"] = heads.dim
    return heads


def write_report(result: TrainResult, path: Path) -> None:
    report = {
        "metrics": result.metrics,
        "random_heads": result.random_metrics,
        "chance": result.chance,
        "losses": result.losses,
        "n_train": result.n_train,
        "n_heldout": result.n_heldout,
        "seconds": round(result.seconds, 1),
        "meta": result.heads.meta,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=True), encoding="utf-8")
