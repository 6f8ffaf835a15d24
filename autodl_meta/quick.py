"""The quickest real prediction: logistic regression on 16 x 16 pixels, fitted by L-BFGS.

The runtime's first prediction, within a second or two of the first train() call, and kept until
a model with a better validation NAUC replaces it: a prediction at a few seconds is worth much
more ALC than a better one half a minute later. `fit_linear` also fits the Trainer's head on
frozen features.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SIDE = 16
L2 = 1e-3
LBFGS_STEPS = 60
# The pixel model stops early: at 10-20 steps its validation NAUC was as good as at 60 on
# caltech101, omniglot, cifar10 and pacs_photo (less fitting is more regularisation on pixels),
# in a third to a quarter of the time (0.9 s at 60 steps on 101 classes).
PIXEL_LBFGS_STEPS = 20
FEATURE_CHUNK = 512


def fit_linear(layer: nn.Module, features: torch.Tensor, targets: torch.Tensor,
               loss_fn: nn.Module, l2: float = L2, steps: int = LBFGS_STEPS) -> None:
    """Fit `layer` on fixed `features` by L-BFGS with an L2 penalty on its weights: logistic
    regression with a softmax cross-entropy or a per-class sigmoid loss."""
    optimizer = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=steps,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        penalty = sum(p.square().sum() for name, p in layer.named_parameters()
                      if name.endswith("weight"))
        loss = loss_fn(layer(features), targets) + l2 * penalty
        loss.backward()
        return loss

    optimizer.step(closure)


def pixel_features(images: torch.Tensor) -> torch.Tensor:
    """uint8 `[n, frames, channel, h, w]` to floats `[n, channel * 16 * 16]`."""
    pooled = []
    # A chunk at a time: converting the whole set to floats at once took 3-5 times as long.
    for start in range(0, len(images), FEATURE_CHUNK):
        chunk = images[start:start + FEATURE_CHUNK]
        clips = chunk[:, 0].float() if chunk.shape[1] == 1 else chunk.float().mean(1)
        pooled.append(F.adaptive_avg_pool2d(clips, SIDE).flatten(1))
    if not pooled:
        return torch.zeros(0, images.shape[2] * SIDE * SIDE)
    return torch.cat(pooled) / 255.0


class PixelLogistic:
    """Logistic regression on standardised pixel features; scores are class probabilities."""

    def __init__(self) -> None:
        self.mean = self.std = self.linear = None
        self.multilabel = False

    def fit(self, images: torch.Tensor, labels: torch.Tensor, multilabel: bool = False
            ) -> PixelLogistic:
        x = pixel_features(images)
        self.mean, self.std = x.mean(0), x.std(0) + 1e-3
        self.multilabel = multilabel
        self.linear = nn.Linear(x.shape[1], labels.shape[1])
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        if multilabel:
            fit_linear(self.linear, (x - self.mean) / self.std, labels, nn.BCEWithLogitsLoss(),
                       steps=PIXEL_LBFGS_STEPS)
        else:
            fit_linear(self.linear, (x - self.mean) / self.std, labels.argmax(1),
                       nn.CrossEntropyLoss(), steps=PIXEL_LBFGS_STEPS)
        return self

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> np.ndarray:
        logits = self.linear((pixel_features(images) - self.mean) / self.std)
        scores = torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=-1)
        return scores.numpy()
