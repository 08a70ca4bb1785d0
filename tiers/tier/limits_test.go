package tier

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"strata/tiers/repo"
	"strata/tiers/wasm"
)

// A cloud started with the limits file an older cloud kept moves the
// limits into its repo, where every node sharing it finds them, and
// removes the file; an app that has limits in the repo keeps them.
func TestLimitsFileMovedIntoRepo(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	r, err := repo.Open(filepath.Join(dir, "apps"), repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, id := range []string{"a", "b"} {
		if _, err := r.Put(ctx, id, []byte("module of "+id)); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.SetLimits("b", repo.Limits{TimeoutMS: 900}); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "limits.json")
	old := `{"a": {"timeout_ms": 1500, "memory_mib": 12}, "b": {"timeout_ms": 3000}, "gone": {"timeout_ms": 100}}`
	if err := os.WriteFile(file, []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	rt, err := wasm.New(ctx, wasm.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close(ctx)
	tr, err := New(Config{Role: Cloud, Name: "cloud", Apps: r, Runtime: rt, LimitsFile: file})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if a, _ := r.Stat("a"); a.Limits != (repo.Limits{TimeoutMS: 1500, MemoryMiB: 12}) {
		t.Errorf("a: limits %+v in the repo, want those of the file", a.Limits)
	}
	if b, _ := r.Stat("b"); b.Limits != (repo.Limits{TimeoutMS: 900}) {
		t.Errorf("b: limits %+v in the repo, want the repo's own", b.Limits)
	}
	if got := string(tr.limitsText("a")); !strings.HasPrefix(got, "timeout 1.5s\nmemory-mib 12\n# the app's own") {
		t.Errorf("limits of a: %q", got)
	}
	if _, err := os.Stat(file); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the limits file after the move: %v, want it gone", err)
	}
}
