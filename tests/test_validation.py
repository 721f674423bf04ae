"""Validation samples during text / image-to-video training (``minivdit/validate.py``, issue 18 §2.12).

- clip i of a validation is the clip ``python -m minivdit.sample`` makes for prompt i with seed ``seed + i``
  (the same draws in the same order), text-to-video and anyframe image-to-video;
- settings that cannot work are refused before training, naming the flag.
The end-to-end path (``--validation.*`` flags through the recipe's ``main``, files written every N steps) is
``tests/test_cli.py::test_cogvideox_recipes_from_the_command_line``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_cogvideox import FRAMES, TEXT_LEN, H, W, make_pipeline_folder  # tests/ on sys.path

from minivdit.conditioning.text import T5TextEncoder, TextEncoderConfig
from minivdit.sample import SampleConfig, decode_latents, load_pretrained_folder, sample_cogvideox
from minivdit.validate import ValidationConfig, Validator

diffusers = pytest.importorskip("diffusers")
pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled"),
]
PROMPTS = ("a red flower blooms", "clouds drift over a hill")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("validation")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        out = {
            "i2v": make_pipeline_folder(root / "i2v", std=0.3),
            "t2v": make_pipeline_folder(root / "t2v", i2v=False, std=0.3, seed=1),
            "image": root / "cond.png",
        }
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(out["image"])
    return out


def _validator(folder: Path, vae, cfg: ValidationConfig, i2v: bool) -> Validator:
    text = TextEncoderConfig(path=str(folder), max_length=TEXT_LEN, dtype="float32", null="empty")
    return Validator(
        cfg,
        text_encoder=T5TextEncoder(text),
        text_cfg=text,
        text_null=None,
        vae=vae,
        is_i2v=i2v,
        num_frames=FRAMES,
        size=(H, W),
        device=CPU,
    )


@pytest.mark.parametrize("i2v", [True, False], ids=["anyframe-i2v", "t2v"])
def test_validation_clips_are_what_minivdit_sample_makes(folders, i2v):
    """Bit-identical by construction: each clip runs the same kernels on the same inputs as a one-prompt
    ``sample_cogvideox`` call (a batch of one, prompts encoded one at a time, the same CPU generator drawing
    the image condition and then the noise), so any difference is a different draw or order."""
    folder = folders["i2v" if i2v else "t2v"]
    image = dict(images=(str(folders["image"]),), frame_indices=(0, 4)) if i2v else {}
    cfg = ValidationConfig(prompts=PROMPTS, steps=2, cfg_scale=6.0, seed=3, **image)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        model, objective, vae, _ = load_pretrained_folder(folder, device=CPU, dtype=torch.float32)
        clips = _validator(folder, vae, cfg, i2v).sample(model, objective, "fp32")
        for i, prompt in enumerate(PROMPTS):
            request = dict(prompt=(prompt,), steps=2, cfg_scale=6.0, seed=3 + i, device="cpu")
            request |= dict(pretrained=str(folder), text_dtype="float32", text_null="empty")
            if i2v:
                request |= dict(image=str(folders["image"]), frame_index=(0, 4)[i])
            latents, vae_ref, _ = sample_cogvideox(SampleConfig(**request))
            reference = decode_latents(vae_ref, latents, CPU, "fp32")
            assert torch.equal(clips[i : i + 1], reference), f"clip {i} ({prompt!r})"


def test_a_run_that_cannot_validate_is_refused_naming_the_flag(folders):
    with pytest.raises(ValueError, match="validation.images: 2 given for 3 prompts"):
        ValidationConfig(prompts=("a", "b", "c"), images=("x.png", "y.png"))
    with pytest.raises(ValueError, match="frame_indices needs validation.images"):
        ValidationConfig(prompts=("a",), frame_indices=(2,))
    with pytest.raises(ValueError, match="steps >= 1"):
        ValidationConfig(prompts=("a",), steps=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        _, _, vae, _ = load_pretrained_folder(folders["i2v"], device=CPU, dtype=torch.float32)
        with pytest.raises(ValueError, match="image-to-video: --validation.images"):
            _validator(folders["i2v"], vae, ValidationConfig(prompts=("a",)), i2v=True)
        with pytest.raises(ValueError, match="outside the training clip of 9 frames"):
            bad = ValidationConfig(prompts=("a",), images=(str(folders["image"]),), frame_indices=(9,))
            _validator(folders["i2v"], vae, bad, i2v=True)
        with pytest.raises(ValueError, match="needs the run's VAE"):
            _validator(folders["t2v"], None, ValidationConfig(prompts=("a",)), i2v=False)
