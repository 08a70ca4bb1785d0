package fuse

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"strata/fs"
)

// TestFstatUnlinked: fstat(2) of an open descriptor describes the open
// file after its name is removed or taken by a rename, through the mount
// or behind it, with no links left; a stat by name sees the new file.
func TestFstatUnlinked(t *testing.T) { forTrees(t, fstatUnlinked) }

func fstatUnlinked(t *testing.T, root fs.Dir, isStore bool) {
	log, _ := testLog(t)
	_, mp := mountT(t, root, Options{Log: log})
	at := func(name string) string { return filepath.Join(mp, name) }
	stat := func(p string) syscall.Stat_t {
		t.Helper()
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			t.Fatalf("stat %s: %v", p, err)
		}
		return st
	}
	fstat := func(fd int, what string) syscall.Stat_t {
		t.Helper()
		var st syscall.Stat_t
		if err := syscall.Fstat(fd, &st); err != nil {
			t.Fatalf("fstat %s: %v", what, err)
		}
		return st
	}
	open := func(p string, flags int) int {
		t.Helper()
		fd, err := syscall.Open(p, flags, 0)
		if err != nil {
			t.Fatalf("open %s: %v", p, err)
		}
		t.Cleanup(func() { syscall.Close(fd) })
		return fd
	}
	same := func(got, want syscall.Stat_t, what string) {
		t.Helper()
		if got.Ino != want.Ino || got.Size != want.Size || got.Mode != want.Mode || got.Mtim != want.Mtim || got.Nlink != 0 {
			t.Errorf("fstat %s: ino %d size %d mode %o mtime %v nlink %d; want ino %d size %d mode %o mtime %v nlink 0",
				what, got.Ino, got.Size, got.Mode, got.Mtim, got.Nlink, want.Ino, want.Size, want.Mode, want.Mtim)
		}
	}

	// Unlinked through the mount.
	if err := os.WriteFile(at("f"), []byte("nine byte"), 0o640); err != nil {
		t.Fatal(err)
	}
	before := stat(at("f"))
	fd := open(at("f"), syscall.O_RDONLY)
	if st := fstat(fd, "before the unlink"); st.Nlink != 1 || st.Size != 9 {
		t.Errorf("fstat before the unlink: nlink %d size %d", st.Nlink, st.Size)
	}
	if err := syscall.Unlink(at("f")); err != nil {
		t.Fatal(err)
	}
	same(fstat(fd, "after the unlink"), before, "after the unlink")
	buf := make([]byte, 32)
	if n, err := syscall.Pread(fd, buf, 0); err != nil || string(buf[:n]) != "nine byte" {
		t.Errorf("read after the unlink: %q, %v", buf[:n], err)
	}

	// Replaced by a rename through the mount.
	if err := os.WriteFile(at("g"), []byte("g"), 0o644); err != nil {
		t.Fatal(err)
	}
	beforeG := stat(at("g"))
	fdg := open(at("g"), syscall.O_RDONLY)
	if err := os.WriteFile(at("other"), []byte("longer"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(at("other"), at("g")); err != nil {
		t.Fatal(err)
	}
	same(fstat(fdg, "after a rename over its name"), beforeG, "after a rename over its name")
	if st := stat(at("g")); st.Size != 6 || st.Nlink != 1 || st.Mode&0o777 != 0o600 {
		t.Errorf("stat g after the rename: size %d nlink %d mode %o; want the new file", st.Size, st.Nlink, st.Mode)
	}

	// A directory replaced by a rename: the open directory keeps its
	// attributes.
	if err := os.Mkdir(at("d1"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(at("d2"), 0o700); err != nil {
		t.Fatal(err)
	}
	beforeD := stat(at("d2"))
	fdd := open(at("d2"), syscall.O_RDONLY|syscall.O_DIRECTORY)
	if err := syscall.Rename(at("d1"), at("d2")); err != nil {
		t.Fatalf("rename a directory over an empty one: %v", err)
	}
	if st := fstat(fdd, "of a directory replaced"); st.Ino != beforeD.Ino || st.Mode != beforeD.Mode {
		t.Errorf("fstat of a directory replaced: ino %d mode %o; want ino %d mode %o", st.Ino, st.Mode, beforeD.Ino, beforeD.Mode)
	}
	if st := stat(at("d2")); st.Mode&0o777 != 0o755 {
		t.Errorf("stat d2 after the rename: mode %o, want the moved directory's 755", st.Mode)
	}

	if !isStore {
		return // the in-memory tree's handles cannot describe their file
	}
	// Removed behind the mount (attributes not cached, so that the kernel
	// asks): the handle still describes its file.
	_, mp2 := mountT(t, root, Options{Log: log, AttrTimeout: -1, EntryTimeout: -1})
	if err := os.WriteFile(filepath.Join(mp2, "h"), []byte("four"), 0o644); err != nil {
		t.Fatal(err)
	}
	beforeH := stat(filepath.Join(mp2, "h"))
	fdh := open(filepath.Join(mp2, "h"), syscall.O_RDONLY)
	if err := root.Remove(context.Background(), "h"); err != nil {
		t.Fatal(err)
	}
	same(fstat(fdh, "after a remove behind the mount"), beforeH, "after a remove behind the mount")
}
