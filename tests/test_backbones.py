"""The backbone zoo: real ImageNet weights, selection by available weight files."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from autodl_meta import backbones

# ImageNet class ids: 281-285 are domestic cats; 967 espresso, 968 cup, 504 coffee mug.
CAT_CLASSES = {281, 282, 283, 284, 285}
COFFEE_CLASSES = {967, 968, 504}


def imagenet_top5(name: str, image: np.ndarray, size: int) -> set[int]:
    network, _ = backbones.load_pretrained(name)
    network.eval()
    spec = backbones.ZOO[name]
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                        align_corners=False)
    x = (x - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return set(network(x).topk(5).indices[0].tolist())


@pytest.mark.parametrize("name,size", [("efficientnet-lite0", 224), ("efficientnet-lite1", 240),
                                       ("efficientnet-lite2", 260)])
def test_pretrained_weights_recognise_real_photos(name, size):
    from skimage import data

    if name not in backbones.available_backbones():
        pytest.fail(f"{name} weights missing: run `make pretrained`")
    assert imagenet_top5(name, data.chelsea(), size) & CAT_CLASSES
    assert imagenet_top5(name, data.coffee(), size) & COFFEE_CLASSES


def test_backbone_without_weights_is_not_available(tmp_path):
    assert backbones.available_backbones(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="missing"):
        backbones.load_pretrained("resnet18", tmp_path)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_feature_extractor_takes_any_channel_count(channels):
    extractor = backbones.FeatureExtractor("efficientnet-lite0", channels).eval()
    with torch.no_grad():
        features = extractor(torch.rand(2, channels, 32, 32))
    assert features.shape == (2, extractor.num_features)


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_fine_tuning_leaves_the_frozen_share_of_the_backbone_as_it_was(fraction):
    from autodl_meta.config import TrainConfig
    from autodl_meta.trainer import Trainer

    trainer = Trainer(TrainConfig(resolution=32, batch_size=16, frozen_fraction=fraction),
                      num_classes=3, in_channels=3, multilabel=False,
                      device=torch.device("cpu"))
    units = trainer.model.extractor.units()
    # Lite0: stem convolution and its norm, 16 blocks, head convolution and its norm.
    frozen = len(trainer.frozen)
    assert len(units) == 20 and frozen == fraction * 20
    before = [[p.detach().clone() for p in unit.parameters()] for unit in units]
    head = trainer.model.head.weight.detach().clone()
    images = torch.randint(0, 256, (16, 1, 3, 32, 32), dtype=torch.uint8)
    labels = torch.nn.functional.one_hot(torch.arange(16) % 3, 3).float()
    trainer.train_for(images, labels, seconds=0.0)  # one step
    changed = [any(not torch.equal(old, new) for old, new in zip(saved, unit.parameters()))
               for saved, unit in zip(before, units)]
    assert changed == [False] * frozen + [True] * (20 - frozen)
    # Frozen blocks compute in eval mode (no drop-connect), the blocks that train do not.
    blocks = trainer.model.extractor.network._blocks
    assert [block.training for block in blocks] == [unit not in trainer.frozen
                                                    for unit in blocks]
    assert not torch.equal(head, trainer.model.head.weight)
