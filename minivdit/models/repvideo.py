"""RepVideo feature-cache gate (arXiv 2501.08994; Vchitect/RepVideo ``sat/transformer_gating.py`` @ f7bc580).

What the released code does (``anchors-modules.md`` §1.2), and therefore what the default does:

- one raw scalar ``g[i]`` per layer, initialised to 0.5; no sigmoid, no clamp;
- before layer i the input is blended with the mean of a cache of earlier block outputs:
  ``h = g[i]·mean(cache) + (1 − g[i])·h``;
- after layer i the cache is *reset* to ``[h_out]`` when ``i % group == 0``, else ``h_out`` is appended; so
  the
  mean is a cumulative one over the layer outputs since the window start (groups {0..5}, {6..11}, …), and the
  gate is an exact no-op at layers 0, 1, 7, 13, … where the cache holds only the current input.

Options beyond the release, each off by default:
- ``sigmoid``: ``g = sigmoid(raw)`` with ``raw`` initialised to 0 (⇔ 0.5), keeping the blend convex;
- ``window="fixed"``: a sliding mean over the last ``group`` layer outputs instead of the
  reset-every-``group``
  cumulative mean.

Deviations: in CogVideoX-SAT the cached stream includes the text tokens; our V-DiT has none. The cache is a
plain Python list threaded through the block loop by the backbone (no module state), so the gate works under
activation checkpointing and ``torch.compile``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from torch import Tensor


class RepVideoGate(nn.Module):
    """Per-layer learned blend of each block's input with the running mean of recent block outputs."""

    def __init__(
        self,
        num_layers: int,
        *,
        group: int = 6,
        param: Literal["raw", "sigmoid"] = "raw",
        window: Literal["cumulative", "fixed"] = "cumulative",
        init: float = 0.5,
    ):
        super().__init__()
        if group < 1:
            raise ValueError(f"RepVideo group must be >= 1, got {group}")
        self.group, self.param, self.window, self.init = group, param, window, init
        self.learnable_gating = nn.Parameter(torch.empty(num_layers))

    def init_weights(self) -> None:
        with torch.no_grad():
            value = (
                torch.logit(torch.tensor(self.init)) if self.param == "sigmoid" else torch.tensor(self.init)
            )
            self.learnable_gating.fill_(value.item())

    def gates(self) -> Tensor:
        g = self.learnable_gating
        return torch.sigmoid(g) if self.param == "sigmoid" else g

    def mix(self, i: int, h: Tensor, cache: list[Tensor]) -> Tensor:
        """Input of layer i: ``g[i]·mean(cache) + (1 − g[i])·h``; an empty cache (layer 0) leaves h alone."""
        if not cache:
            return h
        c = cache[0] if len(cache) == 1 else torch.stack(cache).mean(0)
        g = self.gates()[i].to(h.dtype)
        return g * c + (1 - g) * h

    def update(self, i: int, h_out: Tensor, cache: list[Tensor]) -> list[Tensor]:
        """Cache after layer i has produced ``h_out``."""
        if self.window == "fixed":
            return (cache + [h_out])[-self.group :]
        return [h_out] if i % self.group == 0 else cache + [h_out]
