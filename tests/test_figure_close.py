"""Closing a saved figure: after a large one the closed figures' rasters are freed, a small
one costs no full collection."""

import gc
import io
import weakref

import numpy as np

from lth import plots


def saved_figure(dpi: float) -> weakref.ref:
    figure = plots.loss_vs_accuracy(np.array([1.0, 0.5]), np.array([50.0, 60.0]), "mnist", "fc1")
    figure.savefig(io.BytesIO(), format="png", dpi=dpi)
    ref = weakref.ref(figure)
    plots.close(figure, dpi)
    return ref


def test_figures_saved_at_the_original_1200_dpi_are_freed_by_the_next_close(monkeypatch):
    collections, collect = [], gc.collect
    monkeypatch.setattr(plots.gc, "collect", lambda: collections.append(1) or collect())
    gc.disable()  # only `close` may free them
    try:
        first = saved_figure(1200)
        small = saved_figure(100)
        assert first() is not None and small() is not None  # cycles: nothing freed them yet
        saved_figure(1200)
        assert first() is None and small() is None
        assert collections == [1, 1]
    finally:
        gc.enable()


def test_a_small_figure_is_closed_without_a_full_collection(monkeypatch):
    collections = []
    monkeypatch.setattr(plots.gc, "collect", lambda: collections.append(1))
    saved_figure(100)
    saved_figure(300)
    assert collections == []
