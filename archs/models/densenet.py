"""The original's CIFAR-10 DenseNet-121: torchvision's ImageNet DenseNet-121 (7x7 stride-2 stem
with max-pool, growth 32, blocks 6/12/24/16), built for the data set's classes."""

from torchvision.models import DenseNet
from torchvision.models import densenet121 as _densenet121


def densenet121(num_classes: int) -> DenseNet:
    return _densenet121(num_classes=num_classes)
