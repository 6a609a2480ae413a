"""Fully connected 300-100 network (the lottery-ticket paper's LeNet-300-100)."""

import math

from torch import Tensor, nn

from archs.models import Shape


class FC1(nn.Module):
    def __init__(self, input_shape: Shape, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(input_shape), 300),
            nn.ReLU(inplace=True),
            nn.Linear(300, 100),
            nn.ReLU(inplace=True),
            nn.Linear(100, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(x)
