"""CIFAR-style ResNet (3x3 stem, no max pool) with basic blocks."""

from torch import Tensor, nn

from archs.models import FeaturesClassifier, Shape, pooled_classifier


def conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    ]


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            *conv_bn(in_channels, out_channels, 3, stride),
            nn.ReLU(inplace=True),
            *conv_bn(out_channels, out_channels, 3),
        )
        projected = stride != 1 or in_channels != out_channels
        self.shortcut = (
            nn.Sequential(*conv_bn(in_channels, out_channels, 1, stride))
            if projected
            else nn.Identity()
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.residual(x) + self.shortcut(x))


class ResNet(FeaturesClassifier):
    def __init__(
        self, input_shape: Shape, num_classes: int, blocks: tuple[int, ...] = (2, 2, 2, 2)
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [*conv_bn(input_shape[0], 64, 3), nn.ReLU(inplace=True)]
        channels = 64
        for stage, count in enumerate(blocks):
            width = 64 * 2**stage
            for index in range(count):
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(BasicBlock(channels, width, stride))
                channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = pooled_classifier(channels, num_classes)
