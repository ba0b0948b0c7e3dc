"""The loader, the version and the ctypes mirror of ferry.h."""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ferry
from ferry import _lib

from conftest import PACKAGE_ROOT, find_up


def _source_version() -> str:
    """VERSION, ferry's one version string, of the checkout or GPU bundle the package sits in."""
    path = find_up("VERSION")
    assert path is not None, f"no VERSION file above {PACKAGE_ROOT}"
    return path.read_text().strip()


def test_version_matches_version_file_and_library():
    assert ferry.__version__ == _source_version()
    v = ferry.version()
    assert isinstance(v, tuple) and len(v) == 3 and all(isinstance(x, int) for x in v)
    assert ".".join(map(str, v)) == ferry.__version__


def test_version_matches_header_macros(header):
    expected = (header["FERRY_VERSION_MAJOR"], header["FERRY_VERSION_MINOR"], header["FERRY_VERSION_PATCH"])
    assert ferry.version() == expected
    assert (_lib.FERRY_VERSION_MAJOR, _lib.FERRY_VERSION_MINOR, _lib.FERRY_VERSION_PATCH) == expected


def test_constants_match_header(header):
    for name in (
        "FERRY_DEVICE_CPU",
        "FERRY_DEVICE_F_PCIE",
        "FERRY_SYSTEM_F_CUDA",
        "FERRY_SYSTEM_F_NVML",
        "FERRY_MAX_ENGINES",
        "FERRY_MEMORY_F_DEVICE",
        "FERRY_MEMORY_F_PROCESS",
        "FERRY_MEMORY_F_HOST",
        "FERRY_MEMORY_F_LIVE",
        "FERRY_TOKENS_UINT16",
        "FERRY_TOKENS_UINT32",
        "FERRY_TOKENS_LLMC",
        "FERRY_TOKENS_F_RANDOM",
        "FERRY_TOKENS_F_WINDOW",
        "FERRY_GPT_ORDER_FERRY",
        "FERRY_GPT_ORDER_MEGATRON",
        "FERRY_SPLIT_TRAIN",
        "FERRY_SPLIT_VALID",
        "FERRY_SPLIT_TEST",
        "FERRY_GPT_F_NO_CACHE",
        "FERRY_BLEND_ORDER_FERRY",
        "FERRY_BLEND_ORDER_MEGATRON",
        "FERRY_SHIFT_F_MASK_EOD",
        "FERRY_SHIFT_F_RESET_POSITIONS",
        "FERRY_IMAGES_F_ALLOW_EMPTY",
        "FERRY_IMAGES_F_NO_CACHE",
    ):
        assert getattr(_lib, name) == header[name], name
    assert ferry.CPU == header["FERRY_DEVICE_CPU"]
    for p in ferry.Pressure:
        assert header["FERRY_PRESSURE_" + p.name] == p.value


@pytest.mark.parametrize(
    "struct, size",
    [
        (_lib.DeviceProperties, 416),
        (_lib.SystemProperties, 688),
        (_lib.EngineOptions, 16),
        (_lib.MemorySnapshotStruct, 160),
        (_lib.TokenOptions, 32),
        (_lib.RaggedOptions, 24),
        (_lib.MegatronOptions, 24),
        (_lib.GPTOptions, 64),
        (_lib.GPTIndexInfo, 2072),
        (_lib.BlendOptions, 24),
        (_lib.ImageSourceOptions, 40),
        (_lib.Transform, 216),
    ],
)
def test_struct_sizes(struct, size):
    assert ctypes.sizeof(struct) == size


def _header_struct_fields(text: str, name: str):
    body = re.search(r"typedef struct %s \{(.*?)\} %s;" % (name, name), text, flags=re.S)
    assert body, name
    code = re.sub(r"/\*.*?\*/", "", body.group(1), flags=re.S)
    return [m.group(1) for m in re.finditer(r"(\w+)(?:\[\d+\])?\s*;", code)]


@pytest.mark.parametrize(
    "struct, cname",
    [
        (_lib.DeviceProperties, "ferry_device_properties"),
        (_lib.SystemProperties, "ferry_system_properties"),
        (_lib.EngineOptions, "ferry_engine_options"),
        (_lib.MemorySnapshotStruct, "ferry_memory_snapshot"),
        (_lib.TokenOptions, "ferry_token_options"),
        (_lib.RaggedOptions, "ferry_ragged_options"),
        (_lib.MegatronOptions, "ferry_megatron_options"),
        (_lib.GPTOptions, "ferry_gpt_options"),
        (_lib.GPTIndexInfo, "ferry_gpt_index_info"),
        (_lib.BlendOptions, "ferry_blend_options"),
        (_lib.ImageSourceOptions, "ferry_image_source_options"),
        (_lib.Transform, "ferry_transform"),
    ],
)
def test_struct_fields_match_header(struct, cname):
    from conftest import find_header

    path = find_header()
    if path is None:
        pytest.skip("ferry.h is not reachable from the package directory")
    assert [n for n, _ in struct._fields_] == _header_struct_fields(path.read_text(), cname)


def test_every_header_function_is_declared():
    from conftest import find_header

    path = find_header()
    if path is None:
        pytest.skip("ferry.h is not reachable from the package directory")
    declared = set(re.findall(r"FERRY_API\s+[\w\s\*]+?\b(ferry_\w+)\s*\(", path.read_text()))
    assert declared == set(_lib.SYMBOLS)
    lib = _lib.lib()
    for name in _lib.SYMBOLS:
        fn = getattr(lib, name)
        assert fn.argtypes is not None, name
        assert fn.restype is not None, name


def test_library_path_is_the_requested_one():
    path = ferry.library_path()
    env = os.environ.get("FERRY_LIBRARY")
    if env:
        assert path == os.path.abspath(env)
    assert os.path.isfile(path) or os.sep not in path


def _run(code: str, env_update: dict) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(env_update)
    env["PYTHONPATH"] = str(PACKAGE_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_missing_library_names_the_places_tried(tmp_path: Path):
    missing = str(tmp_path / "no" / "libferry.so")
    code = (
        "import ferry\n"
        "try:\n"
        "    ferry.version()\n"
        "except ferry.LibraryNotFoundError as e:\n"
        "    assert isinstance(e, ImportError)\n"
        "    print(e)\n"
        "else:\n"
        "    raise SystemExit('loaded')\n"
    )
    r = _run(code, {"FERRY_LIBRARY": missing})
    assert r.returncode == 0, r.stderr
    assert "FERRY_LIBRARY" in r.stdout and missing in r.stdout and "does not exist" in r.stdout


def test_import_does_not_load_the_library(tmp_path: Path):
    # Importing the package must work where the library is not built yet.
    r = _run("import ferry; print(ferry.__version__)", {"FERRY_LIBRARY": str(tmp_path / "absent.so")})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ferry.__version__
