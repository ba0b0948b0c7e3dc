"""Checks an installed ferry Python package (run by tests/install/run.sh with the venv's python).

It must run from outside the source tree with FERRY_LIBRARY and PYTHONPATH unset, so that the package and
the library can only come from the environment's site-packages. Checks:

- the package is imported from site-packages, and py.typed is installed next to it;
- ferry.library_path() is site-packages/ferry/_lib/libferry.so, a regular file (not a link);
- the library's version is the package's, and so is the installed distribution's (VERSION, via setup.py);
- a CPU Loader over a small numpy dict, shuffled, yields each sample once with the right values.

Prints one line per check; exits 1 on the first failure.
"""

import importlib.metadata
import os
import sys
import sysconfig
from pathlib import Path


def ok(cond: bool, what: str) -> None:
    print(f"python: {'ok  ' if cond else 'FAIL'} {what}", flush=True)
    if not cond:
        sys.exit(1)


def main() -> None:
    for var in ("FERRY_LIBRARY", "PYTHONPATH"):
        ok(var not in os.environ, f"{var} is not set")
    site = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}

    import numpy as np

    import ferry

    pkg = Path(ferry.__file__).resolve().parent
    ok(pkg.parent in site, f"ferry is imported from the environment's site-packages ({pkg})")
    ok((pkg / "py.typed").is_file(), "ferry/py.typed is installed")

    lib = Path(ferry.library_path())
    bundled = pkg / "_lib" / "libferry.so"
    ok(lib == bundled, f"ferry.library_path() is the bundled copy ({lib})")
    ok(bundled.is_file() and not bundled.is_symlink(), "ferry/_lib/libferry.so is a regular file")
    ok(sorted(p.name for p in bundled.parent.iterdir()) == ["libferry.so"], "ferry/_lib holds libferry.so alone")

    want = tuple(int(x) for x in ferry.__version__.split("."))
    ok(ferry.version() == want, f"the library's version {ferry.version()} is the package's {ferry.__version__}")
    dist = importlib.metadata.version("ferry")
    ok(dist == ferry.__version__, f"the installed distribution's version {dist} is the package's {ferry.__version__}")

    n, batch = 23, 5
    rng = np.random.default_rng()
    x = rng.standard_normal((n, 3)).astype(np.float32)
    idx = np.arange(n, dtype=np.int64)
    seen = []
    with ferry.Loader({"x": x, "i": idx}, batch, shuffle=True, seed=int(rng.integers(1 << 30)), device="cpu",
                      output="numpy", copy=True, timeout_ms=20000) as loader:
        sizes = []
        for b in loader:
            if set(b) != {"x", "i"}:
                ok(False, f"batch {len(sizes)} has the fields x and i (got {sorted(b)})")
            i = np.asarray(b["i"])
            if not np.array_equal(np.asarray(b["x"]), x[i]):
                ok(False, f"batch {len(sizes)}: x differs from the data at its indices {i.tolist()}")
            sizes.append(len(i))
            seen.extend(i.tolist())
    ok(sizes == [5, 5, 5, 5, 3], f"the epoch has batches of 5, 5, 5, 5, 3 (got {sizes})")
    ok(sorted(seen) == list(range(n)) and seen != list(range(n)),
       "the shuffled epoch yields every sample once, and each batch's x matches its samples")
    print("python: all checks passed")


if __name__ == "__main__":
    main()
