"""The code blocks of docs/PYTORCH.md and docs/CPP.md run as they are written.

Each ```python block runs in a fresh interpreter and each ```cpp block is compiled against ferry.h and
ferry.hpp and run, in an empty directory; a block passes when it exits 0 (the blocks assert what they
show). A ``<!-- test: ... -->`` line before a block names what it needs: ``gpu`` (a CUDA device) and
``torch`` (libtorch, for C++). Python blocks that import torch need torch. A block whose needs are not met
skips, and fails instead under ``FERRY_REQUIRE_GPU=1`` (the GPU runner has torch and a device).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List, NamedTuple, Tuple

import pytest

import ferry

from conftest import find_header, find_up, gpu_required

BLOCK = re.compile(r"(?:<!--\s*test:\s*(?P<needs>[^>]*?)\s*-->\s*\n)?```(?P<lang>[A-Za-z0-9+]*)\n(?P<code>.*?)^```",
                   re.S | re.M)


class Snippet(NamedTuple):
    page: str
    line: int
    lang: str
    needs: Tuple[str, ...]
    code: str

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def _snippets(page: str) -> List[Snippet]:
    path = find_up(f"docs/{page}")
    if path is None:
        return []
    text = path.read_text(encoding="utf-8")
    out = []
    for m in BLOCK.finditer(text):
        if m.group("lang") not in ("python", "cpp"):
            continue
        line = text.count("\n", 0, m.start("code")) + 1
        needs = tuple((m.group("needs") or "").split())
        out.append(Snippet(page, line, m.group("lang"), needs, m.group("code")))
    return out


SNIPPETS = _snippets("PYTORCH.md") + _snippets("CPP.md")


def _unmet(why: str) -> None:
    if gpu_required():
        pytest.fail(f"FERRY_REQUIRE_GPU=1 but {why}")
    pytest.skip(why)


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _check_needs(s: Snippet) -> None:
    torch = _torch()
    if s.lang == "python" and re.search(r"^import torch|^from torch", s.code, re.M) and torch is None:
        _unmet(f"{s} imports torch, which is not installed")
    if s.lang == "python" and re.search(r"^from PIL|^import PIL", s.code, re.M):
        try:
            import PIL  # noqa: F401
        except ImportError:
            _unmet(f"{s} imports Pillow, which is not installed")
    if "torch" in s.needs and torch is None:
        _unmet(f"{s} needs libtorch (PyTorch's), which is not installed")
    if "gpu" in s.needs and ferry.device_count() == 0:
        _unmet(f"{s} needs a GPU")
    if "gpu" in s.needs and torch is not None and not torch.cuda.is_available():
        _unmet(f"{s} needs a GPU that torch can use")


def _library() -> Path:
    lib = Path(ferry.library_path())
    assert lib.is_file(), lib
    return lib


def _run(cmd: List[str], cwd: Path, timeout: float, what: str) -> None:
    env = dict(os.environ)
    paths = [str(Path(ferry.__file__).parents[1]), env.get("PYTHONPATH", "")]  # the ferry under test first
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (f"{what} exited {r.returncode}\n--- stdout\n{r.stdout[-4000:]}"
                               f"\n--- stderr\n{r.stderr[-4000:]}")


def _run_python(s: Snippet, tmp: Path) -> None:
    script = tmp / "snippet.py"
    script.write_text(s.code)
    _run([sys.executable, str(script)], tmp, 600, f"the Python block at {s}")


def _include_dirs() -> List[str]:
    header = find_header()
    hpp = find_up("bindings/cpp/ferry.hpp")
    if header is None or hpp is None:
        pytest.fail("ferry.h or bindings/cpp/ferry.hpp is not reachable from the package")
    return [str(header.parent), str(hpp.parent)]


def _run_cpp(s: Snippet, tmp: Path) -> None:
    src = tmp / "snippet.cpp"
    src.write_text(s.code)
    lib = _library()
    exe = tmp / "snippet"
    if "torch" in s.needs:
        _build_with_libtorch(s, tmp, lib)
    else:
        cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
        if cxx is None:
            pytest.fail("no C++ compiler (c++ or g++)")
        cmd = [cxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-O1", str(src), "-o", str(exe)]
        cmd += [f"-I{d}" for d in _include_dirs()]
        cmd += [f"-L{lib.parent}", f"-l:{lib.name}", f"-Wl,-rpath,{lib.parent}"]
        _run(cmd, tmp, 300, f"compiling the C++ block at {s}")
    _run([str(exe)], tmp, 600, f"the C++ block at {s}")


def _build_with_libtorch(s: Snippet, tmp: Path, lib: Path) -> None:
    """Builds snippet.cpp with CMake, find_package(Torch) and ferry's header and library."""
    torch = _torch()
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.fail("cmake is needed to build against libtorch")
    inc = _include_dirs()
    (tmp / "CMakeLists.txt").write_text(textwrap.dedent(f"""\
        cmake_minimum_required(VERSION 3.20)
        project(snippet LANGUAGES C CXX)
        find_package(Torch REQUIRED)
        add_library(ferry SHARED IMPORTED)
        set_target_properties(ferry PROPERTIES IMPORTED_LOCATION "{lib}"
                              INTERFACE_INCLUDE_DIRECTORIES "{';'.join(inc)}")
        add_executable(snippet snippet.cpp)
        set_property(TARGET snippet PROPERTY CXX_STANDARD 20)
        set(CMAKE_CXX_FLAGS "${{CMAKE_CXX_FLAGS}} ${{TORCH_CXX_FLAGS}}")
        target_link_libraries(snippet PRIVATE ferry ${{TORCH_LIBRARIES}})
        """))
    build = tmp / "build"
    _run([cmake, "-S", str(tmp), "-B", str(build), f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
          "-DCMAKE_BUILD_TYPE=Release"], tmp, 600, f"configuring the libtorch block at {s}")
    _run([cmake, "--build", str(build), "-j", str(os.cpu_count() or 2)], tmp, 900,
         f"building the libtorch block at {s}")
    shutil.copy(build / "snippet", tmp / "snippet")


def test_pages_have_snippets():
    if find_up("docs/PYTORCH.md") is None:
        pytest.skip("the docs are not next to this package (an installed copy)")
    pages = {s.page for s in SNIPPETS}
    assert pages == {"PYTORCH.md", "CPP.md"}, pages
    assert sum(s.lang == "python" for s in SNIPPETS) >= 4
    assert sum(s.lang == "cpp" for s in SNIPPETS) >= 3


@pytest.mark.parametrize("snippet", SNIPPETS, ids=str)
def test_snippet_runs(snippet: Snippet, tmp_path: Path):
    _check_needs(snippet)
    if snippet.lang == "python":
        _run_python(snippet, tmp_path)
    else:
        _run_cpp(snippet, tmp_path)
