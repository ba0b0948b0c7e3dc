package engine

import (
	"os"
	"testing"

	"github.com/stretchr/testify/require"
)

// setRankEnv sets the named variables (a nil value unsets it) for the test's duration, and unsets the
// other distributed variables so the outer environment cannot leak in.
func setRankEnv(t *testing.T, env map[string]*string) {
	t.Helper()
	for _, k := range []string{"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"} {
		t.Setenv(k, "") // registers the restore
		if v, ok := env[k]; ok && v != nil {
			t.Setenv(k, *v)
		} else {
			require.NoError(t, os.Unsetenv(k))
		}
	}
}

func str(s string) *string { return &s }

func TestRankFromEnv(t *testing.T) {
	for _, tc := range []struct {
		name        string
		env         map[string]*string
		rank, world int
		ok          bool
		err         string
	}{
		{name: "unset", env: nil},
		{name: "both empty", env: map[string]*string{"RANK": str(""), "WORLD_SIZE": str(" ")}},
		{name: "torchrun", env: map[string]*string{"RANK": str("3"), "WORLD_SIZE": str("8")}, rank: 3, world: 8, ok: true},
		{name: "single process", env: map[string]*string{"RANK": str("0"), "WORLD_SIZE": str("1")}, rank: 0, world: 1, ok: true},
		{name: "spaces", env: map[string]*string{"RANK": str(" 5\n"), "WORLD_SIZE": str("16 ")}, rank: 5, world: 16, ok: true},
		{name: "rank not a number", env: map[string]*string{"RANK": str("one"), "WORLD_SIZE": str("2")}, err: `RANK="one" is not an integer`},
		{name: "world not a number", env: map[string]*string{"RANK": str("1"), "WORLD_SIZE": str("2.0")}, err: `WORLD_SIZE="2.0" is not an integer`},
		{name: "rank too large", env: map[string]*string{"RANK": str("8"), "WORLD_SIZE": str("8")}, err: "RANK=8 is outside [0, WORLD_SIZE=8)"},
		{name: "negative rank", env: map[string]*string{"RANK": str("-1"), "WORLD_SIZE": str("8")}, err: "RANK=-1 is outside"},
		{name: "zero world", env: map[string]*string{"RANK": str("0"), "WORLD_SIZE": str("0")}, err: "WORLD_SIZE=0; it must be at least 1"},
		{name: "rank only", env: map[string]*string{"RANK": str("2")}, err: "RANK=2 is set but WORLD_SIZE is not"},
		{name: "world only", env: map[string]*string{"WORLD_SIZE": str("4")}, err: "WORLD_SIZE=4 is set but RANK is not"},
		{name: "local rank is not read", env: map[string]*string{"LOCAL_RANK": str("1")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			setRankEnv(t, tc.env)
			rank, world, ok, err := RankFromEnv()
			if tc.err != "" {
				require.ErrorIs(t, err, ErrInvalidArgument)
				require.ErrorContains(t, err, tc.err)
				require.False(t, ok)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.ok, ok)
			require.Equal(t, tc.rank, rank)
			require.Equal(t, tc.world, world)
		})
	}
}

func TestLocalRankFromEnv(t *testing.T) {
	for _, tc := range []struct {
		name  string
		env   map[string]*string
		local int
		ok    bool
		err   string
	}{
		{name: "unset", env: map[string]*string{"RANK": str("1"), "WORLD_SIZE": str("2")}},
		{name: "empty", env: map[string]*string{"LOCAL_RANK": str("")}},
		{name: "torchrun", env: map[string]*string{"LOCAL_RANK": str("2"), "LOCAL_WORLD_SIZE": str("4")}, local: 2, ok: true},
		{name: "without local world size", env: map[string]*string{"LOCAL_RANK": str("7")}, local: 7, ok: true},
		{name: "not a number", env: map[string]*string{"LOCAL_RANK": str("gpu0")}, err: `LOCAL_RANK="gpu0" is not an integer`},
		{name: "negative", env: map[string]*string{"LOCAL_RANK": str("-2")}, err: "LOCAL_RANK=-2 is negative"},
		{name: "outside local world", env: map[string]*string{"LOCAL_RANK": str("4"), "LOCAL_WORLD_SIZE": str("4")}, err: "LOCAL_RANK=4 is outside [0, LOCAL_WORLD_SIZE=4)"},
		{name: "bad local world", env: map[string]*string{"LOCAL_RANK": str("0"), "LOCAL_WORLD_SIZE": str("x")}, err: `LOCAL_WORLD_SIZE="x" is not an integer`},
		{name: "zero local world", env: map[string]*string{"LOCAL_RANK": str("0"), "LOCAL_WORLD_SIZE": str("0")}, err: "LOCAL_WORLD_SIZE=0; it must be at least 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			setRankEnv(t, tc.env)
			local, ok, err := LocalRankFromEnv()
			if tc.err != "" {
				require.ErrorIs(t, err, ErrInvalidArgument)
				require.ErrorContains(t, err, tc.err)
				require.False(t, ok)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.ok, ok)
			require.Equal(t, tc.local, local)
		})
	}
}
