"""Weight initialisation: the original runner's Xavier scheme, He (Kaiming) for ReLU networks, and
the data-based scheme of models that define one (`fclin`)."""

from collections.abc import Callable
from functools import partial

from torch import nn

from lth.layers import BATCH_NORM, CONV_OR_LINEAR

INIT_SCHEMES = ("xavier", "kaiming", "data")

Initializer = Callable[[nn.Module], nn.Module]


# Each scheme's initialisation of a Linear or Conv layer: (its weights, its biases).
LAYER_INITS = {
    "xavier": (nn.init.xavier_normal_, nn.init.normal_),
    "kaiming": (
        partial(nn.init.kaiming_normal_, mode="fan_in", nonlinearity="relu"),
        nn.init.zeros_,
    ),
}


def _init_layer(module: nn.Module, weights: Callable, biases: Callable) -> None:
    """Linear/Conv: `weights` and `biases` (a scheme's LAYER_INITS); BatchNorm: scale
    N(1, 0.02), shift 0."""
    if isinstance(module, CONV_OR_LINEAR):
        weights(module.weight)
        if module.bias is not None:
            biases(module.bias)
    if isinstance(module, BATCH_NORM) and module.affine:
        nn.init.normal_(module.weight, mean=1.0, std=0.02)
        nn.init.zeros_(module.bias)


def initialize(model: nn.Module, scheme: str = "xavier") -> nn.Module:
    """Re-initialise every layer of `model` in place with `xavier` or `kaiming`; returns it."""
    weights, biases = LAYER_INITS[scheme]
    model.apply(lambda module: _init_layer(module, weights, biases))
    return model


def initializer(scheme: str, train_set) -> Initializer:
    """The function that (re-)initialises a model under `scheme` (`--init`); `data` calls the
    model's own `data_init` with the training images of `train_set`."""
    if scheme == "data":

        def data_based(model: nn.Module) -> nn.Module:
            model.data_init(train_set.images)
            return model

        return data_based
    return lambda model: initialize(model, scheme)
