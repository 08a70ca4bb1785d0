package objstore

import (
	"bytes"
	"errors"
	"fmt"
	iofs "io/fs"
	"slices"
	"strings"
	"testing"
	"time"

	"strata/fs/ninep/ninetest"
)

// Third-party clients against the store served by the 9P front end, as
// for the local store (fs/ninep's TestPlan9Client and TestLinuxDiodTools):
// what they write is in the bucket, acknowledged, and read whole by
// another store (edge) on the same prefix; what others put in the bucket
// is listed and read.

// TestPlan9Client: the 9fans.net client (9P2000) creates, writes, reads
// back, lists, renames, changes the mode of and removes files and
// directories in the store.
func TestPlan9Client(t *testing.T) {
	bucket := newBucket(t)
	s := openStore(t, config(t, bucket, "nine"))
	put(t, s.Root(), "hello.txt", []byte("hello, world\n"))
	if _, err := s.Root().Mkdir(ctx, "sub", 0o755); err != nil {
		t.Fatal(err)
	}
	addr := serve9P(t, s.Root())
	// Another edge on the same prefix sees what was acknowledged.
	other := openStore(t, config(t, bucket, "nine"))
	// objects says whether the bucket holds just want.
	objects := func(want ...string) error {
		if got := keys(t, bucket); !slices.Equal(got, want) {
			return fmt.Errorf("objects: %q, want %q", got, want)
		}
		return nil
	}
	// reads says whether the other edge reads data at name.
	reads := func(name string, data []byte) error {
		if got, err := get(t, other.Root(), name); err != nil || !bytes.Equal(got, data) {
			return fmt.Errorf("the other edge reads %d bytes of %s (%v), want %d", len(got), name, err, len(data))
		}
		return nil
	}

	// A listing carries no mode: Stat does.
	err := ninetest.Plan9Client(addr, ninetest.Plan9Options{
		Uname: "alice",
		// The clunk uploads.
		AfterCreate: func(name string, data []byte) error {
			if name == "new.txt" {
				if err := objects("nine/hello.txt", "nine/new.txt", "nine/sub/"); err != nil {
					return err
				}
			}
			return reads(name, data)
		},
		// A rename is a copy, then a delete of the old key.
		AfterRename: func(_, name string, data []byte) error {
			return errors.Join(objects("nine/hello.txt", "nine/renamed.txt", "nine/sub/"), reads(name, data))
		},
		// The mode is kept in the object's metadata.
		AfterChmod: func(name string, perm iofs.FileMode) error {
			if n, err := permOf(other, name); err != nil || iofs.FileMode(n) != perm {
				return fmt.Errorf("mode of %s seen by the other edge: %o (%v), want %o", name, n, err, perm)
			}
			return nil
		},
		AfterRemove: func([]string) error { return objects("nine/hello.txt", "nine/sub/") },
	})
	if err != nil {
		t.Error(err)
	}
}

// permOf is the permission bits of the file at p in s, by Stat.
func permOf(s *Store, p string) (uint32, error) {
	n, err := s.Root().Lookup(ctx, p)
	if err != nil {
		return 0, err
	}
	info, err := n.Stat(ctx)
	if err != nil {
		return 0, err
	}
	return uint32(info.Mode.Perm()), nil
}

// TestDiodTools: Debian's diodcat and diodls (libnpclient, 9P2000.L) read
// files of the store, one of several blocks of the read cache and one put
// into the bucket by another S3 client, and list its directories.
func TestDiodTools(t *testing.T) {
	opts := ninetest.DiodOptions{
		Diodcat: ninetest.DiodTool(t, "diodcat"),
		Diodls:  ninetest.DiodTool(t, "diodls"),
		Timeout: 30 * time.Second,
	}
	files := map[string]string{
		"hello.txt":      "hello from strata\n",
		"big":            strings.Repeat("0123456789abcdef", 200_000), // 3.2 MB: four blocks, many reads
		"sub/inner":      "deeper\n",
		"foreign/object": "put by another client\n",
	}

	bucket := newBucket(t)
	s := openStore(t, config(t, bucket, "diod"))
	put(t, s.Root(), "hello.txt", []byte(files["hello.txt"]))
	put(t, s.Root(), "big", []byte(files["big"]))
	sub, err := s.Root().Mkdir(ctx, "sub", 0o755)
	if err != nil {
		t.Fatal(err)
	}
	put(t, sub, "inner", []byte(files["sub/inner"]))
	putRaw(t, bucket, "diod/foreign/object", []byte(files["foreign/object"]))

	if err := ninetest.Diod(ctx, serve9P(t, s.Root()), files, opts); err != nil {
		t.Error(err)
	}
	// The tools only read: the bucket is as it was.
	if got := keys(t, bucket); !slices.Equal(got, []string{"diod/big", "diod/foreign/object", "diod/hello.txt", "diod/sub/", "diod/sub/inner"}) {
		t.Errorf("objects: %q", got)
	}
}
