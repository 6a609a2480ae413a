"""CIFAR-style VGG with BatchNorm and a single linear classifier."""

from torch import nn

from archs.models import FeaturesClassifier, Shape

# Output channels of the 3x3 convs of each stage; every stage ends with a 2x2 max pool.
VGG16_STAGES: tuple[tuple[int, ...], ...] = (
    (64,) * 2,
    (128,) * 2,
    (256,) * 3,
    (512,) * 3,
    (512,) * 3,
)


class VGG(FeaturesClassifier):
    def __init__(
        self,
        input_shape: Shape,
        num_classes: int,
        stages: tuple[tuple[int, ...], ...] = VGG16_STAGES,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = input_shape[0]
        for stage in stages:
            for width in stage:
                layers += [
                    nn.Conv2d(channels, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                channels = width
            # ceil_mode lets 28x28 inputs reach 1x1 too (28-14-7-4-2-1).
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(channels, num_classes))
