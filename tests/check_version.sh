#!/usr/bin/env bash
# make check-version: VERSION (MAJOR.MINOR.PATCH) is ferry's one version string. The Makefile (the library's
# file name and soname, -X engine.Version), CMakeLists.txt (project(), ferryConfig, ferry.pc) and setup.py
# read it; the copies that cannot (the Go default of engine.Version, ferry.h's macros, the Python package's
# __version__ and its mirror of the macros) must say the same, and nothing may pin a version of its own.
# Prints every disagreement with the file it is in; exits 1 if there is one.
set -uo pipefail
cd "$(dirname "$0")/.."

fail=0
bad() {
    echo "check-version: $*"
    fail=1
}

version=$(cat VERSION 2>/dev/null) || { echo "check-version: there is no VERSION file"; exit 1; }
if ! [[ $version =~ ^([0-9]+)\.([0-9]+)\.([0-9]+)$ ]]; then
    echo "check-version: VERSION holds '$version', want MAJOR.MINOR.PATCH"
    exit 1
fi
major=${BASH_REMATCH[1]} minor=${BASH_REMATCH[2]} patch=${BASH_REMATCH[3]}

# The Go default, which plain `go test` and `go build` see (every make build passes VERSION with -X). It
# must be a var: -X cannot set a const.
go_files=$(grep -l -E '^(var|const) Version = "' engine/*.go 2>/dev/null)
case $(echo "$go_files" | wc -w) in
0) bad "no 'var Version = \"...\"' in engine/*.go (the default of -X github.com/ferry-ml/ferry/engine.Version)" ;;
1)
    if grep -q -E '^const Version = ' "$go_files"; then
        bad "$go_files: Version is a const; -X github.com/ferry-ml/ferry/engine.Version needs a var"
    fi
    got=$(sed -n -E 's/^(var|const) Version = "([^"]*)".*/\2/p' "$go_files")
    [ "$got" = "$version" ] || bad "$go_files: Version defaults to \"$got\", VERSION says $version"
    ;;
*) bad "Version is declared in more than one of engine/*.go: $(echo $go_files)" ;;
esac
# No other Go code keeps a version literal of its own (it uses engine.Version).
while IFS= read -r hit; do
    [ -n "$hit" ] || continue
    case $hit in "$go_files":*) continue ;; esac
    bad "$hit: a version literal; use engine.Version"
done < <(git ls-files '*.go' | grep -v '_test\.go$' | xargs grep -n -E '[Vv]ersion\s*=\s*"[0-9]+\.[0-9]+\.[0-9]+"' 2>/dev/null)

# ferry.h (hand-written) and the Python package's copy of its macros.
for part in MAJOR MINOR PATCH; do
    case $part in MAJOR) want=$major ;; MINOR) want=$minor ;; PATCH) want=$patch ;; esac
    got=$(sed -n -E "s/^#define FERRY_VERSION_$part ([0-9]+).*/\1/p" capi/ferry.h)
    [ "$got" = "$want" ] || bad "capi/ferry.h: FERRY_VERSION_$part is ${got:-missing}, VERSION says $want ($version)"
    got=$(sed -n -E "s/^FERRY_VERSION_$part = ([0-9]+).*/\1/p" bindings/python/ferry/_lib.py)
    [ "$got" = "$want" ] ||
        bad "bindings/python/ferry/_lib.py: FERRY_VERSION_$part is ${got:-missing}, VERSION says $want ($version)"
done

# The Python package: __version__ is a literal (it must work from the source tree, uninstalled); setup.py
# gives the distribution VERSION, so pyproject.toml declares the version dynamic.
got=$(sed -n -E 's/^__version__ = "([^"]*)".*/\1/p' bindings/python/ferry/__init__.py)
[ "$got" = "$version" ] || bad "bindings/python/ferry/__init__.py: __version__ is \"${got:-missing}\", VERSION says $version"
if grep -q -E '^version\s*=' bindings/python/pyproject.toml; then
    bad "bindings/python/pyproject.toml: a static version; declare it dynamic (setup.py reads VERSION)"
fi

# CMake reads VERSION; its project() and the files in cmake/ carry no literal.
grep -q -E '^project\(ferry VERSION \$\{FERRY_VERSION\}' CMakeLists.txt ||
    bad "CMakeLists.txt: project(ferry VERSION \${FERRY_VERSION} ...) is missing (it reads VERSION)"
while IFS= read -r hit; do
    [ -n "$hit" ] && bad "$hit: a version literal; use @PROJECT_VERSION@"
done < <(grep -n -E '\b[0-9]+\.[0-9]+\.[0-9]+\b' cmake/* 2>/dev/null)

[ $fail = 0 ] && echo "check-version: $version everywhere"
exit $fail
