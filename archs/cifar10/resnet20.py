"""The CIFAR ResNet-20 of Frankle & Carbin and OpenLTH for CIFAR-10 (0.27M weights)."""

from torch import nn

from archs.cifar10 import INPUT_SHAPE, NUM_CLASSES
from archs.models.resnet import ResNet20


def resnet20() -> nn.Module:
    return ResNet20(INPUT_SHAPE[0], NUM_CLASSES)


ARCHS = {"resnet20": resnet20}
