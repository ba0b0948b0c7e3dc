"""Statuses and the exceptions they become.

Every ``ferry_status`` other than ``FERRY_OK`` maps to exactly one subclass of :class:`FerryError`.
:func:`_check` is the single place where that mapping happens.
"""

from __future__ import annotations

import enum
import operator
import os
from typing import Dict, Optional, Type

from . import _lib

__all__ = [
    "Status",
    "FerryError",
    "InvalidArgumentError",
    "InvalidHandleError",
    "NoDeviceError",
    "CudaError",
    "NvmlError",
    "OutOfMemoryError",
    "UnsupportedError",
    "FerryIOError",
    "FormatError",
    "ClosedError",
    "FerryTimeoutError",
    "LimitError",
    "InternalError",
    "status_name",
]


class Status(enum.IntEnum):
    """``ferry_status`` values. They are explicit in the header and never renumbered."""

    OK = 0
    INVALID_ARGUMENT = 1
    INVALID_HANDLE = 2
    NO_DEVICE = 3
    CUDA = 4
    NVML = 5
    OUT_OF_MEMORY = 6
    UNSUPPORTED = 7
    IO = 8
    FORMAT = 9
    CLOSED = 10
    TIMEOUT = 11
    LIMIT = 12
    END_OF_EPOCH = 13
    """Not an error: ``ferry_iterator_next`` reached the end of an epoch; the next call starts the next."""
    INTERNAL = 99


def status_name(status: int) -> str:
    """Returns the library's name for a status, e.g. ``"FERRY_ERR_NO_DEVICE"``.

    An unknown value gives ``"FERRY_ERR_UNKNOWN_STATUS"``. Safe from any thread.
    """
    raw = _lib.lib().ferry_status_string(int(status))
    return raw.decode("utf-8", "replace") if raw else "FERRY_ERR_UNKNOWN_STATUS"


_library_status_name = status_name  # FerryError.__init__ has a parameter of the same name


class FerryError(Exception):
    """A ferry call failed.

    Attributes:
        status: the ``ferry_status`` value (an int).
        status_name: the library's name for it, e.g. ``"FERRY_ERR_NO_DEVICE"``.
        message: the library's message for the failure (``ferry_last_error()`` of the calling thread,
            copied when the exception was made), or a message supplied by the binding.
    """

    #: The status this class stands for; None on the base class.
    STATUS: Optional[int] = None

    def __init__(self, status: int, message: str = "", status_name: Optional[str] = None) -> None:
        self.status = int(status)
        self.status_name = status_name if status_name is not None else _library_status_name(status)
        self.message = message
        super().__init__(self.status, self.message)
        if isinstance(self, OSError):
            # OSError reads (status, message) as (errno, strerror); a ferry status is not an errno.
            self.errno = None
            self.strerror = message
            self.filename = None

    def __str__(self) -> str:
        if self.message:
            return f"{self.status_name}: {self.message}"
        return self.status_name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.message!r})"


class InvalidArgumentError(FerryError):
    """FERRY_ERR_INVALID_ARGUMENT: a NULL pointer, a wrong struct size, an unknown enum or flag value."""

    STATUS = Status.INVALID_ARGUMENT


class InvalidHandleError(FerryError):
    """FERRY_ERR_INVALID_HANDLE: the handle is NULL, stale, of another type, or made up."""

    STATUS = Status.INVALID_HANDLE


class NoDeviceError(FerryError):
    """FERRY_ERR_NO_DEVICE: no usable GPU (driver library missing, no device, index out of range)."""

    STATUS = Status.NO_DEVICE


class CudaError(FerryError):
    """FERRY_ERR_CUDA: a CUDA driver call failed; the message carries the driver's error."""

    STATUS = Status.CUDA


class NvmlError(FerryError):
    """FERRY_ERR_NVML: an NVML call failed; the message carries NVML's error string."""

    STATUS = Status.NVML


class OutOfMemoryError(FerryError, MemoryError):
    """FERRY_ERR_OUT_OF_MEMORY: host or device memory could not be allocated."""

    STATUS = Status.OUT_OF_MEMORY


class UnsupportedError(FerryError):
    """FERRY_ERR_UNSUPPORTED: not supported on this device, platform or build."""

    STATUS = Status.UNSUPPORTED


class FerryIOError(FerryError, OSError):
    """FERRY_ERR_IO: a file or operating-system call failed."""

    STATUS = Status.IO

    # OSError formats itself from errno/strerror; keep FerryError's format instead.
    __str__ = FerryError.__str__


class FormatError(FerryError):
    """FERRY_ERR_FORMAT: malformed data (bad magic number, short file, a size that does not divide)."""

    STATUS = Status.FORMAT


class ClosedError(FerryError):
    """FERRY_ERR_CLOSED: the object was closed, or is shutting down."""

    STATUS = Status.CLOSED


class FerryTimeoutError(FerryError, TimeoutError):
    """FERRY_ERR_TIMEOUT: a bounded wait ran out."""

    STATUS = Status.TIMEOUT

    __str__ = FerryError.__str__


class LimitError(FerryError):
    """FERRY_ERR_LIMIT: a fixed limit was reached, e.g. too many live engines."""

    STATUS = Status.LIMIT


class InternalError(FerryError):
    """FERRY_ERR_INTERNAL: a bug in ferry. Please report it with the message."""

    STATUS = Status.INTERNAL


_BY_STATUS: Dict[int, Type[FerryError]] = {
    int(cls.STATUS): cls
    for cls in (
        InvalidArgumentError,
        InvalidHandleError,
        NoDeviceError,
        CudaError,
        NvmlError,
        OutOfMemoryError,
        UnsupportedError,
        FerryIOError,
        FormatError,
        ClosedError,
        FerryTimeoutError,
        LimitError,
        InternalError,
    )
}


def error_class(status: int) -> Type[FerryError]:
    """Returns the exception class for a failing status; :class:`FerryError` itself for unknown ones."""
    return _BY_STATUS.get(int(status), FerryError)


def _error(status: int, message: Optional[str] = None) -> FerryError:
    """Builds the exception for ``status``, reading the calling thread's last error when no message is
    given. Must run on the thread that made the failing call, before any other ferry call."""
    if message is None:
        raw = _lib.lib().ferry_last_error()
        message = raw.decode("utf-8", "replace") if raw else ""
    return error_class(status)(status, message)


def _check(status: int) -> Optional[Status]:
    """Raises the exception for a failing ``status``. The single status → exception map.

    Returns None for FERRY_OK, and :attr:`Status.END_OF_EPOCH` for FERRY_END_OF_EPOCH: that status is not
    a failure (only ``ferry_iterator_next`` returns it), so it never raises.
    """
    if status:
        if status == _END_OF_EPOCH:
            return Status.END_OF_EPOCH
        raise _error(status)
    return None


_END_OF_EPOCH = int(Status.END_OF_EPOCH)


def _closed(what: str) -> ClosedError:
    """The ClosedError raised when a closed Python object is used."""
    return ClosedError(Status.CLOSED, f"{what} is closed", "FERRY_ERR_CLOSED")


def _invalid(message: str) -> InvalidArgumentError:
    """The InvalidArgumentError raised for an argument that cannot even be passed to the library."""
    return InvalidArgumentError(Status.INVALID_ARGUMENT, message, "FERRY_ERR_INVALID_ARGUMENT")


def _c_string(text: object, what: str) -> bytes:
    """``text`` as the bytes of a NUL-terminated C string: the one place where the binding encodes a string
    for the library (paths, field and transform names, metric and pipeline names, addresses). A str is
    UTF-8 (a lone surrogate, as os.fsdecode makes of an undecodable byte, goes back to that byte); bytes
    and path-like objects are taken as os.fsencode gives them. A NUL inside would cut the C string short
    ("a\\0b" would become "a", "x.npy\\0junk" would open x.npy), so it is refused with InvalidArgumentError."""
    if isinstance(text, str):
        raw = text.encode("utf-8", "surrogateescape")
    elif isinstance(text, (bytes, os.PathLike)):
        raw = os.fsencode(text)
    else:
        raise TypeError(f"{what} must be a str, bytes or path, not {type(text).__name__}")
    if b"\0" in raw:
        raise _invalid(f"{what} {text!r} contains a NUL character")
    return raw


def _as_int(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, not bool")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{what} must be an int, not {type(value).__name__}") from None


def _as_int32(value: object, what: str) -> int:
    """Returns ``value`` as an int that fits int32_t; ctypes would silently truncate a larger one."""
    v = _as_int(value, what)
    if not -(2**31) <= v < 2**31:
        raise _invalid(f"{what} {v} does not fit int32_t")
    return v


def _as_int64(value: object, what: str) -> int:
    """Returns ``value`` as an int that fits int64_t; ctypes would silently wrap a larger one."""
    v = _as_int(value, what)
    if not -(2**63) <= v < 2**63:
        raise _invalid(f"{what} {v} does not fit int64_t")
    return v


def _as_uint64(value: object, what: str) -> int:
    """Returns ``value`` as an int that fits uint64_t (0 .. 2**64-1); ctypes would silently wrap another
    one (2**64 + 5 would become 5)."""
    v = _as_int(value, what)
    if not 0 <= v < 2**64:
        raise _invalid(f"{what} {v} does not fit uint64_t (0 .. 2**64-1)")
    return v


def _as_epoch(value: object, what: str = "epoch") -> int:
    """The one check of an epoch given to the library (set_epoch, restore, restore_elastic and the state
    dicts that reach them): an int in 0 .. 2**64-1, the range of the C API's uint64_t epoch. ``what``
    names it in the error."""
    return _as_uint64(value, what)


def _as_uint32(value: object, what: str) -> int:
    """Returns ``value`` as an int that fits uint32_t; ctypes would silently wrap a negative one."""
    v = _as_int(value, what)
    if not 0 <= v < 2**32:
        raise _invalid(f"{what} {v} does not fit uint32_t")
    return v
