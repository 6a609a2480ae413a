"""Architecture registry: which models each dataset offers, found by scanning `archs/<package>/`.

Every module in a dataset's package that defines a module-level
`ARCHS: dict[str, Callable[..., nn.Module]]` contributes those names, so adding a file there adds
an `--arch_type` choice with no other edit. A model that needs the training data before its
first use (fclin's whitening) defines `fit_to_data(train_images)`; `fit_to_data` below calls it.
"""

import importlib
import pkgutil
from collections.abc import Callable

from torch import nn

from lth.errors import UserError

Factory = Callable[..., nn.Module]

ARCH_PACKAGES: dict[str, str] = {
    "mnist": "mnist",
    "fashionmnist": "mnist",
    "cifar10": "cifar10",
    "cifar100": "cifar100",
}


def _package(dataset: str) -> str:
    if dataset not in ARCH_PACKAGES:
        choices = ", ".join(sorted(ARCH_PACKAGES))
        raise UserError(f"--dataset {dataset} is not supported; choose one of: {choices}")
    return f"{__name__}.{ARCH_PACKAGES[dataset]}"


def available(dataset: str) -> dict[str, Factory]:
    """Arch name -> factory for `dataset`, sorted by name (modules are re-listed on every call)."""
    package = importlib.import_module(_package(dataset))
    found: dict[str, Factory] = {}
    for info in pkgutil.iter_modules(package.__path__, prefix=f"{package.__name__}."):
        module = importlib.import_module(info.name)
        for name, factory in getattr(module, "ARCHS", {}).items():
            if name in found:
                raise ValueError(f"architecture {name!r} is defined twice in {package.__name__}")
            found[name] = factory
    return dict(sorted(found.items()))


def check(dataset: str, arch_type: str) -> Factory:
    """The factory for the pair, or a one-line UserError naming the flag and the valid choices."""
    choices = available(dataset)
    if arch_type not in choices:
        raise UserError(
            f"--arch_type {arch_type} is not available for --dataset {dataset};"
            f" choose one of: {', '.join(choices)}"
        )
    return choices[arch_type]


def build(dataset: str, arch_type: str, **options: object) -> nn.Module:
    """A freshly constructed model for the pair (PyTorch's default initialisation); `options` go
    to the factory (`Recipe.arch_options`)."""
    return check(dataset, arch_type)(**options)


def fit_to_data(model: nn.Module, train_set) -> None:
    """Let a model that needs the training data (its `fit_to_data` method: fclin's whitening)
    compute what it keeps from them; other models are left alone, and `train_set` (a
    `data.Split`) is not normalised for them. Called once, after `build`."""
    fit = getattr(model, "fit_to_data", None)
    if fit is not None:
        fit(train_set.images)
