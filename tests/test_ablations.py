"""The random baselines and the sanity checks' masks (lth.ablations), checked by hand."""

import numpy as np
import pytest

from lth.ablations import keep_lowest, random_at_counts, random_together, shuffled
from lth.pruning import make_mask
from tests.test_pruning import fc1


def shares(mask) -> dict[str, float]:
    return {name: 100 * m.sum() / m.size for name, m in mask.items()}


def test_random_scores_ranked_together_keep_about_the_same_share_of_every_layer():
    """fc1 (784x300, 300x100, 100x10), 10 levels at 20% ranked together: each layer ends
    within a few tenths of a point of the whole network's 10.7% (magnitude's global counts
    would empty the 300x100 layer to about 2%)."""
    np.random.seed(0)
    mask = make_mask(fc1())
    names = list(mask)
    for _ in range(10):
        before = sum(int(m.sum()) for m in mask.values())
        mask = random_together(mask, [(names, 20.0)])
        assert before - sum(int(m.sum()) for m in mask.values()) == round(before * 0.2)
    total = 100 * sum(m.sum() for m in mask.values()) / sum(m.size for m in mask.values())
    assert total == pytest.approx(10.7, abs=0.05)
    big, middle, _ = shares(mask).values()
    assert abs(big - total) < 0.3 and abs(middle - total) < 0.6


def test_random_scores_are_ranked_within_each_group_of_one_rate():
    np.random.seed(1)
    mask = make_mask(fc1())
    names = list(mask)
    new = random_together(mask, [(names[:-1], 20.0), (names[-1:], 10.0)])
    assert int(new[names[-1]].sum()) == 1000 - 100
    assert sum(int(new[n].sum()) for n in names[:-1]) == 784 * 300 + 300 * 100 - round(
        (784 * 300 + 300 * 100) * 0.2
    )


def test_random_at_counts_keeps_exactly_the_tickets_count_of_each_layer_among_the_survivors():
    rng = np.random.default_rng(2)
    before = {
        name: (rng.random(m.shape) < 0.5).astype(np.float32) for name, m in make_mask(fc1()).items()
    }
    ticket = {name: m * (rng.random(m.shape) < 0.3) for name, m in before.items()}
    np.random.seed(3)
    new = random_at_counts(before, ticket)
    for name in before:
        assert new[name].sum() == ticket[name].sum()
        assert np.all(new[name] <= before[name]), "chosen among the survivors"
        assert not np.array_equal(new[name], ticket[name]), "not the ticket's choice"
    with pytest.raises(ValueError, match="asked"):
        random_at_counts(ticket, before)


def test_the_shuffle_keeps_each_layers_count_and_changes_its_positions():
    rng = np.random.default_rng(4)
    mask = {"a": (rng.random((30, 20)) < 0.2).astype(np.float32), "b": np.eye(10, dtype=np.float32)}
    np.random.seed(5)
    new = shuffled(mask)
    for name in mask:
        assert new[name].shape == mask[name].shape and new[name].dtype == np.float32
        assert new[name].sum() == mask[name].sum()
        assert not np.array_equal(new[name], mask[name])


def test_invert_keeps_the_complement_of_the_top_scores_at_the_same_count():
    """Survivors with scores 5, 1, 4, 2, 3 (and a pruned 9): the method keeps the top 2 (5, 4);
    inverted, the same 2 are kept among the lowest: 1 and 2, the complement of the top 3."""
    scores = {"w": np.array([5.0, 1.0, 4.0, 2.0, 3.0, 9.0])}
    mask = {"w": np.array([1, 1, 1, 1, 1, 0], dtype=np.float32)}
    kept = {"w": np.array([1, 0, 1, 0, 0, 0], dtype=np.float32)}
    inverted = keep_lowest(scores, mask, kept, [(["w"], 60.0)])
    assert inverted["w"].tolist() == [0, 1, 0, 1, 0, 0]
    top_three = np.array([1, 0, 1, 0, 1, 0])
    assert np.array_equal(inverted["w"], mask["w"] * (1 - top_three))


def test_invert_ranks_the_layers_of_a_group_together():
    scores = {"a": np.array([1.0, 8.0]), "b": np.array([2.0, 7.0, 3.0])}
    mask = {"a": np.ones(2, np.float32), "b": np.ones(3, np.float32)}
    kept = {"a": np.array([0, 1], np.float32), "b": np.array([0, 1, 1], np.float32)}
    inverted = keep_lowest(scores, mask, kept, [(["a", "b"], 40.0)])
    assert inverted["a"].tolist() == [1, 0] and inverted["b"].tolist() == [1, 0, 1]
