"""Frankle & Carbin's Conv-2 for CIFAR-10."""

from torch import nn

from archs.cifar10 import INPUT_SHAPE, NUM_CLASSES
from archs.models.convnet import CONV2, ConvNet


def conv2() -> nn.Module:
    return ConvNet(INPUT_SHAPE, NUM_CLASSES, CONV2)


ARCHS = {"conv2": conv2}
