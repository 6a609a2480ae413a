"""LeNet-5 for MNIST and Fashion-MNIST."""

from torch import nn

from archs.mnist import INPUT_SHAPE, NUM_CLASSES
from archs.models.lenet5 import LeNet5


def lenet5() -> nn.Module:
    return LeNet5(INPUT_SHAPE, NUM_CLASSES)


ARCHS = {"lenet5": lenet5}
