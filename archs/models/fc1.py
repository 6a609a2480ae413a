"""The original's fc1: a fully connected 300-100 network (the lottery-ticket paper's
LeNet-300-100 on MNIST)."""

import math

import torch
from torch import Tensor, nn

from archs.models import Shape


class FC1(nn.Module):
    """Flatten (in `forward`, not a module), then Linear-ReLU-Linear-ReLU-Linear; its keys are
    `classifier.0/2/4.*`, as the original's."""

    def __init__(self, input_shape: Shape, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Sequential(
            nn.Linear(math.prod(input_shape), 300),
            nn.ReLU(inplace=True),
            nn.Linear(300, 100),
            nn.ReLU(inplace=True),
            nn.Linear(100, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(x, 1))
