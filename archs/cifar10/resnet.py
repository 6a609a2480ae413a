"""The original's CIFAR-10 ResNet-18 (the common CIFAR design: 3x3 stem, no max-pool)."""

from torch import nn

from archs.cifar10 import INPUT_SHAPE, NUM_CLASSES
from archs.models.resnet import CifarResNet18


def resnet18() -> nn.Module:
    return CifarResNet18(INPUT_SHAPE[0], NUM_CLASSES)


ARCHS = {"resnet18": resnet18}
