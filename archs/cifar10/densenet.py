"""The original's DenseNet-121 for CIFAR-10 (torchvision's ImageNet design)."""

from torch import nn

from archs.cifar10 import NUM_CLASSES
from archs.models.densenet import densenet121 as build


def densenet121() -> nn.Module:
    return build(NUM_CLASSES)


ARCHS = {"densenet121": densenet121}
