"""The DLPack hand-off: the ctypes mirror of the new structs, capsules taken and not taken, the legacy
capsule, numpy's zero-copy import, and that every path gives the batch slot back."""

from __future__ import annotations

import array
import ctypes
import gc
import re
from ctypes import c_char_p, c_int, c_void_p

import pytest

import ferry
from ferry import _dlpack, _lib

from conftest import find_header
from loader_helpers import fresh_rng, rows

# Own function objects: setting argtypes on ctypes.pythonapi's shared attributes would change them for
# every module (ferry's among them).
_get_pointer = ctypes.PYFUNCTYPE(c_void_p, ctypes.py_object, c_char_p)(("PyCapsule_GetPointer", ctypes.pythonapi))
_set_name = ctypes.PYFUNCTYPE(c_int, ctypes.py_object, c_char_p)(("PyCapsule_SetName", ctypes.pythonapi))
_get_name = ctypes.PYFUNCTYPE(c_char_p, ctypes.py_object)(("PyCapsule_GetName", ctypes.pythonapi))


# --- the mirror of ferry.h ------------------------------------------------------------------------------


@pytest.mark.parametrize("struct, size", [
    (_lib.FieldStruct, 88), (_lib.TokenOptions, 32), (_lib.IteratorOptions, 80), (_lib.Transform, 216),
    (_lib.IteratorPosition, 48), (_lib.BatchProperties, 32), (_lib.DLTensor, 48),
    (_lib.DLManagedTensorVersioned, 80), (_lib.DLManagedTensor, 64),
])
def test_struct_sizes(struct, size):
    assert ctypes.sizeof(struct) == size


def _header_text():
    path = find_header()
    if path is None:
        pytest.skip("ferry.h is not reachable from the package directory")
    return path.read_text()


@pytest.mark.parametrize("struct, cname, typedef", [
    (_lib.FieldStruct, "ferry_field", "struct ferry_field"),
    (_lib.TokenOptions, "ferry_token_options", "struct ferry_token_options"),
    (_lib.IteratorOptions, "ferry_iterator_options", "struct ferry_iterator_options"),
    (_lib.Transform, "ferry_transform", "struct ferry_transform"),
    (_lib.IteratorPosition, "ferry_iterator_position", "struct ferry_iterator_position"),
    (_lib.BatchProperties, "ferry_batch_properties", "struct ferry_batch_properties"),
    (_lib.DLManagedTensorVersioned, "DLManagedTensorVersioned", "struct DLManagedTensorVersioned"),
    (_lib.DLTensor, "DLTensor", "struct"),
])
def test_struct_fields_match_header(struct, cname, typedef):
    text = _header_text()
    head, sep, _ = text.partition("} %s;" % cname)
    assert sep, cname
    start = head.rfind("typedef %s {" % typedef)
    assert start >= 0, cname
    code = re.sub(r"/\*.*?\*/", "", head[start + len("typedef %s {" % typedef):], flags=re.S)
    names = [m.group(1) for m in re.finditer(r"\(?\*?(\w+)\)?(?:\[\w+\])?(?:\([^)]*\))?\s*;", code)]
    assert [n for n, _ in struct._fields_] == names


def test_constants_match_header(header):
    for name in dir(_lib):
        if re.fullmatch(r"FERRY_(DTYPE|TOKENS|ITERATOR_F|MAX_DIMS|END_OF_EPOCH|TRANSFORM|LAYOUT|STAGING)\w*", name):
            assert getattr(_lib, name) == header[name], name
    for name, (code, _) in ferry._sources.DTYPES.items():
        assert header["FERRY_DTYPE_" + name.upper()] == code
    text = _header_text()
    for name in ("kDLCPU", "kDLCUDA", "kDLCUDAHost", "kDLInt", "kDLUInt", "kDLFloat", "kDLBfloat", "kDLBool"):
        m = re.search(r"\b%s = (\d+)" % name, text)
        assert m and int(m.group(1)) == getattr(_lib, name), name


# --- hand-off -------------------------------------------------------------------------------------------


def _source(rng, n=64, payload=12):
    data = bytearray(rng.randbytes(n * payload))
    return ferry.ArraySource({"data": (data, "uint8", (n, payload)), "idx": array.array("i", range(n))}), bytes(data)


@pytest.fixture
def ring():
    """An iterator with a ring of two slots and a short timeout: a slot that does not come back fails
    the test within a second."""
    rng, seed = fresh_rng()
    src, data = _source(rng)
    engine = ferry.Engine(ferry.CPU, sample_interval_ms=0)
    it = ferry.Iterator(engine, src, 4, shuffle=True, seed=seed, prefetch=2, timeout_ms=1000)
    yield it, data
    it.close()
    engine.close()
    src.close()


def _next(it):
    b = it.next()
    if b is None:
        b = it.next()
    return b


def test_versioned_capsule_contents(ring):
    it, data = ring
    b = _next(it)
    f = b.field("data")
    assert f.__dlpack_device__() == (_lib.kDLCPU, 0)
    ptr = f.data_ptr
    cap = f.__dlpack__(max_version=(1, 2))
    assert f.exported and _get_name(cap) == b"dltensor_versioned"
    t = ctypes.cast(_get_pointer(cap, b"dltensor_versioned"), ctypes.POINTER(_lib.DLManagedTensorVersioned)).contents
    assert (t.version.major, t.version.minor) == (1, 0) and t.flags == 0
    dl = t.dl_tensor
    assert dl.data == ptr and dl.ndim == 2 and [dl.shape[0], dl.shape[1]] == [4, 12] and not dl.strides
    assert (dl.dtype.code, dl.dtype.bits, dl.dtype.lanes) == (_lib.kDLUInt, 8, 1)
    assert (dl.device.device_type, dl.device.device_id) == (_lib.kDLCPU, 0)
    assert ctypes.string_at(ptr, 48) == rows(data, 12, b.indices())
    with pytest.raises(BufferError, match="once"):
        f.__dlpack__(max_version=(1, 0))
    b.release()
    del cap  # never consumed: the capsule's destructor calls the deleter
    for _ in range(20):
        _next(it).release()


def test_unconsumed_capsules_and_fields_give_the_slot_back(ring):
    it, data = ring
    for k in range(24):
        b = _next(it)
        kind = k % 3
        if kind == 0:
            cap = b.field("data").__dlpack__(max_version=(1, 0))  # versioned, dropped
        elif kind == 1:
            cap = b.field("idx").__dlpack__()  # legacy, dropped
        else:
            cap = b.field(0)  # a field never exported, dropped
        b.release()
        del cap
    assert not _dlpack._legacy_alive


def test_consumed_legacy_capsule(ring):
    it, data = ring
    for _ in range(8):
        b = _next(it)
        idx = b.indices()
        f = b.field("data")
        ptr = f.data_ptr
        cap = f.__dlpack__(max_version=(0, 8))
        assert _get_name(cap) == b"dltensor"
        m = ctypes.cast(_get_pointer(cap, b"dltensor"), ctypes.POINTER(_lib.DLManagedTensor))
        dl = m.contents.dl_tensor
        assert dl.data == ptr and dl.ndim == 2 and (dl.shape[0], dl.shape[1]) == (len(idx), 12)
        assert ctypes.string_at(dl.data, len(idx) * 12) == rows(data, 12, idx)
        # Consume it as a DLPack consumer does: rename, then call the deleter when done.
        assert _set_name(cap, b"used_dltensor") == 0
        b.release()
        del cap
        assert _dlpack._legacy_alive  # the consumer owns it now
        m.contents.deleter(m)
        assert not _dlpack._legacy_alive


def test_consumed_versioned_capsule(ring):
    it, _ = ring
    for _ in range(8):
        b = _next(it)
        cap = b.field(1).__dlpack__(max_version=(1, 0))
        t = ctypes.cast(_get_pointer(cap, b"dltensor_versioned"), ctypes.POINTER(_lib.DLManagedTensorVersioned))
        _set_name(cap, b"used_dltensor_versioned")
        b.release()
        del cap  # renamed: the destructor leaves it alone; the slot waits for the deleter
        t.contents.deleter(t)


def test_held_field_holds_the_slot():
    rng, _ = fresh_rng()
    src, _ = _source(rng)
    # No pinned budget: the ring cannot grow, so a slot that a field keeps shows as a refusal.
    with ferry.Engine(ferry.CPU, sample_interval_ms=0) as engine, \
            ferry.Iterator(engine, src, 4, prefetch=2, pinned_budget=-1) as it:
        b = _next(it)
        keep = b.field("data")
        b.release()
        other = _next(it)
        with pytest.raises(ferry.LimitError, match="2 batches of the ring are still held by the caller"):
            _next(it)  # one slot is held by `keep`, the other by `other`
        other.release()
        with pytest.raises(ferry.LimitError, match="1 batch of the ring is still held by the caller"):
            _next(it)  # `keep` still holds the slot the next batch needs
        keep.close()
        keep.close()
        _next(it).release()
    src.close()


def test_refused_requests(ring):
    it, _ = ring
    b = _next(it)
    f = b.field("data")
    with pytest.raises(BufferError, match="device"):
        f.__dlpack__(max_version=(1, 0), dl_device=(_lib.kDLCUDA, 0))
    with pytest.raises(BufferError, match="copy"):
        f.__dlpack__(max_version=(1, 0), copy=True)
    assert not f.exported  # a refused request leaves the field as it was
    cap = f.__dlpack__(max_version=(1, 0), dl_device=(_lib.kDLCPU, 0), copy=False, stream=None)
    assert "exported" in repr(f)
    with pytest.raises(BufferError):
        f.to_bytes()
    b.release()
    del cap


def test_numpy_from_dlpack_is_zero_copy(ring):
    np = pytest.importorskip("numpy")
    it, data = ring
    for _ in range(20):  # more batches than slots: every array's deleter gives its slot back
        b = _next(it)
        f = b.field("data")
        ptr = f.data_ptr
        a = np.from_dlpack(f)
        b2 = np.from_dlpack(b.field("idx"))
        idx = b.indices()
        b.release()
        assert a.__array_interface__["data"][0] == ptr
        assert a.dtype == np.uint8 and a.shape == (len(idx), 12)
        assert a.tobytes() == rows(data, 12, idx) and b2.tolist() == idx
        # The array is the batch's memory itself.
        a[0, 0] ^= 0xFF
        assert ctypes.string_at(ptr, 1)[0] == a[0, 0]
        del a, b2


def test_numpy_takes_the_legacy_capsule(ring):
    np = pytest.importorskip("numpy")
    it, data = ring

    class Legacy:
        """A producer answering with the pre-1.0 capsule whatever the consumer asks."""

        def __init__(self, f):
            self.f = f

        def __dlpack__(self, **kw):
            return self.f.__dlpack__(stream=kw.get("stream"))

        def __dlpack_device__(self):
            return self.f.__dlpack_device__()

    for _ in range(10):
        b = _next(it)
        f = b.field("data")
        ptr = f.data_ptr
        a = np.from_dlpack(Legacy(f))
        idx = b.indices()
        b.release()
        assert a.__array_interface__["data"][0] == ptr and a.tobytes() == rows(data, 12, idx)
        del a
    assert not _dlpack._legacy_alive


def test_stream_is_ignored_on_the_cpu(ring):
    it, _ = ring
    b = _next(it)
    cap = b.field(0).__dlpack__(stream=12345, max_version=(1, 0))
    b.release()
    del cap


def test_field_finalizer_runs_on_gc(ring):
    it, _ = ring
    b = _next(it)
    f = b.field(0)
    fin = f._finalizer
    b.release()
    del f
    gc.collect()
    assert not fin.alive
