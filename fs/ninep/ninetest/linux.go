package ninetest

import (
	"bytes"
	"errors"
	"io"
	"net"
	"slices"
	"strings"

	"github.com/hugelgupf/p9/linux"
	"github.com/hugelgupf/p9/p9"

	"strata/fs"
)

// Linux's flag values, as 9P2000.L carries them.
const (
	lOEXCL       = p9.OpenFlags(0o200) // O_EXCL
	lATREMOVEDIR = 0x200               // AT_REMOVEDIR
)

// LinuxOptions tunes LinuxClient. Every hook is optional; an error one
// returns is reported and the check goes on.
type LinuxOptions struct {
	// Msize is the message size the client asks for (64 KiB if zero).
	Msize uint32

	// AfterCreate is called when the client has created the file name
	// (slash-separated, from the root), written data to it, synced and
	// closed it: the write has been acknowledged.
	AfterCreate func(name string, data []byte) error
	// AfterRemove is called when the client has removed each of names.
	AfterRemove func(names []string) error
}

// LinuxClient checks the 9P2000.L server at addr (host:port, TCP) with
// the hugelgupf/p9 client, which must negotiate 9P2000.L.Google.7. The
// tree served must be empty. The client makes a directory dir and in it
// a.txt (400 kB, several Twrites, mode 0640), reads it back, renames it to
// b.txt at the root, truncates it, makes dir/sub, removes all of it, and
// checks each answer, errors by their errno, on the way. It leaves the
// tree empty.
func LinuxClient(addr string, opts LinuxOptions) error {
	r := &report{check: "LinuxClient"}
	linuxClient(r, addr, opts)
	return r.err()
}

func linuxClient(r *report, addr string, opts LinuxOptions) {
	msize := opts.Msize
	if msize == 0 {
		msize = 64 << 10
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		r.errorf("dial %s: %v", addr, err)
		return
	}
	cl, err := p9.NewClient(c, p9.WithMessageSize(msize))
	if err != nil {
		c.Close()
		r.errorf("version: %v", err)
		return
	}
	defer cl.Close()
	if v := cl.Version(); v != 7 {
		r.errorf("version: negotiated 9P2000.L.Google.%d, want 7", v)
	}
	root, err := cl.Attach("/")
	if err != nil {
		r.errorf("attach /: %v", err)
		return
	}
	defer root.Close()
	walk := func(from p9.File, names ...string) p9.File {
		_, f, err := from.Walk(names)
		if err != nil {
			r.errorf("walk %q: %v", names, err)
			return nil
		}
		return f
	}
	errno := func(what string, err error, want linux.Errno) {
		var got linux.Errno
		if !errors.As(err, &got) || got != want {
			r.errorf("%s: got error %v, want %v (errno %d)", what, err, want, uintptr(want))
		}
	}

	// Create and write: several Twrites; the sync and close acknowledge
	// them.
	const perm = 0o640
	data := bytes.Repeat([]byte("strata object store "), 20_000)
	f := walk(root)
	if f == nil {
		return
	}
	_, err = f.Mkdir("dir", 0o755, p9.NoUID, p9.NoGID)
	f.Close()
	if err != nil {
		r.errorf("mkdir dir: %v", err)
		return
	}
	dir := walk(root, "dir")
	if dir == nil {
		return
	}
	defer func() {
		if dir != nil {
			dir.Close()
		}
	}()
	if f = walk(dir); f == nil {
		return
	}
	if _, _, _, err := f.Create("a.txt", p9.ReadWrite, perm, p9.NoUID, p9.NoGID); err != nil {
		f.Close()
		r.errorf("create dir/a.txt: %v", err)
		return
	}
	if n, err := f.WriteAt(data, 0); err != nil || n != len(data) {
		f.Close()
		r.errorf("write dir/a.txt: wrote %d of %d bytes: %v", n, len(data), err)
		return
	}
	if err := f.FSync(); err != nil {
		f.Close()
		r.errorf("fsync dir/a.txt: %v", err)
		return
	}
	if err := f.Close(); err != nil {
		r.errorf("close dir/a.txt: %v", err)
		return
	}
	if opts.AfterCreate != nil {
		r.hook("create dir/a.txt", opts.AfterCreate("dir/a.txt", data))
	}

	// Attributes and read back; a read-only fid refuses writes.
	g := walk(dir, "a.txt")
	if g == nil {
		return
	}
	_, valid, attr, err := g.GetAttr(p9.AttrMaskAll)
	if err != nil || !valid.Size || attr.Size != uint64(len(data)) || !attr.Mode.IsRegular() || attr.Mode.Permissions() != perm {
		r.errorf("getattr dir/a.txt: got valid %v attr %+v (error %v), want a regular file of %d bytes, mode %o", valid, attr, err, len(data), perm)
	}
	if _, _, err := g.Open(p9.ReadOnly); err != nil {
		g.Close()
		r.errorf("open dir/a.txt read-only: %v", err)
		return
	}
	got, err := readAll(g)
	if err != nil || !bytes.Equal(got, data) {
		r.errorf("read back dir/a.txt: %s (error %v)", differ(got, data), err)
	}
	_, err = g.WriteAt([]byte("x"), 0)
	errno("write to dir/a.txt through a read-only fid", err, linux.EPERM)
	g.Close()

	// An exclusive create of an existing name.
	if f = walk(dir); f == nil {
		return
	}
	_, _, _, err = f.Create("a.txt", p9.WriteOnly|lOEXCL, perm, p9.NoUID, p9.NoGID)
	errno("exclusive create of the existing dir/a.txt", err, linux.EEXIST)
	f.Close()

	// List and rename.
	if names, err := list(dir); err != nil || !slices.Equal(names, []string{"a.txt"}) {
		r.errorf("list dir: got %q (error %v), want [a.txt]", names, err)
	}
	if err := dir.RenameAt("a.txt", root, "b.txt"); err != nil {
		r.errorf("rename dir/a.txt to b.txt: %v", err)
		return
	}
	if names, err := list(root); err != nil || !slices.Equal(names, []string{"b.txt", "dir"}) {
		r.errorf("list / after the rename: got %q (error %v), want [b.txt dir]", names, err)
	}
	_, _, err = dir.Walk([]string{"a.txt"})
	errno("walk to dir/a.txt after the rename", err, linux.ENOENT)
	if b := walk(root, "b.txt"); b != nil {
		if _, _, attr, err := b.GetAttr(p9.AttrMaskAll); err != nil || attr.Size != uint64(len(data)) || attr.Mode.Permissions() != perm {
			r.errorf("getattr b.txt after the rename: got %+v (error %v), want %d bytes, mode %o", attr, err, len(data), perm)
		}
		// Truncate through setattr.
		if err := b.SetAttr(p9.SetAttrMask{Size: true}, p9.SetAttr{Size: 5}); err != nil {
			r.errorf("truncate b.txt to 5 bytes: %v", err)
		} else if _, _, attr, err := b.GetAttr(p9.AttrMaskAll); err != nil || attr.Size != 5 {
			r.errorf("getattr b.txt after the truncate: size %d (error %v), want 5", attr.Size, err)
		}
		b.Close()
	}

	// Removes.
	if f = walk(dir); f == nil {
		return
	}
	_, err = f.Mkdir("sub", 0o755, p9.NoUID, p9.NoGID)
	f.Close()
	if err != nil {
		r.errorf("mkdir dir/sub: %v", err)
		return
	}
	errno("unlink the directory dir without AT_REMOVEDIR", root.UnlinkAt("dir", 0), linux.EISDIR)
	errno("rmdir the non-empty directory dir", root.UnlinkAt("dir", lATREMOVEDIR), linux.ENOTEMPTY)
	errno("rmdir the file b.txt", root.UnlinkAt("b.txt", lATREMOVEDIR), linux.ENOTDIR)
	if err := dir.UnlinkAt("sub", lATREMOVEDIR); err != nil {
		r.errorf("rmdir dir/sub: %v", err)
		return
	}
	dir.Close()
	dir = nil
	if err := root.UnlinkAt("dir", lATREMOVEDIR); err != nil {
		r.errorf("rmdir dir: %v", err)
		return
	}
	if err := root.UnlinkAt("b.txt", 0); err != nil {
		r.errorf("unlink b.txt: %v", err)
		return
	}
	if names, err := list(root); err != nil || len(names) != 0 {
		r.errorf("list / after the removes: got %q (error %v), want nothing", names, err)
	}
	errno("unlink the missing b.txt", root.UnlinkAt("b.txt", 0), linux.ENOENT)
	removed := []string{"dir/sub", "dir", "b.txt"}
	if opts.AfterRemove != nil {
		r.hook("remove "+strings.Join(removed, ", "), opts.AfterRemove(removed))
	}

	if st, err := root.StatFS(); err != nil || st.NameLength != fs.MaxNameLen {
		r.errorf("statfs: got %+v (error %v), want names of up to %d bytes", st, err, fs.MaxNameLen)
	}
}

// readAll reads the open file f from offset 0 to its end.
func readAll(f p9.File) ([]byte, error) {
	var out []byte
	buf := make([]byte, 100_000)
	for {
		n, err := f.ReadAt(buf, int64(len(out)))
		out = append(out, buf[:n]...)
		if errors.Is(err, io.EOF) || err == nil && n == 0 {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
}

// list reads the names in the directory d, in the order listed.
func list(d p9.File) ([]string, error) {
	_, l, err := d.Walk(nil)
	if err != nil {
		return nil, err
	}
	defer l.Close()
	if _, _, err := l.Open(p9.ReadOnly); err != nil {
		return nil, err
	}
	var names []string
	for off := uint64(0); ; {
		ents, err := l.Readdir(off, 4096)
		if err != nil {
			return names, err
		}
		if len(ents) == 0 {
			return names, nil
		}
		for _, e := range ents {
			names = append(names, e.Name)
			off = e.Offset
		}
	}
}
