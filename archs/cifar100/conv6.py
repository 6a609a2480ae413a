"""Frankle & Carbin's Conv-6 for CIFAR-100."""

from torch import nn

from archs.cifar100 import INPUT_SHAPE, NUM_CLASSES
from archs.models.convnet import CONV6, ConvNet


def conv6() -> nn.Module:
    return ConvNet(INPUT_SHAPE, NUM_CLASSES, CONV6)


ARCHS = {"conv6": conv6}
