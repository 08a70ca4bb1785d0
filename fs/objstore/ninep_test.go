package objstore

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"strata/fs"
	"strata/fs/fstest"
	"strata/fs/ninep"
	"strata/fs/ninep/ninetest"
	"strata/mount/remote"
)

// serve9P serves root over 9P on a loopback port until the test ends.
func serve9P(t *testing.T, root fs.Dir) string {
	t.Helper()
	srv := ninep.NewServer(root, testLog(t))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		c, cancel := contextWithTimeout(10 * time.Second)
		defer cancel()
		if err := srv.Shutdown(c); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; !errors.Is(err, ninep.ErrServerClosed) {
			t.Errorf("serve returned %v", err)
		}
	})
	return ln.Addr().String()
}

// TestConformance9P: the store served over 9P and seen through the
// remote client keeps the promises of the store itself.
func TestConformance9P(t *testing.T) {
	s := openStore(t, config(t, newBucket(t), "edge"))
	put(t, s.Root(), "top", []byte("top"))
	d, err := s.Root().Mkdir(ctx, "d", 0o755)
	if err != nil {
		t.Fatal(err)
	}
	put(t, d, "inner", bytes.Repeat([]byte("inner"), 3000))
	tr, err := remote.Dial(ctx, "tcp", serve9P(t, s.Root()), remote.Options{Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := fstest.Check(ctx, tr.Root(), "top", "d/inner"); err != nil {
		t.Fatal(err)
	}
}

// TestP9Client: a third-party 9P2000.L client (hugelgupf/p9) creates,
// writes, reads back, lists, renames and removes a file in the store.
// What it wrote is in the bucket, whole, once acknowledged; what it
// removed is gone.
func TestP9Client(t *testing.T) {
	bucket := newBucket(t)
	s := openStore(t, config(t, bucket, "p9"))
	objects := func(want ...string) error {
		if got := keys(t, bucket); !slices.Equal(got, want) {
			return fmt.Errorf("objects: %q, want %q", got, want)
		}
		return nil
	}
	err := ninetest.LinuxClient(serve9P(t, s.Root()), ninetest.LinuxOptions{
		Msize:       256 << 10,
		AfterCreate: func(string, []byte) error { return objects("p9/dir/", "p9/dir/a.txt") },
		AfterRemove: func([]string) error { return objects() },
	})
	if err != nil {
		t.Error(err)
	}
}
