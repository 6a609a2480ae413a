"""The scores of pruning at initialisation against their formulas written out by hand, and the
counts they prune to against the magnitude rule's."""

import numpy as np
import pytest
import torch
from torch import nn

from lth import saliency
from lth.data import Split
from lth.pruning import make_mask, percentile_prune, prunable, prune_by_percentile
from lth.record import TrialRandom

N, IN, OUT = 5, 4, 3


def one_layer(seed: int = 0) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    """A bias-free linear classifier in double precision and five labelled inputs."""
    torch.manual_seed(seed)
    layer = nn.Linear(IN, OUT, bias=False).double()
    x = torch.randn(N, IN, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 2, 0])
    return layer, x, y


def chunks(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple]:
    """The sample in chunks of `size`, each with its share, as saliency feeds them."""
    return [(a, b, len(b) / len(y)) for a, b in zip(x.split(size), y.split(size), strict=True)]


def softmax_gradient(w: np.ndarray, x: np.ndarray, y: np.ndarray, t: float) -> np.ndarray:
    """d/dW of the mean cross-entropy of softmax(W x / t): mean over i of (p_i - e_y_i) x_i^T / t."""
    z = x @ w.T / t
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return (p - np.eye(OUT)[y]).T @ x / (len(y) * t)


def hessian_times(w: np.ndarray, x: np.ndarray, v: np.ndarray, t: float) -> np.ndarray:
    """H v for that loss: mean over i of (diag(p_i) - p_i p_i^T)(V x_i / t) x_i^T / t."""
    z = x @ w.T / t
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    total = np.zeros_like(w)
    for p_i, x_i in zip(p, x, strict=True):
        jacobian = np.diag(p_i) - np.outer(p_i, p_i)
        total += np.outer(jacobian @ (v @ x_i) / t, x_i) / t
    return total / len(x)


def test_snip_is_the_magnitude_of_gradient_times_weight():
    layer, x, y = one_layer()
    w = layer.weight.detach().numpy().copy()
    expected = np.abs(softmax_gradient(w, x.numpy(), y.numpy(), 1.0) * w)
    scores = saliency.snip_scores(layer, chunks(x, y, 2))  # chunks of 2, 2 and 1: one mean
    np.testing.assert_allclose(scores["weight"].numpy(), expected, rtol=1e-10)


@pytest.mark.parametrize("temperature", [1.0, saliency.GRASP_TEMPERATURE])
def test_grasp_is_weight_times_hessian_gradient_product(temperature):
    layer, x, y = one_layer(1)
    w = layer.weight.detach().numpy().copy()
    g = softmax_gradient(w, x.numpy(), y.numpy(), temperature)
    expected = w * hessian_times(w, x.numpy(), g, temperature)  # -S: the highest are kept
    scores = saliency.grasp_scores(layer, chunks(x, y, 3), temperature)
    np.testing.assert_allclose(scores["weight"].numpy(), expected, rtol=1e-8)
    assert np.abs(expected).max() > 0


def test_synflow_is_weight_times_the_gradient_of_the_positive_network_on_ones():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    w1, b1 = (t.detach().abs().numpy() for t in (net[0].weight, net[0].bias))
    w2 = net[2].weight.detach().abs().numpy()
    # R = 1'(|W2|(|W1| 1 + |b1|) + |b2|): dR/d|W1|_ij = sum_k |W2|_ki; dR/d|W2|_ki = (|W1| 1 + |b1|)_i
    expected_1 = w1 * w2.sum(0)[:, None]
    expected_2 = w2 * (w1.sum(1) + b1)[None, :]
    scores = saliency.synflow_scores(net, (4,))
    np.testing.assert_allclose(scores["0.weight"].numpy(), expected_1, rtol=1e-12)
    np.testing.assert_allclose(scores["2.weight"].numpy(), expected_2, rtol=1e-12)


def test_keep_highest_keeps_each_groups_count_of_top_scores():
    scores = {"a": torch.tensor([[3.0, 1.0], [2.0, 5.0]]), "b": torch.tensor([4.0, 0.5, 6.0])}
    by_layer = saliency.keep_highest(scores, [(["a"], 1), (["b"], 2)])
    assert by_layer["a"].tolist() == [[0, 0], [0, 1]] and by_layer["b"].tolist() == [1, 0, 1]
    together = saliency.keep_highest(scores, [(["a", "b"], 3)])  # 6, 5, 4
    assert together["a"].tolist() == [[0, 0], [0, 1]] and together["b"].tolist() == [1, 0, 1]


@pytest.mark.parametrize("size", [10, 97, 300, 1001])
@pytest.mark.parametrize("percent", [10, 20, 33.3, 50])
def test_layer_counts_are_those_of_the_percentile_rule(size, percent):
    weights = np.random.default_rng(size).standard_normal(size).astype(np.float32)
    mask = np.ones(size, np.float32)
    for level in range(1, 6):
        mask = percentile_prune(weights, mask, percent)
        alive = size
        for _ in range(level):
            alive -= saliency.layer_prune_count(alive, percent)
        assert alive == int(mask.sum()), level


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)
    )


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_level_counts_are_what_magnitude_pruning_keeps(scope):
    model = small_net()
    mask = make_mask(model)
    for level in range(1, 5):
        mask = prune_by_percentile(model, mask, 20, scope=scope, output_percent=10)
        counts = saliency.level_counts(model, level, 20, scope=scope, output_percent=10)
        for layers, kept in counts:
            assert kept == sum(int(mask[name].sum()) for name in layers), (level, layers)
    names = list(prunable(model))
    assert [layers for layers, _ in counts] == (
        [[n] for n in names] if scope == "layer" else [names[:-1], names[-1:]]
    )


def tiny_split(seed: int = 0) -> Split:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(90, 1, 4, 4, generator=generator)
    return Split(images, torch.arange(90) % 3)


def at_init_mask(method: str, model, initial: dict, counts: saliency.Counts):
    """The mask `method` gives the network `model` is at `initial`, keeping `counts`."""
    network = saliency.initial_network(model, initial)
    if method == "synflow":
        return saliency.synflow_mask(network, counts, tiny_split().stored.shape[1:])
    score = {"snip": saliency.snip_scores, "grasp": saliency.grasp_scores}[method]
    return saliency.scored_mask(score, network, counts, tiny_split(), 32, 3)


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow"])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_each_method_prunes_to_the_levels_counts_from_the_dense_initial_network(method, scope):
    model = small_net(3)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # the network trained since: the scores are the initial one's
        for p in model.parameters():
            p.mul_(-3.0)
    counts = saliency.level_counts(model, 3, 20, scope=scope, output_percent=10)
    with TrialRandom(7).active():
        mask = at_init_mask(method, model, initial, counts)
    for layers, kept in counts:
        assert sum(int(mask[name].sum()) for name in layers) == kept
    other = small_net(3)  # another module of the same initial network
    with TrialRandom(7).active():
        again = at_init_mask(method, other, initial, counts)
    assert all(np.array_equal(mask[n], again[n]) for n in mask)  # the trial's seed decides


def test_snip_and_grasp_draw_their_sample_from_the_trials_generator():
    split = tiny_split()
    draws = {}
    for seed in (1, 1, 2):
        with TrialRandom(seed).active():
            draws.setdefault(seed, []).append(saliency.score_sample(split, 3, torch.device("cpu")))
    assert torch.equal(draws[1][0], draws[1][1]) and not torch.equal(draws[1][0], draws[2][0])
    assert len(draws[1][0]) == saliency.SCORE_IMAGES_PER_CLASS * 3 == len(set(draws[1][0].tolist()))


def test_synflow_in_one_round_is_its_one_shot_ranking_and_iterates_otherwise():
    model = small_net(4)
    counts = saliency.level_counts(model, 6, 20, scope="global")
    positive = saliency.synflow_scores(small_net(4).double().eval(), (1, 4, 4))
    one_round = saliency.synflow_mask(model, counts, (1, 4, 4), rounds=1)
    one_shot = saliency.keep_highest(positive, counts)
    assert all(np.array_equal(one_round[n], one_shot[n]) for n in one_shot)
    iterated = saliency.synflow_mask(model, counts, (1, 4, 4))
    assert sum(int(m.sum()) for m in iterated.values()) == counts[0][1]
    assert any(not np.array_equal(iterated[n], one_shot[n]) for n in one_shot)
