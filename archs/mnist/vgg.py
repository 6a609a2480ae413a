"""The original's MNIST "vgg16", fixed so that it runs (see MnistVGG16)."""

from torch import nn

from archs.mnist import INPUT_SHAPE, NUM_CLASSES
from archs.models.vgg import MnistVGG16


def vgg16() -> nn.Module:
    return MnistVGG16(INPUT_SHAPE[0], NUM_CLASSES)


ARCHS = {"vgg16": vgg16}
