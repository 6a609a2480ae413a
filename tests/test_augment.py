"""`--augment`: random crops of the zero-padded image and horizontal flips (lth/augment.py),
drawn per trial once an epoch and applied to whole batches on the device."""

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import archs
import combine_plots
from lth import augment, cli, experiment, runs, stack, train
from lth.data import Split
from lth.initialization import initialize
from lth.pruning import make_mask
from lth.record import TrialRandom
from tests.conftest import kept_checkpoints
from tests.datafiles import write_cifar_files
from tests.resultfiles import assert_same_results, stopped_after
from tests.test_bad_input import check_refused
from tests.test_main import TINY, only_run, run_main

SIZE = 32
COUNT, BATCH = 40, 16  # 3 steps an epoch, the last one smaller
MEAN, STD = torch.full((1, 3, 1, 1), 0.45), torch.full((1, 3, 1, 1), 0.25)
SGD = argparse.Namespace(optimizer="sgd", lr=0.01, momentum=0.0)


def coordinates() -> torch.Tensor:
    """A 2 x 32 x 32 uint8 image whose pixels say where they are: channel 0 holds the row + 1,
    channel 1 the column + 1 (so no pixel of the image is 0, the padding's value)."""
    rows = torch.arange(1, SIZE + 1).view(SIZE, 1).expand(SIZE, SIZE)
    cols = torch.arange(1, SIZE + 1).view(1, SIZE).expand(SIZE, SIZE)
    return torch.stack([rows, cols]).to(torch.uint8)


def cropped_by_slicing(image: torch.Tensor, corner: tuple[int, int], flip: bool) -> torch.Tensor:
    """The textbook formulation: pad, slice the crop out, flip it."""
    padded = torch.zeros(image.shape[0], SIZE + 8, SIZE + 8, dtype=image.dtype)
    padded[:, 4:-4, 4:-4] = image
    crop = padded[:, corner[0] : corner[0] + SIZE, corner[1] : corner[1] + SIZE]
    return crop.flip(-1) if flip else crop


CASES = [(corner, flip) for corner in [(4, 4), (0, 0), (8, 8), (0, 8), (3, 6)] for flip in (0, 1)]


def test_each_image_is_cropped_at_its_corner_and_flipped_as_drawn():
    """Ten different crops in one call: each equals the textbook's pad, slice and flip."""
    images = coordinates().expand(len(CASES), 2, SIZE, SIZE)
    corners = torch.tensor([corner for corner, _ in CASES])
    flips = torch.tensor([bool(flip) for _, flip in CASES])
    out = augment.crop_and_flip(images, corners, flips)
    for i, (corner, flip) in enumerate(CASES):
        assert torch.equal(out[i], cropped_by_slicing(coordinates(), corner, bool(flip))), i
    # the centred crop is the image itself, flipped its mirror image
    assert torch.equal(out[0], coordinates()) and torch.equal(out[1], coordinates().flip(-1))
    # a corner (0, 8): output pixel (y, x) is the image's (y - 4, x + 4)
    row, col = out[CASES.index(((0, 8), 0))]
    assert row[10, 3] == 10 - 4 + 1 and col[10, 3] == 3 + 4 + 1
    # flipped: output pixel (y, x) is the crop's (y, 31 - x), the image's (y - 4, 31 - x + 4),
    # so the padding right of the image shows on the left
    row, col = out[CASES.index(((0, 8), 1))]
    assert row[10, 10] == 10 - 4 + 1 and col[10, 10] == 31 - 10 + 4 + 1
    assert row[10, 3] == col[10, 3] == 0


def test_zeros_fill_where_the_crop_goes_past_the_border():
    white = torch.full((1, 3, SIZE, SIZE), 255, dtype=torch.uint8)
    out = augment.crop_and_flip(white, torch.tensor([[0, 8]]), torch.tensor([False]))[0]
    border = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    border[:4, :] = True  # 4 rows above the image
    border[:, -4:] = True  # 4 columns right of it
    assert (out[:, border] == 0).all() and (out[:, ~border] == 255).all()


def test_the_border_is_a_black_pixel_normalised_as_the_image_is():
    """Padding before normalisation, as torchvision's RandomCrop pads the PIL image: the border
    of a training batch is what a black pixel normalises to, -mean/std, not 0."""
    white = Split(
        torch.full((2, 3, SIZE, SIZE), 255, dtype=torch.uint8),
        torch.zeros(2, dtype=torch.long),
        MEAN,
        STD,
    )
    black = Split(torch.zeros(1, 3, 1, 1, dtype=torch.uint8), torch.zeros(1), MEAN, STD).images[0]
    draws = torch.tensor([[[0, 0, 0], [4, 4, 1]]])  # [k = 1, B = 2, 3]
    images, _ = train.trial_batch(white, torch.tensor([[0, 1]]), draws)
    corner = images[0, 0, :, :4, :4]
    assert torch.equal(corner, black.expand_as(corner))
    assert (black < 0).all()
    assert torch.equal(images[0, 1], white.images[1])  # centred: nothing padded shows


def cifar_like(count: int = COUNT, seed: int = 0) -> Split:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (count, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (count,), generator=generator)
    return Split(pixels, labels, MEAN, STD)


def epoch_batches(monkeypatch, seeds: list[int], data: Split, augmented: bool = True) -> list:
    """The images each trial of a batch of `seeds` trains on in one epoch of train_epoch (fc1
    on 32x32 colour images): for each trial, its batches in order."""
    seen = []
    real = train.trial_batch

    def recording(*args, **kwargs):
        images, labels = real(*args, **kwargs)
        seen.append(images.clone())
        return images, labels

    monkeypatch.setattr(train, "trial_batch", recording)
    modules = []
    for seed in seeds:
        torch.manual_seed(seed)
        modules.append(initialize(archs.build("cifar10", "fc1")))
    stacked = stack.StackedModel(modules)
    masks = stack.stack_masks(stacked, [make_mask(m) for m in modules])
    stepper = train.Stepper(train.build_optimizer(SGD, stacked))
    trials = train.Trials(masks, [TrialRandom(seed) for seed in seeds])
    train.train_epoch(stacked, data, train.Batches(BATCH, augmented=augmented), trials, stepper)
    monkeypatch.setattr(train, "trial_batch", real)
    return [[batch[i] for batch in seen] for i in range(len(seeds))]


def assert_same_batches(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b) == 3
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_trial_draws_its_permutation_then_its_crops_and_flips_from_its_own_seed(monkeypatch):
    """What the textbook loop seeded as the trial would draw: the epoch's permutation, then
    each position's corner and flip, both from torch's CPU generator."""
    data = cifar_like()
    (batches,) = epoch_batches(monkeypatch, [3], data)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        order = torch.randperm(COUNT)
        draws = augment.draw(COUNT)
    expected = []
    for start in range(0, COUNT, BATCH):
        index, drawn = order[start : start + BATCH], draws[start : start + BATCH]
        pixels = augment.crop_and_flip(data.stored[index], drawn[:, :2], drawn[:, 2].bool())
        expected.append(Split(pixels, data.labels[index], MEAN, STD).images)
    assert_same_batches(batches, expected)
    # augmentation draws after the permutation: without it, the same order of plain images
    (plain,) = epoch_batches(monkeypatch, [3], data, augmented=False)
    assert_same_batches(
        plain, [data.batch(order[s : s + BATCH])[0] for s in range(0, COUNT, BATCH)]
    )
    assert not any(torch.equal(a, b) for a, b in zip(plain, batches, strict=True))


def test_the_same_seed_augments_alike_and_another_seed_otherwise(monkeypatch):
    data = cifar_like()
    (first,), (again,) = (
        epoch_batches(monkeypatch, [3], data),
        epoch_batches(monkeypatch, [3], data),
    )
    assert_same_batches(first, again)
    (other,) = epoch_batches(monkeypatch, [4], data)
    assert not any(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_each_trial_of_a_batch_draws_what_its_seed_alone_draws(monkeypatch):
    data = cifar_like()
    together = epoch_batches(monkeypatch, [3, 4], data)
    for seed, batches in zip([3, 4], together, strict=True):
        (alone,) = epoch_batches(monkeypatch, [seed], data)
        assert_same_batches(batches, alone)


def test_the_augmented_epoch_reads_nothing_back_but_the_losses_once(host_reads):
    """The draws go to the device once an epoch: no read per step, whatever the epoch's length."""
    modules = [initialize(archs.build("cifar10", "fc1")) for _ in range(2)]
    stacked = stack.StackedModel(modules)
    masks = stack.stack_masks(stacked, [make_mask(m) for m in modules])
    optimizer = train.build_optimizer(SGD, stacked)
    per_epoch = []
    for count in (40, 80):
        host_reads.clear()
        trials = train.Trials(masks, [TrialRandom(seed) for seed in (3, 4)])
        data, stepper = cifar_like(count), train.Stepper(optimizer)
        train.train_epoch(stacked, data, train.Batches(8, augmented=True), trials, stepper)
        per_epoch.append(sorted(host_reads))
    assert per_epoch[0] == per_epoch[1] == ["tolist"]


class TorchCalls(TorchFunctionMode):
    """The names of the torch functions and tensor methods called inside it, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def test_a_batch_is_augmented_in_the_same_few_torch_calls_however_many_images():
    """No Python loop over the images: the calls of 10 images and of 10,000 are the same, one
    gather among them. (Measured: 10,000 CIFAR-sized images in 0.11-0.16 s on one or two
    threads of a 2-core AMD EPYC, shared with other work.)"""
    calls = []
    for count in (10, 10_000):
        pixels = torch.randint(0, 256, (count, 3, SIZE, SIZE), dtype=torch.uint8)
        draws = augment.draw(count)
        with TorchCalls() as mode:
            out = augment.augmented(pixels, draws)
        assert out.shape == pixels.shape and out.dtype == torch.uint8
        calls.append(mode.names)
    assert calls[0] == calls[1]
    assert calls[0].count("gather") == 1 and len(calls[0]) < 30, calls[0]


def test_only_the_training_batches_are_augmented(monkeypatch):
    """Test and validation images never are: a level of 2 epochs augments 2 x 3 batches."""
    calls = []
    real = augment.augmented

    def counting(pixels, draws):
        calls.append(len(pixels))
        return real(pixels, draws)

    monkeypatch.setattr(augment, "augmented", counting)
    module = initialize(archs.build("cifar10", "fc1"))
    stacked = stack.StackedModel([module])
    masks = stack.stack_masks(stacked, [make_mask(module)])
    flags = ["--dataset=cifar10", "--end_iter=2", f"--batch_size={BATCH}", "--augment"]
    flags += [f"--optimizer={SGD.optimizer}", f"--lr={SGD.lr}", f"--momentum={SGD.momentum}"]
    recipe = experiment.Experiment.of(vars(cli.parse_args(flags)))
    data = train.LevelData(cifar_like(), cifar_like(30, seed=1), cifar_like(20, seed=2))
    plan = train.LevelPlan.of(recipe, data.train, [])
    assert plan.batches == train.Batches(BATCH, augmented=True)
    train.train_level(stacked, data, plan, train.Trials(masks, [TrialRandom(0)]))
    assert calls == [16, 16, 8] * 2


# --- through main.py ---------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["mnist", "fashionmnist"])
def test_augment_is_refused_for_the_mnist_family_in_one_line(tmp_path, capsys, dataset):
    check_refused(
        tmp_path, capsys, ["--dataset", dataset, "--augment"], "--augment", "cifar10", dataset
    )


@pytest.fixture(scope="module")
def cifar_data(tmp_path_factory) -> list[str]:
    """A tiny CIFAR-10 (100 training and 40 test images) in the original's files."""
    folder = tmp_path_factory.mktemp("cifar")
    source = write_cifar_files(folder / "source", n_train=100, n_test=40)
    return [f"--data_source={source}", f"--data_dir={folder / 'data'}"]


def test_an_augmented_cifar_run_records_it_and_trains_on_other_images(tmp_path, cifar_data):
    flags = [*TINY, "--dataset=cifar10", "--prune_iterations=2", *cifar_data]
    runs_of = {}
    for name, extra in (("augmented", ["--augment"]), ("plain", [])):
        (tmp_path / name).mkdir()
        assert run_main(tmp_path / name, *flags, *extra) == 0
        runs_of[name] = only_run(tmp_path / name)
    recorded = {n: json.loads((r / "args.json").read_text())["args"] for n, r in runs_of.items()}
    assert recorded["augmented"]["augment"] is True and recorded["plain"]["augment"] is False
    assert experiment.identity(recorded["augmented"]) != experiment.identity(recorded["plain"])
    summaries = {n: (r / "summary.csv").read_text() for n, r in runs_of.items()}
    assert summaries["augmented"] != summaries["plain"]  # the same seed, other training images
    saves = Path("saves/fc1/cifar10/initial_state_dict_lt.pth.tar")
    initial = [(r / saves).read_bytes() for r in runs_of.values()]
    assert initial[0] == initial[1]  # the draws of augmentation come after the initial weights


def without_augment(run: Path) -> None:
    """The run's args.json as written before --augment existed."""
    record = json.loads((run / "args.json").read_text())
    del record["args"]["augment"]
    (run / "args.json").write_text(json.dumps(record))


def test_a_run_recorded_before_the_flag_resumes_unaugmented(tmp_path, capsys, reference_run):
    run = Path(shutil.copytree(reference_run, tmp_path / "results" / reference_run.name))
    without_augment(run)
    older = Path(shutil.copytree(run, tmp_path / "older"))
    stopped_after(run, kept_checkpoints(reference_run), 0)
    capsys.readouterr()
    assert run_main(tmp_path, "--resume", str(run), "--augment") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--augment" in err, err
    assert run_main(tmp_path, "--resume", str(run)) == 0
    assert_same_results(run, older)


def test_a_run_recorded_before_the_flag_groups_with_the_same_run_recorded_now(
    tmp_path, capsys, reference_run
):
    old = Path(shutil.copytree(reference_run, tmp_path / "old" / reference_run.name))
    without_augment(old)
    read = runs.read_run(old)
    assert read is not None and read.args["augment"] is False
    now = runs.read_run(reference_run)
    assert experiment.identity(read.args) == experiment.identity(now.args)
    on = experiment.trial_fields()
    assert experiment.identity(read.args, on) == experiment.identity(now.args, on)
    out = tmp_path / "figures"
    capsys.readouterr()
    argv = [str(old), str(reference_run), "--out", str(out), "--dpi", "20"]
    assert combine_plots.main(argv) == 0
    assert "left out:" in capsys.readouterr().out  # one trial: the same experiment and seed
    assert (out / "combined_fc1_mnist.png").is_file()
