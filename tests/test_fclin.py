"""fclin (Lin, Memisevic & Konda 2016): whitening fitted to data, data-based init, layers, pruning."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import archs
from archs.models.fclin import FCLin, RowStandardize, principal_components, standardize_rows
from lth.data import DATASETS, Split
from lth.pruning import (
    make_mask,
    prunable,
    prunable_weights,
    prune_by_percentile,
)
from lth.train import add_input_dropout
from tests.solo import device_masks, epoch_alone

SPEC = DATASETS["cifar10"]


def normalised_cifar_like(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw pixels in [0, 255] with some structure, and the same images normalised as data.py does."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(8, 3, 32, 32, generator=generator) * 255
    mix = torch.rand(count, 8, generator=generator)
    raw = torch.einsum("nk,kchw->nchw", mix, base) / mix.sum(1).view(-1, 1, 1, 1)
    raw = (raw + 20 * torch.randn(count, 3, 32, 32, generator=generator)).clamp(0, 255)
    mean = torch.tensor(SPEC.mean).view(1, 3, 1, 1)
    std = torch.tensor(SPEC.std).view(1, 3, 1, 1)
    return raw, (raw / 255 - mean) / std


def small_fclin(depth: int = 2, components: int = 20, classes: int = 10) -> FCLin:
    return FCLin(
        (3, 32, 32), classes, SPEC.mean, SPEC.std, depth, width=64, bottleneck=16,
        components=components,
    )  # fmt: skip


def test_full_size_layers_follow_the_paper():
    for depth, widths in [(4, [800, 4000, 1000, 4000, 1000, 4000, 1000, 4000, 10]), (2, None)]:
        torch.manual_seed(0)
        model = archs.build("cifar10", "fclin", depth=depth)
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        sizes = [linears[0].in_features] + [m.out_features for m in linears]
        assert sizes == (widths or [800, 4000, 1000, 4000, 10])
        assert [m.bias is not None for m in linears] == [False] * (len(linears) - 1) + [True]
    kinds = [type(m).__name__ for m in model.body]
    assert kinds == [
        "Linear",
        "ReLU",
        "RowStandardize",
        "Linear",
        "RowStandardize",
        "Linear",
        "ReLU",
    ]
    assert archs.build("cifar100", "fclin").classifier.out_features == 100


def test_input_is_each_image_standardised_then_whitened_to_identity_covariance():
    raw, images = normalised_cifar_like(200)
    model = small_fclin(components=40)
    model.fit_to_data(images)
    expected = standardize_rows(raw.flatten(1) / 255)
    assert torch.allclose(model.standardized_pixels(images), expected, atol=1e-4)
    rows = expected[0]
    assert abs(rows.mean().item()) < 1e-5 and rows.std(unbiased=False).item() == pytest.approx(1)
    whitened = model.whiten(images).double()
    assert whitened.shape == (200, 40)
    assert torch.allclose(whitened.mean(0), torch.zeros(40, dtype=torch.float64), atol=1e-3)
    covariance = (whitened - whitened.mean(0)).T @ (whitened - whitened.mean(0)) / 200
    assert torch.allclose(covariance, torch.eye(40, dtype=torch.float64), atol=2e-3)


def test_a_small_split_keeps_the_components_it_allows():
    _, images = normalised_cifar_like(30)
    model = small_fclin(components=800)
    model.fit_to_data(images)
    kept = model.whitening.shape[1]
    assert kept < 30 and model.body[0].in_features == kept
    assert model(images[:4]).shape == (4, 10)


def test_buffers_are_saved_but_never_trained_nor_pruned():
    _, images = normalised_cifar_like(120)
    torch.manual_seed(0)
    model = small_fclin()
    model.fit_to_data(images)
    model.data_init(images)
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    assert set(buffers) == {"pixel_mean", "pixel_std", "pca_mean", "whitening"}
    assert set(buffers) <= set(model.state_dict())
    assert not set(buffers) & {name for name, _ in model.named_parameters()}
    assert all(name.endswith("weight") for name in prunable(model))
    assert len(make_mask(model)) == 4  # 3 hidden Linear layers and the output layer

    add_input_dropout(model, 0.1)
    mask = prune_by_percentile(model, make_mask(model), 30)
    labels = torch.arange(120) % 10
    optimizer = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9)
    loss = epoch_alone(model, Split(images, labels), 4, optimizer, device_masks(model, mask))
    assert math.isfinite(loss)
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, buffers[name]), name
    for param, layer_mask in zip(prunable_weights(model), mask.values(), strict=True):
        assert torch.all(param.detach()[torch.from_numpy(layer_mask) == 0] == 0)
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_data_init_uses_scaled_whitened_training_images():
    _, images = normalised_cifar_like(100)
    torch.manual_seed(0)
    model = small_fclin(depth=2, components=20)
    model.fit_to_data(images)
    model.data_init(images)
    whitened = model.whiten(images)
    first = model.body[0].weight.detach() / 0.01  # 64 filters from 100 images: no repeats
    assert nearest(first, whitened) < 1e-2  # float32 rounding only; other images are ~5 away
    assert len(set(torch.cdist(first, whitened).argmin(dim=1).tolist())) == 64
    for layer in (model.body[3], model.body[5]):  # (in, out) as theirs: rows of w.T are images
        values = layer.weight.detach().T.reshape(-1) / 0.01
        whole = values.numel() // 20
        assert nearest(values[: whole * 20].view(whole, 20), whitened) < 1e-2
    bound = 4 * math.sqrt(6 / (64 + 10))
    out = model.classifier
    assert out.weight.abs().max() <= bound and out.weight.abs().max() > bound / 2
    assert torch.all(out.bias == 0)
    before = model.body[0].weight.detach().clone()
    model.data_init(images)
    assert not torch.equal(before, model.body[0].weight), "a new draw picks new images"


def nearest(rows: torch.Tensor, candidates: torch.Tensor) -> float:
    """The largest distance from one of `rows` to its nearest candidate."""
    return torch.cdist(rows, candidates).min(dim=1).values.max().item()


@pytest.mark.parametrize("shape", [(30, 40), (200, 10)], ids=["gram", "covariance"])
def test_principal_components_match_numpy(shape):
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(*shape, generator=generator, dtype=torch.float64)
    rows = rows * torch.linspace(0.5, 3, shape[1], dtype=torch.float64)
    mean = rows.mean(0)
    variances, vectors = principal_components(lambda: iter([rows[:7], rows[7:]]), mean, shape[0])
    _, singular, right = np.linalg.svd((rows - mean).numpy(), full_matrices=False)
    top = min(shape) - 1
    assert np.allclose(variances[:top].numpy(), singular[:top] ** 2 / shape[0])
    overlap = np.abs(np.sum(vectors[:, :top].numpy() * right[:top].T, axis=0))
    assert np.allclose(overlap, 1.0)


def test_an_all_zero_row_gives_zeros_and_finite_gradients():
    rows = torch.zeros(2, 5, requires_grad=True)
    out = RowStandardize()(rows)
    out.sum().backward()
    assert torch.all(out == 0) and torch.isfinite(rows.grad).all()
