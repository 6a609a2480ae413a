"""Generic model implementations, parameterised by input shape and number of classes."""

from torch import Tensor, nn

Shape = tuple[int, int, int]  # (channels, height, width)


class FeaturesClassifier(nn.Module):
    """A model that is `features` followed by `classifier`, both set by the subclass."""

    features: nn.Module
    classifier: nn.Module

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def pooled_classifier(channels: int, num_classes: int) -> nn.Sequential:
    """Global average pool, then one linear layer (the ResNet/DenseNet head)."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))
