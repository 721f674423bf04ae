"""What turns a training batch into the ``Cond`` a backbone takes (DESIGN.md §7).

``train_step`` calls ``batch_cond`` once; the conditioning methods live in this package (text encoders in
``text.py``, image-to-video and anyframe conditioners in ``i2v.py``) and are pure functions of the batch and
an RNG, so exact resume holds. No model constants live here: the backbone owns its null class, the text
encoder its empty-prompt embedding, the VAE its latent scale.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from minivdit.models.cond import Cond

if TYPE_CHECKING:  # conditioning/ depends on models/ only (DESIGN.md §1); a Batch is duck-typed here
    from minivdit.data import Batch


def batch_cond(batch: Batch, *, num_classes: int) -> Cond:
    """The ``Cond`` of a batch: class labels when the model is class-conditional (``num_classes > 0``) and the
    cached text tokens (``Batch.text`` [B, L, Dt], ``Batch.text_mask`` [B, L]) when the batch carries them.
    Labels are range-checked here, once, with the values in the message."""
    label = None
    if num_classes:
        if batch.label.min() < 0 or batch.label.max() >= num_classes:
            raise ValueError(
                f"labels must be in [0, {num_classes}) (index {num_classes} is the CFG null class), "
                f"got {batch.label.tolist()}"
            )
        label = batch.label
    context = batch.text.float() if batch.text is not None else None  # cached in bf16; the model casts
    mask = batch.text_mask.bool() if batch.text_mask is not None else None
    return Cond(label=label, context=context, context_mask=mask)


__all__ = ["batch_cond"]
