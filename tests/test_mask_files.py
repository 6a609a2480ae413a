"""The mask files (`{pt}_mask_{comp}.pkl`): the original's positional list, written and read back."""

import pickle

import numpy as np
import pytest
import torch
from torch import nn

import archs
from lth.errors import UserError
from lth.initialization import initialize
from lth.pruning import make_mask, prunable, prune_by_percentile
from lth.results import RunDir, mask_to_list, read_mask


def pruned(dataset: str, arch: str) -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    model = initialize(archs.build(dataset, arch))
    mask = make_mask(model)
    for _ in range(2):
        mask = prune_by_percentile(model, mask, 20)
    return model, mask


def write(path, entries) -> None:
    with open(path, "wb") as file:
        pickle.dump(entries, file)


@pytest.mark.parametrize(("dataset", "arch"), [("mnist", "fc1"), ("cifar10", "resnet18")])
def test_the_file_holds_one_entry_per_weight_parameter_and_reads_back(tmp_path, dataset, arch):
    model, mask = pruned(dataset, arch)
    path = tmp_path / "lt_mask_64.0.pkl"
    RunDir(tmp_path, arch, dataset, "lt").dump_mask(model, mask, path)
    with open(path, "rb") as file:
        entries = pickle.load(file)
    names = [n for n, _ in model.named_parameters() if "weight" in n]
    parameters = dict(model.named_parameters())
    assert isinstance(entries, list) and len(entries) == len(names)
    for name, entry in zip(names, entries, strict=True):
        assert entry.dtype == np.float32 and entry.shape == parameters[name].shape
        expected = mask[name] if name in mask else np.ones(entry.shape, np.float32)
        assert np.array_equal(entry, expected), name
    never_pruned = [n for n in names if n not in mask]
    assert bool(never_pruned) == (arch == "resnet18"), "BatchNorm scales get all-ones entries"
    back = read_mask(path, model)
    assert list(back) == list(prunable(model))
    assert all(np.array_equal(back[n], mask[n]) and back[n].dtype == np.float32 for n in mask)


def test_files_that_do_not_fit_the_model_are_refused_by_name(tmp_path):
    model, mask = pruned("cifar10", "resnet18")
    entries = mask_to_list(model, mask)
    names = [n for n, _ in model.named_parameters() if "weight" in n]
    batch_norm = next(i for i, n in enumerate(names) if n not in mask)
    wrong_shape = [*entries[:-1], np.ones((3, 3), np.float32)]
    not_binary = [entries[0] * 0.5, *entries[1:]]
    bn_pruned = [e.copy() for e in entries]
    bn_pruned[batch_norm][0] = 0
    cases = {
        "short": (entries[:-1], "list of"),
        "shape": (wrong_shape, names[-1]),
        "values": (not_binary, "other than 0 and 1"),
        "batchnorm": (bn_pruned, f"{names[batch_norm]} is pruned there"),
        "dict": (mask, "list of"),
    }
    for case, (content, words) in cases.items():
        path = tmp_path / f"{case}.pkl"
        write(path, content)
        with pytest.raises(UserError) as error:
            read_mask(path, model)
        assert str(path) in str(error.value) and words in str(error.value), case
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    for path in (tmp_path / "junk.pkl", tmp_path / "missing.pkl"):
        with pytest.raises(UserError, match="cannot read a mask"):
            read_mask(path, model)
