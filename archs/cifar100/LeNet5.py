"""The original's LeNet5 for CIFAR-100: LeNet-5 with ReLU and max-pooling."""

from torch import nn

from archs.cifar100 import INPUT_SHAPE, NUM_CLASSES
from archs.models.lenet5 import LeNet5


def lenet5() -> nn.Module:
    return LeNet5(INPUT_SHAPE[0], NUM_CLASSES)


ARCHS = {"lenet5": lenet5}
