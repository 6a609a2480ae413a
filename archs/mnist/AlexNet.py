"""AlexNet for MNIST and Fashion-MNIST."""

from torch import nn

from archs.mnist import INPUT_SHAPE, NUM_CLASSES
from archs.models.alexnet import AlexNet


def alexnet() -> nn.Module:
    return AlexNet(INPUT_SHAPE, NUM_CLASSES)


ARCHS = {"alexnet": alexnet}
