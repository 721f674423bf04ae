"""FID Inception (minivdit/eval/inception.py) against torch-fidelity 0.4.0's ``FeatureExtractorInceptionV3``
and ``interpolate_bilinear_2d_like_tensorflow1x``, loaded by file path (tests/oracles.py), with one random
state dict.

Run: ``pytest tests/test_eval_inception.py`` after ``pip install --no-deps torch-fidelity==0.4.0``.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from oracles import package_file, stub_package
from safetensors.torch import save_file

from minivdit.eval import inception


def _fidelity(module: str):
    """``torch_fidelity.<module>`` without running the package ``__init__`` (it imports torchvision)."""
    stub_package("torch_fidelity", package_file("torch-fidelity", "torch_fidelity/__init__.py").parent)
    return importlib.import_module(f"torch_fidelity.{module}")


def _random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Full-size random weights with He-scaled convs and randomised BatchNorm statistics (var > 0), so the
    features neither vanish nor explode through the 94 conv layers."""
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):  # shapes only
        model = inception.FIDInceptionV3()
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith("conv.weight"):
            v = torch.randn(v.shape, generator=g) * (2 / v[0].numel()) ** 0.5
        elif k.endswith(("bn.weight", "running_var")):
            v = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith(("bn.bias", "running_mean")):
            v = torch.randn(v.shape, generator=g) * 0.1
        elif k.startswith("fc."):
            v = torch.randn(v.shape, generator=g) * 0.01
        else:  # num_batches_tracked
            v = torch.zeros(v.shape, dtype=v.dtype)
        sd[k] = v
    return sd


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("inception") / "weights-inception-random.pth"
    torch.save(_random_state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def oracle(weights):
    return _fidelity("feature_extractor_inceptionv3").FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=weights
    )


def test_features_match_torch_fidelity(weights, oracle):
    ours = inception.load(weights)
    images = torch.randint(
        0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        (expected,) = oracle(images)
    got = ours.features(images[None])  # one video of 2 frames
    assert got.shape == (2, 2048) and got.dtype == torch.float32
    assert expected.abs().max() > 1e-2  # the random network keeps a signal to compare
    rel = ((got - expected).abs().max() / expected.abs().max()).item()
    print(f"inception '2048' features vs torch-fidelity: relative max |Δ| = {rel:.3e}")
    # the same float32 layers and weights as torch-fidelity's (measured identical); 1e-5 of the largest
    # feature allows other kernels' reduction orders (√K·u ≈ 2e-6 per layer) and catches any layer mix-up
    assert rel <= 1e-5


@pytest.mark.parametrize("size_in", [(256, 256), (32, 32), (37, 256)])
def test_tf1_resize_matches_oracle(size_in):
    oracle = _fidelity("interpolate_compat_tensorflow").interpolate_bilinear_2d_like_tensorflow1x
    x = torch.rand(2, 3, *size_in, generator=torch.Generator().manual_seed(2)) * 255
    expected = oracle(x, size=(299, 299), align_corners=False)
    got = inception.resize_bilinear_tf1(x, (299, 299))
    print(f"TF1 resize {size_in} -> 299: max |Δ| = {(got - expected).abs().max().item():.3e}")
    # bit-identical by construction: the same float32 coordinates and the same elementwise sub/mul/add in
    # TF's order, each correctly rounded by IEEE whatever the kernel; no reduction whose order could change
    assert torch.equal(got, expected)


def test_tf1_resize_is_not_half_pixel():
    """Output pixel d samples the input at d·in/out: 2 → 4 gives 0, ½, 1, 1 (the last tap clamps)."""
    x = torch.tensor([[[[0.0, 2.0]]]])
    got = inception.resize_bilinear_tf1(x, (1, 4))
    assert got.flatten().tolist() == [0.0, 1.0, 2.0, 2.0]


def test_state_dict_keys_equal_oracle(oracle):
    ours = inception.FIDInceptionV3().state_dict()
    theirs = oracle.state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert sum(not k.endswith("num_batches_tracked") for k in ours) == 94 * 5 + 2  # 94 BasicConv2d + fc
    assert ours["fc.weight"].shape == (1008, 2048)


def test_load_formats_and_errors(weights, tmp_path):
    sd = torch.load(weights, weights_only=True)
    assert "Conv2d_1a_3x3.bn.num_batches_tracked" in sd

    # a safetensors copy without num_batches_tracked (as older files) loads the same weights
    lean = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    save_file(lean, tmp_path / "w.safetensors")
    model = inception.load(tmp_path / "w.safetensors")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in lean.items())
    assert not model.training and not any(p.requires_grad for p in model.parameters())

    with pytest.raises(ValueError, match=r"--inception is not set.*pt_inception-2015-12-05-6726825d\.pth"):
        inception.load(None)
    with pytest.raises(ValueError, match=r"--inception .*no such file.*pytorch-fid releases"):
        inception.load(tmp_path / "absent.pth")

    # a torchvision-style ImageNet head and a renamed branch: every difference is listed, naming the file
    wrong = dict(lean, **{"fc.weight": torch.zeros(1000, 2048)})
    wrong["Mixed_7c.branch_pool2.conv.weight"] = wrong.pop("Mixed_7c.branch_pool.conv.weight")
    del wrong["fc.bias"]
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match=r"--inception .*wrong\.pth") as err:
        inception.load(tmp_path / "wrong.pth")
    msg = str(err.value)
    assert "2 missing keys" in msg and "Mixed_7c.branch_pool.conv.weight" in msg and "fc.bias" in msg
    assert "1 unexpected keys" in msg and "Mixed_7c.branch_pool2.conv.weight" in msg
    assert "1 shape mismatches: ['fc.weight: (1000, 2048) != (1008, 2048)']" in msg

    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.pth: cannot read a state dict"):
        inception.load(tmp_path / "garbage.pth")
    torch.save({"model": {"fc.bias": torch.zeros(1008)}}, tmp_path / "nested.pth")
    with pytest.raises(ValueError, match=r"nested\.pth: expected a state dict of tensors"):
        inception.load(tmp_path / "nested.pth")


def test_video_contract():
    with torch.device("meta"):
        model = inception.FIDInceptionV3()
    model.to_empty(device="cpu")  # the network itself is replaced below
    assert (model.name, model.min_frames, model.batch_size, model.dim) == ("inception", 1, 64, 2048)
    # frames are items in (b, f) order, resized to 299 and scaled to [-1, 1] before the network
    model.forward = lambda x: torch.stack([x.mean((1, 2, 3)), x.amin((1, 2, 3)), x.amax((1, 2, 3))], 1)
    video = torch.arange(6, dtype=torch.uint8).reshape(2, 3, 1, 1, 1).expand(2, 3, 3, 5, 7) * 51
    got = model.features(video)
    expected = (torch.arange(6.0) * 51 - 128) / 128
    # a constant frame resized in float32 (w₀·a + w₁·a need not be a exactly) and scaled: a few ulp(1) ≈
    # 1.2e-7 each; the mean over 3·299² of them adds ≲ log2(n)·u; 1e-6 ≈ 8 ulp(1)
    torch.testing.assert_close(got, expected[:, None].expand(6, 3), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        model.features(torch.zeros(1, 1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\[B, F, 3, H, W\]"):
        model.features(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
