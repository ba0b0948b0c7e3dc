"""Shared fixtures for the ferry Python tests.

GPU tests use the ``require_gpu`` fixture: it skips when no GPU is visible, and fails instead when the
environment sets ``FERRY_REQUIRE_GPU=1`` (the GPU runner does, so a missing GPU cannot pass silently).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the directory that holds pyproject.toml and ferry/

try:
    import ferry  # noqa: F401
except ImportError:  # run from a checkout without PYTHONPATH: use the package next to the tests
    sys.path.insert(0, str(PACKAGE_ROOT))
    import ferry  # noqa: F401


def gpu_required() -> bool:
    """True when the environment demands that GPU tests run (FERRY_REQUIRE_GPU=1)."""
    return os.environ.get("FERRY_REQUIRE_GPU") == "1"


def require_gpu_count() -> int:
    """Returns the number of visible GPUs; skips the test when there is none (fails if one is required)."""
    n = ferry.device_count()
    if n > 0:
        return n
    why = "no GPU: ferry.device_count() == 0 (" + (ferry.system_info().cuda_status or "no device") + ")"
    if gpu_required():
        pytest.fail("FERRY_REQUIRE_GPU=1 but " + why)
    pytest.skip(why)


@pytest.fixture
def require_gpu() -> int:
    """Skips the test without a GPU (fails when FERRY_REQUIRE_GPU=1); gives the device count."""
    return require_gpu_count()


def find_header() -> Optional[Path]:
    """Returns capi/ferry.h of the checkout the package sits in, or build/include/ferry.h, if reachable."""
    return find_up("capi/ferry.h", "build/include/ferry.h", "include/ferry.h", "ferry.h")


def find_up(*rels: str) -> Optional[Path]:
    """Returns the first file of rels (paths relative to a directory) found in the package's parent
    directories, nearest first: a file of the checkout, or of the bundle, the package sits in."""
    for parent in PACKAGE_ROOT.parents:
        for rel in rels:
            p = parent / rel
            if p.is_file():
                return p
    return None


def parse_header(path: Path) -> Dict[str, int]:
    """Returns the integer #defines and enum constants named FERRY_* in the header."""
    text = re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S)
    out: Dict[str, int] = {}
    for name, value in re.findall(r"#define\s+(FERRY_\w+)\s+\(?(-?(?:0x[0-9a-fA-F]+|\d+))u?\)?", text):
        out[name] = int(value, 0)
    for name, value in re.findall(r"\b(FERRY_\w+)\s*=\s*(-?\d+)", text):
        out[name] = int(value)
    return out


@pytest.fixture(scope="session")
def header() -> Dict[str, int]:
    """The FERRY_* constants of ferry.h; skips when the header is not reachable from the package."""
    path = find_header()
    if path is None:
        pytest.skip("ferry.h is not reachable from the package directory")
    return parse_header(path)


def _fakecuda_source() -> Path:
    for parent in PACKAGE_ROOT.parents:
        p = parent / "engine" / "testdata" / "fakecuda.c"
        if p.is_file():
            return p
    pytest.skip("engine/testdata/fakecuda.c is not reachable from the package directory")


@pytest.fixture(scope="session")
def fake_driver(tmp_path_factory) -> str:
    """Builds the stand-in driver (libcuda.so.1): one 80 GiB "Fake GPU" with 70 GiB free, whose device
    memory is host memory. A process can use one driver path, read at its first GPU call, so tests run it
    in a subprocess with FERRY_CUDA_LIBRARY pointing here."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler to build the stand-in CUDA driver")
    out = tmp_path_factory.mktemp("fakecuda") / "libcuda.so.1"
    r = subprocess.run([cc, "-std=c11", "-O2", "-shared", "-fPIC", "-o", str(out), str(_fakecuda_source())],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return str(out)
