"""Architectures for CIFAR-10 inputs; every module defining `ARCHS` adds choices."""

from archs.models import Shape

INPUT_SHAPE: Shape = (3, 32, 32)
NUM_CLASSES = 10
