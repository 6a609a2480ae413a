"""The original's CIFAR-100 ResNet-18: torchvision's ImageNet design."""

from torch import nn

from archs.cifar100 import INPUT_SHAPE, NUM_CLASSES
from archs.models.resnet import imagenet_resnet18


def resnet18() -> nn.Module:
    return imagenet_resnet18(INPUT_SHAPE[0], NUM_CLASSES)


ARCHS = {"resnet18": resnet18}
