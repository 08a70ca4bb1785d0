package fstest_test

import (
	"context"
	"strings"
	"testing"

	iofs "io/fs"

	"strata/fs"
	"strata/fs/fstest"
	"strata/fs/memfs"
)

// The checker must catch broken trees: each mutant below breaks one promise
// of a correct tree, and Check must say so.

type unsortedDir struct{ fs.Dir }

func (d unsortedDir) ReadDir(ctx context.Context) ([]fs.Info, error) {
	list, err := d.Dir.ReadDir(ctx)
	for i, j := 0, len(list)-1; i < j; i, j = i+1, j-1 {
		list[i], list[j] = list[j], list[i]
	}
	return list, err
}

type noTruncDir struct{ fs.Dir }

func (d noTruncDir) Lookup(ctx context.Context, name string) (fs.Node, error) {
	n, err := d.Dir.Lookup(ctx, name)
	switch n := n.(type) {
	case fs.File:
		return noTruncFile{n}, err
	case fs.Dir:
		return noTruncDir{n}, err
	}
	return n, err
}

func (d noTruncDir) Mkdir(ctx context.Context, name string, perm iofs.FileMode) (fs.Dir, error) {
	n, err := d.Dir.Mkdir(ctx, name, perm)
	if err != nil {
		return nil, err
	}
	return noTruncDir{n}, nil
}

type noTruncFile struct{ fs.File }

func (f noTruncFile) SetAttr(ctx context.Context, a fs.Attr) error {
	a.Size = nil
	return f.File.SetAttr(ctx, a)
}

type plainErrDir struct{ fs.Dir }

func (d plainErrDir) Lookup(ctx context.Context, name string) (fs.Node, error) {
	n, err := d.Dir.Lookup(ctx, name)
	if err != nil {
		return nil, context.Canceled
	}
	return n, nil
}

func TestCheckCatches(t *testing.T) {
	ctx := context.Background()
	seed := func() fs.Dir {
		root := memfs.New()
		for _, n := range []string{"a", "b", "c"} {
			_, h, _ := root.Create(ctx, n, fs.WriteOnly, 0o644)
			h.WriteAt(ctx, []byte(n), 0)
			h.Close(ctx)
		}
		return root
	}
	for _, tc := range []struct {
		name string
		tree fs.Dir
		want string
	}{
		{"unsorted", unsortedDir{seed()}, "not sorted"},
		{"truncate ignored", noTruncDir{seed()}, "truncate to 3000"},
		{"wrong error", plainErrDir{seed()}, "fs.ErrNotExist"},
		{"missing expected", seed(), "expected x/y"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := fstest.Check(ctx, tc.tree, "a", "x/y")
			if tc.name != "missing expected" {
				err = fstest.Check(ctx, tc.tree)
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Check = %v; want an error that mentions %q", err, tc.want)
			}
		})
	}
}

func TestCheckPassesGoodTree(t *testing.T) {
	ctx := context.Background()
	root := memfs.New()
	d, _ := root.Mkdir(ctx, "dir", 0o755)
	_, h, _ := d.Create(ctx, "f", fs.WriteOnly, 0o644)
	h.WriteAt(ctx, []byte("content"), 0)
	h.Close(ctx)
	if err := fstest.Check(ctx, root, "dir/f"); err != nil {
		t.Fatal(err)
	}
}
