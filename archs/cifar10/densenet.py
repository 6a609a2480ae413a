"""DenseNet-121 for CIFAR-10."""

from torch import nn

from archs.cifar10 import INPUT_SHAPE, NUM_CLASSES
from archs.models.densenet import DenseNet


def densenet121() -> nn.Module:
    return DenseNet(INPUT_SHAPE, NUM_CLASSES)


ARCHS = {"densenet121": densenet121}
