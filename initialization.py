"""Weight initialisation, as the original runner's `weight_init`."""

from torch import nn

CONV_OR_LINEAR = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCH_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def weight_init(module: nn.Module) -> None:
    """Xavier-normal weights and N(0, 1) biases for Linear/Conv; BatchNorm scale N(1, 0.02), shift 0.

    Meant for `model.apply(weight_init)`; modules of other kinds keep their own initialisation.
    """
    if isinstance(module, CONV_OR_LINEAR):
        nn.init.xavier_normal_(module.weight)
        if module.bias is not None:
            nn.init.normal_(module.bias)
    elif isinstance(module, BATCH_NORM) and module.affine:
        nn.init.normal_(module.weight, mean=1.0, std=0.02)
        nn.init.zeros_(module.bias)


def initialize(model: nn.Module) -> nn.Module:
    """Re-initialise every layer of `model` in place; returns it for chaining."""
    model.apply(weight_init)
    return model
