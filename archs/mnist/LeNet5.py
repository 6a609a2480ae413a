"""The original's MNIST "lenet5": not LeNet-5 but the shape of Frankle & Carbin's Conv-2 (two 3x3
convolutions of 64, a max-pool, fully connected 256-256-10; 3.3M parameters)."""

from torch import nn

from archs.mnist import INPUT_SHAPE, NUM_CLASSES
from archs.models.convnet import CONV2, ConvNet


def lenet5() -> nn.Module:
    return ConvNet(INPUT_SHAPE, NUM_CLASSES, CONV2)


ARCHS = {"lenet5": lenet5}
