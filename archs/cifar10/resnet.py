"""ResNet-18 for CIFAR-10."""

from torch import nn

from archs.cifar10 import INPUT_SHAPE, NUM_CLASSES
from archs.models.resnet import ResNet


def resnet18() -> nn.Module:
    return ResNet(INPUT_SHAPE, NUM_CLASSES)


ARCHS = {"resnet18": resnet18}
