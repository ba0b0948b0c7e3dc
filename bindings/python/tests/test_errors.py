"""Statuses, their names, and the exception each one becomes."""

from __future__ import annotations

import ctypes
import pickle

import pytest

import ferry
from ferry import _errors, _lib

EXPECTED = {
    1: ("FERRY_ERR_INVALID_ARGUMENT", ferry.InvalidArgumentError, ()),
    2: ("FERRY_ERR_INVALID_HANDLE", ferry.InvalidHandleError, ()),
    3: ("FERRY_ERR_NO_DEVICE", ferry.NoDeviceError, ()),
    4: ("FERRY_ERR_CUDA", ferry.CudaError, ()),
    5: ("FERRY_ERR_NVML", ferry.NvmlError, ()),
    6: ("FERRY_ERR_OUT_OF_MEMORY", ferry.OutOfMemoryError, (MemoryError,)),
    7: ("FERRY_ERR_UNSUPPORTED", ferry.UnsupportedError, ()),
    8: ("FERRY_ERR_IO", ferry.FerryIOError, (OSError,)),
    9: ("FERRY_ERR_FORMAT", ferry.FormatError, ()),
    10: ("FERRY_ERR_CLOSED", ferry.ClosedError, ()),
    11: ("FERRY_ERR_TIMEOUT", ferry.FerryTimeoutError, (TimeoutError,)),
    12: ("FERRY_ERR_LIMIT", ferry.LimitError, ()),
    99: ("FERRY_ERR_INTERNAL", ferry.InternalError, ()),
}


NOT_ERRORS = {ferry.Status.OK: "FERRY_OK", ferry.Status.END_OF_EPOCH: "FERRY_END_OF_EPOCH"}


def test_status_enum_matches_header(header):
    from_header = {v: k for k, v in header.items() if k in NOT_ERRORS.values() or k.startswith("FERRY_ERR_")}
    assert set(from_header) == {s.value for s in ferry.Status}
    for s in ferry.Status:
        expected = NOT_ERRORS.get(s, "FERRY_ERR_" + s.name)
        assert from_header[s.value] == expected
        assert ferry.status_name(s) == expected


def test_status_names_come_from_the_library():
    assert ferry.status_name(0) == "FERRY_OK"
    for status, (name, _, _) in EXPECTED.items():
        assert ferry.status_name(status) == name
    assert ferry.status_name(1000) == "FERRY_ERR_UNKNOWN_STATUS"
    assert ferry.status_name(-1) == "FERRY_ERR_UNKNOWN_STATUS"


def test_every_failing_status_has_its_own_class():
    assert set(EXPECTED) == {int(s) for s in ferry.Status if s not in NOT_ERRORS}
    classes = [cls for _, cls, _ in EXPECTED.values()]
    assert len(set(classes)) == len(classes)


@pytest.mark.parametrize("status", sorted(EXPECTED))
def test_check_raises_the_mapped_exception(status):
    name, cls, extra_bases = EXPECTED[status]
    with pytest.raises(cls) as info:
        _errors._check(status)
    err = info.value
    assert type(err) is cls
    assert isinstance(err, ferry.FerryError)
    for base in extra_bases:
        assert isinstance(err, base)
    assert err.status == status
    assert err.status_name == name
    assert name in str(err)
    assert isinstance(err.message, str)
    if isinstance(err, OSError):
        assert err.errno is None  # a ferry status is not an errno
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is cls and again.status == status and again.message == err.message


def test_end_of_epoch_is_not_an_error():
    # FERRY_END_OF_EPOCH (13) is a distinct non-error return: _check gives it back instead of raising.
    assert _lib.FERRY_END_OF_EPOCH == ferry.Status.END_OF_EPOCH == 13
    assert _errors._check(13) is ferry.Status.END_OF_EPOCH


def test_check_ok_is_silent_and_unknown_status_is_the_base_class():
    assert _errors._check(0) is None
    with pytest.raises(ferry.FerryError) as info:
        _errors._check(1000)
    assert type(info.value) is ferry.FerryError
    assert info.value.status == 1000
    assert info.value.status_name == "FERRY_ERR_UNKNOWN_STATUS"


def test_check_carries_the_library_message():
    # A failing call records its message for this thread; _check must pick it up.
    lib = _lib.lib()
    status = lib.ferry_memory_check(_lib.ferry_engine(0xDEADBEEF), ctypes.byref(_lib.MemorySnapshotStruct(size=160)))
    assert status == ferry.Status.INVALID_HANDLE
    with pytest.raises(ferry.InvalidHandleError) as info:
        _errors._check(status)
    assert info.value.message != ""
    assert info.value.message in str(info.value)


@pytest.mark.parametrize("size", [0, 4, 159])
def test_short_out_struct_is_invalid_argument(size):
    with ferry.Engine(ferry.CPU) as engine:
        snap = _lib.MemorySnapshotStruct(size=size)
        status = _lib.lib().ferry_memory_check(engine._handle, ctypes.byref(snap))
        with pytest.raises(ferry.InvalidArgumentError) as info:
            _errors._check(status)
        assert info.value.message
        engine.memory_check()  # the engine keeps working


def test_null_out_pointer_is_invalid_argument():
    with pytest.raises(ferry.InvalidArgumentError) as info:
        _errors._check(_lib.lib().ferry_device_count(None))
    assert info.value.message
