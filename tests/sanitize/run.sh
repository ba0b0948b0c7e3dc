#!/bin/sh
# run.sh: builds the C and C++ tests with AddressSanitizer, UndefinedBehaviorSanitizer and LeakSanitizer
# (cmake -DFERRY_SANITIZE=address) in build/sanitize, then runs ctest under the sanitizer settings below.
# Arguments go to ctest (for example -R iterator). libferry.so must be built first (make lib); it is Go
# and is not instrumented. See README.md in this directory for what is checked and why each setting is
# there.
set -eu

root=$(cd "$(dirname "$0")/../.." && pwd)
build=${FERRY_SANITIZE_BUILD:-$root/build/sanitize}
jobs=${JOBS:-2}

cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFERRY_SANITIZE=address >/dev/null
cmake --build "$build" -j"$jobs"

# ASan: leaks are checked at exit (detect_leaks), a finding stops the test (halt_on_error), and stack
# use after return and initialization order are checked too. intercept_tls_get_addr=0 works around a
# LeakSanitizer crash at exit ("Tracer caught signal 11", met with gcc 12's runtime on glibc 2.36): the
# runtime misreads the dynamic TLS block of a library loaded with dlopen that has thread-local variables,
# here the stand-in CUDA driver, and faults scanning a bogus range (google/sanitizers#1322). Without the
# interception LSan does not scan such blocks; the stand-in's thread-local data holds context handles,
# not heap pointers, so no leak hides there.
# Settings already in the environment come last, so they win.
ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1:intercept_tls_get_addr=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
LSAN_OPTIONS="suppressions=$root/tests/sanitize/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
# The build passes -fno-sanitize-recover=all, so the first undefined behaviour ends the test with a stack.
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export ASAN_OPTIONS LSAN_OPTIONS UBSAN_OPTIONS

ctest --test-dir "$build" --output-on-failure -j"$jobs" "$@"
