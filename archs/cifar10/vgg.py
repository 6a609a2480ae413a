"""The original's VGG-16 for CIFAR-10 (configuration "D", no BatchNorm, 134M parameters)."""

from torch import nn

from archs.cifar10 import NUM_CLASSES
from archs.models.vgg import vgg16 as build


def vgg16() -> nn.Module:
    return build(NUM_CLASSES)


ARCHS = {"vgg16": vgg16}
