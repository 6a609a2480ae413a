"""The original's fc1 for CIFAR-10: fully connected 300-100 (the paper's LeNet-300-100)."""

from torch import nn

from archs.cifar10 import INPUT_SHAPE, NUM_CLASSES
from archs.models.fc1 import FC1


def fc1() -> nn.Module:
    return FC1(INPUT_SHAPE, NUM_CLASSES)


ARCHS = {"fc1": fc1}
