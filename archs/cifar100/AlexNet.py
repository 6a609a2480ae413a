"""AlexNet for CIFAR-100."""

from torch import nn

from archs.cifar100 import INPUT_SHAPE, NUM_CLASSES
from archs.models.alexnet import AlexNet


def alexnet() -> nn.Module:
    return AlexNet(INPUT_SHAPE, NUM_CLASSES)


ARCHS = {"alexnet": alexnet}
