package up

import (
	"context"
	"slices"
	"testing"
	"time"

	"strata/mount/remote"
)

// listApps lists /apps through a tier's plain port.
func listApps(t *testing.T, addr string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tree, err := remote.Dial(ctx, "tcp", addr, remote.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer tree.Close()
	infos, err := tree.Dir("apps").ReadDir(ctx)
	if err != nil {
		t.Fatalf("listing apps at %s: %v", addr, err)
	}
	var names []string
	for _, in := range infos {
		names = append(names, in.Name)
	}
	return names
}

// With the cloud gone, the edge still lists every app: the app edge shows
// the cloud's last listing for the apps it does not hold, so that `ls`
// keeps telling the truth about what exists (a call to one of them fails
// and says why).
func TestAppsListedWhileParentDown(t *testing.T) {
	h := start(t, Config{})
	edge := h.Groups[0].Edge.Local()
	want := []string{"sha256", "spin", "upper", "wc"}
	if got := listApps(t, edge); !slices.Equal(got, want) {
		t.Fatalf("apps at the edge: %v, want %v", got, want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.Cloud.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if got := listApps(t, edge); !slices.Equal(got, want) {
		t.Fatalf("apps at the edge with the cloud down: %v, want %v", got, want)
	}
}
