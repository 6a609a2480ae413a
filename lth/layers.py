"""The layer kinds the program treats by kind: pruned, given their own pruning rate, initialised.

One home for these tuples, so that pruning and initialisation share them without either
depending on the other.
"""

from torch import nn

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_OR_LINEAR = (nn.Linear, *CONV)  # the layers whose weights are pruned
BATCH_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
