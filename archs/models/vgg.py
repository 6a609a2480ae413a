"""VGG networks: the original's CIFAR VGG-16 and MNIST "vgg16", and the paper's CIFAR VGG-19."""

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models import VGG
from torchvision.models import vgg16 as _vgg16


def vgg16(num_classes: int) -> VGG:
    """The original's CIFAR VGG-16: torchvision's configuration "D" without BatchNorm, adaptive
    average pooling to 7x7 (a 32x32 input reaches it as 1x1, which the pooling enlarges),
    the 4096-4096 classifier with dropout; 134M parameters. It initialises its own weights."""
    return _vgg16(num_classes=num_classes)


# (convolutions, channels) of each block of the original's MNIST "vgg16"
MNIST_VGG_BLOCKS = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))


def mnist_vgg_block(convs: int, in_channels: int, channels: int, ceil: bool) -> nn.Sequential:
    """`convs` 3x3 convolutions, then ONE ReLU and a 2x2 max-pool, as the original's block."""
    layers: list[nn.Module] = []
    for _ in range(convs):
        layers.append(nn.Conv2d(in_channels, channels, kernel_size=3, padding=1))
        in_channels = channels
    return nn.Sequential(*layers, nn.ReLU(), nn.MaxPool2d(2, 2, ceil_mode=ceil))


class MnistVGG16(nn.Module):
    """The original's MNIST "vgg16" (VGG-11-like: blocks of 1, 1, 2, 2, 2 convolutions, then
    `dense1` 25088->4096, `dense2`, `dense3`, dropout between), with the smallest change that
    lets it run; every key and shape is the original's.

    The original cannot run: its forward calls `F.relu` with `F` never imported, and it was
    sized for 224x224 inputs, so at 28x28 the fifth pool receives a 1x1 map (28-14-7-3-1) and
    fails. Here the fifth pool rounds up (1x1 stays 1x1) and an adaptive average pool enlarges
    the 512x1x1 map to the 512x7x7 that `dense1` takes, as the original's CIFAR VGG-16 does
    with its 1x1 map; the flatten keeps each sample's row (the original's `view(-1, 25088)`
    would have mixed samples).
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        blocks = []
        for index, (convs, channels) in enumerate(MNIST_VGG_BLOCKS):
            last = index == len(MNIST_VGG_BLOCKS) - 1
            blocks.append(mnist_vgg_block(convs, in_channels, channels, ceil=last))
            in_channels = channels
        self.features = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.dense1 = nn.Linear(512 * 7 * 7, 4096)
        self.drop1 = nn.Dropout(0.5)
        self.dense2 = nn.Linear(4096, 4096)
        self.drop2 = nn.Dropout(0.5)
        self.dense3 = nn.Linear(4096, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        x = self.drop1(F.relu(self.dense1(x)))
        x = self.drop2(F.relu(self.dense2(x)))
        return self.dense3(x)


# The CIFAR VGG-19 of Frankle & Carbin and of OpenLTH (`cifar_vgg_19`); "M" is a 2x2 max-pool.
VGG19_PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M")
VGG19_PLAN += (512, 512, 512, 512, "M", 512, 512, 512, 512)


class ConvModule(nn.Module):
    """3x3 convolution (with bias), BatchNorm, ReLU: one layer of OpenLTH's CIFAR VGG."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class CifarVGG(nn.Module):
    """`layers` (ConvModules and max-pools), global average pooling, one linear layer `fc`;
    OpenLTH's module names, so its `cifar_vgg_19` state dicts load here."""

    def __init__(self, in_channels: int, num_classes: int, plan: tuple = VGG19_PLAN) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for spec in plan:
            if spec == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers.append(ConvModule(in_channels, spec))
                in_channels = spec
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(x)
        x = F.avg_pool2d(x, x.shape[-1])  # the whole 2x2 map of a 32x32 input
        return self.fc(torch.flatten(x, 1))
