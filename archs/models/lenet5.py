"""LeNet-5 with ReLU and max-pooling."""

from torch import nn

from archs.models import FeaturesClassifier, Shape


class LeNet5(FeaturesClassifier):
    def __init__(self, input_shape: Shape, num_classes: int) -> None:
        super().__init__()
        channels, height, _ = input_shape
        # 28x28 inputs are padded to 32x32 so both sizes reach 5x5 after the second pool.
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=2 if height == 28 else 0),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )
