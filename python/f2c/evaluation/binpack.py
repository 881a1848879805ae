"""insightface ``.bin`` pair packs (``docs/design.md`` §3), read without running anything the
file names.

A pack is a pickle of ``(images, issame)``: a list of encoded images (JPEG/PNG), two per pair,
and a list of bools. Older builders store each image as ``bytes``; the current one stores a
1-D ``numpy.uint8`` array of the same bytes.

The unpickler imports nothing. It builds the pickle's own types (bytes, bytearray, str, bool,
int, list, tuple, …) and, from the globals a pack may name, only these stand-ins:

* ``_codecs.encode(str, "latin1")`` — how Python 3 writes bytes at protocol ≤ 2;
* ``numpy.dtype("u1")`` and its pickled state — no other dtype;
* a 1-D ``uint8`` array, as numpy 1.x and 2.x pickle one: ``numpy.core.multiarray._reconstruct``
  / ``numpy._core.multiarray._reconstruct`` (with ``numpy.ndarray`` and a ``(1, (n,), u1,
  False, raw)`` state) or ``numpy.core.numeric._frombuffer`` / ``numpy._core.numeric._frombuffer``
  (protocol 5); the result is the raw bytes, never a numpy object.

Every other global (``os.system``, ``numpy.load``, another dtype, a 2-D shape, …) is refused
with an error naming the file and the global, before anything runs.

Sizes are bounded by the file's: a pickle can name one object many times (its memo), so a
1 MB file could otherwise list one 1 MiB image 20,000 times and expand to 20 GiB when the
images are copied. Bytes built by ``_codecs.encode`` may not add up to more than the file size,
an image listed twice as the same object is refused, and the images together may not hold more
bytes than the file — all checked before any image is copied.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

from f2c.evaluation.errors import InputError

__all__ = ["read_bin"]

_NUMPY_CORE = ("numpy.core", "numpy._core")  # numpy 1.x and 2.x spell the module differently
_U1_NAMES = ("u1", b"u1", "uint8", b"uint8", "|u1", b"|u1")


def _refuse(what: str) -> pickle.UnpicklingError:
    return pickle.UnpicklingError(f"{what}: a .bin pack may only hold 1-D uint8 arrays")


class _NdarrayName:
    """What ``numpy.ndarray`` unpickles to: a name ``_reconstruct`` checks, nothing callable."""

    def __setstate__(self, state: Any) -> None:
        raise _refuse("refusing state for numpy.ndarray itself")


_NDARRAY = _NdarrayName()


class _Uint8Dtype:
    """``numpy.dtype('u1')``; its pickled state must be that of a plain uint8."""

    def __setstate__(self, state: Any) -> None:
        # (version 3, byte order '|', no subarray, names or fields, sizes -1, -1, flags 0)
        if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3
                and state[1] in ("|", b"|") and state[2:] == (None, None, None, -1, -1, 0)):
            raise _refuse(f"refusing numpy dtype state {state!r}")


class _Uint8Array:
    """A 1-D uint8 array as its raw bytes (``data``), built by one of the numpy stand-ins."""

    def __init__(self, data: bytes | bytearray | None, limit: int) -> None:
        self.data = data
        self.limit = limit

    def __setstate__(self, state: Any) -> None:
        if self.data is not None:
            raise _refuse("an array's state is set twice")
        if isinstance(state, tuple) and len(state) == 5 and state[0] == 1:
            state = state[1:]  # versioned state (every numpy since 1.0 writes it)
        if not (isinstance(state, tuple) and len(state) == 4):
            raise _refuse("refusing a numpy array state that is not (shape, dtype, order, data)")
        shape, dtype, _fortran, raw = state
        self.data = _checked_buffer(raw, dtype, shape, self.limit)


def _checked_buffer(raw: Any, dtype: Any, shape: Any, limit: int) -> bytes | bytearray:
    if not isinstance(dtype, _Uint8Dtype):
        raise _refuse("refusing a numpy array whose dtype is not uint8")
    if not isinstance(raw, (bytes, bytearray)):
        raise _refuse(f"refusing numpy array data of type {type(raw).__name__}")
    if not (isinstance(shape, tuple) and len(shape) == 1 and shape[0] == len(raw)):
        raise _refuse(f"refusing a numpy array of shape {shape!r} over {len(raw)} bytes")
    if len(raw) > limit:
        raise _refuse(f"refusing a {len(raw)}-byte array (more than the file's {limit} bytes)")
    return raw


class _BinUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, source: str, limit: int) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source
        self.limit = limit  # most bytes one array may hold: the file size
        self.encoded = 0  # bytes built by _codecs.encode so far (each call makes a new copy)

    def find_class(self, module: str, name: str) -> Any:
        # bound methods: a pickle cannot set attributes on them (BUILD) as on a function
        if (module, name) == ("_codecs", "encode"):
            return self._latin1_encode
        if (module, name) == ("numpy", "ndarray"):
            return _NDARRAY
        if (module, name) == ("numpy", "dtype"):
            return self._dtype
        if module in {f"{m}.multiarray" for m in _NUMPY_CORE} and name == "_reconstruct":
            return self._reconstruct
        if module in {f"{m}.numeric" for m in _NUMPY_CORE} and name == "_frombuffer":
            return self._frombuffer
        raise pickle.UnpicklingError(
            f"{self.source}: refusing to load {module}.{name}: a .bin pack may only contain "
            f"bytes (or 1-D uint8 arrays), bool, int, list and tuple"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"{self.source}: persistent ids are not allowed in a .bin")

    def _latin1_encode(self, text: Any, encoding: Any = "latin1", errors: Any = "strict") -> bytes:
        # Python 3 pickles bytes at protocol <= 2 as _codecs.encode(str, 'latin1'); only that
        # exact, side-effect-free use is allowed.
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
            raise pickle.UnpicklingError("_codecs.encode is only allowed as (str, 'latin1')")
        self.encoded += len(text)
        if self.encoded > self.limit:
            raise pickle.UnpicklingError(
                f"_codecs.encode built {self.encoded} bytes, more than the file's {self.limit} "
                f"(one string expanded many times)"
            )
        return text.encode("latin1")

    def _dtype(self, obj: Any, align: Any = False, copy: Any = False) -> _Uint8Dtype:
        if obj not in _U1_NAMES or align not in (False, 0):
            raise _refuse(f"refusing numpy dtype {obj!r}")
        return _Uint8Dtype()

    def _reconstruct(self, cls: Any, shape: Any, typecode: Any) -> _Uint8Array:
        if cls is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
            raise _refuse("refusing numpy _reconstruct of anything but an empty ndarray")
        return _Uint8Array(None, self.limit)  # filled by its pickled state

    def _frombuffer(self, buf: Any, dtype: Any, shape: Any, order: Any) -> _Uint8Array:
        if order not in ("C", "F", "A", "K"):
            raise _refuse(f"refusing numpy memory order {order!r}")
        return _Uint8Array(_checked_buffer(buf, dtype, shape, self.limit), self.limit)


def _check_structure(obj: Any, source: str, limit: int) -> tuple[list[bytes], list[bool]]:
    def refuse(what: str) -> InputError:
        return InputError(f"{source}: not an insightface .bin pack: {what}")

    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise refuse(f"expected a pair (images, issame), got {type(obj).__name__}")
    blobs, issame = obj
    if not isinstance(blobs, (list, tuple)) or not isinstance(issame, (list, tuple)):
        raise refuse("images and issame must be lists")
    images: list[bytes | bytearray] = []
    first_use: dict[int, int] = {}  # id of an image's buffer -> its first index
    total = 0
    for i, b in enumerate(blobs):
        if isinstance(b, _Uint8Array) and b.data is not None:
            b = b.data
        if not isinstance(b, (bytes, bytearray)):
            raise refuse(f"image {i} is a {type(b).__name__}, not bytes")
        # CPython shares the 0- and 1-byte bytes objects; no image is that short anyway
        if len(b) > 1 and first_use.setdefault(id(b), i) != i:
            raise refuse(f"image {i} is the same object as image {first_use[id(b)]} "
                         f"(a shared reference; each image must be stored once)")
        total += len(b)
        if total > limit:
            raise refuse(f"the images hold more than the file's {limit} bytes")
        images.append(b)
    flags: list[bool] = []
    for i, f in enumerate(issame):
        if isinstance(f, bool) or (isinstance(f, int) and f in (0, 1)):
            flags.append(bool(f))
        else:
            raise refuse(f"issame[{i}] is {f!r}, not a bool")
    if len(images) != 2 * len(flags):
        raise refuse(f"{len(images)} images for {len(flags)} pairs (expected two per pair)")
    if not flags:
        raise refuse("no pairs")
    return [bytes(b) for b in images], flags


def read_bin(path: str | os.PathLike[str]) -> tuple[list[bytes], list[bool]]:
    """The encoded images and the same/different flags of a ``.bin`` pack (see the module
    docstring); any refusal or corruption is an :class:`InputError` (a ``ValueError``)
    naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            obj = _BinUnpickler(f, str(path), size).load()  # type: ignore[arg-type]
    except FileNotFoundError:
        raise FileNotFoundError(f".bin pack not found: {path}") from None
    except pickle.UnpicklingError as e:
        raise InputError(str(e) if str(path) in str(e) else f"{path}: {e}") from e
    except (EOFError, AttributeError, IndexError, TypeError, KeyError, ValueError) as e:
        raise InputError(f"{path}: corrupt or truncated pickle: {e}") from e
    return _check_structure(obj, str(path), size)
