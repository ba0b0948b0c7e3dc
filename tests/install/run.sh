#!/usr/bin/env bash
# tests/install/run.sh — checks ferry's packaging the way users consume it (make test-install runs it):
#
#   a. make install PREFIX=<tmp>/prefix installs exactly the expected files; a C program built with
#      pkg-config's flags against that prefix runs and checks the library (consumer.c);
#   b. a CMake project (cmake/) finds a moved copy of the installed tree with find_package(ferry 0.1), builds
#      a C target on ferry::ferry and a C++ target on ferry::cpp, and both run; find_package(ferry 1.0) is
#      refused; the C++ examples' project (bindings/cpp/examples) builds against it and its programs run;
#   c. make install PREFIX=/usr/local DESTDIR=<tmp>/stage puts everything under <tmp>/stage/usr/local;
#   d. pip install ./bindings/python into a venv bundles libferry.so in the package, which then works from
#      anywhere with FERRY_LIBRARY and PYTHONPATH unset; pip wheel makes a platform wheel that holds
#      ferry/_lib/libferry.so and ferry/py.typed.
#
# Every check prints a line; the first failure stops the run with a message and a non-zero exit. Missing
# tools are failures that say what to install (.ci/run installs them), never skips. Temporary files live
# under one directory that is removed at exit. Needs make build first (make test-install does it).
#
# PYTHON is the interpreter whose packages (numpy, setuptools, wheel) the pip consumer's venv sees: make
# passes the one of its virtual environment, build/venv. The consumer's venv is made by PYTHON with
# --system-site-packages and, when PYTHON itself runs in a venv, a .pth file that adds that venv's
# site-packages, which --system-site-packages alone would not reach.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
here=$root/tests/install
MAKE=${MAKE:-make}
PYTHON=${PYTHON:-python3}
t0=$SECONDS

fail() {
    echo "test-install: FAIL: $*" >&2
    exit 1
}
step() { echo "== test-install: $*"; }
ok() { echo "test-install: ok   $*"; }

# run LOG CMD...: runs CMD with its output in LOG; on failure shows the log's tail and fails.
run() {
    local log=$1
    shift
    if ! "$@" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        fail "$* (exit status non-zero; output above)"
    fi
}

# The tools, each with what provides it.
need() {
    command -v "$1" >/dev/null 2>&1 || fail "$1 is not installed: install $2 (.ci/run does)"
}
need cc "a C compiler (apt-get install gcc)"
need c++ "a C++ compiler (apt-get install g++)"
need cmake "CMake (apt-get install cmake)"
need pkg-config "pkg-config (apt-get install pkg-config)"
need readelf "binutils (apt-get install binutils)"
need ldd "ldd (apt-get install libc-bin)"
need "$PYTHON" "Python 3 (apt-get install python3)"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null ||
    fail "$PYTHON cannot create virtual environments with pip: install python3-venv (apt-get install python3-venv)"
"$PYTHON" -c 'import setuptools' 2>/dev/null || fail "$PYTHON has no setuptools: $PYTHON -m pip install setuptools"
"$PYTHON" -c 'import setuptools.command.bdist_wheel' 2>/dev/null || "$PYTHON" -c 'import wheel.bdist_wheel' 2>/dev/null ||
    fail "$PYTHON cannot build wheels (setuptools < 70.1 without the wheel package): $PYTHON -m pip install wheel"
"$PYTHON" -c 'import numpy' 2>/dev/null || fail "$PYTHON has no numpy: $PYTHON -m pip install numpy"

version=$(cat "$root/VERSION" 2>/dev/null) && [ -n "$version" ] || fail "no version in $root/VERSION"
major=${version%%.*}
real=$(readlink -f "$root/build/lib/libferry.so" 2>/dev/null) && [ -f "$real" ] ||
    fail "build/lib/libferry.so does not exist: run make build first"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ferry-install.XXXXXX")
pybuild_existed=0
[ -e "$root/bindings/python/build" ] && pybuild_existed=1
egginfo_existed=0
[ -e "$root/bindings/python/ferry.egg-info" ] && egginfo_existed=1
cleanup() {
    rm -rf "$tmp"
    # pip builds in the source directory; remove what this run created there.
    [ $pybuild_existed = 1 ] || rm -rf "$root/bindings/python/build"
    [ $egginfo_existed = 1 ] || rm -rf "$root/bindings/python/ferry.egg-info"
}
trap cleanup EXIT

# Consumers must load the library they were linked against, whatever the caller's environment says.
unset LD_LIBRARY_PATH FERRY_LIBRARY

# check_tree DIR PREFIX: the tree installed into DIR (for PREFIX) has exactly the expected files; sets libdir
# to DIR's library directory (lib, lib64 or lib/<multiarch>, as GNUInstallDirs picks).
check_tree() {
    local dir=$1 prefix=$2 found rel want got
    found=$(cd "$dir" && find . -type f -name "libferry.so.$version")
    [ "$(echo "$found" | wc -w)" = 1 ] || fail "$dir: want one libferry.so.$version, found: ${found:-none}"
    rel=$(dirname "${found#./}")
    libdir=$dir/$rel
    want=$(printf '%s\n' bin/ferry include/ferry.h include/ferry.hpp "$rel/libferry.so" "$rel/libferry.so.$major" \
        "$rel/libferry.so.$version" "$rel/cmake/ferry/ferryConfig.cmake" "$rel/cmake/ferry/ferryConfigVersion.cmake" \
        "$rel/pkgconfig/ferry.pc" | sort)
    got=$(cd "$dir" && find . \( -type f -o -type l \) | sed 's|^\./||' | sort)
    [ "$got" = "$want" ] || fail "$dir: installed files differ from the expected list:
$(diff <(echo "$want") <(echo "$got") || true)"
    ok "$dir holds exactly: $(echo $want)"
    [ "$(readlink "$libdir/libferry.so")" = "libferry.so.$major" ] &&
        [ "$(readlink "$libdir/libferry.so.$major")" = "libferry.so.$version" ] ||
        fail "$libdir: libferry.so -> libferry.so.$major -> libferry.so.$version links are wrong"
    ok "links libferry.so -> libferry.so.$major -> libferry.so.$version"
    cmp -s "$libdir/libferry.so.$version" "$real" || fail "$libdir/libferry.so.$version differs from build/lib's library"
    [ -x "$libdir/libferry.so.$version" ] || fail "$libdir/libferry.so.$version is not executable"
    readelf -d "$libdir/libferry.so.$version" | grep -q "Library soname: \[libferry.so.$major\]" ||
        fail "$libdir/libferry.so.$version: soname is not libferry.so.$major"
    ok "libferry.so.$version is build/lib's library, soname libferry.so.$major"
    cmp -s "$dir/include/ferry.h" "$root/capi/ferry.h" && cmp -s "$dir/include/ferry.hpp" "$root/bindings/cpp/ferry.hpp" ||
        fail "$dir/include: ferry.h or ferry.hpp differs from capi/ferry.h, bindings/cpp/ferry.hpp"
    ok "include/ferry.h and include/ferry.hpp are the sources'"
    [ "$("$dir/bin/ferry" --version)" = "ferry version $version" ] || fail "$dir/bin/ferry --version is not $version"
    ok "bin/ferry --version: ferry version $version"
    grep -qx "prefix=$prefix" "$libdir/pkgconfig/ferry.pc" || fail "$libdir/pkgconfig/ferry.pc: prefix is not $prefix"
    ! grep -rqF "$dir" "$libdir/cmake" || fail "$libdir/cmake/ferry: a path into the install tree is written in the config"
    [ "$dir" = "$prefix" ] || ! grep -qF "$dir" "$libdir/pkgconfig/ferry.pc" ||
        fail "$libdir/pkgconfig/ferry.pc names the staging directory"
    ok "ferry.pc says prefix=$prefix; the CMake config holds no absolute path"
}

# ------------------------------------------------------------------------------------------------------
step "a. make install PREFIX=<tmp>/prefix, then a C consumer through pkg-config"
prefix=$tmp/prefix
run "$tmp/install.log" "$MAKE" -C "$root" --no-print-directory install PREFIX="$prefix" DESTDIR=
check_tree "$prefix" "$prefix"
prefix_libdir=$libdir

export PKG_CONFIG_PATH="$prefix_libdir/pkgconfig"
modversion=$(pkg-config --modversion ferry) || fail "pkg-config does not find ferry in $PKG_CONFIG_PATH"
[ "$modversion" = "$version" ] || fail "pkg-config --modversion ferry is $modversion, want $version"
ok "pkg-config --modversion ferry: $modversion"
cflags=$(pkg-config --cflags ferry)
libs=$(pkg-config --libs ferry)
[ "$(echo $cflags)" = "-I$prefix/include" ] || fail "pkg-config --cflags ferry is '$cflags', want -I$prefix/include"
[ "$(echo $libs)" = "-L$prefix_libdir -lferry" ] || fail "pkg-config --libs ferry is '$libs', want -L$prefix_libdir -lferry"
[ "$(pkg-config --variable=libdir ferry)" = "$prefix_libdir" ] || fail "pkg-config --variable=libdir ferry is not $prefix_libdir"
ok "pkg-config --cflags --libs ferry: $(echo $cflags $libs)"
# shellcheck disable=SC2086 # the flags are words
run "$tmp/cc.log" cc -std=c99 -Wall -Wextra -pedantic -Werror "$here/consumer.c" $cflags $libs \
    -Wl,-rpath,"$(pkg-config --variable=libdir ferry)" -o "$tmp/consumer"
ok "cc -std=c99 consumer.c \$(pkg-config --cflags --libs ferry) -Wl,-rpath,<libdir> builds"
# ldd's whole output first: grep -q stops reading at its match, and under pipefail ldd's SIGPIPE would fail it.
ldd "$tmp/consumer" >"$tmp/ldd.txt"
grep -q "libferry.so.$major => $prefix_libdir/libferry.so.$major" "$tmp/ldd.txt" ||
    fail "the consumer does not load libferry.so.$major from $prefix_libdir: $(grep ferry "$tmp/ldd.txt")"
ok "the consumer needs libferry.so.$major and finds it in the installed libdir"
(cd "$tmp" && ./consumer "$modversion") || fail "the pkg-config consumer failed (output above)"
unset PKG_CONFIG_PATH

# ------------------------------------------------------------------------------------------------------
step "b. find_package(ferry) from a moved copy of the installed tree (CMake, C and C++)"
moved=$tmp/moved/ferry-$version
mkdir -p "$tmp/moved"
cp -a "$prefix" "$moved"
mv "$prefix" "$tmp/prefix.gone" # nothing may still point at the place it was installed
moved_libdir=$moved/${prefix_libdir#"$prefix"/}
run "$tmp/cmake-configure.log" cmake -S "$here/cmake" -B "$tmp/consumer-build" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$moved"
grep -q -- "-- ferry $version from $moved_libdir/cmake/ferry" "$tmp/cmake-configure.log" ||
    fail "find_package(ferry) did not report ferry $version from the moved tree: $(grep -- '-- ferry' "$tmp/cmake-configure.log")"
ok "find_package(ferry 0.1 CONFIG REQUIRED) (twice): ferry_VERSION $version from $moved_libdir/cmake/ferry"
run "$tmp/cmake-build.log" cmake --build "$tmp/consumer-build"
ok "consumer_c (ferry::ferry, C99) and consumer_cpp (ferry::cpp, ferry.hpp) build"
for exe in consumer_c consumer_cpp; do
    ldd "$tmp/consumer-build/$exe" >"$tmp/ldd.txt"
    grep -q "libferry.so.$major => $moved_libdir/libferry.so.$major" "$tmp/ldd.txt" ||
        fail "$exe does not load libferry.so.$major from the moved tree: $(grep ferry "$tmp/ldd.txt")"
    (cd "$tmp" && "$tmp/consumer-build/$exe" "$(cat "$tmp/consumer-build/ferry_version.txt")") ||
        fail "$exe failed (output above)"
done
ok "consumer_c and consumer_cpp load the moved tree's library and pass"
if cmake -S "$here/cmake" -B "$tmp/consumer-v1" -DCMAKE_PREFIX_PATH="$moved" -DFERRY_REQUIRED_VERSION=1.0 \
    >"$tmp/cmake-v1.log" 2>&1; then
    fail "find_package(ferry 1.0) accepted ferry $version"
fi
grep -q "requested version \"1.0\"" "$tmp/cmake-v1.log" ||
    fail "find_package(ferry 1.0) failed for another reason: $(tail -n 20 "$tmp/cmake-v1.log")"
ok "find_package(ferry 1.0) is refused (SameMajorVersion)"
# The C++ examples' own project (bindings/cpp/examples): train is left out without libtorch; the others
# build against the moved tree and run on the CPU engine.
run "$tmp/examples-configure.log" cmake -S "$root/bindings/cpp/examples" -B "$tmp/examples-build" \
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$moved"
run "$tmp/examples-build.log" cmake --build "$tmp/examples-build"
(cd "$tmp" && "$tmp/examples-build/ferry_info" >"$tmp/examples-info.log" 2>&1) ||
    fail "bindings/cpp/examples: ferry_info failed: $(tail -n 20 "$tmp/examples-info.log")"
(cd "$tmp" && "$tmp/examples-build/ferry_iterate" -1 >"$tmp/examples-iterate.log" 2>&1) ||
    fail "bindings/cpp/examples: ferry_iterate -1 failed: $(tail -n 20 "$tmp/examples-iterate.log")"
ok "bindings/cpp/examples builds against the moved tree (find_package(ferry)); ferry_info and ferry_iterate run"
if [ "${moved_libdir#"$moved"/}" = lib ]; then
    got=$(PKG_CONFIG_PATH="$moved_libdir/pkgconfig" pkg-config --define-prefix --variable=libdir ferry)
    [ "$(readlink -f "$got")" = "$moved_libdir" ] || fail "pkg-config --define-prefix gives libdir $got, want $moved_libdir"
    ok "pkg-config --define-prefix on the moved tree: libdir $got"
else
    echo "test-install: note pkg-config --define-prefix is not checked: the libdir is ${moved_libdir#"$moved"/}, not lib"
fi

# ------------------------------------------------------------------------------------------------------
step "c. make install PREFIX=/usr/local DESTDIR=<tmp>/stage"
run "$tmp/install-destdir.log" "$MAKE" -C "$root" --no-print-directory install PREFIX=/usr/local DESTDIR="$tmp/stage"
[ "$(cd "$tmp/stage" && ls -A)" = usr ] && [ "$(cd "$tmp/stage/usr" && ls -A)" = local ] ||
    fail "DESTDIR: $tmp/stage holds more than usr/local: $(cd "$tmp/stage" && find . -maxdepth 2)"
check_tree "$tmp/stage/usr/local" /usr/local

# ------------------------------------------------------------------------------------------------------
step "d. pip install ./bindings/python into a venv; pip wheel"
run "$tmp/venv.log" "$PYTHON" -m venv --system-site-packages "$tmp/venv"
vpy=$tmp/venv/bin/python
outer_site=$("$PYTHON" -c 'import sys, sysconfig
if sys.prefix != sys.base_prefix:
    print("\n".join(dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))))')
if [ -n "$outer_site" ]; then
    echo "$outer_site" >"$("$vpy" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/outer-venv.pth"
    ok "the venv sees $PYTHON's venv ($(echo $outer_site))"
fi
run "$tmp/pip-install.log" "$vpy" -m pip install --disable-pip-version-check --no-index --no-build-isolation --no-deps \
    "$root/bindings/python"
ok "pip install --no-build-isolation --no-deps ./bindings/python"
cp "$here/check_python.py" "$tmp/"
(cd "$tmp" && env -u PYTHONPATH -u FERRY_LIBRARY "$vpy" check_python.py) || fail "the installed Python package failed (output above)"
run "$tmp/pip-wheel.log" "$vpy" -m pip wheel --disable-pip-version-check --no-index --no-build-isolation --no-deps \
    -w "$tmp/wheels" "$root/bindings/python"
wheels=$(cd "$tmp/wheels" && ls)
[ "$(echo "$wheels" | wc -w)" = 1 ] || fail "pip wheel made: ${wheels:-nothing}, want one wheel"
case $wheels in
*-none-any.whl) fail "the wheel $wheels is tagged pure (none-any), but it carries a native library" ;;
"ferry-$version-py3-none-"*.whl) ;;
*) fail "the wheel $wheels is not named ferry-$version-py3-none-<platform>.whl" ;;
esac
ok "pip wheel: $wheels"
"$PYTHON" - "$tmp/wheels/$wheels" "$real" <<'EOF' || fail "the wheel's contents are wrong (above)"
import hashlib, sys, zipfile
whl, real = sys.argv[1], sys.argv[2]
z = zipfile.ZipFile(whl)
names = z.namelist()
bad = []
for need in ("ferry/_lib/libferry.so", "ferry/py.typed", "ferry/__init__.py"):
    if need not in names:
        bad.append(f"{need} is missing")
libs = [n for n in names if n.startswith("ferry/_lib/")]
if libs != ["ferry/_lib/libferry.so"]:
    bad.append(f"ferry/_lib holds {libs}, want libferry.so alone")
links = [i.filename for i in z.infolist() if (i.external_attr >> 16) & 0o170000 == 0o120000]
if links:
    bad.append(f"symbolic links in the wheel: {links}")
if "ferry/_lib/libferry.so" in names:
    got = hashlib.sha256(z.read("ferry/_lib/libferry.so")).hexdigest()
    if got != hashlib.sha256(open(real, "rb").read()).hexdigest():
        bad.append("ferry/_lib/libferry.so differs from build/lib's library")
wheel_meta = z.read(next(n for n in names if n.endswith(".dist-info/WHEEL"))).decode()
if "Root-Is-Purelib: false" not in wheel_meta:
    bad.append("WHEEL does not say Root-Is-Purelib: false")
for b in bad:
    print("test-install: FAIL", b)
if bad:
    sys.exit(1)
print("test-install: ok   the wheel holds ferry/_lib/libferry.so (build/lib's library, no links), ferry/py.typed; "
      "Root-Is-Purelib: false")
EOF

echo "test-install: all checks passed ($((SECONDS - t0)) s)"
