"""CIFAR-style DenseNet-BC (3x3 stem, bottleneck layers, compressing transitions)."""

import torch
from torch import Tensor, nn

from archs.models import FeaturesClassifier, Shape, pooled_classifier


def bn_relu_conv(in_channels: int, out_channels: int, kernel: int) -> list[nn.Module]:
    return [
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
    ]


class Bottleneck(nn.Module):
    """Adds `growth` new feature maps to its input's."""

    def __init__(self, in_channels: int, growth: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *bn_relu_conv(in_channels, 4 * growth, 1), *bn_relu_conv(4 * growth, growth, 3)
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.layers(x), x], dim=1)


class Transition(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(*bn_relu_conv(in_channels, out_channels, 1), nn.AvgPool2d(2))


class DenseNet(FeaturesClassifier):
    def __init__(
        self,
        input_shape: Shape,
        num_classes: int,
        blocks: tuple[int, ...] = (6, 12, 24, 16),
        growth: int = 32,
        reduction: float = 0.5,
    ) -> None:
        super().__init__()
        channels = 2 * growth
        layers: list[nn.Module] = [nn.Conv2d(input_shape[0], channels, 3, padding=1, bias=False)]
        for index, count in enumerate(blocks):
            for _ in range(count):
                layers.append(Bottleneck(channels, growth))
                channels += growth
            if index < len(blocks) - 1:
                reduced = int(channels * reduction)
                layers.append(Transition(channels, reduced))
                channels = reduced
        layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = pooled_classifier(channels, num_classes)
