package tests

import (
	"bufio"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ebitengine/purego"
	"github.com/stretchr/testify/require"
)

// exportedSymbolsPath is the committed list: $FERRY_EXPORTED_SYMBOLS, or exported_symbols.txt here.
func exportedSymbolsPath() string {
	if p := os.Getenv("FERRY_EXPORTED_SYMBOLS"); p != "" {
		return p
	}
	return "exported_symbols.txt"
}

// committedSymbols reads the committed list: one name a line, sorted, no duplicates.
func committedSymbols(t *testing.T) []string {
	t.Helper()
	f, err := os.Open(exportedSymbolsPath())
	require.NoError(t, err)
	defer f.Close()
	var names []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" {
			names = append(names, line)
		}
	}
	require.NoError(t, sc.Err())
	require.NotEmpty(t, names, "%s is empty", exportedSymbolsPath())
	require.True(t, slices.IsSorted(names), "%s must be sorted", exportedSymbolsPath())
	require.Equal(t, len(names), len(slices.Compact(slices.Clone(names))), "%s has duplicates", exportedSymbolsPath())
	return names
}

var headerDecl = regexp.MustCompile(`(?m)^FERRY_API\b[^;(]*?\b(ferry_\w+)\s*\(`)

// headerFunctions returns the sorted names of the functions ferry.h declares.
func headerFunctions(t *testing.T) []string {
	t.Helper()
	src, err := os.ReadFile(headerPath())
	require.NoError(t, err, "read the header (set FERRY_HEADER to its path)")
	var names []string
	for _, m := range headerDecl.FindAllSubmatch(src, -1) {
		names = append(names, string(m[1]))
	}
	require.NotEmpty(t, names, "no FERRY_API declarations found in %s", headerPath())
	slices.Sort(names)
	return names
}

func openLibraryELF(t *testing.T) *elf.File {
	t.Helper()
	f, err := elf.Open(libraryPath)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return f
}

// TestExportedSymbolsMatchList requires the library's defined ferry_* functions to be exactly the
// committed list.
func TestExportedSymbolsMatchList(t *testing.T) {
	f := openLibraryELF(t)
	syms, err := f.DynamicSymbols()
	require.NoError(t, err)
	var exported []string
	for _, s := range syms {
		if !strings.HasPrefix(s.Name, "ferry_") || s.Section == elf.SHN_UNDEF {
			continue
		}
		require.Equal(t, elf.STT_FUNC, elf.ST_TYPE(s.Info), "%s is not a function", s.Name)
		require.Equal(t, elf.STB_GLOBAL, elf.ST_BIND(s.Info), "%s is not global", s.Name)
		exported = append(exported, s.Name)
	}
	slices.Sort(exported)
	require.Equal(t, committedSymbols(t), exported,
		"the library's ferry_* functions differ from %s", exportedSymbolsPath())
}

// TestHeaderMatchesList requires ferry.h to declare exactly the committed list.
func TestHeaderMatchesList(t *testing.T) {
	require.Equal(t, committedSymbols(t), headerFunctions(t),
		"the functions of %s differ from %s", headerPath(), exportedSymbolsPath())
}

// TestBoundFunctionsMatchHeader keeps this harness binding every function of ferry.h.
func TestBoundFunctionsMatchHeader(t *testing.T) {
	var bound []string
	for _, f := range boundFunctions {
		bound = append(bound, f.name)
	}
	slices.Sort(bound)
	require.Equal(t, headerFunctions(t), bound)
}

// TestSoname checks the library's SONAME, which programs linked with -lferry record.
func TestSoname(t *testing.T) {
	f := openLibraryELF(t)
	soname, err := f.DynString(elf.DT_SONAME)
	require.NoError(t, err)
	require.Equal(t, []string{"libferry.so.0"}, soname)
}

// TestNoDriverLinkDependency checks the lazy-driver rule: the library does not link libcuda or NVML,
// so it loads on a host without the NVIDIA driver.
func TestNoDriverLinkDependency(t *testing.T) {
	f := openLibraryELF(t)
	needed, err := f.ImportedLibraries()
	require.NoError(t, err)
	for _, lib := range needed {
		base := filepath.Base(lib)
		require.False(t, strings.HasPrefix(base, "libcuda") || strings.HasPrefix(base, "libnvidia-ml") ||
			strings.HasPrefix(base, "libcudart"), "the library links %s; it must load the driver lazily", lib)
	}
}

// bindNowEnv marks the child process of TestBindNow.
const bindNowEnv = "FERRY_TEST_BIND_NOW_CHILD"

// TestBindNow loads the library in a fresh process with RTLD_NOW, as Python's ctypes does: every symbol
// the library uses must resolve at load time, on a host without the NVIDIA driver too.
func TestBindNow(t *testing.T) {
	if os.Getenv(bindNowEnv) == "1" {
		t.Skip("in the child process")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestBindNowChild$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), bindNowEnv+"=1", "FERRY_LIBRARY="+libraryPath)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "child failed:\n%s", out)
	require.Contains(t, string(out), "--- PASS: TestBindNowChild", "child did not run the test:\n%s", out)
}

// TestBindNowChild is the child of TestBindNow; it does nothing unless run by it.
func TestBindNowChild(t *testing.T) {
	if os.Getenv(bindNowEnv) != "1" {
		t.Skip("runs only as the child of TestBindNow")
	}
	p, err := resolveLibraryPath()
	require.NoError(t, err)
	h, err := purego.Dlopen(p, purego.RTLD_NOW|purego.RTLD_LOCAL)
	require.NoError(t, err, "dlopen(RTLD_NOW) fails: the library has symbols that nothing provides")
	var version func(major, minor, patch *int32) int32
	purego.RegisterLibFunc(&version, h, "ferry_version")
	var major, minor, patch int32 = -1, -1, -1
	require.Equal(t, ferryOK, version(&major, &minor, &patch))
	require.Equal(t, headerVersion(t), [3]int32{major, minor, patch})
}

// TestNoUnresolvedSymbols checks the dynamic symbol table: every undefined symbol that is not weak
// must come from a versioned system library, or loading with RTLD_NOW (ctypes) fails.
func TestNoUnresolvedSymbols(t *testing.T) {
	f := openLibraryELF(t)
	syms, err := f.DynamicSymbols()
	require.NoError(t, err)
	var unresolved []string
	for _, s := range syms {
		if s.Section != elf.SHN_UNDEF || s.Name == "" || elf.ST_BIND(s.Info) == elf.STB_WEAK {
			continue
		}
		if s.Library == "" && s.Version == "" {
			unresolved = append(unresolved, s.Name)
		}
	}
	if len(unresolved) > 5 {
		unresolved = append(unresolved[:5], "… "+strconv.Itoa(len(unresolved)-5)+" more")
	}
	require.Empty(t, unresolved, "undefined symbols that no needed library provides")
}
