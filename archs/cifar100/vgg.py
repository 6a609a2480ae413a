"""VGG-16 with BatchNorm for CIFAR-100."""

from torch import nn

from archs.cifar100 import INPUT_SHAPE, NUM_CLASSES
from archs.models.vgg import VGG


def vgg16() -> nn.Module:
    return VGG(INPUT_SHAPE, NUM_CLASSES)


ARCHS = {"vgg16": vgg16}
