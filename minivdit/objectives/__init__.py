"""Diffusion objectives and THE time convention of minivdit.

Convention (DESIGN.md §2, pinned by ``tests/test_objectives.py::test_time_convention``):

- ``t ∈ [0, 1]``; ``t = 0`` is clean data, ``t = 1`` is pure noise, for every objective.
- Names: ``x_data`` (clean sample), ``noise`` (standard normal), ``x_t`` (the corrupted input), ``target``
  (what the network regresses). Never ``x0`` / ``x1``: the literature disagrees on which is which.
- The network never sees ``t`` or a schedule. It is conditioned on ``t_model``, which the objective produces
  next to ``t``:
  - DDPM: the integer step index ``i = round(t · (T − 1))`` as a float, as Latte/DiT checkpoints expect;
  - flow: ``t · t_model_scale`` (1000 by default; 1.0 reproduces SiT/REPA, whose embedder sees raw t).
    Sampling with ``sampling_grid="diffusers"`` (Wan) passes the diffusers scheduler's own timesteps
    instead: float32 σ·1000 (Euler), or UniPC's ``int(σ·1000)``, truncated (``objectives/flow.py``).
- Layout: ``[B, F, C, H, W]`` (frames first). Losses are returned per sample, ``Tensor[B]``.

Every objective implements:

- ``corrupt(x_data, generator=None) -> Noised``
- ``loss(pred, noised) -> Tensor[B]`` and ``loss_terms(pred, noised) -> dict[str, Tensor[B]]`` (the parts that
  ``loss`` sums; logged separately)
- ``sample(denoise_fn, noise, steps, generator=None) -> Tensor`` where ``denoise_fn(x_t, t_model) -> pred``
- ``pred_channels(in_channels) -> int``: the channel count the network must output (2C with learned σ).
"""

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class Noised:
    """One corrupted training batch: what the objective hands the network and keeps for its loss."""

    x_data: Tensor  # [B, F, C, H, W] clean sample (t = 0)
    noise: Tensor  # [B, F, C, H, W] standard normal (t = 1)
    x_t: Tensor  # [B, F, C, H, W] network input
    t: Tensor  # [B] in [0, 1], the convention above
    t_model: Tensor  # [B] float, what the network is conditioned on
    target: Tensor  # [B, F, C, H, W] regression target (DDPM: eps or v; flow: noise - x_data)


def check_video(x: Tensor, name: str) -> None:
    """Raise ``ValueError`` unless ``x`` is a 5-D ``[B, F, C, H, W]`` tensor."""
    if x.ndim != 5:
        raise ValueError(f"{name} must be [B, F, C, H, W], got shape {tuple(x.shape)}")
