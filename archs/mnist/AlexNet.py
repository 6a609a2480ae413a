"""The original's AlexNet for MNIST and Fashion-MNIST (57M parameters)."""

from torch import nn

from archs.mnist import INPUT_SHAPE, NUM_CLASSES
from archs.models.alexnet import alexnet as build


def alexnet() -> nn.Module:
    return build(INPUT_SHAPE[0], NUM_CLASSES)


ARCHS = {"alexnet": alexnet}
