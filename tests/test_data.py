"""data.py: import checks, torchvision's layout, normalisation, concurrent imports."""

import gzip
import multiprocessing
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets

from lth import data
from lth.errors import UserError
from tests.datafiles import write_cifar_files, write_mnist_files

CPU = torch.device("cpu")
REAL_DEBIAN = data.DEBIAN_FASHION_MNIST


@pytest.fixture(autouse=True)
def no_download_no_debian(monkeypatch, tmp_path):
    """No test downloads anything or sees the real Debian package unless it asks for it."""

    def refuse(self):
        (Path(self.root) / "partial-download").mkdir(parents=True)
        (Path(self.root) / "partial-download" / "file.gz").write_bytes(b"\x1f\x8b")
        raise RuntimeError("Error downloading:\nno network in tests")

    for cls in (datasets.MNIST, datasets.CIFAR10):
        monkeypatch.setattr(cls, "download", refuse)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", str(tmp_path / "no-debian"))


def read_idx(folder: Path, name: str) -> np.ndarray:
    path = folder / name
    content = (
        path.read_bytes()
        if path.exists()
        else gzip.decompress((folder / f"{name}.gz").read_bytes())
    )
    header = 16 if "images" in name else 8
    array = np.frombuffer(content[header:], dtype=np.uint8)
    return array.reshape(-1, 28, 28) if "images" in name else array


def read_cifar(source: Path, dataset: str, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (N, 32, 32, 3) and labels, read the way the CIFAR web page shows (bytes keys)."""
    spec = data.DATASETS[dataset]
    folder = source / spec.folder
    if not folder.exists():
        import tarfile

        with tarfile.open(source / spec.archive) as tar:
            tar.extractall(source / "extracted", filter="data")
        folder = source / "extracted" / spec.folder
    images, labels = [], []
    for name in files:
        with open(folder / name, "rb") as file:
            entry = pickle.load(file, encoding="bytes")
        images.append(entry[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.extend(entry[spec.label_key.encode()])
    return np.concatenate(images), np.array(labels)


def check_split(split: data.Split, dataset: str, pixels: np.ndarray, labels: np.ndarray) -> None:
    """`split` is `pixels` (N, H, W, C uint8) normalised by hand, and `labels`."""
    spec = data.DATASETS[dataset]
    assert split.images.dtype == torch.float32 and split.labels.dtype == torch.int64
    assert split.images.shape == (len(labels), *spec.input_shape)
    assert split.images.is_contiguous()
    mean, std = np.array(spec.mean), np.array(spec.std)
    expected = ((pixels.astype(np.float64) / 255 - mean) / std).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(split.images.numpy(), expected, atol=1e-5)
    assert split.labels.tolist() == labels.tolist()
    check_stored_as_pixels(split)


def check_stored_as_pixels(split: data.Split) -> None:
    """The split keeps uint8 pixels (a quarter of float32) and every way of reading it gives
    exactly the values of normalising the whole set at once."""
    assert split.stored.dtype == torch.uint8 and split.stored.is_contiguous()
    whole = split.stored.float().div_(255).sub_(split.mean).div_(split.std)
    assert torch.equal(split.images, whole)
    index = torch.randperm(len(split))[: max(1, len(split) // 2)]
    images, labels = split.batch(index)
    assert torch.equal(images, whole[index]) and torch.equal(labels, split.labels[index])
    images, labels = split.between(1, len(split) + 5)  # past the end, as the last batch can be
    assert torch.equal(images, whole[1:]) and torch.equal(labels, split.labels[1:])


def check_mnist_family(dataset: str, source: Path, train: data.Split, test: data.Split) -> None:
    for split, prefix in ((train, "train"), (test, "t10k")):
        pixels = read_idx(source, f"{prefix}-images-idx3-ubyte")[..., None]
        check_split(split, dataset, pixels, read_idx(source, f"{prefix}-labels-idx1-ubyte"))


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".")] if folder.exists() else []


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dataset", ["mnist", "fashionmnist"])
def test_mnist_family_imports_and_loads(tmp_path, dataset, gz):
    source = write_mnist_files(tmp_path / "source", n_train=50, n_test=20, gz=gz)
    train, test = data.load(dataset, str(tmp_path / "data"), str(source), CPU)
    check_mnist_family(dataset, source, train, test)
    raw = tmp_path / "data" / data.DATASETS[dataset].folder
    assert sorted(p.name for p in raw.iterdir()) == sorted(data.IDX_FILES)
    # once imported, the source is no longer needed
    again, _ = data.load(dataset, str(tmp_path / "data"), None, CPU)
    assert torch.equal(again.images, train.images)


@pytest.mark.parametrize("tar", [True, False])
@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_imports_and_loads(tmp_path, dataset, tar):
    source = write_cifar_files(tmp_path / "source", dataset, n_train=60, n_test=20, tar=tar)
    train, test = data.load(dataset, str(tmp_path / "data"), str(source), CPU)
    spec = data.DATASETS[dataset]
    *train_files, test_file, _meta = spec.files
    check_split(train, dataset, *read_cifar(source, dataset, train_files))
    check_split(test, dataset, *read_cifar(source, dataset, [test_file]))
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [spec.folder]
    again, _ = data.load(dataset, str(tmp_path / "data"), None, CPU)
    assert torch.equal(again.images, train.images)


def test_cifar_source_may_be_the_extracted_folder_itself(tmp_path):
    source = write_cifar_files(tmp_path / "source", tar=False, n_train=10, n_test=5)
    folder = source / "cifar-10-batches-py"
    train, _ = data.load("cifar10", str(tmp_path / "data"), str(folder), CPU)
    assert train.images.shape == (10, 3, 32, 32)


def test_cifar_pickles_with_python3_bytes_keys_are_accepted(tmp_path):
    source = write_cifar_files(tmp_path / "source", tar=False, n_train=10, n_test=5)
    for path in (source / "cifar-10-batches-py").iterdir():
        entry = pickle.loads(path.read_bytes(), encoding="bytes")
        path.write_bytes(pickle.dumps(entry, protocol=2))  # keys stay bytes when loaded
    train, test = data.load("cifar10", str(tmp_path / "data"), str(source), CPU)
    check_split(test, "cifar10", *read_cifar(source, "cifar10", ["test_batch"]))


def test_archives_already_in_data_dir_are_imported(tmp_path):
    root = tmp_path / "data"
    write_mnist_files(root / "MNIST" / "raw", n_train=20, n_test=10)
    write_cifar_files(root, n_train=10, n_test=5)
    assert data.load("mnist", str(root), None, CPU)[0].images.shape == (20, 1, 28, 28)
    assert data.load("cifar10", str(root), None, CPU)[0].images.shape == (10, 3, 32, 32)


def test_fashion_mnist_is_imported_from_the_debian_folder(tmp_path, monkeypatch):
    debian = write_mnist_files(tmp_path / "debian", n_train=30, n_test=10, seed=3)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", str(debian))
    train, test = data.load("fashionmnist", str(tmp_path / "data"), None, CPU)
    check_mnist_family("fashionmnist", debian, train, test)
    assert (tmp_path / "data" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    with pytest.raises(UserError, match="missing"):  # MNIST itself does not come from there
        data.load("mnist", str(tmp_path / "data"), None, CPU)


def test_real_fashion_mnist_from_debian(tmp_path, monkeypatch):
    if not Path(REAL_DEBIAN).is_dir():
        pytest.skip(f"{REAL_DEBIAN} is absent (Debian package dataset-fashion-mnist not installed)")
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", REAL_DEBIAN)
    train, test = data.load("fashionmnist", str(tmp_path / "data"), None, CPU)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    # normalised with Fashion-MNIST's own statistics: about zero mean and unit spread
    assert abs(train.images.mean().item()) < 0.01 and abs(train.images.std().item() - 1) < 0.01


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_missing_data_names_files_folder_and_both_flags(tmp_path, dataset):
    root = tmp_path / "data"
    with pytest.raises(UserError) as raised:
        data.load(dataset, str(root), None, CPU)
    message = str(raised.value)
    assert "\n" not in message and "--data_source DIR" in message and "--data_dir" in message
    spec = data.DATASETS[dataset]
    assert all(name in message for name in spec.files) and str(root / spec.folder) in message
    assert not root.exists()  # nothing left from the failed download
    root.mkdir()
    with pytest.raises(UserError):
        data.load(dataset, str(root), None, CPU)
    assert list(root.iterdir()) == []


def test_missing_file_in_source_is_named(tmp_path):
    source = write_mnist_files(tmp_path / "source", n_train=10, n_test=5)
    (source / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match=r"--data_source .*: missing t10k-labels-idx1-ubyte"):
        data.load("mnist", str(tmp_path / "data"), str(source), CPU)


def rewrite(path: Path, change) -> None:
    """Apply `change` to the decompressed content of `path` (gzipped again if it was)."""
    content = path.read_bytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(change(gzip.decompress(content))))
    else:
        path.write_bytes(change(content))


@pytest.mark.parametrize(
    ("name", "change", "words"),
    [
        (
            "t10k-labels-idx1-ubyte.gz",
            lambda c: struct.pack(">I", 1234) + c[4:],
            ["t10k-labels-idx1-ubyte.gz has magic 1234, expected 2049"],
        ),
        ("train-images-idx3-ubyte.gz", lambda c: c[:-100], ["train-images-idx3-ubyte.gz", "bytes"]),
        (
            "train-labels-idx1-ubyte.gz",
            lambda c: struct.pack(">II", 2049, 39) + c[8:-1],
            ["train-images-idx3-ubyte.gz holds 40 images", "train-labels-idx1-ubyte.gz holds 39"],
        ),
        ("t10k-labels-idx1-ubyte.gz", lambda c: c[:-1] + b"\x0a", ["has label 10"]),
        (
            "t10k-images-idx3-ubyte.gz",
            lambda c: c[:8] + struct.pack(">II", 32, 32) + c[16:],
            ["32x32"],
        ),
    ],
)
def test_corrupt_mnist_source_is_refused_naming_the_file(tmp_path, name, change, words):
    source = write_mnist_files(tmp_path / "source", n_train=40, n_test=10)
    rewrite(source / name, change)
    root = tmp_path / "data"
    with pytest.raises(UserError) as raised:
        data.load("mnist", str(root), str(source), CPU)
    message = str(raised.value)
    assert message.startswith(f"--data_source {source}: ") and "\n" not in message
    for word in words:
        assert word in message, message
    assert not root.exists()  # nothing imported, no temporary files


def test_broken_gzip_is_refused(tmp_path):
    source = write_mnist_files(tmp_path / "source", n_train=10, n_test=5)
    (source / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="train-images-idx3-ubyte.gz is not a valid gzip"):
        data.load("mnist", str(tmp_path / "data"), str(source), CPU)


def test_corrupt_file_already_in_data_dir_is_named(tmp_path):
    source = write_mnist_files(tmp_path / "source", n_train=10, n_test=5)
    root = tmp_path / "data"
    data.load("mnist", str(root), str(source), CPU)
    labels = root / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-2])
    with pytest.raises(UserError, match=r"--data_dir .*MNIST/raw/train-labels-idx1-ubyte is 16"):
        data.load("mnist", str(root), None, CPU)


@pytest.mark.parametrize("tar", [True, False])
def test_garbage_cifar_pickle_is_refused_naming_the_file(tmp_path, tar):
    source = write_cifar_files(tmp_path / "source", tar=False, n_train=10, n_test=5)
    (source / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage" * 50)
    if tar:
        import tarfile

        with tarfile.open(source / "cifar-10-python.tar.gz", "w:gz") as out:
            out.add(source / "cifar-10-batches-py", "cifar-10-batches-py")
        for path in (source / "cifar-10-batches-py").iterdir():
            path.unlink()
        (source / "cifar-10-batches-py").rmdir()
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(UserError, match=r"data_batch_3 is not a readable python pickle"):
        data.load("cifar10", str(root), str(source), CPU)
    assert list(root.iterdir()) == []


def test_cifar_pickle_with_bad_labels_or_code_is_refused(tmp_path):
    source = write_cifar_files(tmp_path / "source", tar=False, n_train=10, n_test=5)
    batch = source / "cifar-10-batches-py" / "test_batch"
    entry = pickle.loads(batch.read_bytes(), encoding="bytes")
    entry[b"labels"] = entry[b"labels"][:-1]
    batch.write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(UserError, match="test_batch has 4 'labels' for 5 images"):
        data.load("cifar10", str(tmp_path / "data"), str(source), CPU)
    batch.write_bytes(pickle.dumps(print, protocol=2))  # a pickle that would call a function
    with pytest.raises(UserError, match=r"test_batch is not a readable python pickle .*print"):
        data.load("cifar10", str(tmp_path / "data"), str(source), CPU)
    (source / "cifar-10-batches-py" / "batches.meta").unlink()
    with pytest.raises(UserError, match="missing batches.meta"):
        data.load("cifar10", str(tmp_path / "data"), str(source), CPU)


def import_both(root: str, mnist: str, cifar: str, barrier) -> None:
    for dataset, source in (("mnist", mnist), ("cifar10", cifar)):
        barrier.wait()
        train, _ = data.load(dataset, root, source, CPU)
        assert len(train.labels) == 40


def test_concurrent_imports_into_one_data_dir(tmp_path):
    mnist = write_mnist_files(tmp_path / "mnist", n_train=40, n_test=10)
    cifar = write_cifar_files(tmp_path / "cifar", n_train=40, n_test=10)
    root = tmp_path / "data"
    # forked from a server that has imported torch once but run nothing: quick and fork-safe
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["data"])
    barrier = context.Barrier(4)
    args = (str(root), str(mnist), str(cifar), barrier)
    workers = [context.Process(target=import_both, args=args) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [worker.exitcode for worker in workers] == [0] * 4
    assert leftovers(root) == []
    train, test = data.load("mnist", str(root), None, CPU)
    check_mnist_family("mnist", mnist, train, test)
    _, test = data.load("cifar10", str(root), None, CPU)
    check_split(test, "cifar10", *read_cifar(cifar, "cifar10", ["test_batch"]))


def test_a_successful_download_is_imported(tmp_path, monkeypatch):
    calls = []

    def fake_download(self):  # as torchvision's: the .gz files and their extracted copies
        calls.append(self.root)
        write_mnist_files(Path(self.raw_folder), n_train=20, n_test=10, gz=True)
        write_mnist_files(Path(self.raw_folder), n_train=20, n_test=10, gz=False)

    monkeypatch.setattr(datasets.MNIST, "download", fake_download)
    root = tmp_path / "data"
    train, _ = data.load("mnist", str(root), None, CPU)
    assert len(calls) == 1 and train.images.shape == (20, 1, 28, 28)
    assert sorted(p.name for p in root.iterdir()) == ["MNIST"]
    assert sorted(p.name for p in (root / "MNIST" / "raw").iterdir()) == sorted(data.IDX_FILES)


@pytest.mark.parametrize("dataset", ["fashionmnist", "cifar100"])
def test_a_data_source_without_the_files_names_the_flag_the_folder_and_the_files(tmp_path, dataset):
    source = tmp_path / "source"
    source.mkdir()
    (source / "readme.txt").write_text("no data set here")
    with pytest.raises(UserError) as raised:
        data.check_source(dataset, str(source))
    message = str(raised.value)
    spec = data.DATASETS[dataset]
    assert message.startswith(f"--data_source {source} has none of the files of {dataset}: ")
    assert "\n" not in message and str(source / spec.folder) in message
    assert all(name in message for name in spec.files)
    assert spec.is_idx or spec.archive in message


def test_a_data_source_is_checked_even_when_data_dir_has_the_data(tmp_path):
    source = write_mnist_files(tmp_path / "source", n_train=10, n_test=5)
    root = tmp_path / "data"
    data.load("mnist", str(root), str(source), CPU)
    imported = sorted(root.rglob("*"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(UserError, match=f"--data_source {elsewhere} has none of the files"):
        data.load("mnist", str(root), str(elsewhere), CPU)
    (source / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(UserError, match=r"--data_source .*: missing t10k-images-idx3-ubyte"):
        data.load("mnist", str(root), str(source), CPU)
    with pytest.raises(UserError, match=r"--data_source .* is not a folder"):
        data.load("mnist", str(root), str(source / "train-images-idx3-ubyte.gz"), CPU)
    assert sorted(root.rglob("*")) == imported  # nothing written
    assert len(data.load("mnist", str(root), None, CPU)[0]) == 10


@pytest.mark.parametrize("layout", ["flat", "nested", "cifar folder", "cifar archive"])
def test_a_data_source_with_the_files_passes_the_check(tmp_path, layout):
    if layout == "flat":
        data.check_source("mnist", str(write_mnist_files(tmp_path / "s", n_train=10, n_test=5)))
    elif layout == "nested":  # torchvision's layout under the folder
        write_mnist_files(tmp_path / "s" / "MNIST" / "raw", n_train=10, n_test=5, gz=False)
        data.check_source("mnist", str(tmp_path / "s"))
    else:
        source = write_cifar_files(
            tmp_path / "s", n_train=10, n_test=5, tar=layout == "cifar archive"
        )
        data.check_source("cifar10", str(source))


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_a_data_source_other_than_the_copy_in_data_dir_is_refused(tmp_path, dataset):
    """The run would record one source and train on another copy: refused in one line, the copy
    left as it is; the same files in another form (decompressed, extracted) are accepted."""
    if dataset == "mnist":
        first = write_mnist_files(tmp_path / "first", n_train=10, n_test=5)
        same = write_mnist_files(tmp_path / "same", n_train=10, n_test=5, gz=False)
        other = write_mnist_files(tmp_path / "other", n_train=10, n_test=5, seed=1)
    else:
        first = write_cifar_files(tmp_path / "first", n_train=10, n_test=5)
        same = write_cifar_files(tmp_path / "same", n_train=10, n_test=5, tar=False)
        other = write_cifar_files(tmp_path / "other", n_train=10, n_test=5, seed=1)
    root = tmp_path / "data"
    train, _ = data.load(dataset, str(root), str(first), CPU)
    copy = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match=f"--data_source {other}: --data_dir {root} already holds"):
        data.load(dataset, str(root), str(other), CPU)
    again, _ = data.load(dataset, str(root), str(same), CPU)
    assert torch.equal(again.images, train.images)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == copy  # nothing left
