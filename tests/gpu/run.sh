#!/usr/bin/env bash
# Runs ferry's suites and benchmarks on a GPU host, from the bundle that `make gpu-bundle` builds (this
# script is copied to its root). The host needs no Go: every binary is prebuilt.
#
#   FERRY_REQUIRE_GPU=1 build/gpu/run.sh [tests|sanitize|bench|train|all|s3]
#
# Results go to $OUT (default: ./out next to this script): tests.log, bench.log, bench_c.json,
# bench_python.json, bench_loader.json, bench_autobatch.json, bench_layout.json, bench_pipeline.json, bench_images.json,
# bench_megatron.json, megatron-fixtures/ (what megatron-core writes there), info.json,
# nvidia-smi.txt;
# train mode: train.log, train_{ferry,torch}_results.json, train_ferry.html and .json (the monitor's report), train_cpp.log
# and train_cpp.html. The last lines printed are a summary table.
#
# train mode writes 50,000 synthetic samples in the CIFAR-10 binary format (TRAIN_SAMPLES), trains
# bindings/python/examples/train_cifar.py for TRAIN_EPOCHS (3) with ferry's loader and then with torch's
# DataLoader, and builds bindings/cpp/examples/train.cpp against the bundle's installed ferry (prefix/) and
# PyTorch's libtorch with CMake, then trains it on the same files.
set -u
mode=${1:-all}
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/out}
mkdir -p "$out"
export FERRY_LIBRARY="$here/lib/libferry.so"
export FERRY_HEADER="$here/include/ferry.h"
export FERRY_EXPORTED_SYMBOLS="$here/tests/exported_symbols.txt"
export PYTHONPATH="$here/python${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
summary=()
failed=0

# step NAME LOG COMMAND...: runs a command, appends its output to LOG, records PASS/FAIL.
step() {
    local name=$1 log=$2
    shift 2
    echo "===== $name: $*" >>"$log"
    local t0=$SECONDS
    if "$@" >>"$log" 2>&1; then
        summary+=("PASS  $name ($((SECONDS - t0)) s)")
    else
        summary+=("FAIL  $name ($((SECONDS - t0)) s, exit $?, see $(basename "$log"))")
        failed=1
        echo "----- $name failed; its last lines:"
        tail -n 30 "$log"
    fi
}

# megatron-core from the bundle's wheel, unless the host has it: for the fixture comparison and the
# Megatron benchmarks.
if ! python3 -c 'import megatron.core' 2>/dev/null && ls "$here"/wheels/megatron_core-*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-deps --no-index --target "$here/pydeps" "$here"/wheels/megatron_core-*.whl \
        && export PYTHONPATH="$PYTHONPATH:$here/pydeps"
fi

# TurboJPEG for the CPU decode path: the host's, else the bundle's copy.
if ! ldconfig -p 2>/dev/null | grep -q 'libturbojpeg\.so\.0' && [ -f "$here/lib/libturbojpeg.so.0" ]; then
    export FERRY_TURBOJPEG_LIBRARY="$here/lib/libturbojpeg.so.0"
fi

nvidia-smi >"$out/nvidia-smi.txt" 2>&1
nvidia-smi --query-gpu=index,name,uuid,pci.bus_id,memory.total,driver_version,pcie.link.gen.max,pcie.link.width.max \
    --format=csv >>"$out/nvidia-smi.txt" 2>&1

if [ "$mode" = tests ] || [ "$mode" = all ]; then
    log="$out/tests.log"
    : >"$log"
    step "ferry info" "$log" "$here/bin/ferry" info
    step "ferry info --json" "$log" sh -c "'$here/bin/ferry' info --json | tee '$out/info.json'"
    step "ferry demo" "$log" "$here/bin/ferry" demo
    step "go: engine/internal/cuda" "$log" "$here/tests/cuda.test" -test.v -test.count=1
    for p in engine data monitor report; do
        step "go: $p" "$log" sh -c "cd '$here/tests' && ./$p.test -test.v -test.count=1"
    done
    step "go: CLI" "$log" sh -c "cd '$here/cmd/ferry' && ../../tests/cli.test -test.v -test.count=1"
    step "go: C-ABI harness" "$log" sh -c "cd '$here/tests' && ./harness.test -test.v -test.count=1"
    step "C: test_c99" "$log" "$here/bin/test_c99"
    step "C: test_iterator_c99" "$log" "$here/bin/test_iterator_c99"
    step "C: test_memory_c99" "$log" "$here/bin/test_memory_c99"
    step "C: test_monitor_c99" "$log" "$here/bin/test_monitor_c99"
    step "C++: header_cxx17" "$log" "$here/bin/header_cxx17"
    step "C++: GoogleTest" "$log" "$here/bin/test_ferry_hpp"
    step "C++: GoogleTest, iterator" "$log" "$here/bin/test_iterator_hpp"
    step "C++: GoogleTest, memory" "$log" "$here/bin/test_memory_hpp"
    step "C++: GoogleTest, transforms" "$log" "$here/bin/test_transform_hpp"
    step "C++: GoogleTest, monitor" "$log" "$here/bin/test_monitor_hpp"
    # The driver paths point nowhere, so the no-driver test runs (and must pass) even on a GPU host.
    step "C++: GoogleTest without a driver" "$log" sh -c "out=\$(env -u FERRY_REQUIRE_GPU \
        FERRY_CUDA_LIBRARY=/nonexistent/libcuda.so.1 FERRY_NVML_LIBRARY=/nonexistent/libnvidia-ml.so.1 \
        '$here/bin/test_ferry_hpp' --gtest_filter='Error.NoDriver*' 2>&1); st=\$?; echo \"\$out\"; \
        [ \$st -eq 0 ] && echo \"\$out\" | grep -q '^\[       OK \] Error.NoDriver'"
    step "C++: example" "$log" "$here/bin/ferry_info"
    step "C++: iterator example" "$log" "$here/bin/ferry_iterate"
    step "python: pytest" "$log" python3 -m pytest -q -rs "$here/python/tests"
    step "megatron-core writes the committed fixtures" "$log" sh -c "python3 '$here/tests/testdata/megatron/generate.py' \
        --out '$out/megatron-fixtures' && python3 '$here/tests/testdata/megatron/compare.py' '$out/megatron-fixtures'"
fi

# sanitize mode (also part of all): the GPU tests under compute-sanitizer.
if [ "$mode" = sanitize ] || [ "$mode" = all ]; then
    log="$out/sanitize.log"
    : >"$log"
    # The layout kernels under compute-sanitizer: every launch of the GPU transform and staging tests.
    if command -v compute-sanitizer >/dev/null; then
        step "compute-sanitizer memcheck: kernels" "$log" sh -c "cd '$here/tests' && compute-sanitizer --tool memcheck --target-processes application-only \
            --error-exitcode 9 ./data.test -test.run 'TransformsGPU|GPTSourceGPU|CropKernelGPU' -test.count=1"
        # Every GPU test of the engine (pools, iterators, staging, samplers) under memcheck and racecheck.
        # API errors are not counted here: the staging code registers source memory writable first and,
        # on a read-only file mapping, gets CUDA_ERROR_INVALID_VALUE and registers it read-only, by design.
        for p in engine data monitor; do
            step "compute-sanitizer memcheck: GPU suite ($p)" "$log" sh -c "cd '$here/tests' && compute-sanitizer --tool memcheck --target-processes application-only --report-api-errors no \
                --error-exitcode 9 ./$p.test -test.run 'GPU' -test.count=1"
        done
        step "compute-sanitizer racecheck: GPU suite" "$log" sh -c "cd '$here/tests' && compute-sanitizer --tool racecheck --target-processes application-only \
            --error-exitcode 9 ./data.test -test.run 'TransformsGPU|IteratorGPU|MultiGPU|GPTSourceGPU|CropKernelGPU' -test.count=1"
    fi
fi

# s3 mode (not part of all: it needs the S3 server's wheels, carried apart from the bundle, from
# `make gpu-s3-wheels`, in S3_WHEELS, default build/s3wheels beside the bundle): the object-store tests
# and figures against moto's server on loopback.
if [ "$mode" = s3 ]; then
    log="$out/s3.log"
    : >"$log"
    wheels=${S3_WHEELS:-$here/../s3wheels}
    site=$(mktemp -d)
    step "s3: install the server's wheels" "$log" python3 -m pip install -q --no-index --no-deps --no-compile \
        --target "$site" "$wheels"/*.whl
    export PYTHONPATH="$PYTHONPATH:$site" FERRY_REQUIRE_S3=1
    step "s3: go tests (data)" "$log" sh -c "cd '$here/tests' && ./data.test -test.run 'S3' -test.count=1 -test.v"
    step "s3: pytest" "$log" python3 -m pytest -q -rs "$here/python/tests/test_s3.py"
    step "s3: bench, local disk beside s3:// cold, warm and ranged" "$log" sh -c "cd '$here/tests' && \
        ./data.test -test.run '^\$' -test.bench SourcesS3 -test.benchtime 3x"
    grep -E '^(Benchmark|ok|FAIL)' "$log"
fi

if [ "$mode" = bench ] || [ "$mode" = all ]; then
    log="$out/bench.log"
    : >"$log"
    step "bench: C" "$log" "$here/bin/bench_memory" --device 0 --json "$out/bench_c.json"
    step "bench: Python vs torch" "$log" python3 "$here/python/benchmarks/bench_memory.py" --device 0 --json "$out/bench_python.json"
    step "bench: loader vs torch" "$log" python3 "$here/python/benchmarks/bench_loader.py" --json "$out/bench_loader.json"
    step "bench: AutoBatch vs exhaustive search and Lightning" "$log" python3 "$here/python/benchmarks/bench_autobatch.py" --model resnet50 --headroom 0.02 --headroom 0.05 --json "$out/bench_autobatch.json"
    step "bench: layout kernel vs torch" "$log" python3 "$here/python/benchmarks/bench_layout.py" --json "$out/bench_layout.json"
    step "bench: PyTorch pipelines through ferry" "$log" python3 "$here/python/benchmarks/bench_pipeline.py" --json "$out/bench_pipeline.json"
    step "bench: JPEG folders and shards, decode + crop, vs torchvision" "$log" python3 "$here/python/benchmarks/bench_images.py" \
        --images 3000 --workers 16 --gpu --epochs 4 --json "$out/bench_images.json"
    step "bench: Megatron start-up and GPT windows vs megatron-core" "$log" python3 "$here/python/benchmarks/bench_megatron.py" \
        --tokens 1e9 --tokens 1e10 --throughput --json "$out/bench_megatron.json"
    for p in engine data monitor; do
        step "bench: Go ($p)" "$log" "$here/tests/$p.test" -test.run '^$' -test.bench . -test.benchtime 2s
    done
    cat "$log"
fi

if [ "$mode" = train ] || [ "$mode" = all ]; then
    log="$out/train.log"
    : >"$log"
    data="$here/cifar-synthetic"
    samples=${TRAIN_SAMPLES:-50000}
    epochs=${TRAIN_EPOCHS:-3}
    batch=${TRAIN_BATCH:-512}
    ex="$here/python/examples/train_cifar.py"
    step "train: write $samples CIFAR-10 records" "$log" python3 -c "import sys; sys.path.insert(0, '$here/python/examples'); \
        from train_cifar import write_cifar10; write_cifar10('$data', $samples, 10000, 0)"
    step "train: ResNet-18, ferry loader" "$log" python3 "$ex" --data "$data" --epochs "$epochs" --batch-size auto \
        --max-batch "$batch" --loader ferry --report "$out/train_ferry.html" --json "$out/train_ferry_results.json"
    step "train: ResNet-18, torch DataLoader" "$log" python3 "$ex" --data "$data" --epochs "$epochs" --batch-size "$batch" \
        --loader torch --workers 8 --json "$out/train_torch_results.json"
    inet="$here/python/examples/train_imagenet.py"
    step "train: ResNet-50 on a JPEG folder, ferry loader" "$log" python3 "$inet" --write 12000 --classes 100 \
        --model resnet50 --epochs 2 --batch-size 128 --workers 16 --loader ferry --json "$out/train_imagenet_ferry.json"
    step "train: ResNet-50 on a JPEG folder, torch DataLoader" "$log" python3 "$inet" --write 12000 --classes 100 \
        --model resnet50 --epochs 2 --batch-size 128 --workers 16 --loader torch --json "$out/train_imagenet_torch.json"
    torch_cmake=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null)
    step "train: C++ trainer, cmake configure" "$log" cmake -S "$here/cpp-examples" -B "$here/cpp-examples-build" \
        -DCMAKE_BUILD_TYPE=Release "-DCMAKE_PREFIX_PATH=$here/prefix;$torch_cmake"
    step "train: C++ trainer, build" "$log" cmake --build "$here/cpp-examples-build" -j "$(nproc)"
    step "train: C++ trainer on libtorch" "$log" bash -c "set -o pipefail; '$here/cpp-examples-build/train' --data '$data' \
        --epochs $epochs --batch $batch --report '$out/train_cpp.html' 2>&1 | tee '$out/train_cpp.log'"
    step "train: pytest (trainer and docs)" "$log" python3 -m pytest -q -rs "$here/python/tests/test_train_cifar.py" \
        "$here/python/tests/test_docs.py"
    python3 - "$out" <<'PY' | tee -a "$log"
import json, os, sys
for name in ("ferry", "torch"):
    p = os.path.join(sys.argv[1], f"train_{name}_results.json")
    if not os.path.exists(p):
        continue
    r = json.load(open(p))
    print(f"{name}: batch {r['batch_size']}, staging {r['staging']}, final loss {r['final_loss']:.4f}, "
          f"test acc {r['test_acc']:.4f}")
    for e in r["per_epoch"] + [dict(r, epoch="all")]:
        print(f"  epoch {e['epoch']!s:4} {e['images_per_s']:9.0f} images/s  step p50 {e['step_ms_p50']:6.2f} ms  "
              f"mean {e['step_ms_mean']:6.2f} ms  data stall {e['data_stall_pct']:5.1f} %")
PY
fi

echo
echo "===== summary ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1))"
printf '%s\n' "${summary[@]}"
exit $failed
