"""The CIFAR VGG-19 of Frankle & Carbin and OpenLTH for CIFAR-100 (with BatchNorm, 20.0M weights)."""

from torch import nn

from archs.cifar100 import INPUT_SHAPE, NUM_CLASSES
from archs.models.vgg import CifarVGG


def vgg19() -> nn.Module:
    return CifarVGG(INPUT_SHAPE[0], NUM_CLASSES)


ARCHS = {"vgg19": vgg19}
