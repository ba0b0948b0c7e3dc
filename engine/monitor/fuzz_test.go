package monitor

// Fuzz targets for every parser of outside input: the .npy header and its Python-literal dictionary,
// whole .npy files, token shards (llm.c and flat), ragged offsets files, field specs and the names the
// options take, the transforms' output rules, and the JSON report reader and merger. `go test` replays
// the seed corpora under testdata/fuzz/<FuzzName>/; `go test -run '^$' -fuzz '^FuzzName$' ./engine`
// explores further. Each target checks invariants beyond "no panic": errors wrap the documented
// sentinels and name the problem, and accepted input reads back consistently or round-trips.

import (
	"strings"
	"testing"

	"github.com/ferry-ml/ferry/engine/internal/testutil"

	"github.com/ferry-ml/ferry/engine"

	"github.com/stretchr/testify/require"
)

// FuzzMetricName checks arbitrary metric names: exactly the names of 1 to 256 bytes of ASCII letters,
// digits and . _ - / : are accepted; a refusal is an ErrInvalidArgument error.
func FuzzMetricName(f *testing.F) {
	f.Fuzz(func(t *testing.T, name string) {
		ok := len(name) >= 1 && len(name) <= maxMetricName
		for i := 0; i < len(name) && ok; i++ {
			c := name[i]
			ok = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("._-/:", c) >= 0
		}
		err := checkMetricName(name)
		if ok {
			require.NoError(t, err, "%q", name)
			return
		}
		require.Error(t, err, "%q was accepted", name)
		testutil.RequireWraps(t, err, engine.ErrInvalidArgument)
	})
}
