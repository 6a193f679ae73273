"""The project's CNN written again in PyTorch, for side-by-side speed measurements only.

Same layers, widths, batch-norm momentum and logit scale as confusion_embeddings/cnn/
network.py, built from the same ModelConfig (the frozen patch whitening under train.whiten,
conv without bias, batch norm without learned
scale, GELU, 2x2 max-pool, global max-pool, linear head), trained with the same SGD +
Nesterov step and label smoothing. The pipeline never imports this file.
"""

from __future__ import annotations

import torch
from torch import nn

from confusion_embeddings.cnn.network import ModelConfig


def _bn(c: int, flax_momentum: float) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c, momentum=1 - flax_momentum)  # torch's momentum is 1 - flax's
    bn.weight.requires_grad_(False)
    return bn


class TorchCNN(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        patch, m = cfg.stem_patch, cfg.bn_momentum
        layers: list[nn.Module] = [nn.PixelUnshuffle(patch)] if patch > 1 else []
        if cfg.whiten:  # the frozen patch whitening: a 1x1 conv on the unshuffled patches
            layers.append(
                nn.Conv2d(3 * patch**2, 3 * patch**2, 1, bias=False).requires_grad_(False)
            )
        layers += [
            nn.Conv2d(3 * patch**2, cfg.stem_width, 3, padding=1, bias=False),
            _bn(cfg.stem_width, m),
            nn.GELU(),
        ]
        cin = cfg.stem_width
        for w in cfg.widths:
            layers += [
                nn.Conv2d(cin, w, 3, padding=1, bias=False),
                nn.MaxPool2d(2),
                _bn(w, m),
                nn.GELU(),
                nn.Conv2d(w, w, 3, padding=1, bias=False),
                _bn(w, m),
                nn.GELU(),
            ]
            cin = w
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(cin, cfg.num_classes, bias=False)
        self.logit_scale = cfg.logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x).amax(dim=(2, 3))
        return self.head(x) * self.logit_scale
