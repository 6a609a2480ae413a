"""--val_size: the held-out validation images, early stopping at the minimum validation loss,
and the files of a run without the new flags, byte for byte as before them."""

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from lth import data, train
from lth.data import Split
from lth.safe_load import load_array, load_array_list
from tests.datafiles import write_mnist_files
from tests.solo import evaluate_alone, measures_alone
from tests.test_bad_input import check_refused
from tests.test_main import TINY, load_dump, only_run, run_main


def numbered_split(count: int) -> Split:
    """A uint8 split whose image i is filled with i % 256 and whose label i is i."""
    pixels = (torch.arange(count) % 256).to(torch.uint8).view(count, 1, 1, 1).expand(-1, 1, 2, 2)
    mean, std = torch.tensor(0.5).view(1, 1, 1, 1), torch.tensor(0.25).view(1, 1, 1, 1)
    return Split(pixels.contiguous(), torch.arange(count), mean, std)


def test_held_out_images_are_disjoint_from_training_and_the_same_whatever_the_seed():
    split = numbered_split(300)
    draws = []
    for seed in (0, 1, 12345):
        torch.manual_seed(seed)
        before = torch.get_rng_state()
        kept, held = data.hold_out(split, 70, min_train=32)
        assert torch.equal(torch.get_rng_state(), before), "the global stream is untouched"
        draws.append((kept.labels.tolist(), held.labels.tolist()))
    assert draws[0] == draws[1] == draws[2]
    kept_ids, held_ids = draws[0]
    assert len(held_ids) == 70 and len(kept_ids) == 230
    assert set(kept_ids).isdisjoint(held_ids)
    assert sorted(kept_ids + held_ids) == list(range(300))
    assert kept_ids == sorted(kept_ids) and held_ids == sorted(held_ids)
    assert held_ids != list(range(70)), "a random draw, not the first images"
    # the images travel with their labels and are normalised as the whole split's
    kept, held = data.hold_out(split, 70, min_train=32)
    for part in (kept, held):
        assert part.stored.device == split.stored.device and part.mean is split.mean
        assert torch.equal(part.images, split.images[part.labels])


def test_subset_keeps_the_device_and_normalisation():
    split = numbered_split(20)
    index = torch.tensor([3, 7, 19])
    part = split.subset(index)
    assert len(part) == 3 and part.stored.dtype == torch.uint8
    assert torch.equal(part.between(0, 3)[0], split.batch(index)[0])


def test_validation_loss_is_the_mean_cross_entropy_and_accuracy_the_tests():
    generator = torch.Generator().manual_seed(0)
    split = Split(torch.randn(250, 1, 28, 28, generator=generator), torch.arange(250) % 10)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    loss, accuracy = measures_alone(model, split, batch_size=100)
    with torch.no_grad():
        expected = nn.functional.cross_entropy(model(split.images), split.labels).item()
        correct = (model(split.images).argmax(1) == split.labels).sum().item()
    assert loss == pytest.approx(expected, rel=1e-5)
    assert accuracy == evaluate_alone(model, split) == 100.0 * correct / len(split)


# --- early stopping end to end, on a validation curve the test sets --------------------------

# validation losses of the evaluations after 0, 1, 2, 3 and 4 epochs, per level
CURVES = [
    [2.0, 1.0, 0.5, 0.7, 0.9],  # minimum after 2 epochs
    [2.0, 1.5, 1.2, 1.2, 0.4],  # minimum at the end of training
    [1.0, 0.3, 0.8, 0.3, 0.5],  # a tie: the earliest
]
EARLY_STOPS = [2, 4, 1]


def test_early_stop_is_the_minimum_validation_loss_and_its_files_say_so(tmp_path, monkeypatch):
    source = write_mnist_files(tmp_path / "source", n_train=200, n_test=60)
    measured: list[dict] = []  # one per evaluation: the model state, its losses and accuracies
    trained_on: list[int] = []
    real_evaluate, real_epoch = train.evaluate, train.train_epoch

    def evaluate(stacked, split, *args, **kwargs):
        (accuracy,) = real_evaluate(stacked, split, *args, **kwargs)
        state = stacked.trial_state(0)
        measured.append({"state": state, "test": accuracy})
        return [accuracy]

    def loss_and_accuracy(stacked, split, *args, **kwargs):
        level, index = divmod(len(measured) - 1, 5)
        assert len(split) == 50  # measured on the model the test just measured:
        state = stacked.trial_state(0)
        assert all(torch.equal(measured[-1]["state"][k], v) for k, v in state.items())
        measured[-1]["val"] = (CURVES[level][index], 10.0 * index + level)
        return [measured[-1]["val"][0]], [measured[-1]["val"][1]]

    def train_epoch(model, split, *args, **kwargs):
        trained_on.append(len(split))
        return real_epoch(model, split, *args, **kwargs)

    monkeypatch.setattr(train, "evaluate", evaluate)
    monkeypatch.setattr(train, "loss_and_accuracy", loss_and_accuracy)
    monkeypatch.setattr(train, "train_epoch", train_epoch)
    flags = [*TINY, "--end_iter=4", "--prune_iterations=3", "--val_size=50"]
    assert (
        run_main(tmp_path, *flags, f"--data_source={source}", f"--data_dir={tmp_path / 'd'}") == 0
    )
    assert trained_on == [150] * 12 and len(measured) == 15

    run = only_run(tmp_path)
    saves, dumps = run / "saves" / "fc1" / "mnist", run / "dumps" / "lt" / "fc1" / "mnist"
    rows = list(csv.DictReader(open(run / "summary.csv")))
    best = load_dump(dumps / "lt_bestaccuracy.dat")
    writer_steps = scalars(run / "tensorboard")
    for level, (curve, stop, row) in enumerate(zip(CURVES, EARLY_STOPS, rows, strict=True)):
        at_stop = measured[5 * level + stop]
        saved = torch.load(saves / f"{level}_model_lt.pth.tar", weights_only=False).state_dict()
        assert all(torch.equal(saved[k], v) for k, v in at_stop["state"].items()), level
        assert best[level] == at_stop["test"]
        tag = f"{float(row['params_left']):.1f}"
        tests = [m["test"] for m in measured[5 * level : 5 * level + 4]]
        assert list(load_dump(dumps / f"lt_all_accuracy_{tag}.dat")) == tests
        assert list(load_dump(dumps / f"lt_all_val_loss_{tag}.dat")) == curve[:4]
        val_accuracies = [10.0 * i + level for i in range(4)]
        assert list(load_dump(dumps / f"lt_all_val_accuracy_{tag}.dat")) == val_accuracies
        assert int(row["early_stop_epoch"]) == int(row["best_epoch"]) == stop
        assert float(row["val_loss"]) == curve[stop]
        assert float(row["val_accuracy"]) == 10.0 * stop + level
        assert float(row["test_accuracy"]) == float(row["best_accuracy"]) == at_stop["test"]
        steps = range(4 * level, 4 * level + 4)
        assert [writer_steps["Loss/validation"][s] for s in steps] == curve[:4]
        assert [writer_steps["Accuracy/validation"][s] for s in steps] == val_accuracies
    assert list(rows[0])[-4:] == ["early_stop_epoch", "val_loss", "val_accuracy", "test_accuracy"]
    assert (run / "plots" / "lt" / "fc1" / "mnist" / "lt_AccuracyVsWeights.png").stat().st_size

    from lth import runs  # summaries read back as numbers, the epoch as an integer

    summary = runs.read_run(run).summary()
    assert [r["early_stop_epoch"] for r in summary] == EARLY_STOPS
    assert all(isinstance(r["early_stop_epoch"], int) for r in summary)


def scalars(folder: Path) -> dict[str, dict[int, float]]:
    """Every scalar of the TensorBoard events under `folder`: tag -> step -> value."""
    found: dict[str, dict[int, float]] = {}
    for events in sorted(folder.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            for event in accumulator.Scalars(tag):
                found.setdefault(tag, {})[event.step] = pytest.approx(event.value, rel=1e-6)
    return found


@pytest.fixture(scope="module")
def small_source(tmp_path_factory) -> Path:
    return write_mnist_files(tmp_path_factory.mktemp("mnist"), n_train=60, n_test=30)


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--val_size=-1"], ["--val_size", "-1", "at least 0"]),
        (["--val_size=29", "--batch_size=32"], ["--val_size 29", "60 images", "1..28"]),
        (["--val_size=60", "--batch_size=1"], ["--val_size 60", "1..59"]),
        (["--val_size=1000", "--batch_size=32"], ["--val_size 1000", "1..28"]),
        (["--val_size=1"], ["--val_size 1", "only 60 images"]),  # --batch_size 60: none to spare
        (["--val_size=x"], ["--val_size", "x"]),
    ],
)
def test_bad_val_size_is_one_line_and_creates_nothing(tmp_path, capsys, small_source, flags, words):
    base = [f"--data_source={small_source}", f"--data_dir={tmp_path / 'data'}"]
    check_refused(tmp_path, capsys, base + flags, *words)
    assert not (tmp_path / "results").exists()


# --- without the new flags: the files of a seeded run as before them --------------------------

# The decoded content of the files of the run below, made by the code before --val_size and the
# schedules existed (two runs of that code gave the same files). Arrays are compared by value, not
# by the bytes of their pickles, which change with numpy's major version (requirements.txt does not
# pin numpy): the numbers exactly, the masks (784x300 entries) by the sha256 of their float32 data,
# which is numpy's raw buffer and the same under every version. The losses are checked within float
# rounding: their last bits depend on the CPU's float kernels and even on what ran before in the
# process (an AVX2 machine wrote other values, and there this test alone wrote others again than
# within the whole suite). The accuracies, the compression and the masks were the same on every
# machine tried.
ACCURACY_BEFORE = {"100.0": [6.0, 100.0], "90.0": [17.0, 100.0], "81.0": [33.0, 100.0]}
BEST_BEFORE = [100.0, 100.0, 100.0]
COMPRESSION_BEFORE = [100.0, 90.0, 81.0]
MASK_SHAPES = [(300, 784), (100, 300), (10, 100)]
MASKS_BEFORE = {  # sha256 of each entry's float32 data, in the file's order
    "100.0": [
        "4448255ad46f47a3089cb211631b416935328be20ebfd9f27c834c8c8ef97acc",
        "9a13a50bf326a19b1f09e28b611feb902345a8128bf89a7dc81426c8dcc8386f",
        "9e504c05d5c0da9e17f53535dd25045c6b2ed03f54a9b32ecd2ddb6bef1b1acf",
    ],
    "90.0": [
        "11082050c142f2840ad546f868e5a9832a828a640584cc4f085d6033dc41f7e8",
        "10a89a4cb34f8398ea57ce7561a7a0a79875479c5d15d1c65c6c2b8e74d5db0b",
        "f7910578bb552ad8246d821accc3c597b9292beba2c235ffc8fdd605e2b1738e",
    ],
    "81.0": [
        "24bcd9bd6cdbeca65c849d0ed53095fd0f602545e602b0758ba6c6377004e480",
        "a3a417755df5baabcce4cd963519e5af3bf1281228067c663689afa71ac5ed06",
        "2255ab1b36253316bbb32cb490604a0d70a06621ea9136f8fd85ead58031955d",
    ],
}
# The training losses of each level's two epochs, by percent of weights left (this code, on an
# AVX-512 machine where every file matched the earlier code's bytes, and on an AVX2 one).
LOSSES_BEFORE = {
    "100.0": [1.9226864624023436, 0.04446911334991455],
    "90.0": [0.9431544494628906, 0.01266091227531433],
    "81.0": [0.49526138305664064, 0.004318893849849701],
}
SUMMARY_HEADER = "level,weights_left,params_left,best_accuracy,best_epoch,final_accuracy,final_loss"
SUMMARY_BEFORE = [  # every column but final_loss
    ["0", "100.0", "100.0", "100.0", "1", "100.0"],
    ["1", "90.0", "90.0", "100.0", "1", "100.0"],
    ["2", "81.0", "81.0", "100.0", "1", "100.0"],
]


def test_without_the_new_flags_a_seeded_run_writes_the_same_files_as_before(tmp_path):
    # 200 training and 100 test images, of the data set the figures were recorded on
    source = write_mnist_files(tmp_path / "source", separation="easy")
    flags = [*TINY, "--prune_iterations=3", f"--data_source={source}"]
    assert run_main(tmp_path, *flags, f"--data_dir={tmp_path / 'data'}") == 0
    run = only_run(tmp_path)
    dumps = run / "dumps" / "lt" / "fc1" / "mnist"
    for array, expected in [
        *((load_array(dumps / f"lt_all_accuracy_{p}.dat"), a) for p, a in ACCURACY_BEFORE.items()),
        (load_array(dumps / "lt_bestaccuracy.dat"), BEST_BEFORE),
        (load_array(dumps / "lt_compression.dat"), COMPRESSION_BEFORE),
    ]:
        assert array.dtype == np.float64 and array.tolist() == expected
    assert sorted(path.name for path in dumps.glob("*.pkl")) == sorted(
        f"lt_mask_{percent}.pkl" for percent in MASKS_BEFORE
    )
    for percent, digests in MASKS_BEFORE.items():
        entries = load_array_list(dumps / f"lt_mask_{percent}.pkl")
        assert [(e.dtype, e.shape) for e in entries] == [(np.float32, s) for s in MASK_SHAPES]
        assert [hashlib.sha256(e.tobytes()).hexdigest() for e in entries] == digests, percent
    losses = {path.stem.rsplit("_", 1)[1]: load_dump(path) for path in dumps.glob("*_loss_*.dat")}
    assert losses.keys() == LOSSES_BEFORE.keys()
    for percent, values in LOSSES_BEFORE.items():
        assert losses[percent].dtype == np.float64
        assert losses[percent].tolist() == pytest.approx(values, rel=1e-5), percent
    rows = list(csv.reader(open(run / "summary.csv")))
    assert rows[0] == SUMMARY_HEADER.split(",")
    assert [row[:-1] for row in rows[1:]] == SUMMARY_BEFORE
    final = [float(row[-1]) for row in rows[1:]]
    assert final == pytest.approx([values[-1] for values in LOSSES_BEFORE.values()], rel=1e-5)
    assert not np.isnan(load_dump(dumps / "lt_bestaccuracy.dat")).any()
