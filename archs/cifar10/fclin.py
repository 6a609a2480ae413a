"""The improved fully-connected network of Lin, Memisevic & Konda (2016) for CIFAR-10."""

from torch import nn

from archs.cifar10 import INPUT_SHAPE, NUM_CLASSES
from archs.models.fclin import FCLin
from lth.data import DATASETS


def fclin(depth: int = 4) -> nn.Module:
    spec = DATASETS["cifar10"]
    return FCLin(INPUT_SHAPE, NUM_CLASSES, spec.mean, spec.std, depth=depth)


ARCHS = {"fclin": fclin}
