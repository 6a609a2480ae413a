"""VGG-16 with BatchNorm for CIFAR-10."""

from torch import nn

from archs.cifar10 import INPUT_SHAPE, NUM_CLASSES
from archs.models.vgg import VGG


def vgg16() -> nn.Module:
    return VGG(INPUT_SHAPE, NUM_CLASSES)


ARCHS = {"vgg16": vgg16}
