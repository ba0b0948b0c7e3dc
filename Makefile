# ferry — build, test and check. `make help` lists the targets.

# VERSION holds the one version string; the soname takes its major number. `make check-version` fails when a
# copy that is not derived from it (the Go default, ferry.h, the Python package) says otherwise.
VERSION      := $(shell cat VERSION)
SOVERSION    := $(firstword $(subst ., ,$(VERSION)))
BUILD        := build
LIBDIR       := $(BUILD)/lib
INCDIR       := $(BUILD)/include
BINDIR       := $(BUILD)/bin
LIB          := $(LIBDIR)/libferry.so.$(VERSION)
GO           ?= go
# The Python steps (test-python, test-install's pip consumer, bench) and the linters run in a virtual
# environment under build/, made by BOOTSTRAP_PYTHON from the pinned PY_REQUIREMENTS and made anew when that
# file changes; the Go tests find it first on the PATH (their numpy cross-checks run python3). PYTHON=/path/to/python
# runs the Python steps with that interpreter instead, as it is.
BOOTSTRAP_PYTHON ?= python3
VENV         := $(BUILD)/venv
PY_REQUIREMENTS := bindings/python/requirements-dev.txt
VENV_STAMP   := $(VENV)/requirements.stamp
ifeq ($(origin PYTHON),undefined)
PYTHON       := $(CURDIR)/$(VENV)/bin/python
PY_ENV       := $(VENV_STAMP)
PY_PATH      := $(CURDIR)/$(VENV)/bin:
endif
export CGO_ENABLED := 1
# go-built C objects: optimize; the driver shims must build without CUDA headers.
export CGO_CFLAGS  ?= -O2 -Wall

# Every Go binary built here carries VERSION as engine.Version (its default in the source must agree).
GO_VERSION_X := -X github.com/ferry-ml/ferry/engine.Version=$(VERSION)
LIB_LDFLAGS  := -s -w $(GO_VERSION_X) -extldflags '-Wl,-soname,libferry.so.$(SOVERSION) -Wl,--version-script=$(CURDIR)/capi/libferry.map'
GO_SOURCES   := $(shell find engine capi cmd kernels -name '*.go' -o -name '*.c' -o -name '*.h' -o -name '*.map' 2>/dev/null) kernels/ferry_kernels.fatbin go.mod go.sum VERSION
NVCC         ?= $(shell command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)
# make install: where to (an absolute path is written into ferry.pc) and an optional staging root.
PREFIX       ?= /usr/local
DESTDIR      ?=
INSTALL_CMAKE := $(BUILD)/install-cmake

.PHONY: all build lib cli install test test-go test-harness test-python test-cpp test-install check check-kernels check-version lint venv kernels demo gpu-bundle gpu-s3-wheels bench soak sanitize fuzz clean help

all: build

help:
	@echo "make build       libferry.so, ferry.h and the ferry CLI under $(BUILD)/"
	@echo "make install     libferry.so, ferry.h, ferry.hpp, the CLI, ferryConfig.cmake and ferry.pc into PREFIX"
	@echo "                 (default /usr/local; PREFIX=DIR, DESTDIR=STAGE). Python: pip install ./bindings/python"
	@echo "make test        every test: Go (-race), the C-ABI harness, pytest, C/C++ (ctest), test-install"
	@echo "make test-install  install into temporary directories; build and run C (pkg-config), CMake and pip consumers"
	@echo "make check       gofmt, go vet, go mod tidy, header compiles as C99 and C++17, kernel stamp, versions, lint"
	@echo "make lint        golangci-lint, ruff and clang-format (pinned, installed under $(BUILD)/ on first use)"
	@echo "make venv        the Python environment of the tests and linters, $(VENV)"
	@echo "make kernels     rebuild kernels/ferry_kernels.fatbin with nvcc (NVCC=/path/to/nvcc) and its stamp"
	@echo "make demo        build, then run ferry demo"
	@echo "make bench       memory-check benchmarks on this machine"
	@echo "make gpu-bundle  everything the GPU run needs, under $(BUILD)/gpu"
	@echo "make gpu-s3-wheels  the S3 test server's wheels for the GPU host, under $(BUILD)/s3wheels"

build: lib cli

lib: $(LIB) $(INCDIR)/ferry.h

$(LIB): $(GO_SOURCES)
	@mkdir -p $(LIBDIR)
	$(GO) build -buildmode=c-shared -trimpath -ldflags "$(LIB_LDFLAGS)" -o $@ ./capi
	@rm -f $(basename $@).h
	ln -sf libferry.so.$(VERSION) $(LIBDIR)/libferry.so.$(SOVERSION)
	ln -sf libferry.so.$(SOVERSION) $(LIBDIR)/libferry.so

$(INCDIR)/ferry.h: capi/ferry.h
	@mkdir -p $(INCDIR)
	cp capi/ferry.h $@

cli: $(GO_SOURCES)
	@mkdir -p $(BINDIR)
	$(GO) build -trimpath -ldflags "$(GO_VERSION_X)" -o $(BINDIR)/ferry ./cmd/ferry

test: build test-go test-harness test-python test-cpp test-install

# The metric stream's order tests run 200 times in a row as well: the interleavings they force are
# deterministic, and the repeats catch any that are not.
test-go: $(PY_ENV)
	PATH="$(PY_PATH)$$PATH" FERRY_REQUIRE_S3=1 $(GO) test -race -count=1 -ldflags "$(GO_VERSION_X)" ./engine/... ./capi/... ./cmd/...
	$(GO) test -race -count=200 -run 'TestMonitorJSONL' ./engine/monitor/

test-harness: lib
	FERRY_LIBRARY=$(CURDIR)/$(LIBDIR)/libferry.so $(GO) test -race -count=1 ./tests/

# The virtual environment: made from scratch whenever the requirements change.
venv: $(VENV_STAMP)

$(VENV_STAMP): $(PY_REQUIREMENTS) bindings/python/requirements-s3.txt
	@$(BOOTSTRAP_PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { echo "$(BOOTSTRAP_PYTHON) cannot make a \
	virtual environment with pip: install python3-venv (apt-get install python3-venv)"; exit 1; }
	rm -rf $(VENV)
	$(BOOTSTRAP_PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -r $(PY_REQUIREMENTS)
	touch $@

test-python: lib $(PY_ENV)
	FERRY_LIBRARY=$(CURDIR)/$(LIBDIR)/libferry.so PYTHONPATH=$(CURDIR)/bindings/python \
		$(PYTHON) -m pytest -q bindings/python/tests

test-cpp: lib
	cmake -S . -B $(BUILD)/cmake -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build $(BUILD)/cmake -j2
	ctest --test-dir $(BUILD)/cmake --output-on-failure

# The install rules live in CMakeLists.txt; this configures them alone (no tests, no GoogleTest) in a
# build directory of their own. cmake --install honors DESTDIR.
install: build
	cmake -S . -B $(INSTALL_CMAKE) -DFERRY_BUILD_TESTS=OFF -DCMAKE_INSTALL_PREFIX="$(abspath $(PREFIX))" >/dev/null
	DESTDIR="$(if $(DESTDIR),$(abspath $(DESTDIR)))" cmake --install $(INSTALL_CMAKE)

# Installs into temporary directories and builds consumers against the result: a C program through
# pkg-config, a CMake project through find_package(ferry) on a moved copy, a DESTDIR staging, and the
# Python package through pip (bundled library, platform wheel).
test-install: build $(PY_ENV)
	MAKE="$(MAKE)" PYTHON="$(PYTHON)" tests/install/run.sh

kernels:
	cmake -S kernels -B $(BUILD)/kernels -DCMAKE_CUDA_COMPILER=$(NVCC) >/dev/null
	cmake --build $(BUILD)/kernels
	cp $(BUILD)/kernels/ferry_kernels.fatbin kernels/ferry_kernels.fatbin
	kernels/stamp.sh > kernels/ferry_kernels.stamp
	@echo "kernels: ferry_kernels.fatbin rebuilt, stamp $$(cat kernels/ferry_kernels.stamp)"

check-kernels:
	@if [ "$$(kernels/stamp.sh)" != "$$(cat kernels/ferry_kernels.stamp)" ]; then \
		echo "kernels/ferry_kernels.fatbin is stale: the kernel sources changed since it was built; run make kernels"; \
		exit 1; fi

# Every copy of the version that is not derived from VERSION agrees with it.
check-version:
	@tests/check_version.sh

# The linters, pinned: golangci-lint (.golangci.yml) built into $(BUILD)/tools, ruff (.ruff.toml) and
# clang-format (.clang-format) from the virtual environment. Each runs even when another found something.
GOLANGCI_LINT_VERSION := v2.15.0
GOLANGCI_LINT := $(BUILD)/tools/golangci-lint-$(GOLANGCI_LINT_VERSION)/golangci-lint
PY_LINT_PATHS := bindings/python tests/install
C_LINT_FILES   = $(shell git ls-files '*.c' '*.h' '*.cpp' '*.hpp' | grep -v '^kernels/')

$(GOLANGCI_LINT):
	GOBIN=$(CURDIR)/$(@D) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)

lint: $(GOLANGCI_LINT) $(VENV_STAMP)
	@failed=; \
	echo "lint: golangci-lint"; $(GOLANGCI_LINT) run ./... || failed="$$failed golangci-lint"; \
	echo "lint: ruff"; $(VENV)/bin/ruff check $(PY_LINT_PATHS) || failed="$$failed ruff"; \
	echo "lint: clang-format"; $(VENV)/bin/clang-format --dry-run --Werror $(C_LINT_FILES) || failed="$$failed clang-format"; \
	if [ -n "$$failed" ]; then echo "lint: findings from:$$failed"; exit 1; fi; echo "lint: ok"

check: check-kernels check-version
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	$(GO) vet ./...
	@cp go.mod $(BUILD)/go.mod.bak 2>/dev/null || (mkdir -p $(BUILD) && cp go.mod $(BUILD)/go.mod.bak); \
		cp go.sum $(BUILD)/go.sum.bak; $(GO) mod tidy; \
		if ! cmp -s go.mod $(BUILD)/go.mod.bak || ! cmp -s go.sum $(BUILD)/go.sum.bak; then \
			echo "go mod tidy changed go.mod/go.sum: commit the tidy result"; exit 1; fi
	gcc -std=c99 -Wall -Wextra -pedantic -Werror -fsyntax-only -x c capi/ferry.h
	g++ -std=c++17 -Wall -Wextra -pedantic -Werror -fsyntax-only -x c++ capi/ferry.h
	g++ -std=c++17 -Wall -Wextra -pedantic -Werror -fsyntax-only -x c++ -Icapi bindings/cpp/ferry.hpp
	@$(MAKE) --no-print-directory lint
	@echo "check: ok"

demo: build
	$(BINDIR)/ferry demo

# Benchmarks on this machine: GPU 0 when there is one, else the CPU engine. On the GPU host the same
# programs run from the bundle (run.sh bench), side by side with PyTorch.
bench: lib $(PY_ENV)
	cmake -S . -B $(BUILD)/cmake -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build $(BUILD)/cmake -j2 --target bench_memory
	$(BUILD)/cmake/bench_memory
	FERRY_LIBRARY=$(CURDIR)/$(LIBDIR)/libferry.so $(PYTHON) bindings/python/benchmarks/bench_memory.py
	$(GO) test -run '^$$' -bench . -benchtime 2s ./engine/...

# Reliability runs, not in CI (docs/RELIABILITY.md has their figures).
# soak: 10,000 iterator create/destroy cycles and a 2-minute pipeline, on the CPU engine and on the stand-in
# driver, with RSS, pinned and device bytes, goroutines and descriptors checked flat (FERRY_SOAK_CYCLES,
# FERRY_SOAK_DURATION). sanitize: the C and C++ tests under AddressSanitizer, LeakSanitizer and UBSan.
soak:
	$(GO) test -tags soak -run Soak -count=1 -timeout 30m -v ./engine/data/

# fuzz: every fuzz target in turn for FUZZTIME (default a million execs each); the seed corpora in
# testdata/fuzz are replayed by every `go test`, so CI runs them.
FUZZTIME ?= 1000000x
# Each target as package:name.
ENGINE_FUZZ := data:FuzzNpyHeader data:FuzzPyDict data:FuzzNpySource data:FuzzTokenLLMC data:FuzzTokenFlat \
	data:FuzzRaggedOffsets data:FuzzParseDType data:FuzzFieldValidate data:FuzzParseOptionNames \
	data:FuzzTransformOutputs data:FuzzMegatronIndex data:FuzzWebDatasetIndex data:FuzzDecodeImage data:FuzzJPEGHeader monitor:FuzzMetricName report:FuzzReports
fuzz: lib
	@for pt in $(ENGINE_FUZZ); do p=$${pt%%:*}; t=$${pt#*:}; echo "== $$t ($$p)"; \
		$(GO) test -timeout 0 -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) ./engine/$$p/ || exit 1; done
	@echo "== FuzzCAPISequence"; FERRY_LIBRARY=$(CURDIR)/$(LIBDIR)/libferry.so $(GO) test -timeout 0 -run '^$$' \
		-fuzz '^FuzzCAPISequence$$' -fuzztime $(FUZZTIME) ./tests/

sanitize: lib
	tests/sanitize/run.sh

clean:
	rm -rf $(BUILD)

# The GPU host has no Go and fetches nothing: build every binary here, then carry build/gpu there and run
# FERRY_REQUIRE_GPU=1 build/gpu/run.sh. The C/C++ binaries link libstdc++ statically and find libferry.so
# through $ORIGIN/../lib. The Go binaries are stripped (-s -w): the bundle travels under a size limit.
GPU := $(BUILD)/gpu
GPU_CTESTS := test_c99 header_cxx17 test_iterator_c99 test_memory_c99 test_monitor_c99 test_ferry_hpp \
	test_iterator_hpp test_memory_hpp test_transform_hpp test_megatron_hpp test_images_hpp test_monitor_hpp bench_memory bench_metric ferry_info ferry_iterate ferry_megatron
MEGATRON_CORE_VERSION := 0.19.2
# The S3 server's wheels for the GPU host (Python 3.12, x86-64), carried beside the bundle (together they
# would pass the size one transfer takes): `run.sh s3` installs them from build/s3wheels.
gpu-s3-wheels: $(PY_ENV)
	rm -rf $(BUILD)/s3wheels && mkdir -p $(BUILD)/s3wheels
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d $(BUILD)/s3wheels -r bindings/python/requirements-s3.txt
	@du -sh $(BUILD)/s3wheels

gpu-bundle: build $(PY_ENV)
	rm -rf $(GPU) && mkdir -p $(GPU)/lib $(GPU)/include $(GPU)/bin $(GPU)/tests $(GPU)/python
	cp -P $(LIBDIR)/libferry.so* $(GPU)/lib/
	cp capi/ferry.h $(GPU)/include/
	$(GO) build -trimpath -ldflags "-s -w $(GO_VERSION_X)" -o $(GPU)/bin/ferry ./cmd/ferry
	$(GO) test -c -ldflags "-s -w $(GO_VERSION_X)" -o $(GPU)/tests/engine.test ./engine
	$(GO) test -c -ldflags "-s -w $(GO_VERSION_X)" -o $(GPU)/tests/data.test ./engine/data
	$(GO) test -c -ldflags "-s -w $(GO_VERSION_X)" -o $(GPU)/tests/monitor.test ./engine/monitor
	$(GO) test -c -ldflags "-s -w $(GO_VERSION_X)" -o $(GPU)/tests/report.test ./engine/report
	$(GO) test -c -ldflags "-s -w $(GO_VERSION_X)" -o $(GPU)/tests/cuda.test ./engine/internal/cuda
	$(GO) test -c -ldflags "-s -w $(GO_VERSION_X)" -o $(GPU)/tests/harness.test ./tests
	$(GO) test -c -ldflags "-s -w $(GO_VERSION_X)" -o $(GPU)/tests/cli.test ./cmd/ferry
	mkdir -p $(GPU)/capi $(GPU)/cmd/ferry && cp capi/ferry.h $(GPU)/capi/
	cp tests/exported_symbols.txt $(GPU)/tests/
	@# The harness builds the stand-in driver from engine/internal/testutil/testdata (../engine/... from tests/).
	mkdir -p $(GPU)/engine/internal/testutil && cp -r engine/internal/testutil/testdata $(GPU)/engine/internal/testutil/
	@# The Megatron corpora and fixtures: data.test reads testdata/megatron from tests/, the harness
	@# ../engine/data/testdata/megatron.
	mkdir -p $(GPU)/tests/testdata $(GPU)/engine/data/testdata
	cp -r engine/data/testdata/megatron $(GPU)/tests/testdata/ && cp -r engine/data/testdata/megatron $(GPU)/engine/data/testdata/
	cp -r engine/data/testdata/images $(GPU)/tests/testdata/ && cp -r engine/data/testdata/images $(GPU)/engine/data/testdata/
	@# megatron-core for the GPU host (Python 3.12; numpy and torch are there): the fixture comparison and the
	@# Megatron benchmarks install it from this wheel. Without network here, they report it missing.
	@# TurboJPEG for the CPU decode path, when this machine has it and the GPU host does not (run.sh picks).
	-cp -L $$(ldconfig -p | awk '/libturbojpeg\.so\.0 /{print $$NF; exit}') $(GPU)/lib/libturbojpeg.so.0 2>/dev/null
	mkdir -p $(GPU)/wheels && $(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		-d $(GPU)/wheels megatron-core==$(MEGATRON_CORE_VERSION) || echo "gpu-bundle: megatron-core wheel not downloaded"
	cmake -S . -B $(BUILD)/gpu-cmake -DCMAKE_BUILD_TYPE=Release -DFERRY_STATIC_CXX_RUNTIME=ON >/dev/null
	cmake --build $(BUILD)/gpu-cmake -j2 --target $(GPU_CTESTS)
	cd $(BUILD)/gpu-cmake && cp $(GPU_CTESTS) $(CURDIR)/$(GPU)/bin/
	tar -C bindings/python --exclude=__pycache__ --exclude='*.egg-info' --exclude=build -cf - . | tar -C $(GPU)/python -xf -
	cp tests/gpu/run.sh tests/gpu/ddp.sh VERSION $(GPU)/
	@# An installed tree, relocatable for find_package(ferry): on the GPU host, configure a consumer with
	@# -DCMAKE_PREFIX_PATH=$$PWD/build/gpu/prefix (install-test/cmake is one). Its library and CLI are hard
	@# links to the bundle's own copies (the stripped CLI), so the archive holds each file once.
	$(MAKE) --no-print-directory install PREFIX=$(CURDIR)/$(GPU)/prefix DESTDIR= >/dev/null
	find $(GPU)/prefix -type f -name libferry.so.$(VERSION) -exec ln -f $(GPU)/lib/libferry.so.$(VERSION) {} \;
	ln -f $(GPU)/bin/ferry $(GPU)/prefix/bin/ferry
	mkdir -p $(GPU)/install-test && cp -r tests/install/consumer.c tests/install/consumer.cpp tests/install/cmake $(GPU)/install-test/
	@# The C++ examples project (train.cpp, built there against prefix/ and libtorch), and the docs whose code
	@# blocks test_docs.py runs, with ferry.hpp where the tests look for it.
	mkdir -p $(GPU)/cpp-examples $(GPU)/docs $(GPU)/bindings/cpp
	cp bindings/cpp/examples/*.cpp bindings/cpp/examples/CMakeLists.txt $(GPU)/cpp-examples/
	cp docs/PYTORCH.md docs/CPP.md $(GPU)/docs/
	cp bindings/cpp/ferry.hpp $(GPU)/bindings/cpp/
	@du -sh $(GPU)
	tar -C $(BUILD) -cf - gpu | xz -T0 -6 > $(BUILD)/gpu.tar.xz
	@du -sh $(BUILD)/gpu.tar.xz
