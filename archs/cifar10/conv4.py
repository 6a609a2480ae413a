"""Frankle & Carbin's Conv-4 for CIFAR-10."""

from torch import nn

from archs.cifar10 import INPUT_SHAPE, NUM_CLASSES
from archs.models.convnet import CONV4, ConvNet


def conv4() -> nn.Module:
    return ConvNet(INPUT_SHAPE, NUM_CLASSES, CONV4)


ARCHS = {"conv4": conv4}
