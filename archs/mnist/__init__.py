"""Architectures for MNIST and Fashion-MNIST inputs; every module defining `ARCHS` adds choices."""

from archs.models import Shape

INPUT_SHAPE: Shape = (1, 28, 28)
NUM_CLASSES = 10
