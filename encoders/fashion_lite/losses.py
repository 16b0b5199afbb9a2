"""The training losses of the fashion-lite heads (torch tensors in, a scalar loss out)."""

from __future__ import annotations

from typing import Any

INITIAL_TEMPERATURE = 0.07  # of the text-image InfoNCE; learned from here (CLIP's start)
MAX_LOGIT_SCALE = 100.0  # 1 / the lowest temperature the text-image term may learn
SUPCON_TEMPERATURE = 0.1  # supervised contrastive term on the product type (fixed)
INSTANCE_TEMPERATURE = 0.05  # augmented view -> its original (fixed)


def multi_positive_nce(logits: Any, positives: Any) -> Any:
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


def text_image_loss(text_z: Any, image_z: Any, positives: Any, logit_scale: Any) -> Any:
    """Symmetric multi-positive InfoNCE with a learned temperature: ``positives[i, j]`` says
    text i describes image j (so "black trousers" is no negative for other black trousers)."""
    scale = logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
    logits = scale * text_z @ image_z.T
    return 0.5 * (multi_positive_nce(logits, positives) + multi_positive_nce(logits.T, positives.T))


def supcon_loss(z: Any, same_label: Any) -> Any:
    """Supervised contrastive term: each vector's positives are the others with its label."""
    import torch

    eye = torch.eye(len(z), dtype=torch.bool)
    sim = (z @ z.T) * (1 / SUPCON_TEMPERATURE)
    sim = sim.masked_fill(eye, float("-inf"))
    return multi_positive_nce(sim, same_label & ~eye)


def instance_loss(view_z: Any, original_z: Any, targets: Any) -> Any:
    """Each augmented view must find its own original (row ``targets[i]``) in the batch."""
    import torch

    logits = (view_z @ original_z.T) * (1 / INSTANCE_TEMPERATURE)
    return torch.nn.functional.cross_entropy(logits, targets)
