package memfs_test

import (
	"context"
	"testing"

	"strata/fs/fstest"
	"strata/fs/memfs"
)

func TestConformance(t *testing.T) {
	if err := fstest.Check(context.Background(), memfs.New()); err != nil {
		t.Fatal(err)
	}
}
