"""Tiny data sets in the exact original file formats, learnable by a small model.

MNIST and Fashion-MNIST: the four big-endian idx files, gzipped or not. CIFAR-10/100: the python
pickles as the originals have them (written by Python 2 with protocol 2, so their keys load as
str with encoding="latin1", as torchvision reads them, and as bytes with encoding="bytes"), in
`cifar-10-batches-py/` / `cifar-100-python/`, optionally packed as the original `.tar.gz`.
"""

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

CIFAR = {
    "cifar10": ("cifar-10-python.tar.gz", "cifar-10-batches-py", 10, b"labels"),
    "cifar100": ("cifar-100-python.tar.gz", "cifar-100-python", 100, b"fine_labels"),
}


# How far apart the classes are. "hard" (the default): every class's template is one shared random
# image plus a small deviation of its own (30 grey levels at MNIST's size), under noise of 75, so fc1 trained for
# the tests' few epochs on a few hundred images ends far from 100% (about 40-90% after two epochs
# of 200 images, seed by seed): a change that costs accuracy shows. "easy": independent templates
# under noise of 30, learnt to 100% at once; the data some tests' recorded figures were made on.
SEPARATIONS = ("hard", "easy")
NOISE = {"hard": 75.0, "easy": 30.0}


def class_templates(rng: np.random.Generator, classes: int, shape: tuple, separation: str):
    if separation == "easy":
        return rng.uniform(0, 200, (classes, *shape))
    # the deviation shrinks with the image's size, so that CIFAR's 3072 values per image are as
    # hard to tell apart as MNIST's 784
    spread = 30.0 * np.sqrt(784 / np.prod(shape))
    base = rng.uniform(30, 170, (1, *shape))
    return base + rng.normal(0.0, spread, (classes, *shape))


def images_and_labels(
    rng: np.random.Generator, count: int, templates: np.ndarray, separation: str
) -> tuple[np.ndarray, np.ndarray]:
    """`count` uint8 images: their class's fixed random template plus noise; every class occurs."""
    classes = len(templates)
    labels = rng.permutation(np.arange(count) % classes).astype(np.uint8)
    noise = rng.normal(0.0, NOISE[separation], (count, *templates.shape[1:]))
    return np.clip(templates[labels] + noise, 0, 255).astype(np.uint8), labels


def write_mnist_files(
    folder: Path,
    n_train: int = 200,
    n_test: int = 100,
    gz: bool = True,
    seed: int = 0,
    separation: str = "hard",
) -> Path:
    """Write the four MNIST idx files into `folder`; return it (the --data_source)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    templates = class_templates(rng, 10, (28, 28), separation)
    for split, count in (("train", n_train), ("t10k", n_test)):
        images, labels = images_and_labels(rng, count, templates, separation)
        files = {
            f"{split}-images-idx3-ubyte": struct.pack(">IIII", 2051, count, 28, 28),
            f"{split}-labels-idx1-ubyte": struct.pack(">II", 2049, count),
        }
        for (name, header), body in zip(files.items(), (images, labels), strict=True):
            content = header + body.tobytes()
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(content, mtime=0))
            else:
                (folder / name).write_bytes(content)
    return folder


class Python2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes bytes as Python 2 str (SHORT_BINSTRING/BINSTRING), as the original CIFAR files."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_str(self, obj: bytes) -> None:
        size = len(obj)
        if size < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([size]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", size) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_str


def python2_pickle(obj: Any) -> bytes:
    out = io.BytesIO()
    Python2Pickler(out, protocol=2).dump(obj)
    return out.getvalue()


def write_cifar_files(
    folder: Path,
    dataset: str = "cifar10",
    n_train: int = 100,
    n_test: int = 50,
    tar: bool = True,
    seed: int = 0,
    separation: str = "hard",
) -> Path:
    """Write CIFAR-10 or CIFAR-100 into `folder` (the .tar.gz, or the extracted folder if not
    `tar`); return `folder` (the --data_source)."""
    archive, top, classes, label_key = CIFAR[dataset]
    rng = np.random.default_rng(seed)
    templates = class_templates(rng, classes, (3072,), separation)
    train_images, train_labels = images_and_labels(rng, n_train, templates, separation)
    test_images, test_labels = images_and_labels(rng, n_test, templates, separation)

    def batch(title: bytes, images: np.ndarray, labels: np.ndarray, start: int = 0) -> bytes:
        entry = {
            b"batch_label": title,
            label_key: [int(label) for label in labels],
            b"data": images,
            b"filenames": [b"image_%06d.png" % (start + i) for i in range(len(images))],
        }
        if dataset == "cifar100":
            entry[b"coarse_labels"] = [int(label) // 5 for label in labels]
        return python2_pickle(entry)

    files: dict[str, bytes] = {}
    if dataset == "cifar10":
        start = 0
        for i, part in enumerate(np.array_split(np.arange(n_train), 5), start=1):
            title = b"training batch %d of 5" % i
            files[f"data_batch_{i}"] = batch(title, train_images[part], train_labels[part], start)
            start += len(part)
        files["test_batch"] = batch(b"testing batch 1 of 1", test_images, test_labels)
        names = [b"class_%d" % c for c in range(classes)]
        meta = {b"num_cases_per_batch": 10000, b"label_names": names, b"num_vis": 3072}
        files["batches.meta"] = python2_pickle(meta)
    else:
        files["train"] = batch(b"training", train_images, train_labels)
        files["test"] = batch(b"testing", test_images, test_labels)
        names = [b"fine_%d" % c for c in range(classes)]
        coarse = [b"coarse_%d" % c for c in range(20)]
        files["meta"] = python2_pickle({b"fine_label_names": names, b"coarse_label_names": coarse})

    folder.mkdir(parents=True, exist_ok=True)
    if tar:
        with tarfile.open(folder / archive, "w:gz") as out:
            directory = tarfile.TarInfo(top)
            directory.type, directory.mode = tarfile.DIRTYPE, 0o755
            out.addfile(directory)
            for name, content in files.items():
                member = tarfile.TarInfo(f"{top}/{name}")
                member.size = len(content)
                member.mode = 0o644
                out.addfile(member, io.BytesIO(content))
    else:
        (folder / top).mkdir(exist_ok=True)
        for name, content in files.items():
            (folder / top / name).write_bytes(content)
    return folder
