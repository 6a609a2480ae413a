"""Frankle & Carbin's Conv-2/4/6 (and the original runner's MNIST "lenet5", which has Conv-2's
shape): 3x3 'same' convolutions in pairs, a 2x2 max-pool after each pair, then fully connected
256-256-classes."""

import torch
from torch import Tensor, nn

from archs.models import Shape

CONV2 = ((64, 64),)
CONV4 = ((64, 64), (128, 128))
CONV6 = ((64, 64), (128, 128), (256, 256))


class ConvNet(nn.Module):
    """`features` (conv, ReLU, conv, ReLU, max-pool per pair), flatten, `classifier`
    (Linear, ReLU, Linear, ReLU, Linear): the module layout of the original's MNIST LeNet5."""

    def __init__(
        self,
        input_shape: Shape,
        num_classes: int,
        pairs: tuple[tuple[int, int], ...] = CONV2,
        hidden: int = 256,
    ) -> None:
        super().__init__()
        channels, height, width = input_shape
        layers: list[nn.Module] = []
        for first, second in pairs:
            layers += [
                nn.Conv2d(channels, first, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(first, second, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            channels, height, width = second, height // 2, width // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(channels * height * width, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))
