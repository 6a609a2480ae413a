"""The original's small helpers, kept where its users look for them: the nonzeros table
(`print_nonzeros`, which the engine uses from lth.pruning)."""

from lth.pruning import print_nonzeros

__all__ = ["print_nonzeros"]
