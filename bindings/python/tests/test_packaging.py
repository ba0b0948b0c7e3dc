"""The package installs with pip and imports from the install location."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ferry

from conftest import PACKAGE_ROOT


def _build_backend_missing() -> str:
    if importlib.util.find_spec("setuptools") is None:
        return "setuptools is not installed"
    import setuptools

    major_minor = tuple(int(p) for p in setuptools.__version__.split(".")[:2] if p.isdigit())
    # setuptools before 70.1 builds wheels through the separate wheel package.
    if major_minor < (70, 1) and importlib.util.find_spec("wheel") is None:
        return f"setuptools {setuptools.__version__} needs the wheel package, which is not installed"
    return ""


def _pip_install(tmp_path: Path, bundle: bool) -> Path:
    missing = _build_backend_missing()
    if missing:
        pytest.skip(missing)
    # Build from a copy so that no build/ or *.egg-info directory is left in the source tree.
    source = tmp_path / "src"
    shutil.copytree(
        PACKAGE_ROOT,
        source,
        ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info", ".pytest_cache", "libferry.so*"),
    )
    if bundle:
        (source / "ferry" / "_lib").mkdir(exist_ok=True)
        shutil.copyfile(_library_file(), source / "ferry" / "_lib" / "libferry.so")
    target = tmp_path / "site"
    cmd = [
        sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-input",
        "--disable-pip-version-check", "--target", str(target), str(source),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (target / "ferry" / "__init__.py").is_file()
    assert (target / "ferry" / "py.typed").is_file()
    return target


def _library_file() -> str:
    path = ferry.library_path()
    if os.sep not in path:
        pytest.skip(f"the library was found by soname ({path}), not as a file")
    return path


def _run_installed(target: Path, env_update: dict) -> list:
    env = {k: v for k, v in os.environ.items() if k != "FERRY_LIBRARY"}
    env.update(env_update)
    env["PYTHONPATH"] = str(target)
    code = "import ferry; print(ferry.__file__); print(ferry.version()); print(ferry.library_path())"
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=str(target.parent)
    )
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert Path(lines[0]).resolve().is_relative_to(target.resolve())
    assert lines[1] == str(ferry.version())
    return lines


def test_pip_install_without_a_bundled_library(tmp_path: Path):
    target = _pip_install(tmp_path, bundle=False)
    assert not list((target / "ferry").glob("_lib/libferry.so*"))
    lines = _run_installed(target, {"FERRY_LIBRARY": _library_file()})
    assert lines[2] == _library_file()


def test_pip_install_with_a_bundled_library(tmp_path: Path):
    target = _pip_install(tmp_path, bundle=True)
    bundled = target / "ferry" / "_lib" / "libferry.so"
    assert bundled.is_file()
    lines = _run_installed(target, {})  # no FERRY_LIBRARY: the bundled copy comes first
    assert Path(lines[2]).resolve() == bundled.resolve()
