"""Reading a run folder's files back without running code: only what this program writes loads.

A run folder may be someone else's, and unpickling can call any function a file names. `.dat`
dumps and `.pkl` mask files go through an unpickler that rebuilds numpy arrays only; torch files
through `torch.load(weights_only=True)` with numpy arrays and the given classes allowed. Anything
else is refused with `Refused`, a UserError naming the file, before any of it runs.
"""

import codecs
import pickle
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lth.errors import UserError

try:  # numpy 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

NUMERIC_KINDS = "biufc"  # bool, signed and unsigned integers, floats, complex numbers
NOT_RUN = "it was not loaded: a run folder's files are read without running code"


class Refused(UserError):
    """A file that holds something this program never writes (it could run code when loaded)."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for bytes (latin1) only."""
    if encoding != "latin1":
        raise Refused(f"it encodes to {encoding!r} with _codecs.encode")
    return codecs.encode(text, "latin1")


# What a pickled numpy array refers to, under numpy 1's and numpy 2's module names.
_ARRAY_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,  # the bytes of a protocol-2 pickle
    ("builtins", "bytes"): bytes,  # empty bytes, protocol 2
    ("__builtin__", "bytes"): bytes,
}
for _module in ("numpy.core", "numpy._core"):
    _ARRAY_GLOBALS[(f"{_module}.multiarray", "_reconstruct")] = _multiarray._reconstruct
    _ARRAY_GLOBALS[(f"{_module}.multiarray", "scalar")] = _multiarray.scalar
    _ARRAY_GLOBALS[(f"{_module}.numeric", "_frombuffer")] = _numeric._frombuffer  # protocol 5


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain values only, so loading runs no code."""

    def find_class(self, module: str, name: str) -> Any:
        found = _ARRAY_GLOBALS.get((module, name))
        if found is None:
            raise Refused(f"it refers to {module}.{name}")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise Refused("it refers to an object outside the file")


def _unpickle(path: Path | str, what: str) -> Any:
    try:
        with open(path, "rb") as file:
            return ArrayUnpickler(file, encoding="latin1").load()
    except Refused as refused:
        raise Refused(f"{path}: refused, {refused}, not to numpy arrays only; {NOT_RUN}") from None
    except Exception as error:  # missing, or any failure to open or unpickle it
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        raise UserError(f"{path}: cannot read {what} from it ({reason})") from None


def _is_numeric_array(value: object) -> bool:
    return type(value) is np.ndarray and value.dtype.kind in NUMERIC_KINDS


def load_array(path: Path | str) -> np.ndarray:
    """A `.dat` dump (`ndarray.dump`)."""
    value = _unpickle(path, "an array")
    if not _is_numeric_array(value):
        raise Refused(f"{path}: refused, it holds {_describe(value)}, not an array of numbers")
    return value


def load_array_list(path: Path | str) -> list[np.ndarray]:
    """A `.pkl` mask file (a pickled list of arrays)."""
    value = _unpickle(path, "a mask")
    if not isinstance(value, list) or not all(_is_numeric_array(v) for v in value):
        raise Refused(
            f"{path}: refused, it holds {_describe(value)}, not a list of arrays of numbers"
        )
    return value


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of {value.dtype}"
    if isinstance(value, list):
        odd = [v for v in value if not _is_numeric_array(v)]
        return f"a list with {_describe(odd[0])} in it" if odd else "a list"
    return f"a {type(value).__name__}"


def _numpy_torch_globals() -> list:
    """What `weights_only` needs for a checkpoint's numpy arrays, under both numpy names."""
    allowed: list = [np.ndarray, np.dtype]
    for module in ("numpy.core", "numpy._core"):
        allowed.append((_multiarray._reconstruct, f"{module}.multiarray._reconstruct"))
        allowed.append((_multiarray.scalar, f"{module}.multiarray.scalar"))
    codes = "?" + np.typecodes["AllInteger"] + np.typecodes["AllFloat"]
    allowed += list(dict.fromkeys(type(np.dtype(code)) for code in codes))
    return allowed


NUMPY_TORCH_GLOBALS = _numpy_torch_globals()
_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+)")  # how weights_only names what it does not allow


def load_torch(
    path: Path | str, what: str, classes: Iterable[type] = (), mmap: bool = False
) -> Any:
    """`torch.load` onto the CPU with `weights_only`, numpy arrays and `classes` allowed;
    Refused when the file refers to anything else, other failures unchanged."""
    allowed = [*NUMPY_TORCH_GLOBALS, *classes]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        found = _REFUSED_GLOBAL.search(str(error))
        if found is None:
            raise
        raise Refused(
            f"{what} {path} holds a reference to {found.group(1)}, which no file of this program"
            f" holds; {NOT_RUN}"
        ) from None
