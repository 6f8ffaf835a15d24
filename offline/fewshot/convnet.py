"""The 4-layer conv net of the few-shot literature (Vinyals et al., MAML, REPTILE): 4 x [conv3x3,
BatchNorm, ReLU, maxpool2] and a linear classifier, with the width found from a parameter target.
"""
from __future__ import annotations

import functools

from torch import nn

from offline.fewshot.reptile import count_parameters

BLOCKS = 4


def conv_net(channels: int, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """The conv net; BatchNorm always normalises with the batch's statistics (transductive, as
    in REPTILE: a query set is classified as one batch)."""
    layers: list[nn.Module] = []
    size = image_size
    for block in range(BLOCKS):
        layers += [nn.Conv2d(in_channels if block == 0 else channels, channels, 3, padding=1),
                   nn.BatchNorm2d(channels, track_running_stats=False), nn.ReLU(),
                   nn.MaxPool2d(2, ceil_mode=True)]
        size = -(-size // 2)
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * size * size, num_classes))


# Pure and slow (it builds a network per candidate width); the few-shot command asks often.
@functools.cache
def channels_for_budget(target_parameters: int, in_channels: int, num_classes: int,
                        image_size: int) -> int:
    """The width whose conv net has the parameter count nearest to the target."""
    return min(range(4, 257), key=lambda channels: abs(count_parameters(
        conv_net(channels, in_channels, num_classes, image_size)) - target_parameters))
