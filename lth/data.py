"""Data sets: checked, imported into torchvision's layout under --data_dir, loaded once into
tensors on the training device (uint8 pixels, normalised batch by batch).

Files reach --data_dir, in this order: already there; imported from --data_source; imported from
an archive already in --data_dir or Debian's Fashion-MNIST package; downloaded by torchvision.
Imports are checked, then renamed into place, so several processes can import at once. A copy
already in --data_dir must hold the same data as a --data_source given.
"""

import contextlib
import filecmp
import gzip
import os
import pickle
import shutil
import socket
import struct
import tarfile
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision import datasets

from lth.errors import UserError
from lth.safe_load import ArrayUnpickler

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IDX_MAGIC = {"images": (2051, "an MNIST image file"), "labels": (2049, "an MNIST label file")}
DOWNLOAD_TIMEOUT_S = 60
HOLD_OUT_SEED = 20190306  # the fixed draw of --val_size's validation images


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    torchvision_class: type[datasets.VisionDataset]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_shape: tuple[int, int, int]
    num_classes: int
    folder: str  # under --data_dir, where torchvision reads the files
    files: tuple[str, ...]  # the files that must be in `folder`
    archive: str | None = None  # CIFAR: the original .tar.gz, holding `folder`
    label_key: str = "labels"  # CIFAR: the labels' key in each data pickle
    meta_key: str = ""  # CIFAR: the class names' key in the meta pickle

    @property
    def is_idx(self) -> bool:
        return self.archive is None


class Split:
    """One split of a data set on the device: uint8 pixels normalised as they are read,
    ((x / 255) - mean) / std per channel; float images without mean and std pass unchanged."""

    def __init__(
        self, images: Tensor, labels: Tensor, mean: Tensor | None = None, std: Tensor | None = None
    ) -> None:
        self.stored = images  # uint8 (N, C, H, W) pixels with mean and std, else float32 images
        self.labels = labels  # int64 (N,)
        self.mean, self.std = mean, std  # float32 (1, C, 1, 1), or None

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def images(self) -> Tensor:
        return self._normalised(self.stored)

    def batch(
        self, index: Tensor, transform: Callable[[Tensor], Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """The normalised images and labels at `index`, `transform` (augmentation) on the pixels."""
        pixels = self.stored.index_select(0, index)
        if transform is not None:
            pixels = transform(pixels)
        return self._normalised(pixels), self.labels.index_select(0, index)

    def subset(self, index: Tensor) -> "Split":
        index = index.to(self.labels.device)
        stored, labels = self.stored.index_select(0, index), self.labels.index_select(0, index)
        return Split(stored, labels, self.mean, self.std)

    def between(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        return self._normalised(self.stored[start:stop]), self.labels[start:stop]

    def _normalised(self, pixels: Tensor) -> Tensor:
        if self.mean is None:
            return pixels
        images = torch.empty(pixels.shape, dtype=torch.float32, device=pixels.device)
        return images.copy_(pixels).div_(255).sub_(self.mean).div_(self.std)


def _presence_checked(cls: type[datasets.CIFAR10]) -> type[datasets.CIFAR10]:
    """`cls` without md5 checks: the files are checked before they get here."""
    lists = {
        key: [[name, None] for name, _ in getattr(cls, key)] for key in ("train_list", "test_list")
    }
    return type(cls.__name__, (cls,), {**lists, "meta": {**cls.meta, "md5": None}})


def _idx_spec(name: str, cls: type[datasets.MNIST], mean: float, std: float) -> DatasetSpec:
    folder = f"{cls.__name__}/raw"
    return DatasetSpec(name, cls, (mean,), (std,), (1, 28, 28), 10, folder, IDX_FILES)


def _cifar_spec(
    name: str, cls: type[datasets.CIFAR10], mean: tuple[float, ...], std: tuple[float, ...]
) -> DatasetSpec:
    classes = 100 if issubclass(cls, datasets.CIFAR100) else 10
    files = tuple(f for f, _ in cls.train_list + cls.test_list) + (cls.meta["filename"],)
    label_key = "fine_labels" if classes == 100 else "labels"
    return DatasetSpec(
        name,
        _presence_checked(cls),
        mean,
        std,
        (3, 32, 32),
        classes,
        cls.base_folder,
        files,
        cls.filename,
        label_key,
        cls.meta["key"],
    )


DATASETS: dict[str, DatasetSpec] = {
    "mnist": _idx_spec("mnist", datasets.MNIST, 0.1307, 0.3081),
    "fashionmnist": _idx_spec("fashionmnist", datasets.FashionMNIST, 0.2860, 0.3530),
    "cifar10": _cifar_spec(
        "cifar10", datasets.CIFAR10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ),
    "cifar100": _cifar_spec(
        "cifar100", datasets.CIFAR100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    ),
}


def load(
    dataset: str, data_dir: str, data_source: str | None, device: torch.device
) -> tuple[Split, Split]:
    """The (train, test) splits of `dataset`, importing its files into `data_dir` if needed."""
    if dataset not in DATASETS:
        choices = ", ".join(DATASETS)
        raise UserError(f"--dataset {dataset} is not supported; choose one of: {choices}")
    spec = DATASETS[dataset]
    root = Path(data_dir)
    if data_source is not None:
        check_source(dataset, data_source)
    try:
        _ensure_files(spec, root, None if data_source is None else Path(data_source))
    except OSError as error:  # a --data_dir that is a file, read-only, or an unreadable source
        source = f" / --data_source {data_source}" if data_source else ""
        where = f" ({error.filename})" if error.filename else ""
        raise UserError(
            f"--data_dir {data_dir}{source}: {error.strerror or error}{where}; --data_dir must be a folder this user can write and --data_source one it can read"
        ) from None
    return _split(spec, root, True, device), _split(spec, root, False, device)


def check_source(dataset: str, data_source: str) -> None:
    """UserError unless the folder `data_source` holds the original files of `dataset`."""
    spec = DATASETS[dataset]
    source, where = Path(data_source), f"--data_source {data_source}"
    try:
        if not source.is_dir():
            raise UserError(f"{where} is not a folder")
        (_idx_originals if spec.is_idx else _cifar_original)(spec, source, where)
    except OSError as error:  # a folder this user cannot list
        raise UserError(f"{where} cannot be read ({error.strerror or error})") from None


def hold_out(train_set: Split, n: int, min_train: int = 1) -> tuple[Split, Split]:
    """`--val_size n`: (the training images left, the `n` held out for validation), drawn by a
    generator of their own with a fixed seed, both in the images' original order."""
    count = len(train_set)
    if not 0 < n <= count - min_train:
        raise UserError(
            f"--val_size {n}: the training set has {count} images and at least {min_train} (--batch_size) must be left to train on; choose 1..{count - min_train}"
            if count > min_train
            else f"--val_size {n}: the training set has only {count} images, too few to hold out any and keep {min_train} (--batch_size) to train on"
        )
    order = torch.randperm(count, generator=torch.Generator().manual_seed(HOLD_OUT_SEED))
    held, kept = order[:n].sort().values, order[n:].sort().values
    return train_set.subset(kept), train_set.subset(held)


def _split(spec: DatasetSpec, root: Path, train: bool, device: torch.device) -> Split:
    loaded = spec.torchvision_class(str(root), train=train)
    if spec.is_idx:
        pixels, labels = loaded.data.unsqueeze(-1), loaded.targets.long()
    else:
        pixels, labels = torch.from_numpy(loaded.data), torch.as_tensor(loaded.targets)
    del loaded
    pixels = pixels.permute(0, 3, 1, 2).contiguous().to(device)
    mean = torch.tensor(spec.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, -1, 1, 1)
    return Split(pixels, labels.to(device, torch.int64), mean, std)


def _ensure_files(spec: DatasetSpec, root: Path, data_source: Path | None) -> None:
    target = root / spec.folder
    if all((target / name).is_file() for name in spec.files):
        _check_present(spec, root)
        if data_source is not None:
            _check_same_as_source(spec, root, data_source)
        return
    source = data_source if data_source is not None else _local_source(spec, root)
    where = f"--data_source {data_source}" if data_source is not None else str(source)
    if source is not None:
        if not _import(spec, source, root, where):
            _check_present(spec, root)
        return
    if not _download(spec, root):
        missing = ", ".join(name for name in spec.files if not (target / name).is_file())
        if spec.is_idx:
            there = "put the original files there (--data_dir)"
            formats = "the original files (.gz archives or decompressed)"
        else:
            there = f"put the original files there or {spec.archive} in {root} (--data_dir)"
            formats = f"{spec.archive} or its extracted folder {spec.folder}"
        raise UserError(
            f"dataset {spec.name}: missing {missing} in {target} and the download failed; {there}, or pass --data_source DIR with {formats}"
        )


def _check_same_as_source(spec: DatasetSpec, root: Path, source: Path) -> None:
    """UserError unless the copy in --data_dir holds what --data_source would import (imported
    into a scratch folder and compared: idx files by bytes, CIFAR's pickles by content)."""
    where = f"--data_source {source}"
    scratch = _temp_name(root, "compare")
    try:
        (scratch / spec.folder if spec.is_idx else scratch).mkdir(parents=True)
        (_import_idx if spec.is_idx else _import_cifar)(spec, source, scratch, where)
        theirs, ours = scratch / spec.folder, root / spec.folder
        differing = [n for n in spec.files if not _same_file(spec, theirs / n, ours / n)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if differing:
        raise UserError(
            f"{where}: --data_dir {root} already holds a copy of {spec.name} whose {differing[0]} differs from the source's; give another --data_dir, or leave --data_source out to use that copy"
        )


def _same_file(spec: DatasetSpec, a: Path, b: Path) -> bool:
    if spec.is_idx:
        return filecmp.cmp(a, b, shallow=False)
    return _same_value(_cifar_entry(spec, a)[0], _cifar_entry(spec, b)[0])


def _same_value(a: object, b: object) -> bool:
    """Deep equality of unpickled CIFAR entries, bytes as the latin-1 text an import makes."""
    a, b = (v.decode("latin1") if isinstance(v, bytes) else v for v in (a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _local_source(spec: DatasetSpec, root: Path) -> Path | None:
    """Original files in --data_dir, or Debian's Fashion-MNIST package."""
    if spec.is_idx:
        raw = root / spec.folder
        if all((raw / n).is_file() or (raw / f"{n}.gz").is_file() for n in spec.files):
            return raw
        if spec.name == "fashionmnist" and Path(DEBIAN_FASHION_MNIST).is_dir():
            return Path(DEBIAN_FASHION_MNIST)
        return None
    assert spec.archive is not None
    return root if (root / spec.archive).is_file() else None


def _import(spec: DatasetSpec, source: Path, root: Path, where: str) -> bool:
    """Check the files in `source` and import them; False if another process's import won."""
    with _made(root / spec.folder if spec.is_idx else root):
        imported = (_import_idx if spec.is_idx else _import_cifar)(spec, source, root, where)
    if imported:
        print(f"data: imported {spec.name} from {source} into {root / spec.folder}")
    return imported


def _download(spec: DatasetSpec, root: Path) -> bool:
    """Download into a temporary folder and import from there; False (nothing left) on failure."""

    class Failed(Exception):
        pass

    timeout = socket.getdefaulttimeout()
    try:
        with _made(root):
            scratch = root / f".download-{spec.name}.{uuid.uuid4().hex}"
            try:
                socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
                try:
                    spec.torchvision_class(str(scratch), train=False, download=True)
                except Exception as error:
                    raise Failed from error
                finally:
                    socket.setdefaulttimeout(timeout)
                source = scratch / spec.folder if spec.is_idx else scratch
                if not _import(spec, source, root, f"downloaded {spec.name}"):
                    _check_present(spec, root)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    except Failed:
        return False
    return True


@contextlib.contextmanager
def _made(folder: Path) -> Iterator[None]:
    """Create `folder`; if the block fails, remove the empty folders this created."""
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for path in created:  # deepest first
            with contextlib.suppress(OSError):
                path.rmdir()
        raise


def _temp_name(folder: Path, name: str) -> Path:
    return folder / f".{name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"


class _Bad(Exception):
    """What is wrong with one file; the caller names the file."""


def _import_idx(spec: DatasetSpec, source: Path, root: Path, where: str) -> bool:
    originals = _idx_originals(spec, source, where)
    target = root / spec.folder
    staged: dict[str, tuple[Path, str]] = {}
    try:
        for name, original in originals.items():
            staged[name] = (_temp_name(target, name), original.name)
            try:
                _decompressed_copy(original, staged[name][0])
            except _Bad as bad:
                raise UserError(f"{where}: {original.name} {bad}") from None
        _check_idx(staged, where)
        for name, (path, _) in staged.items():
            os.replace(path, target / name)
    finally:
        for path, _ in staged.values():
            path.unlink(missing_ok=True)
    return True


def _idx_originals(spec: DatasetSpec, source: Path, where: str) -> dict[str, Path]:
    """Each idx file in `source` or in torchvision's layout under it, decompressed or `.gz`."""

    def originals(folder: Path) -> dict[str, Path]:
        paths = {
            n: [p for p in (folder / n, folder / f"{n}.gz") if p.is_file()] for n in spec.files
        }
        return {name: found[0] for name, found in paths.items() if found}

    found = originals(source)
    if len(found) < len(spec.files):
        nested = originals(source / spec.folder)
        if len(nested) == len(spec.files):
            return nested
        if not found and not nested:
            names = ", ".join(f"{name}(.gz)" for name in spec.files)
            raise UserError(
                f"{where} has none of the files of {spec.name}: looked for {names} in {source} and {source / spec.folder}"
            )
        missing = ", ".join(name for name in spec.files if name not in found)
        raise UserError(f"{where}: missing {missing} (as .gz archives or decompressed)")
    return found


def _decompressed_copy(original: Path, destination: Path) -> None:
    if original.suffix != ".gz":
        shutil.copyfile(original, destination)
        return
    try:
        with gzip.open(original, "rb") as src, open(destination, "xb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise _Bad(f"is not a valid gzip archive ({str(error) or type(error).__name__})") from None


def _check_idx(files: dict[str, tuple[Path, str]], where: str, hint: str = "") -> None:
    """Check the four idx files (name: path to read, name to show), then the pairs' counts."""
    counts = {}
    for name, (path, shown) in files.items():
        try:
            counts[name] = _idx_count(path, "labels" if "labels" in name else "images")
        except _Bad as bad:
            raise UserError(f"{where}: {shown} {bad}{hint}") from None
    for split in ("train", "t10k"):
        images, labels = f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte"
        if counts[images] != counts[labels]:
            raise UserError(
                f"{where}: {files[images][1]} holds {counts[images]} images but {files[labels][1]} holds {counts[labels]} labels{hint}"
            )


def _idx_count(path: Path, kind: str) -> int:
    """Check an idx file's header, size and (labels) values; return its number of items."""
    magic_expected, description = _IDX_MAGIC[kind]
    header_size = 16 if kind == "images" else 8
    size = path.stat().st_size
    with open(path, "rb") as file:
        header = file.read(header_size)
        if len(header) < 4:
            raise _Bad(f"is {size} bytes, too short for an idx file")
        (magic,) = struct.unpack(">I", header[:4])
        if magic != magic_expected:
            raise _Bad(f"has magic {magic}, expected {magic_expected} ({description})")
        if len(header) < header_size:
            raise _Bad(f"is {size} bytes, too short for its header")
        count = struct.unpack(">I", header[4:8])[0]
        item_size = 1
        if kind == "images":
            rows, cols = struct.unpack(">II", header[8:16])
            if (rows, cols) != (28, 28):
                raise _Bad(f"holds {rows}x{cols} images, expected 28x28")
            item_size = rows * cols
        expected = header_size + count * item_size
        if size != expected:
            promised = f"{count} {kind} ({expected} bytes)"
            raise _Bad(f"is {size} bytes, but its header promises {promised}")
        if kind == "labels":
            labels = np.frombuffer(file.read(), dtype=np.uint8)
            if labels.size and labels.max() >= 10:
                raise _Bad(f"has label {labels.max()}, expected 0..9")
    return count


def _import_cifar(spec: DatasetSpec, source: Path, root: Path, where: str) -> bool:
    stage = _temp_name(root, spec.folder)
    stage.mkdir()
    try:
        original = _cifar_original(spec, source, where)
        if original.is_dir():
            for name in spec.files:
                shutil.copyfile(original / name, stage / name)
            shown = f"{original.name}/" if original != source else ""
        else:
            _extract(spec, original, stage, where)
            shown = f"{original.name}: {spec.folder}/"
        for name in spec.files:
            try:
                entry, bytes_keys = _cifar_entry(spec, stage / name)
            except _Bad as bad:
                raise UserError(f"{where}: {shown}{name} {bad}") from None
            if bytes_keys:  # torchvision reads str keys, as the originals have
                with open(stage / name, "wb") as file:
                    pickle.dump(entry, file, protocol=4)
        try:
            os.rename(stage, root / spec.folder)
        except OSError:
            if not (root / spec.folder).exists():
                raise
            return False  # another process imported it meanwhile; theirs stays
        return True
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _cifar_original(spec: DatasetSpec, source: Path, where: str) -> Path:
    """The extracted folder (complete) in `source`, `source` itself, or the archive."""
    assert spec.archive is not None
    folders = (source / spec.folder, source)
    for folder in folders:
        if all((folder / name).is_file() for name in spec.files):
            return folder
    if (source / spec.archive).is_file():
        return source / spec.archive
    for folder in folders:
        if any((folder / name).is_file() for name in spec.files):
            missing = ", ".join(name for name in spec.files if not (folder / name).is_file())
            raise UserError(f"{where}: missing {missing} in {folder}")
    raise UserError(
        f"{where} has none of the files of {spec.name}: looked for {spec.archive}, or {', '.join(spec.files)} in {source} and {source / spec.folder}"
    )


def _extract(spec: DatasetSpec, archive: Path, stage: Path, where: str) -> None:
    """Extract the data set's files (only those) from the archive in one pass."""
    wanted = {f"{spec.folder}/{name}": name for name in spec.files}
    found = set()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = wanted.get(member.name.removeprefix("./"))
                if name is None or not member.isfile() or name in found:
                    continue
                src = tar.extractfile(member)
                assert src is not None  # a regular file
                with src, open(stage / name, "xb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                found.add(name)
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as error:
        reason = str(error) or type(error).__name__
        raise UserError(f"{where}: {archive.name} is not a valid tar.gz ({reason})") from None
    missing = [f"{spec.folder}/{name}" for name in spec.files if name not in found]
    if missing:
        raise UserError(f"{where}: {archive.name} lacks {', '.join(missing)}")


def _cifar_entry(spec: DatasetSpec, path: Path) -> tuple[dict[str, Any], bool]:
    """One CIFAR pickle, checked, with str keys; and whether its keys were bytes."""
    try:
        with open(path, "rb") as file:
            entry = ArrayUnpickler(file, encoding="latin1").load()  # runs no code
    except Exception as error:
        raise _Bad(f"is not a readable python pickle ({type(error).__name__}: {error})") from None
    if not isinstance(entry, dict):
        raise _Bad(f"holds a {type(entry).__name__}, expected a dict")
    bytes_keys = any(isinstance(key, bytes) for key in entry)
    entry = {key.decode("latin1") if isinstance(key, bytes) else key: v for key, v in entry.items()}
    if path.name == spec.files[-1]:  # the meta pickle
        names = entry.get(spec.meta_key)
        if not isinstance(names, list) or len(names) != spec.num_classes:
            raise _Bad(f"has no list of {spec.num_classes} class names under '{spec.meta_key}'")
        return entry, bytes_keys
    data = entry.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape[1:] != (3072,):
        found = (
            f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        )
        raise _Bad(f"has 'data' {found}, expected (N, 3072) uint8")
    try:
        labels = np.asarray(entry[spec.label_key])
    except KeyError:
        raise _Bad(f"has no '{spec.label_key}'") from None
    if labels.shape != (len(data),) or (labels.size and labels.dtype.kind not in "iu"):
        raise _Bad(f"has {labels.size} '{spec.label_key}' for {len(data)} images")
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        bad = labels.min() if labels.min() < 0 else labels.max()
        raise _Bad(f"has label {bad}, expected 0..{spec.num_classes - 1}")
    return entry, bytes_keys


def _check_present(spec: DatasetSpec, root: Path) -> None:
    where = f"--data_dir {root}"
    hint = "; delete it and import the data set again (--data_source DIR)"
    target = root / spec.folder
    missing = [name for name in spec.files if not (target / name).is_file()]
    if missing:
        raise UserError(f"{where}: {spec.folder} lacks {', '.join(missing)}; delete the folder")
    if spec.is_idx:
        _check_idx({n: (target / n, f"{spec.folder}/{n}") for n in spec.files}, where, hint)
        return
    for name in spec.files:
        try:
            _, bytes_keys = _cifar_entry(spec, target / name)
        except _Bad as bad:
            raise UserError(f"{where}: {spec.folder}/{name} {bad}{hint}") from None
        if bytes_keys:
            raise UserError(
                f"{where}: {spec.folder}/{name} has bytes keys, which torchvision cannot read{hint}"
            )
