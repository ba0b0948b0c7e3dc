package engine

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// LookupEnv reads the process environment for RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE. Go
// copies the environment when the runtime starts, so inside libferry.so, os.LookupEnv would miss
// variables a host program sets later (Python's os.environ); the C library therefore replaces this with
// the C runtime's getenv. Set it before any iterator is created.
var LookupEnv = os.LookupEnv

// lookupIntEnv reads an integer environment variable. A variable that is unset or empty (after
// trimming spaces) is reported as not set; a value that is not a decimal integer is an
// ErrInvalidArgument error naming the variable.
func lookupIntEnv(name string) (v int, set bool, err error) {
	s, ok := LookupEnv(name)
	s = strings.TrimSpace(s)
	if !ok || s == "" {
		return 0, false, nil
	}
	v, err = strconv.Atoi(s)
	if err != nil {
		return 0, true, fmt.Errorf("%w: environment variable %s=%q is not an integer", ErrInvalidArgument, name, s)
	}
	return v, true, nil
}

// RankFromEnv reads the process's rank and the number of ranks from RANK and WORLD_SIZE, the variables
// torchrun (and most launchers) set. ok is false, with no error, when neither is set (or both are
// empty): the process is not part of a distributed job. It is an ErrInvalidArgument error, naming the
// variable, when only one of them is set, when a value is not an integer, when WORLD_SIZE < 1, or when
// RANK is outside [0, WORLD_SIZE).
func RankFromEnv() (rank, world int, ok bool, err error) {
	rank, rankSet, err := lookupIntEnv("RANK")
	if err != nil {
		return 0, 0, false, err
	}
	world, worldSet, err := lookupIntEnv("WORLD_SIZE")
	if err != nil {
		return 0, 0, false, err
	}
	switch {
	case !rankSet && !worldSet:
		return 0, 0, false, nil
	case !worldSet:
		return 0, 0, false, fmt.Errorf("%w: environment variable RANK=%d is set but WORLD_SIZE is not", ErrInvalidArgument, rank)
	case !rankSet:
		return 0, 0, false, fmt.Errorf("%w: environment variable WORLD_SIZE=%d is set but RANK is not", ErrInvalidArgument, world)
	case world < 1:
		return 0, 0, false, fmt.Errorf("%w: environment variable WORLD_SIZE=%d; it must be at least 1", ErrInvalidArgument, world)
	case rank < 0 || rank >= world:
		return 0, 0, false, fmt.Errorf("%w: environment variable RANK=%d is outside [0, WORLD_SIZE=%d)", ErrInvalidArgument, rank, world)
	}
	return rank, world, true, nil
}

// LocalRankFromEnv reads the process's rank on its node from LOCAL_RANK, which torchrun sets. ok is
// false, with no error, when LOCAL_RANK is unset or empty. It is an ErrInvalidArgument error, naming the
// variable, when the value is not an integer or is negative, or when LOCAL_WORLD_SIZE is set and is
// malformed, less than 1, or not greater than LOCAL_RANK.
func LocalRankFromEnv() (localRank int, ok bool, err error) {
	localRank, set, err := lookupIntEnv("LOCAL_RANK")
	if err != nil || !set {
		return 0, false, err
	}
	if localRank < 0 {
		return 0, false, fmt.Errorf("%w: environment variable LOCAL_RANK=%d is negative", ErrInvalidArgument, localRank)
	}
	localWorld, worldSet, err := lookupIntEnv("LOCAL_WORLD_SIZE")
	if err != nil {
		return 0, false, err
	}
	if worldSet {
		if localWorld < 1 {
			return 0, false, fmt.Errorf("%w: environment variable LOCAL_WORLD_SIZE=%d; it must be at least 1", ErrInvalidArgument, localWorld)
		}
		if localRank >= localWorld {
			return 0, false, fmt.Errorf("%w: environment variable LOCAL_RANK=%d is outside [0, LOCAL_WORLD_SIZE=%d)",
				ErrInvalidArgument, localRank, localWorld)
		}
	}
	return localRank, true, nil
}

// DefaultDevice is the device an engine opens when none is named: LOCAL_RANK when torchrun (or the
// caller) set it, so that each rank of a node gets its own GPU, else 0.
func DefaultDevice() int {
	if r, ok, err := LocalRankFromEnv(); err == nil && ok {
		return r
	}
	return 0
}
