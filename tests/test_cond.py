"""The one conditioning contract (DESIGN.md §7): Cond, its null/drop, and backbones that refuse what they
cannot use."""

import dataclasses

import pytest
import torch

from minivdit.conditioning import batch_cond
from minivdit.data import Batch, collate
from minivdit.models.cond import Cond
from minivdit.models.dit import DiTConfig, VDiT

TINY = DiTConfig(
    depth=2,
    hidden_size=32,
    num_heads=2,
    patch_size=2,
    in_channels=4,
    input_size=(8, 8),
    num_frames=3,
    num_classes=5,
    learn_sigma=False,
)


def _text(B=3, L=4, D=6, seed=0):
    return torch.randn(B, L, D, generator=torch.Generator().manual_seed(seed))


def test_drop_replaces_each_field_by_its_null_where_keep_is_false():
    label = torch.tensor([0, 3, 1])
    ctx, mask = _text(), torch.tensor([[1, 1, 0, 0]] * 3).bool()
    img = torch.randn(3, 2, 4, 2, 2)
    empty, empty_mask = torch.full((4, 6), 7.0), torch.tensor([1, 0, 0, 0]).bool()
    cond = Cond(label=label, context=ctx, context_mask=mask, image_latents=img)
    keep = torch.tensor([True, False, True])
    out = cond.drop(keep, label=5, context=empty, context_mask=empty_mask)
    assert out.label.tolist() == [0, 5, 1]
    assert torch.equal(out.context[0], ctx[0]) and torch.equal(out.context[1], empty)
    assert out.context_mask[1].tolist() == [True, False, False, False] and torch.equal(
        out.context_mask[2], mask[2]
    )
    assert torch.equal(out.image_latents, img)  # kept unless image=True (CogVideoX-I2V guides text only)
    out = cond.drop(keep, label=5, context=empty, image=True)
    assert out.image_latents[1].abs().max() == 0 and torch.equal(out.image_latents[0], img[0])
    assert out.context_mask[1].all()  # no null mask given: all tokens kept
    null = cond.null(label=5, context=empty)
    assert null.label.tolist() == [5, 5, 5] and torch.equal(null.context, empty.expand(3, 4, 6))


def test_null_needs_every_set_fields_null():
    with pytest.raises(ValueError, match="label"):
        Cond(label=torch.tensor([1])).null()
    with pytest.raises(ValueError, match="empty-prompt"):
        Cond(context=_text()).null()
    with pytest.raises(ValueError, match=r"null context must be \[L, Dc\]"):
        Cond(context=_text()).null(context=torch.zeros(3, 6))
    assert Cond().null() == Cond()


def test_shape_checks_name_the_field():
    with pytest.raises(ValueError, match="batch size"):
        Cond(label=torch.tensor([1, 2]), context=_text(B=3))
    with pytest.raises(ValueError, match="Cond.label must be"):
        Cond(label=torch.tensor([[1]]))
    with pytest.raises(ValueError, match="context_mask must be"):
        Cond(context=_text(), context_mask=torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="image_latents"):
        Cond(image_latents=torch.zeros(3, 4, 2, 2))
    with pytest.raises(ValueError, match="keep must be"):
        Cond(label=torch.tensor([1, 2])).drop(torch.tensor([1, 0]), label=3)


def test_cat_and_to():
    a, b = Cond(label=torch.tensor([1, 2])), Cond(label=torch.tensor([3]))
    assert Cond.cat([a, b]).label.tolist() == [1, 2, 3] and Cond.cat([a, b]).batch_size == 3
    with pytest.raises(ValueError, match="same fields"):
        Cond.cat([a, Cond(context=_text(B=1))])
    assert a.to("cpu").label.tolist() == [1, 2]


def test_vdit_takes_labels_only_and_names_what_it_refuses():
    model = VDiT(TINY)
    model.init_weights()
    x, t = torch.randn(3, 3, 4, 8, 8), torch.tensor([1.0, 2.0, 3.0])
    y = torch.tensor([0, 1, 4])
    assert model(x, t, Cond(label=y)).pred.shape == (3, 3, 4, 8, 8)
    with pytest.raises(ValueError, match=r"cannot use Cond.context"):
        model(x, t, Cond(label=y, context=_text()))
    with pytest.raises(ValueError, match="needs Cond.label"):
        model(x, t, Cond())
    with pytest.raises(ValueError, match="must be a minivdit.models.cond.Cond"):
        model(x, t, y)
    assert model.null_cond(Cond(label=y)).label.tolist() == [5, 5, 5]
    uncond = VDiT(dataclasses.replace(TINY, num_classes=0))
    with pytest.raises(ValueError, match="unconditional VDiT"):
        uncond(x, t, Cond(label=y))


def test_batch_cond_labels_and_cached_text():
    samples = [
        {
            "video": torch.zeros(3, 3, 8, 8),
            "label": i,
            "text": _text(B=1, seed=i)[0].bfloat16(),
            "text_mask": torch.ones(4, dtype=torch.bool),
        }
        for i in range(2)
    ]
    batch = collate(samples)
    assert batch.text.shape == (2, 4, 6) and batch.text.dtype == torch.bfloat16
    cond = batch_cond(batch, num_classes=3)
    assert cond.label.tolist() == [0, 1] and cond.context.dtype == torch.float32 and cond.context_mask.all()
    assert batch_cond(batch, num_classes=0).label is None
    with pytest.raises(ValueError, match=r"labels must be in \[0, 1\)"):
        batch_cond(batch, num_classes=1)
    plain = batch_cond(Batch(video=None, label=torch.tensor([2])), num_classes=3)
    assert plain.given() == ("label",)


def test_image_context_kept_by_text_cfg_and_dropped_only_with_image():
    """Wan-I2V's CLIP tokens: text CFG keeps them (the pipeline feeds the same ``image_embeds`` to both
    branches); ``image=True`` drops them to the given null tokens, or to zeros."""
    ctx, empty = _text(), torch.full((4, 6), 7.0)
    tokens = torch.randn(3, 5, 8)
    cond = Cond(context=ctx, image_context=tokens)
    assert cond.given() == ("context", "image_context")
    null = cond.null(context=empty)
    assert torch.equal(null.image_context, tokens) and torch.equal(null.context, empty.expand(3, 4, 6))
    keep = torch.tensor([True, False, True])
    out = cond.drop(keep, context=empty, image=True)
    assert torch.equal(out.image_context[0], tokens[0]) and out.image_context[1].abs().max() == 0
    blank = torch.full((5, 8), -1.0)
    out = cond.drop(keep, context=empty, image=True, image_context=blank)
    assert torch.equal(out.image_context[1], blank) and torch.equal(out.image_context[2], tokens[2])
    with pytest.raises(ValueError, match=r"null image_context must be \[Li, Di\]=\[5, 8\]"):
        cond.drop(keep, context=empty, image=True, image_context=torch.zeros(4, 8))
    with pytest.raises(ValueError, match=r"Cond.image_context must be \[B, Li, Di\]"):
        Cond(image_context=torch.zeros(3, 8))
    with pytest.raises(ValueError, match="batch size"):
        Cond(context=ctx, image_context=torch.zeros(2, 5, 8))
    both = Cond.cat([cond, cond.to("cpu")])
    assert both.image_context.shape == (6, 5, 8) and torch.equal(both.image_context[3:], tokens)
