"""The project's CNN written again in PyTorch, for side-by-side speed measurements only.

Same layers, widths and batch size as stages/model.py (conv without bias, batch norm without
learned scale, GELU, 2x2 max-pool, global max-pool, linear head), trained with the same
SGD + Nesterov step and label smoothing. The pipeline never imports this file.
"""

from __future__ import annotations

import torch
from torch import nn


def _bn(c: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c, momentum=0.4)  # torch's momentum is 1 - flax's
    bn.weight.requires_grad_(False)
    return bn


class TorchCNN(nn.Module):
    def __init__(self, num_classes: int, stem_width: int, widths: tuple[int, ...],
                 logit_scale: float, stem_patch: int = 1):
        super().__init__()
        layers: list[nn.Module] = [nn.PixelUnshuffle(stem_patch)] if stem_patch > 1 else []
        layers += [nn.Conv2d(3 * stem_patch**2, stem_width, 3, padding=1, bias=False), _bn(stem_width), nn.GELU()]
        cin = stem_width
        for w in widths:
            layers += [
                nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.MaxPool2d(2), _bn(w), nn.GELU(),
                nn.Conv2d(w, w, 3, padding=1, bias=False), _bn(w), nn.GELU(),
            ]
            cin = w
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes, bias=False)
        self.logit_scale = logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x).amax(dim=(2, 3))
        return self.head(x) * self.logit_scale
