"""The networks, one module per family, parameterised by input shape and number of classes.

`archs/<dataset>/*.py` pick from them: the original runner's networks, built with exactly its
module trees and `state_dict` keys, and the lottery-ticket paper's CIFAR networks.
"""

Shape = tuple[int, int, int]  # (channels, height, width)
