"""The lth engine: data, pruning, training, run folders and the readers of finished runs.

The commands users run (`main.py`, `sweep.py`, `combine_plots.py`) stay at the repository root;
`lth.cli` is imported by them only. Importing `lth` itself loads nothing else.
"""
