package up

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"strata/mount/fuse"
	"strata/tiers/tier"
)

// requireFUSE skips a test where FUSE is missing, except under CI where
// that is a failure.
func requireFUSE(t testing.TB) {
	t.Helper()
	_, err1 := os.Stat("/dev/fuse")
	_, err2 := exec.LookPath("fusermount3")
	if err1 != nil || err2 != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("FUSE is needed: /dev/fuse: %v; fusermount3: %v", err1, err2)
		}
		t.Skip("no FUSE here")
	}
}

// mountClient starts the client tier of group 1's first client against
// edgeAddr (the edge's encrypted port, or a proxy in front of it) and
// mounts it with FUSE. It returns the mountpoint and the client tier.
func mountClient(t testing.TB, h *Hierarchy, edgeAddr string, slowBelow int64) (string, *tier.Server) {
	t.Helper()
	requireFUSE(t)
	if edgeAddr == "" {
		edgeAddr = h.Groups[0].Edge.Addr()
	}
	c := startClientAt(t, h, edgeAddr, slowBelow, time.Second)
	root, err := c.Tier().Root(context.Background(), h.Groups[0].Clients[0])
	if err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := fuse.Mount(ctx, root, mnt, fuse.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Unmount(); err != nil {
			exec.Command("fusermount3", "-u", "-z", mnt).Run()
		}
	})
	return mnt, c
}
