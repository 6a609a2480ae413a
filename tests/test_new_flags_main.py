"""The flags beyond the original's, end to end through main.py on tiny data."""

import csv
import json
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

import archs
from lth import cli, data
from lth.initialization import initialize
from lth.pruning import prunable_weights
from lth.record import seed_everything
from lth.train import build_optimizer
from tests.datafiles import write_cifar_files, write_mnist_files
from tests.resultfiles import keep_checkpoints, stopped_after
from tests.solo import epoch_alone, evaluate_alone
from tests.test_bad_input import check_refused
from tests.test_main import TINY, load_dump, only_run, run_main


def load_model(path: Path) -> nn.Module:
    return torch.load(path, weights_only=False)


def test_rewind_state_is_the_model_after_k_epochs_and_later_levels_start_from_it(
    tmp_path, monkeypatch
):
    keep_checkpoints(monkeypatch, tmp_path / "kept")
    source = write_mnist_files(tmp_path / "source", n_train=150, n_test=60)
    flags = [*TINY, "--end_iter=3", "--rewind_epoch=2", "--prune_iterations=3"]
    flags += [f"--data_source={source}", f"--data_dir={tmp_path / 'data'}"]
    assert run_main(tmp_path, *flags) == 0
    run = only_run(tmp_path)
    saves, dumps = run / "saves" / "fc1" / "mnist", run / "dumps" / "lt" / "fc1" / "mnist"
    rewind_state = load_model(saves / "rewind_state_dict_lt.pth.tar").state_dict()

    # a plain re-computation: the same seed, model and optimiser, two epochs of training
    train_set, test_set = data.load("mnist", str(tmp_path / "data"), None, torch.device("cpu"))
    seed_everything(0)
    model = initialize(archs.build("mnist", "fc1"))
    assert all(
        torch.equal(v, load_model(saves / "initial_state_dict_lt.pth.tar").state_dict()[k])
        for k, v in model.state_dict().items()
    )
    args = cli.parse_args([])
    optimizer = build_optimizer(args, model)
    ones = [torch.ones_like(p) for p in prunable_weights(model)]
    for _ in range(2):
        epoch_alone(model, train_set, 32, optimizer, ones)
    for name, value in model.state_dict().items():
        assert torch.equal(rewind_state[name], value), name

    # level 1 starts from the rewind state with its mask applied: its first test measures it
    with open(dumps / "lt_mask_90.0.pkl", "rb") as file:
        mask = pickle.load(file)
    for param, layer_mask in zip(prunable_weights(model), mask, strict=True):
        param.data.mul_(torch.from_numpy(layer_mask))
    first_accuracy = load_dump(dumps / "lt_all_accuracy_90.0.dat")[0]
    assert first_accuracy == evaluate_alone(model, test_set)
    # and trains from there to the end: the third epoch only, not three more
    assert len(load_dump(dumps / "lt_all_loss_90.0.dat")) == 1

    # the state is in level 1's checkpoint and the rewind file: resuming level 2 gives the same
    # files as the full run
    files = sorted(dumps.glob("lt_*_81.0.*"))
    before = {path.name: path.read_bytes() for path in files}
    stopped_after(run, tmp_path / "kept", 1)
    assert run_main(tmp_path, "--resume", str(run)) == 0
    assert {path.name: path.read_bytes() for path in files} == before


def test_rewind_epoch_zero_writes_no_rewind_file(tmp_path):
    source = write_mnist_files(tmp_path / "source", n_train=60, n_test=30)
    flags = [*TINY, "--end_iter=1", "--prune_iterations=1", f"--data_source={source}"]
    assert run_main(tmp_path, *flags, f"--data_dir={tmp_path / 'data'}") == 0
    saves = only_run(tmp_path) / "saves" / "fc1" / "mnist"
    assert sorted(p.name for p in saves.iterdir()) == [
        "0_model_lt.pth.tar",
        "initial_state_dict_lt.pth.tar",
    ]


def test_fclin_random_global_sgd_dropout_run_end_to_end(tmp_path):
    source = write_cifar_files(tmp_path / "source", "cifar10", n_train=100, n_test=40)
    flags = [*TINY, "--dataset=cifar10", "--arch_type=fclin", "--fclin_depth=1"]
    flags += ["--prune_type=random", "--prune_scope=global", "--prune_percent=20"]
    flags += ["--prune_percent_output=10", "--rewind_epoch=1", "--prune_iterations=3"]
    flags += ["--optimizer=sgd", "--momentum=0.9", "--lr=5e-3", "--dropout=0.1"]
    flags += [f"--data_source={source}", f"--data_dir={tmp_path / 'data'}"]
    assert run_main(tmp_path, *flags) == 0
    run = only_run(tmp_path)
    recorded = json.loads((run / "args.json").read_text())["args"]
    assert recorded["init"] == "data" and recorded["fclin_depth"] == 1
    assert recorded["optimizer"] == "sgd" and recorded["prune_scope"] == "global"
    saves = run / "saves" / "fclin" / "cifar10"
    dumps = run / "dumps" / "lt" / "fclin" / "cifar10"
    initial = load_model(saves / "initial_state_dict_random.pth.tar")
    assert (saves / "rewind_state_dict_random.pth.tar").exists()
    last = load_model(saves / "2_model_random.pth.tar")
    for name, buffer in initial.named_buffers():
        assert torch.equal(buffer, dict(last.named_buffers())[name]), name
    first, output = prunable_weights(last)
    assert first.shape[1] < 100  # the whitening kept the components 100 images allow
    # the hidden layer loses 20% per level, the output layer (4000 x 10) 10%
    hidden = [first.numel(), first.numel() - round(0.2 * first.numel())]
    hidden.append(hidden[1] - round(0.2 * hidden[1]))
    outputs = [40000, 36000, 32400]
    left = [
        round(100 * (h + o) / (hidden[0] + 40000), 1) for h, o in zip(hidden, outputs, strict=True)
    ]
    rows = list(csv.DictReader(open(run / "summary.csv")))
    assert [float(r["weights_left"]) for r in rows] == left
    # {comp}: nonzero values of all parameters at the start of a level (the rewind state's)
    rewound = load_model(saves / "rewind_state_dict_random.pth.tar")
    biases = sum(int(p.count_nonzero()) for n, p in rewound.named_parameters() if "bias" in n)
    total = sum(p.numel() for p in rewound.parameters())
    comp = [round((h + o + biases) / total * 100, 1) for h, o in zip(hidden, outputs, strict=True)]
    assert list(load_dump(dumps / "random_compression.dat")) == comp
    assert [float(r["params_left"]) for r in rows] == comp
    with open(dumps / f"random_mask_{comp[2]:.1f}.pkl", "rb") as file:
        mask = pickle.load(file)
    assert [m.shape for m in mask] == [tuple(first.shape), tuple(output.shape)]
    assert [int(m.sum()) for m in mask] == [hidden[2], outputs[2]]
    for param, layer_mask in zip((first, output), mask, strict=True):
        assert torch.all(param.detach()[torch.from_numpy(layer_mask) == 0] == 0)


def test_conv_layers_are_pruned_at_their_own_rate_end_to_end(tmp_path):
    source = write_mnist_files(tmp_path / "source", n_train=100, n_test=40)
    flags = [*TINY, "--end_iter=1", "--arch_type=lenet5", "--prune_iterations=2"]
    flags += ["--prune_percent=20", "--prune_percent_conv=30", "--prune_percent_output=10"]
    flags += [f"--data_source={source}", f"--data_dir={tmp_path / 'data'}"]
    assert run_main(tmp_path, *flags) == 0
    run = only_run(tmp_path)
    assert json.loads((run / "args.json").read_text())["args"]["prune_percent_conv"] == 30.0
    dumps = run / "dumps" / "lt" / "lenet5" / "mnist"
    tag = f"{load_dump(dumps / 'lt_compression.dat')[1]:.1f}"
    with open(dumps / f"lt_mask_{tag}.pkl", "rb") as file:
        mask = pickle.load(file)
    model = load_model(run / "saves" / "lenet5" / "mnist" / "1_model_lt.pth.tar")
    kinds = [type(m) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    rates = [30 if kind is nn.Conv2d else 20 for kind in kinds[:-1]] + [10]
    assert kinds[:2] == [nn.Conv2d, nn.Conv2d] and len(mask) == len(rates) == 5
    for layer_mask, rate in zip(mask, rates, strict=True):
        # the percentile rule on distinct magnitudes: ceil(rate % of (n - 1)) of n go
        n = layer_mask.size
        assert n - int(layer_mask.sum()) == -(-rate * (n - 1) // 100), (n, rate)


CIFAR_FCLIN = ["--dataset", "cifar10", "--arch_type", "fclin"]


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--init", "he"], ["--init", "xavier", "kaiming"]),
        (["--init", "data"], ["--init data", "fclin"]),
        (["--rewind_epoch", "-1"], ["--rewind_epoch"]),
        (["--rewind_epoch", "100"], ["--rewind_epoch", "--end_iter"]),
        (["--rewind_epoch", "1", "--prune_type", "reinit"], ["--rewind_epoch", "reinit"]),
        (["--rewind_epoch", "one"], ["--rewind_epoch"]),
        (["--prune_scope", "network"], ["--prune_scope", "layer", "global"]),
        (["--prune_percent_output", "0"], ["--prune_percent_output"]),
        (["--prune_percent_output", "100"], ["--prune_percent_output"]),
        (["--prune_percent_conv", "0"], ["--prune_percent_conv"]),
        (["--prune_percent_conv", "100"], ["--prune_percent_conv"]),
        (["--prune_percent_conv", "nan"], ["--prune_percent_conv"]),
        (["--optimizer", "rmsprop"], ["--optimizer", "adam", "sgd"]),
        (["--optimizer", "sgd", "--momentum", "1"], ["--momentum"]),
        (["--optimizer", "sgd", "--momentum", "-0.5"], ["--momentum"]),
        (["--momentum", "0.9"], ["--momentum", "sgd"]),
        (["--dropout", "1"], ["--dropout"]),
        (["--dropout", "nan"], ["--dropout"]),
        (["--compile", "yes"], ["--compile", "auto", "on", "off"]),
        (["--fclin_depth", "2"], ["--fclin_depth", "fclin"]),
        ([*CIFAR_FCLIN, "--fclin_depth", "0"], ["--fclin_depth"]),
        (["--arch_type", "fclin"], ["--arch_type fclin", "--dataset mnist"]),
        (["--prune_type", "magic"], ["--prune_type", "random"]),
        (["--pretrain", "rbm"], ["--pretrain", "none", "zae"]),
        (["--pretrain", "zae"], ["--pretrain zae", "fclin"]),
        (["--pretrain_epochs", "3"], ["--pretrain_epochs", "--pretrain zae"]),
        ([*CIFAR_FCLIN, "--pretrain", "zae", "--pretrain_epochs", "0"], ["--pretrain_epochs"]),
    ],
)
def test_bad_new_flags_are_refused_in_one_line(tmp_path, capsys, mnist_source, flags, words):
    base = [f"--data_source={mnist_source}", f"--data_dir={tmp_path / 'data'}"]
    check_refused(tmp_path, capsys, base + flags, *words)


def test_defaults_record_the_original_choices(tmp_path, mnist_source):
    flags = [*TINY, "--end_iter=1", "--prune_iterations=1", f"--data_source={mnist_source}"]
    assert run_main(tmp_path, *flags, f"--data_dir={tmp_path / 'data'}") == 0
    recorded = json.loads((only_run(tmp_path) / "args.json").read_text())["args"]
    assert {k: recorded[k] for k in NEW_DEFAULTS} == NEW_DEFAULTS


NEW_DEFAULTS = {
    "init": "xavier",
    "rewind_epoch": 0,
    "rewind_iter": 0,
    "prune_scope": "layer",
    "prune_percent_output": None,
    "prune_percent_conv": None,
    "optimizer": "adam",
    "momentum": 0.0,
    "dropout": 0.0,
    "fclin_depth": None,
    "pretrain": "none",
    "pretrain_epochs": None,
    "compile": "auto",
    "masks_from": None,
}
