"""The original's MNIST ResNet-18 (torchvision's ImageNet design, one input channel), built with the
data set's 10 outputs where the original built 1000."""

from torch import nn

from archs.mnist import INPUT_SHAPE, NUM_CLASSES
from archs.models.resnet import imagenet_resnet18


def resnet18() -> nn.Module:
    return imagenet_resnet18(INPUT_SHAPE[0], NUM_CLASSES)


ARCHS = {"resnet18": resnet18}
