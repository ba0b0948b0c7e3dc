"""Packaging of the ferry Python package with libferry bundled.

The metadata is in pyproject.toml; this file adds the commands that bundle the library:

- ``build_py`` copies libferry into the package as ``ferry/_lib/libferry.so`` (one regular file, the real
  library under that name, never a link), where the ctypes layer ``ferry/_lib.py`` looks right after
  ``FERRY_LIBRARY``. The library comes from the first of:

  1. the environment variable ``FERRY_BUNDLE_LIBRARY``, a path to the library file;
  2. ``build/lib/libferry.so`` of the ferry source tree this directory is part of (``make lib``); when it
     is not built yet and Go is on the PATH, ``make -C <source tree> lib`` builds it here;
  3. a ``ferry/_lib/libferry.so`` already placed in this directory.

  Inside the source tree, finding none of them is an error that says how to build the library. Outside
  it (a copy of this directory, an sdist) the package is built without a library, with a warning: it then
  needs ``FERRY_LIBRARY`` or a libferry.so on the system's library path at run time.

- The version is the ferry source tree's ``VERSION`` file (the one version string of libferry, its header
  and this package); outside the source tree it is ``ferry/__init__.py``'s ``__version__``. ``make check``
  keeps the two equal.

- ``bdist_wheel`` tags a wheel that carries the library ``py3-none-<platform>``: the package itself is pure
  Python (ctypes, no extension module), the library is built for one platform. A wheel without the
  library is ``py3-none-any``.

So ``pip install ./bindings/python`` and ``pip wheel ./bindings/python`` from the source tree work once
``make lib`` has run, or with Go on the PATH.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

from setuptools import Command, Distribution, setup
from setuptools.command.build_py import build_py as _build_py

try:  # setuptools >= 70.1 has its own bdist_wheel
    from setuptools.command.bdist_wheel import bdist_wheel as _bdist_wheel
except ImportError:
    try:  # older setuptools: the wheel package's
        from wheel.bdist_wheel import bdist_wheel as _bdist_wheel
    except ImportError:
        _bdist_wheel = None

HERE = Path(__file__).resolve().parent
SOURCE_TREE = HERE.parent.parent  # bindings/python -> the ferry source tree
BUNDLED = Path("ferry") / "_lib" / "libferry.so"
PLACED = HERE / BUNDLED  # a library put into this directory by hand
HOW_TO_BUILD = (
    "build it first with `make lib` (or `make build`) at the top of the ferry source tree, which needs Go, "
    "or set FERRY_BUNDLE_LIBRARY to the path of a built libferry.so"
)


def _in_source_tree() -> bool:
    return (SOURCE_TREE / "Makefile").is_file() and (SOURCE_TREE / "capi" / "ferry.h").is_file()


def read_version() -> str:
    """The package's version: VERSION of the source tree, else ferry/__init__.py's __version__."""
    if _in_source_tree() and (SOURCE_TREE / "VERSION").is_file():
        return (SOURCE_TREE / "VERSION").read_text().strip()
    init = (HERE / "ferry" / "__init__.py").read_text()
    m = re.search(r'^__version__ = "([^"]+)"', init, re.MULTILINE)
    if m is None:
        raise SystemExit(f"ferry packaging: no __version__ in {HERE / 'ferry' / '__init__.py'}")
    return m.group(1)


def will_bundle() -> bool:
    """Whether the build bundles a library (decided from paths alone, before anything is built)."""
    return bool(os.environ.get("FERRY_BUNDLE_LIBRARY")) or _in_source_tree() or PLACED.is_file()


def _check_elf(path: Path) -> Path:
    with open(path, "rb") as f:
        if f.read(4) != b"\x7fELF":
            raise SystemExit(f"ferry packaging: {path} is not a shared library (no ELF header)")
    return path


def find_library() -> Optional[Path]:
    """Returns the real file (links resolved) of the libferry to bundle, building it when it can; None
    outside the source tree when there is none."""
    env = os.environ.get("FERRY_BUNDLE_LIBRARY")
    if env:
        path = Path(env)
        if not path.is_file():
            raise SystemExit(f"ferry packaging: FERRY_BUNDLE_LIBRARY={env} is not a file")
        return _check_elf(path.resolve())
    if _in_source_tree():
        built = SOURCE_TREE / "build" / "lib" / "libferry.so"
        if not built.exists() and shutil.which("go") is not None:
            print(f"ferry packaging: {built} does not exist; running make -C {SOURCE_TREE} lib", flush=True)
            subprocess.run(["make", "-C", str(SOURCE_TREE), "lib"], check=True)
        if built.exists():
            return _check_elf(built.resolve())
        if PLACED.is_file():
            return _check_elf(PLACED.resolve())
        why = "Go is not on the PATH" if shutil.which("go") is None else "make lib did not produce it"
        raise SystemExit(f"ferry packaging: {built} does not exist and {why}: {HOW_TO_BUILD}")
    if PLACED.is_file():
        return _check_elf(PLACED.resolve())
    return None


class build_py(_build_py):
    """build_py that also copies libferry into the built package as ferry/_lib/libferry.so."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            # An editable install runs from the source tree, where the loader finds build/lib/libferry.so.
            return
        dest = Path(self.build_lib) / BUNDLED
        if dest.exists() or dest.is_symlink():
            dest.unlink()  # never a stale copy from an earlier build
        src = find_library()
        if src is None:
            print(
                f"ferry packaging: WARNING: no libferry to bundle ({HERE} is not inside the ferry source tree, "
                "FERRY_BUNDLE_LIBRARY is not set and ferry/_lib/libferry.so is absent); the package will need "
                "FERRY_LIBRARY or a libferry.so on the system's library path at run time",
                file=sys.stderr,
                flush=True,
            )
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        print(f"ferry packaging: bundling {src} as {dest}", flush=True)
        shutil.copyfile(src, dest)  # the bytes of the real file: no link ends up in the package
        os.chmod(dest, 0o755)

    def get_outputs(self, include_bytecode: bool = True) -> list:
        outputs = super().get_outputs(include_bytecode)
        dest = Path(self.build_lib) / BUNDLED
        if dest.is_file() and str(dest) not in outputs:
            outputs.append(str(dest))
        return outputs


class BinaryDistribution(Distribution):
    """With the library, the package is platform-specific: installed into platlib, in a platform wheel."""

    def has_ext_modules(self) -> bool:
        return will_bundle()


cmdclass = {"build_py": build_py}

if _bdist_wheel is not None:

    class bdist_wheel(_bdist_wheel):
        """py3-none-<platform> when the wheel carries the library: any Python 3, one platform."""

        def finalize_options(self) -> None:
            super().finalize_options()
            self.root_is_pure = not will_bundle()

        def get_tag(self) -> tuple:
            if self.root_is_pure:
                return super().get_tag()
            _, _, platform = super().get_tag()
            return "py3", "none", platform

    cmdclass["bdist_wheel"] = bdist_wheel
else:

    class bdist_wheel(Command):
        """Stands in for bdist_wheel when neither setuptools nor the wheel package provides it."""

        description = "build a wheel (needs setuptools >= 70.1 or the wheel package)"
        user_options: list = []

        def initialize_options(self) -> None:
            pass

        def finalize_options(self) -> None:
            pass

        def run(self) -> None:
            raise SystemExit(
                "ferry packaging: building a wheel needs setuptools >= 70.1 or the wheel package: "
                "pip install wheel (or a newer setuptools)"
            )

    cmdclass["bdist_wheel"] = bdist_wheel

setup(version=read_version(), cmdclass=cmdclass, distclass=BinaryDistribution)
