"""The original's AlexNet: torchvision's AlexNet with a 3x3 stride-2 first convolution.

On 28x28 and 32x32 inputs its features end smaller than 6x6, and the adaptive average pooling
enlarges them to the 6x6 the classifier expects; that is the original's network and stays.
"""

from torch import nn
from torchvision.models import AlexNet


def alexnet(in_channels: int, num_classes: int) -> AlexNet:
    model = AlexNet(num_classes=num_classes)
    model.features[0] = nn.Conv2d(in_channels, 64, kernel_size=3, stride=2, padding=2)
    return model
