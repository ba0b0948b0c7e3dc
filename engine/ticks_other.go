//go:build !amd64

package engine

func rdtsc() uint64 { return uint64(nanotime()) }

const tscAvailable = false
