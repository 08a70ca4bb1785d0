package objstore

import (
	"bytes"
	"strings"
	"testing"

	"strata/fs/fstest"
)

// TestConformance runs the repository's conformance checker on a store,
// empty and then holding files, and checks that nothing was written
// outside the store's prefix.
func TestConformance(t *testing.T) {
	bucket := newBucket(t)
	s := openStore(t, config(t, bucket, "edges/e1"))
	if err := fstest.Check(ctx, s.Root()); err != nil {
		t.Fatal(err)
	}
	put(t, s.Root(), "top", []byte("top"))
	d, err := s.Root().Mkdir(ctx, "d", 0o755)
	if err != nil {
		t.Fatal(err)
	}
	put(t, d, "inner", bytes.Repeat([]byte("inner"), 1000))
	if err := fstest.Check(ctx, s.Root(), "top", "d/inner"); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys(t, bucket) {
		if !strings.HasPrefix(k, "edges/e1/") {
			t.Errorf("object %q outside the prefix", k)
		}
	}
	if got := strings.Join(keys(t, bucket), ","); got != "edges/e1/d/,edges/e1/d/inner,edges/e1/top" {
		t.Errorf("objects left: %s", got)
	}
}

// TestConformanceWholeBucket: a store whose prefix is empty is the whole
// bucket.
func TestConformanceWholeBucket(t *testing.T) {
	bucket := newBucket(t)
	s := openStore(t, config(t, bucket, ""))
	put(t, s.Root(), "top", []byte("top"))
	if err := fstest.Check(ctx, s.Root(), "top"); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(keys(t, bucket), ","); got != "top" {
		t.Errorf("objects left: %s", got)
	}
}
