"""The settings of a fashion-lite training run: one source of defaults for ``training.train``
and ``fashion-search train-encoder`` (the CLI reads its option defaults from here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from encoders.fashion_lite.tuning import DEFAULT_LABELS

# What `fashion-search train-encoder` (and `make train-encoder`) adds to the library defaults
# below, which need paths: datasets (folder names under DATASETS_DIR) trained on beside
# hm-dev's training part, and the heads file whose tuned backbone layers are reused ("":
# tune them again). heads-v4: hm-extra, on heads-v3's tuned layers (tuned on hm-dev's
# training part only, so the held-out split stays unseen).
EXTRA_DATASETS: tuple[str, ...] = ("hm-extra",)
TUNED_BACKBONE_FROM = "heads-v3"


@dataclass
class TrainConfig:
    hm_dev: Path
    kaggle_zip: Path | None = None
    # more H&M article folders (hm-dev's layout) to train on; their product codes must not
    # occur in hm-dev, so the held-out and validation splits stay unseen
    hm_extra: tuple[Path, ...] = ()
    # hm-extra's items pair with their description and caption too, not only the short
    # phrases and the name (False: the long texts cost about 10x the short ones' MiniLM
    # features, about 30 CPU-minutes for hm-extra's 18,000; round 2's runs went without)
    extra_descriptions: bool = True
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
    epochs: int = 16  # 27-30 steps of 512 an epoch with hm-extra (heads-v3: 80 of 7)
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
    # extra tower: augmented view <-> its original (heads-v3: 0.5, when every training
    # image had views; with hm-extra only hm-dev's do, a quarter of each batch)
    aug_instance_weight: float = 1.0
    # shared image head: augmented view <-> its original too (it is half of the image
    # vector, so image-to-image instance recall depends on it as well; 0: off)
    shared_instance_weight: float = 0.0
    aug_input_prob: float = 0.3  # shared head: train on the augmented view this often
    train_augmented: bool = True  # extract augmented views of the hm training images
    aug_views: int = 3  # packshot views per training image (seeds 99, 100, ...)
    photo_views: int = 1  # shopper-photo views per training image (seeds 199, 200, ...)
    # share of hm-extra's product codes whose images get the augmented views (cost bound;
    # 0: only hm-dev's images get views)
    extra_view_share: float = 0.0
    hard_batches: float = 0.0  # this share of epochs batches items of few product types together
    crop: bool = True  # crop images to their content before padding to square
    tune_blocks: int = 5  # fine-tune the backbone's last this many blocks first (0: frozen)
    tune_epochs: int = 10
    tune_lr: float = 6e-4
    # label -> weight of its classifier's loss while tuning (see tuning.DEFAULT_LABELS)
    tune_labels: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LABELS))
    # reuse the tuned backbone layers of this heads file instead of tuning (tune_blocks unused)
    tuned_backbone: Path | None = None
    colour_scale: float = 1.0  # colour stats count this much more than a backbone feature
    seed: int = 7
    limit: int | None = None  # at most this many training items (smoke tests)
    # train on this share of the training items' product codes (the scaling curve)
    train_share: float = 1.0
    eval_limit: int | None = None  # at most this many held-out items in validation
    # > 0: validate on this share of the training part's product codes (carved out, not
    # trained on) instead of on the held-out split, which then is not read at all
    validation: float = 0.0
    threads: int = 1
