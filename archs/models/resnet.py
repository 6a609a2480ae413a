"""ResNets: the original's CIFAR-10 ResNet-18, its ImageNet ResNet-18 (MNIST and CIFAR-100
families), and the paper's CIFAR ResNet-20."""

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models import ResNet
from torchvision.models import resnet18 as _resnet18


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the shortcut (a 1x1 conv + BN where the shape changes, else
    empty), then ReLU: the block of the original's CIFAR-10 ResNet and of OpenLTH's."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def stage(in_channels: int, channels: int, blocks: int, stride: int) -> nn.Sequential:
    """`blocks` BasicBlocks, the first with `stride`."""
    strides = [stride] + [1] * (blocks - 1)
    layers = []
    for block_stride in strides:
        layers.append(BasicBlock(in_channels, channels, block_stride))
        in_channels = channels
    return nn.Sequential(*layers)


def global_average(x: Tensor) -> Tensor:
    """Average over the whole (square) map, flattened: the original's `avg_pool2d(out, 4)` on the
    4x4 map of a 32x32 input, and OpenLTH's `avg_pool2d(out, out.size()[3])`."""
    return torch.flatten(F.avg_pool2d(x, x.shape[-1]), 1)


class CifarResNet18(nn.Module):
    """The original's CIFAR-10 ResNet-18: 3x3 stem (no max-pool), four stages of two blocks
    (64-512 channels), 4x4 average pooling, `linear`."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = stage(64, 64, 2, stride=1)
        self.layer2 = stage(64, 128, 2, stride=2)
        self.layer3 = stage(128, 256, 2, stride=2)
        self.layer4 = stage(256, 512, 2, stride=2)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(global_average(out))


class ResNet20(nn.Module):
    """The CIFAR ResNet-20 of Frankle & Carbin (their "Resnet-18") and OpenLTH's
    `cifar_resnet_20`: 3x3 stem conv 16 + BN, three stages of three blocks (16/32/64 filters),
    global average pooling, `fc`; OpenLTH's module names, so its state dicts load here."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, blocks: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        layers: list[nn.Module] = []
        channels = width
        for index, stage_width in enumerate((width, 2 * width, 4 * width)):
            layers.extend(stage(channels, stage_width, blocks, stride=1 if index == 0 else 2))
            channels = stage_width
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(global_average(out))


def imagenet_resnet18(in_channels: int, num_classes: int) -> ResNet:
    """The original's MNIST and CIFAR-100 ResNet-18: torchvision's ImageNet ResNet-18 (7x7
    stride-2 stem, max-pool, adaptive average pooling, `fc`) with `in_channels` inputs; its
    first convolution initialised as torchvision initialises every convolution."""
    model = _resnet18(num_classes=num_classes)
    if in_channels != model.conv1.in_channels:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model
