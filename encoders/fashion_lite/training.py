"""Training the fashion-lite heads: contrastive (InfoNCE with a learned temperature) alignment
of image features (EfficientNet-Lite + colour histogram) and frozen text features
(all-MiniLM-L6-v2) on catalog image-text pairs, plus a supervised contrastive term on the
product type between images. Validation on the fixed held-out split of hm-dev.

``train`` runs named steps: ``split_step`` (which items train, which validate),
``backbone_step`` (fine-tune the backbone's last blocks on the labels, or reuse tuned ones),
``feature_step`` (cached backbone features of the images, their augmented views and the
texts), ``train_loop`` (the heads, with the losses of ``losses``) and ``evaluation_step``.
The heads file carries the tuned backbone layers.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from domain import evaluation as ev
from encoders.backbones import (
    COLOUR_DIM,
    PREPROCESSING_TAG,
    TUNED_PREFIX,
    ImageBackboneSpec,
    configure_torch_threads,
    read_tuned_state,
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
from encoders.fashion_lite.feature_cache import (
    EVAL_PHOTO_VIEW,
    PACKSHOT_VIEW,
    SHOPPER_VIEW,
    TEXT_DIM,
    fingerprint,
    image_features,
    text_features,
    view_transform,
)
from encoders.fashion_lite.heads import Heads, Tower
from encoders.fashion_lite.losses import (
    INITIAL_TEMPERATURE,
    instance_loss,
    supcon_loss,
    text_image_loss,
)
from encoders.fashion_lite.train_config import TrainConfig
from encoders.fashion_lite.tuning import TuneConfig, block_inputs, optimiser_step, tune_backbone

__all__ = ["TrainConfig", "TrainResult", "TrainingSetupError", "train", "write_report"]

F32 = npt.NDArray[np.float32]
Progress = Callable[[str, int, int], None]
Loader = Callable[[Item], bytes]
FEATURES_VERSION = f"v1-{PREPROCESSING_TAG}"  # cached features follow the preprocessing

PACKSHOT_VIEW_SEED = 99  # packshot view k of a training image uses seed 99 + k
SHOPPER_VIEW_SEED = 199  # shopper-photo view k uses seed 199 + k
EVAL_AUGMENT_SEED = 1234  # the augmented copies of the validation metric (as `eval`'s)
STD_FLOOR = 1e-3  # added to each input feature's standard deviation before dividing
WARMUP_SHARE = 0.1  # of the one-cycle schedule's steps
ATTRIBUTE_QUERY_MIN_ITEMS = 10  # "<attr> <type>" queries need this many matching items
SCALING_SEED = 20261207  # which product codes a run with train_share < 1 keeps


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


# ---------------------------------------------------------------- step 1: split


@dataclass(frozen=True)
class Source:
    """Items of one dataset that train, with how to read their images and the cache tag."""

    items: list[Item]
    load: Loader
    tag: str
    views: bool  # its images get augmented views (hm photos; not the Kaggle zip's)
    descriptions: bool = True  # its items pair with their description and caption too


@dataclass
class DataSplit:
    sources: list[Source]  # hm-dev's training part first, then hm-extra, then Kaggle
    evaluation: list[Item]  # the held-out split, or the validation split
    evaluation_source: Source  # where the evaluation items' images and features live
    split_tag: str
    validated_on: str

    @property
    def train_items(self) -> list[Item]:
        return [item for source in self.sources for item in source.items]


def hm_tag(folder: Path) -> str:
    """The cache name of an H&M folder's images."""
    return "hm-" + fingerprint(str(folder.resolve()))


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


def extra_sources(config: TrainConfig, hm_dev_items: Sequence[Item]) -> list[Source]:
    """The folders of ``config.hm_extra`` as training sources; refused if any shares a
    product code (or an id) with hm-dev, whose held-out and validation splits must stay
    unseen (a colour variant in training would make them seen)."""
    dev_codes = {item.group for item in hm_dev_items}
    dev_ids = {item.id for item in hm_dev_items}
    sources = []
    for folder in config.hm_extra:
        items = read_hm_manifest(folder)
        if shared := sorted({i.group for i in items} & dev_codes):
            raise TrainingSetupError(
                f"{folder} has {len(shared)} product codes of hm-dev (e.g. {shared[0]}): "
                "training on them would show colour variants of evaluated products"
            )
        if shared_ids := sorted({i.id for i in items} & dev_ids):
            raise TrainingSetupError(f"{folder} repeats hm-dev articles (e.g. {shared_ids[0]})")
        items = keep_share(items, config.train_share)
        sources.append(
            Source(
                items,
                image_loader(items, None),
                hm_tag(folder),
                views=True,
                descriptions=config.extra_descriptions,
            )
        )
    return sources


def keep_share(items: Sequence[Item], share: float) -> list[Item]:
    """About ``share`` of the items, whole product codes stratified by product group."""
    if share >= 1.0:
        return list(items)
    if share <= 0.0:
        raise TrainingSetupError(f"the training share must be above 0, not {share}")
    kept = set(make_heldout_split(items, share, seed=SCALING_SEED))
    return [item for item in items if item.id in kept]


def split_step(config: TrainConfig) -> DataSplit:
    """Which items train and which evaluate: hm-dev's training part (less the validation
    codes when ``config.validation``), hm-extra, the Kaggle zip; the evaluation items are
    the held-out split or the validation split."""
    hm_train, heldout = split_items(config)
    split_tag, validated_on = "heldout", "the held-out split"
    if config.validation > 0:
        hm_train, heldout = validation_split(hm_train, config.validation)
        split_tag = "validation"
        validated_on = f"the validation split ({config.validation:g} of the training codes)"
    hm_train = keep_share(hm_train, config.train_share)
    dev = Source(hm_train, image_loader(hm_train, None), hm_tag(config.hm_dev), views=True)
    sources = [dev, *extra_sources(config, read_hm_manifest(config.hm_dev))]
    if config.kaggle_zip is not None:
        kaggle_items = read_kaggle_zip(config.kaggle_zip)
        kaggle_tag = "kaggle-" + fingerprint(str(config.kaggle_zip.resolve()))
        sources.append(
            Source(
                kaggle_items,
                image_loader(kaggle_items, config.kaggle_zip),
                kaggle_tag,
                views=False,
            )
        )
    sources = _limited(sources, config.limit)
    _check_tune_labels(config, hm_train)
    if config.eval_limit is not None:
        heldout = heldout[: config.eval_limit]
    evaluation_source = Source(heldout, dev.load, dev.tag, views=False)
    return DataSplit(sources, heldout, evaluation_source, split_tag, validated_on)


def _limited(sources: list[Source], limit: int | None) -> list[Source]:
    """The sources cut to ``limit`` items in all (in order), empty ones dropped."""
    kept, total = [], 0
    for source in sources:
        items = source.items if limit is None else source.items[: max(limit - total, 0)]
        if items:
            kept.append(replace(source, items=items))
            total += len(items)
    return kept


def _check_tune_labels(config: TrainConfig, train_items: Sequence[Item]) -> None:
    if config.tune_blocks > 0 and config.tuned_backbone is None:
        known = {key for item in train_items for key in item.attributes}
        if unknown := sorted(set(config.tune_labels) - known):
            raise TrainingSetupError(
                f"no training item has the labels {unknown} to tune on; "
                f"known: {', '.join(sorted(known))}"
            )


# ---------------------------------------------------------------- step 2: the backbone


def view_seeds(config: TrainConfig) -> list[tuple[str, int]]:
    """The augmented views of each training image: (kind, seed), one drawn per step."""
    if not config.train_augmented:
        return []
    packshots = [(PACKSHOT_VIEW, PACKSHOT_VIEW_SEED + k) for k in range(config.aug_views)]
    photos = [(SHOPPER_VIEW, SHOPPER_VIEW_SEED + k) for k in range(config.photo_views)]
    return packshots + photos


def backbone_step(
    config: TrainConfig, split: DataSplit, progress: Progress | None
) -> tuple[ImageBackboneSpec, dict[str, Any], str]:
    """The image backbone the heads train on: (its spec, facts of its tuning for the heads'
    meta, a tag naming it in the feature caches)."""
    spec = ImageBackboneSpec(config.image_backbone, config.image_size, config.image_parts)
    if config.tuned_backbone is not None:
        path = config.tuned_backbone
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        facts = dict(Heads.read_meta(path).get("backbone_tuning", {}))
        facts["reused_from"] = f"{path.stem} (sha256 {digest})"
        return replace(spec, tuned=str(path)), facts, f"-tuned-{path.stem}-{digest}"
    if config.tune_blocks <= 0:
        return spec, {}, ""
    dev = split.sources[0]
    spec, facts = _tune_backbone(
        config, spec, dev.items, split.evaluation, dev.load, dev.tag, progress
    )
    return spec, facts, "-tuned-" + Path(spec.tuned).stem.removeprefix("backbone-")


def _tune_backbone(
    config: TrainConfig,
    spec: ImageBackboneSpec,
    items: Sequence[Item],
    heldout: Sequence[Item],
    load: Loader,
    tag: str,
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
    seeds = [
        PACKSHOT_VIEW_SEED + k for k in range(config.aug_views if config.train_augmented else 0)
    ]
    tune = TuneConfig(
        blocks=blocks,
        epochs=config.tune_epochs,
        lr=config.tune_lr,
        labels=dict(config.tune_labels),
        seed=config.seed,
    )
    key = fingerprint(
        maps_dir.name,
        tag,
        json.dumps(asdict(tune), sort_keys=True),
        ",".join(map(str, seeds)),
        ",".join(item.id for item in items),
    )
    path = config.cache_dir / f"backbone-{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as stored_file:
            facts: dict[str, Any] = json.loads(bytes(stored_file["facts"].tobytes()).decode())
        return replace(spec, tuned=str(path)), facts

    def maps(subset: Sequence[Item], name: str, transform: Any = None) -> Any:
        return block_inputs(
            subset, load, spec, blocks, maps_dir / f"{name}.npz", config.crop, transform, progress
        )

    views = [maps(items, tag)]
    views += [maps(items, f"{tag}-augmented-{s}", view_transform(PACKSHOT_VIEW, s)) for s in seeds]
    # validation items are training items: their maps are in the training cache
    heldout_name = tag if config.validation > 0 else tag + "-heldout"
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


# ---------------------------------------------------------------- step 3: cached features


@dataclass
class TrainingData:
    """Everything the loop needs, as arrays: image inputs (backbone features + colour
    stats), their augmented views, and the texts each item may be paired with."""

    image_x: F32  # [n, d]
    aug_x: F32  # [views, n, d] (zeros where an item has no view)
    has_aug: npt.NDArray[np.bool_]  # [n]: the item has augmented views
    text_x: F32  # [texts, TEXT_DIM]
    texts: list[str]
    variants: npt.NDArray[np.int64]  # [n, max texts]: text rows of each item, -1 padded
    type_codes: npt.NDArray[np.int64]  # [n]: product type index

    @property
    def n_views(self) -> int:
        return int(self.aug_x.shape[0])


def _image_input(config: TrainConfig, cnn: F32, colour: F32) -> F32:
    return np.concatenate([cnn, colour], axis=1) if config.colour else cnn


def feature_step(
    config: TrainConfig,
    spec: ImageBackboneSpec,
    split: DataSplit,
    cache_dir: Path,
    progress: Progress | None,
) -> TrainingData:
    """The training items' cached features: images, augmented views, texts."""
    parts = []
    for source in split.sources:
        cache_file = cache_dir / f"images-{source.tag}.npz"
        cnn, colour = image_features(
            source.items, source.load, spec, cache_file, progress, crop=config.crop
        )
        parts.append(_image_input(config, cnn, colour))
    image_x = np.concatenate(parts)
    aug_x, has_aug = augment_step(config, spec, split, cache_dir, image_x.shape, progress)
    items = split.train_items
    text_table: dict[str, int] = {}
    variants = [
        [text_table.setdefault(t, len(text_table)) for t in item_texts(i, source.descriptions)]
        for source in split.sources
        for i in source.items
    ]
    texts = sorted(text_table, key=lambda t: text_table[t])
    text_x = text_features(texts, cache_dir / "texts-minilm.npz", progress)
    variant_array = np.full((len(variants), max(len(v) for v in variants)), -1, dtype=np.int64)
    for row, ids in enumerate(variants):
        variant_array[row, : len(ids)] = ids
    type_table: dict[str, int] = {}
    type_codes = np.array(
        [type_table.setdefault(item.product_type.lower(), len(type_table)) for item in items]
    )
    return TrainingData(image_x, aug_x, has_aug, text_x, texts, variant_array, type_codes)


# ---------------------------------------------------------------- step 4: augmented views


def augment_step(
    config: TrainConfig,
    spec: ImageBackboneSpec,
    split: DataSplit,
    cache_dir: Path,
    shape: tuple[int, ...],
    progress: Progress | None,
) -> tuple[F32, npt.NDArray[np.bool_]]:
    """Cached features of a bounded number of augmented views of each training image
    (``view_seeds``): [views, n, d] (zeros for items without views) and which items have
    them. hm-extra's images get them for ``extra_view_share`` of its product codes."""
    seeds = view_seeds(config)
    aug_x = np.zeros((max(len(seeds), 1), *shape), dtype=np.float32)
    has_aug = np.zeros(shape[0], dtype=bool)
    offset = 0
    for index, source in enumerate(split.sources):
        rows = range(offset, offset + len(source.items))
        offset += len(source.items)
        if not source.views or not seeds:
            continue
        chosen = source.items if index == 0 else keep_view_share(source.items, config)
        if not chosen:  # extra_view_share 0: hm-extra's images train without views
            continue
        chosen_ids = {item.id for item in chosen}
        picked = [
            row for row, item in zip(rows, source.items, strict=True) if item.id in chosen_ids
        ]
        for view, (kind, seed) in enumerate(seeds):
            cnn, colour = image_features(
                chosen,
                source.load,
                spec,
                cache_dir / f"images-{source.tag}-{kind}-{seed}.npz",
                progress,
                transform=view_transform(kind, seed),
                crop=config.crop,
            )
            aug_x[view, picked] = _image_input(config, cnn, colour)
        has_aug[picked] = True
    return aug_x, has_aug


def keep_view_share(items: Sequence[Item], config: TrainConfig) -> list[Item]:
    """The hm-extra items whose images get augmented views (whole product codes)."""
    if config.extra_view_share >= 1.0:
        return list(items)
    if config.extra_view_share <= 0.0:
        return []
    kept = set(make_heldout_split(items, config.extra_view_share, seed=SCALING_SEED + 1))
    return [item for item in items if item.id in kept]


# ---------------------------------------------------------------- step 5: the loop


@dataclass
class Model:
    """The towers being trained and the input standardisation they were trained with."""

    image_tower: Any
    text_tower: Any
    extra_tower: Any  # None without an image-only tower
    logit_scale: Any
    image_mean: F32
    image_std: F32
    text_mean: F32
    text_std: F32

    @property
    def towers(self) -> list[Any]:
        return [t for t in (self.image_tower, self.text_tower, self.extra_tower) if t is not None]

    def parameters(self) -> list[Any]:
        params = [*self.image_tower.parameters(), *self.text_tower.parameters()]
        params.append(self.logit_scale)
        if self.extra_tower is not None:
            params += list(self.extra_tower.parameters())
        return params


def _torch_tower(n_in: int, dim: int, hidden: int, config: TrainConfig) -> Any:
    from torch import nn

    layers: list[nn.Module] = [nn.Dropout(config.input_dropout)]
    width = n_in
    for _ in range(config.layers - 1):
        layers += [nn.Linear(width, hidden), nn.GELU(approximate="tanh")]
        width = hidden
    layers.append(nn.Linear(width, dim))
    return nn.Sequential(*layers)


def build_model(config: TrainConfig, data: TrainingData) -> Model:
    """Fresh towers (seeded) and the standardisation of the training inputs."""
    import torch
    from torch import nn

    image_mean = data.image_x.mean(axis=0)
    image_std = data.image_x.std(axis=0) + STD_FLOOR
    if config.colour:
        image_std[-COLOUR_DIM:] /= config.colour_scale
    text_mean = data.text_x.mean(axis=0)
    text_std = data.text_x.std(axis=0) + STD_FLOOR
    torch.manual_seed(config.seed)  # here: loading the backbones draws from torch's RNG
    image_in, text_in = data.image_x.shape[1], data.text_x.shape[1]
    image_tower = _torch_tower(image_in, config.dim, config.hidden, config)
    text_tower = _torch_tower(text_in, config.dim, config.hidden, config)
    logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / INITIAL_TEMPERATURE))))
    extra_tower = None
    if config.extra_dim > 0:
        extra_tower = _torch_tower(image_in, config.extra_dim, config.extra_hidden, config)
        # an unused tower, drawn as earlier versions did so a seed gives the same heads
        _torch_tower(1, config.extra_dim, config.extra_hidden, config)
    return Model(
        image_tower,
        text_tower,
        extra_tower,
        logit_scale,
        image_mean,
        image_std,
        text_mean,
        text_std,
    )


@dataclass
class Batch:
    image_in: Any  # the image inputs (an augmented view instead, aug_input_prob of the time)
    clean_in: Any  # the original image inputs
    aug_in: Any  # one augmented view per item
    has_aug: Any
    text_in: Any  # one sampled text per item
    positives: Any  # [text, image]: the text is one of the image's texts
    same_type: Any  # [image, image]


class BatchSampler:
    """Standardised tensors of the training data and the draw of each step's batch."""

    def __init__(self, config: TrainConfig, data: TrainingData, model: Model) -> None:
        import torch

        self.config = config
        self.image = torch.from_numpy(
            ((data.image_x - model.image_mean) / model.image_std).astype(np.float32)
        )
        self.aug = torch.from_numpy(
            ((data.aug_x - model.image_mean) / model.image_std).astype(np.float32)
        )
        self.has_aug = torch.from_numpy(data.has_aug)
        self.text = torch.from_numpy(
            ((data.text_x - model.text_mean) / model.text_std).astype(np.float32)
        )
        self.variants = torch.from_numpy(data.variants)
        self.counts = torch.from_numpy((data.variants >= 0).sum(axis=1))
        self.types = torch.from_numpy(data.type_codes)
        self.type_codes = data.type_codes
        self.views = data.n_views

    def epoch_order(self, rng: np.random.Generator) -> Any:
        import torch

        n = len(self.type_codes)
        if self.config.hard_batches > 0 and rng.random() < self.config.hard_batches:
            return torch.from_numpy(_type_grouped_order(self.type_codes, rng))
        return torch.from_numpy(rng.permutation(n))

    def batch(self, index: Any, rng: np.random.Generator) -> Batch:
        import torch

        pick = (torch.from_numpy(rng.random(len(index))) * self.counts[index]).long()
        chosen = self.variants[index, pick]
        clean_in = self.image[index]
        image_in = clean_in
        has_aug = self.has_aug[index]
        if self.views > 1:
            aug_in = self.aug[torch.from_numpy(rng.integers(0, self.views, len(index))), index]
        else:
            aug_in = self.aug[0, index]
        if self.config.aug_input_prob > 0 and bool(has_aug.any()):
            use_aug = has_aug & (torch.rand(len(index)) < self.config.aug_input_prob)
            image_in = torch.where(use_aug[:, None], aug_in, image_in)
        types = self.types[index]
        return Batch(
            image_in=image_in,
            clean_in=clean_in,
            aug_in=aug_in,
            has_aug=has_aug,
            text_in=self.text[chosen],
            positives=(chosen[:, None, None] == self.variants[index][None, :, :]).any(dim=-1),
            same_type=types[:, None] == types[None, :],
        )


def batch_loss(config: TrainConfig, model: Model, batch: Batch) -> Any:
    """The training objective of one batch (see ``losses``): text-image InfoNCE, the type
    term on the shared head (and the instance term, ``shared_instance_weight``), and on the
    image-only tower the type and instance terms."""
    import torch

    normalise = torch.nn.functional.normalize
    image_z = normalise(model.image_tower(batch.image_in), dim=-1)
    text_z = normalise(model.text_tower(batch.text_in), dim=-1)
    loss = text_image_loss(text_z, image_z, batch.positives, model.logit_scale)
    if config.supcon_weight > 0:
        loss = loss + config.supcon_weight * supcon_loss(image_z, batch.same_type)
    if config.shared_instance_weight > 0 and bool(batch.has_aug.any()):
        loss = loss + config.shared_instance_weight * _instance_term(model.image_tower, batch)
    if model.extra_tower is not None:
        extra_z = normalise(model.extra_tower(batch.clean_in), dim=-1)
        loss = loss + config.extra_supcon * supcon_loss(extra_z, batch.same_type)
        if config.aug_instance_weight > 0 and bool(batch.has_aug.any()):
            aug_z = normalise(model.extra_tower(batch.aug_in[batch.has_aug]), dim=-1)
            targets = torch.nonzero(batch.has_aug).squeeze(1)
            loss = loss + config.aug_instance_weight * instance_loss(aug_z, extra_z, targets)
    return loss


def _instance_term(tower: Any, batch: Batch) -> Any:
    """The instance term on one tower: each augmented view finds its clean original."""
    import torch

    normalise = torch.nn.functional.normalize
    originals = normalise(tower(batch.clean_in), dim=-1)
    views = normalise(tower(batch.aug_in[batch.has_aug]), dim=-1)
    return instance_loss(views, originals, torch.nonzero(batch.has_aug).squeeze(1))


def train_loop(
    config: TrainConfig,
    model: Model,
    data: TrainingData,
    rng: np.random.Generator,
    progress: Progress | None,
) -> list[float]:
    """AdamW with a one-cycle schedule over ``config.epochs``; the mean loss of each epoch."""
    import torch

    sampler = BatchSampler(config, data, model)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    n = len(data.type_codes)
    batch = min(config.batch_size, n)
    steps_per_epoch = max(n // batch, 1)
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.lr, total_steps=total_steps, pct_start=WARMUP_SHARE
    )
    losses: list[float] = []
    for tower in model.towers:
        tower.train()
    for epoch in range(config.epochs):
        order = sampler.epoch_order(rng)
        epoch_loss = 0.0
        for b in range(steps_per_epoch):
            drawn = sampler.batch(order[b * batch : (b + 1) * batch], rng)
            epoch_loss += optimiser_step(optimiser, scheduler, batch_loss(config, model, drawn))
        losses.append(epoch_loss / steps_per_epoch)
        if progress is not None:
            progress("training heads", (epoch + 1) * steps_per_epoch, total_steps)
    for tower in model.towers:
        tower.eval()
    return losses


def _type_grouped_order(type_codes: npt.NDArray[np.int64], rng: np.random.Generator) -> Any:
    """A permutation in which items of one product type stand together (types in random
    order, items shuffled within a type): consecutive batches then hold few types, so the
    contrastive terms must tell apart colours and details within a type (hard negatives)."""
    type_rank = rng.permutation(int(type_codes.max()) + 1)[type_codes]
    return np.lexsort((rng.random(len(type_codes)), type_rank))


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


def make_heads(model: Model, config: TrainConfig, random: bool) -> Heads:
    """The run-time heads of the model as it is now (``random``: before training)."""
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
        "extra_weight": config.extra_weight if model.extra_tower is not None else 0.0,
        "crop": config.crop,
        "raw_dim": int(model.image_mean.shape[0]) - (COLOUR_DIM if config.colour else 0),
        "temperature": float(1 / np.exp(float(model.logit_scale.detach()))),
        "random": random,
        "config": _config_meta(config),
    }
    extra = model.extra_tower
    heads = Heads(
        image=_export_tower(model.image_tower, model.image_mean, model.image_std),
        text=_export_tower(model.text_tower, model.text_mean, model.text_std),
        meta=meta,
        extra=_export_tower(extra, model.image_mean, model.image_std) if extra else None,
    )
    meta["dim"] = heads.dim
    return heads


def _config_meta(config: TrainConfig) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        return value

    return {k: plain(v) for k, v in asdict(config).items()}


# ---------------------------------------------------------------- step 6: evaluation


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
    # photo-style queries (as `fashion-search eval`'s) of the gallery.type_rows items
    photo_cnn: F32 | None = None
    photo_colour: F32 | None = None


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
    metrics |= ev.image_to_image_metrics(gallery, augmented, data.gallery)
    if data.photo_cnn is not None and data.photo_colour is not None:
        photos = heads.embed_images(data.photo_cnn, data.photo_colour)
        metrics[ev.PHOTO_TYPE_METRIC] = ev.photo_style_type_precision(photos, gallery, data.gallery)
    return metrics


def chance_metrics(data: EvalData) -> dict[str, float]:
    baselines = ev.text_to_image_chance(data.gallery) | ev.image_to_image_chance(data.gallery)
    if data.photo_cnn is not None:  # the same queries' types as the clean image-image metric
        baselines[ev.PHOTO_TYPE_METRIC] = baselines[ev.IMAGE_TYPE_METRIC]
    baselines |= {
        f"{name} P@10": ev.attribute_chance(queries, data.gallery)
        for name, queries in data.attribute_queries.items()
    }
    return {name: baseline.chance for name, baseline in baselines.items()}


def prepare_eval(
    items: Sequence[Item],
    load: Loader,
    spec: ImageBackboneSpec,
    cache_dir: Path,
    tag: str,
    progress: Progress | None = None,
    crop: bool = False,
) -> EvalData:
    """Cached features of the evaluation items (``tag``: their source's cache name), their
    augmented copies, the photo-style queries of those of a known type, and the query
    texts."""
    items = list(items)
    cnn, colour = image_features(
        items, load, spec, cache_dir / f"images-{tag}.npz", progress, crop=crop
    )
    aug_cnn, aug_colour = image_features(
        items,
        load,
        spec,
        cache_dir / f"images-{tag}-{PACKSHOT_VIEW}-{EVAL_AUGMENT_SEED}.npz",
        progress,
        transform=view_transform(PACKSHOT_VIEW, EVAL_AUGMENT_SEED),
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
    typed = [items[row] for row in gallery.type_rows]
    photo_cnn, photo_colour = image_features(
        typed,
        load,
        spec,
        cache_dir / f"images-{tag}-{EVAL_PHOTO_VIEW}-{EVAL_AUGMENT_SEED}.npz",
        progress,
        transform=view_transform(EVAL_PHOTO_VIEW, EVAL_AUGMENT_SEED),
        crop=crop,
    )
    attribute_queries = gallery.attribute_queries(min_count=ATTRIBUTE_QUERY_MIN_ITEMS)
    attribute_features = {
        name: text_features([query_text(q.text) for q in queries], text_cache, progress)
        if queries
        else np.zeros((0, TEXT_DIM), dtype=np.float32)
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
        photo_cnn=photo_cnn,
        photo_colour=photo_colour,
    )


def evaluation_step(
    config: TrainConfig,
    spec: ImageBackboneSpec,
    split: DataSplit,
    cache_dir: Path,
    heads: Heads,
    random_heads: Heads,
    progress: Progress | None,
) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """(metrics of the trained heads, of the random heads, chance) on the evaluation items."""
    if not split.evaluation:
        return {}, {}, {}
    source = split.evaluation_source
    data = prepare_eval(
        split.evaluation, source.load, spec, cache_dir, source.tag, progress, crop=config.crop
    )
    metrics = evaluate(heads, data)
    heads.meta["validation"] = {k: round(v, 4) for k, v in metrics.items()}
    heads.meta["n_heldout"] = len(split.evaluation)
    heads.meta["validated_on"] = split.validated_on
    return metrics, evaluate(random_heads, data), chance_metrics(data)


# ---------------------------------------------------------------- the steps together


def train(config: TrainConfig, progress: Progress | None = None) -> TrainResult:
    import torch

    started = time.perf_counter()
    configure_torch_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)

    split = split_step(config)
    spec, tuning, tuned_tag = backbone_step(config, split, progress)
    crop_tag = "-crop" if config.crop else ""
    cache_dir = config.cache_dir / f"{spec.tag}{crop_tag}{tuned_tag}-{FEATURES_VERSION}"
    data = feature_step(config, spec, split, cache_dir, progress)
    model = build_model(config, data)
    random_heads = make_heads(model, config, random=True)
    losses = train_loop(config, model, data, rng, progress)
    heads = make_heads(model, config, random=False)
    if tuning:
        heads.backbone = read_tuned_state(Path(spec.tuned))
        heads.meta["backbone_tuning"] = tuning
    heads.meta.update(
        {
            "n_train_items": len(data.type_codes),
            "n_train_texts": len(data.texts),
            "final_loss": losses[-1] if losses else None,
            "train_seconds": round(time.perf_counter() - started, 1),
        }
    )
    metrics, random_metrics, chance = evaluation_step(
        config, spec, split, cache_dir, heads, random_heads, progress
    )
    return TrainResult(
        heads=heads,
        losses=losses,
        metrics=metrics,
        random_metrics=random_metrics,
        chance=chance,
        n_train=len(data.type_codes),
        n_heldout=len(split.evaluation),
        seconds=time.perf_counter() - started,
    )


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
