// Package kernels holds ferry's CUDA kernels as one fatbin (ferry_kernels.fatbin, built from the *.cu
// sources here by `make kernels` and committed with a stamp of the sources' hash). The engine loads it
// into each context on first use.
package kernels

import _ "embed"

// Fatbin is the fatbin image: SASS for sm_70, 75, 80, 86, 89 and 90, and compute_70 PTX.
//
//go:embed ferry_kernels.fatbin
var Fatbin []byte

// Stamp is the hash of the sources the fatbin was built from (see stamp.sh).
//
//go:embed ferry_kernels.stamp
var Stamp string
