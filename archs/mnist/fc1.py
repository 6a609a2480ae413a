"""Fully connected 300-100 network for MNIST and Fashion-MNIST."""

from torch import nn

from archs.mnist import INPUT_SHAPE, NUM_CLASSES
from archs.models.fc1 import FC1


def fc1() -> nn.Module:
    return FC1(INPUT_SHAPE, NUM_CLASSES)


ARCHS = {"fc1": fc1}
