package ninep

import (
	"context"
	"errors"
	"io"
	iofs "io/fs"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"9fans.net/go/plan9"
	"9fans.net/go/plan9/client"

	"strata/fs"
	"strata/fs/fstest"
	"strata/fs/memfs"
	"strata/fs/store"
)

// A tree seen through the 9P2000 server and a third-party client keeps the
// promises of the tree itself: fstest.Check passes on the client's view.
func TestPlan9ViewConformance(t *testing.T) {
	ctx := context.Background()
	t.Run("memfs", func(t *testing.T) {
		root := plan9TestTree(t, map[string]string{"readme": "hello\n", "docs/a": "a", "docs/deep/b": "bb"})
		if err := fstest.Check(ctx, root, "readme", "docs/deep/b"); err != nil {
			t.Fatalf("the tree itself: %v", err)
		}
		view := plan9NewView(t, plan9Serve(t, root))
		if err := fstest.Check(ctx, view, "readme", "docs/deep/b"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("store", func(t *testing.T) {
		st, err := store.Open(filepath.Join(t.TempDir(), "tree"), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		view := plan9NewView(t, plan9Serve(t, st.Root()))
		if err := fstest.Check(ctx, view); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("view of a view", func(t *testing.T) {
		// The view served again: two hops of 9P2000.
		inner := plan9NewView(t, plan9Serve(t, memfs.New()))
		view := plan9NewView(t, plan9Serve(t, inner))
		if err := fstest.Check(ctx, view); err != nil {
			t.Fatal(err)
		}
	})
}

// plan9View is an fs.Dir over a 9P2000 connection, made with the 9fans
// client. 9P2000 can rename only within a directory and has no
// rename-over or append open, so the view makes those of smaller steps
// (copy and remove, remove then rename, a stat before each append write):
// good enough to check a server with, not atomic.
type plan9View struct {
	fsys *client.Fsys
}

func plan9NewView(t testing.TB, addr string) fs.Dir {
	t.Helper()
	_, fsys := plan9Mount(t, addr, "viewer")
	return &plan9VDir{plan9VNode{v: &plan9View{fsys: fsys}}}
}

type plan9VNode struct {
	v    *plan9View
	path string // "" is the root
}

type plan9VDir struct{ plan9VNode }

type plan9VFile struct{ plan9VNode }

func (n plan9VNode) child(name string) string {
	if n.path == "" {
		return name
	}
	return n.path + "/" + name
}

// plan9ViewError turns a 9P error string back into an *fs.Error, finding
// the kind by the words the server used.
func plan9ViewError(op, path string, err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	kind := fs.Other
	for k := fs.NotExist; k <= fs.IO; k++ {
		if strings.Contains(msg, k.String()) {
			kind = k
			break
		}
	}
	if kind == fs.Other && strings.Contains(msg, "not found") {
		kind = fs.NotExist // the client's own words for a partial walk
	}
	return &fs.Error{Op: op, Path: path, Kind: kind, Err: errors.New(msg)}
}

func plan9ViewInfo(d *plan9.Dir) fs.Info {
	mode := iofs.FileMode(d.Mode & 0o777)
	if d.Mode&plan9.DMDIR != 0 {
		mode |= iofs.ModeDir
	}
	if d.Mode&plan9.DMAPPEND != 0 {
		mode |= iofs.ModeAppend
	}
	if d.Mode&plan9.DMEXCL != 0 {
		mode |= iofs.ModeExclusive
	}
	name := d.Name
	if name == "/" {
		name = ""
	}
	return fs.Info{Name: name, Size: int64(d.Length), Mode: mode, ModTime: time.Unix(int64(d.Mtime), 0),
		ID: d.Qid.Path, Version: d.Qid.Vers}
}

func (n plan9VNode) Stat(ctx context.Context) (fs.Info, error) {
	d, err := n.v.fsys.Stat(n.path)
	if err != nil {
		return fs.Info{}, plan9ViewError("stat", n.path, err)
	}
	return plan9ViewInfo(d), nil
}

func (n plan9VNode) SetAttr(ctx context.Context, a fs.Attr) error {
	var d plan9.Dir
	d.Null()
	if a.Size != nil {
		if *a.Size < 0 {
			return &fs.Error{Op: "setattr", Path: n.path, Kind: fs.Invalid, Err: errors.New("negative size")}
		}
		d.Length = uint64(*a.Size)
	}
	if a.Mode != nil {
		cur, err := n.v.fsys.Stat(n.path)
		if err != nil {
			return plan9ViewError("setattr", n.path, err)
		}
		d.Mode = cur.Mode&^0o777 | plan9.Perm(a.Mode.Perm())
	}
	if a.ModTime != nil {
		d.Mtime = uint32(a.ModTime.Unix())
	}
	return plan9ViewError("setattr", n.path, n.v.fsys.Wstat(n.path, &d))
}

func (d *plan9VDir) Lookup(ctx context.Context, name string) (fs.Node, error) {
	if err := fs.CheckName("lookup", name); err != nil {
		return nil, err
	}
	p := d.child(name)
	st, err := d.v.fsys.Stat(p)
	if err != nil {
		return nil, plan9ViewError("lookup", p, err)
	}
	if st.Mode&plan9.DMDIR != 0 {
		return &plan9VDir{plan9VNode{d.v, p}}, nil
	}
	return &plan9VFile{plan9VNode{d.v, p}}, nil
}

func (d *plan9VDir) ReadDir(ctx context.Context) ([]fs.Info, error) {
	fid, err := d.v.fsys.Open(d.path, plan9.OREAD)
	if err != nil {
		return nil, plan9ViewError("readdir", d.path, err)
	}
	defer fid.Close()
	dirs, err := fid.Dirreadall()
	if err != nil {
		return nil, plan9ViewError("readdir", d.path, err)
	}
	var out []fs.Info
	for _, e := range dirs {
		out = append(out, plan9ViewInfo(e))
	}
	slices.SortFunc(out, func(a, b fs.Info) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

func plan9ViewMode(flag fs.Flag) uint8 {
	var mode uint8
	switch flag.Access() {
	case fs.WriteOnly:
		mode = plan9.OWRITE
	case fs.ReadWrite:
		mode = plan9.ORDWR
	}
	if flag.Has(fs.Truncate) && flag.Writable() {
		mode |= plan9.OTRUNC
	}
	return mode
}

func (d *plan9VDir) Create(ctx context.Context, name string, flag fs.Flag, perm iofs.FileMode) (fs.File, fs.Handle, error) {
	if err := fs.CheckName("create", name); err != nil {
		return nil, nil, err
	}
	p := d.child(name)
	fid, err := d.v.fsys.Create(p, plan9ViewMode(flag)&^plan9.OTRUNC, plan9.Perm(perm.Perm()))
	if err != nil {
		err = plan9ViewError("create", p, err)
		if fs.KindOf(err) != fs.Exist || flag.Has(fs.Excl) {
			return nil, nil, err
		}
		// Without O_EXCL an existing file is opened.
		if fid, err = d.v.fsys.Open(p, plan9ViewMode(flag)); err != nil {
			return nil, nil, plan9ViewError("create", p, err)
		}
	}
	f := &plan9VFile{plan9VNode{d.v, p}}
	return f, &plan9VHandle{fid: fid, path: p, flag: flag}, nil
}

func (d *plan9VDir) Mkdir(ctx context.Context, name string, perm iofs.FileMode) (fs.Dir, error) {
	if err := fs.CheckName("mkdir", name); err != nil {
		return nil, err
	}
	p := d.child(name)
	fid, err := d.v.fsys.Create(p, plan9.OREAD, plan9.DMDIR|plan9.Perm(perm.Perm()))
	if err != nil {
		return nil, plan9ViewError("mkdir", p, err)
	}
	fid.Close()
	return &plan9VDir{plan9VNode{d.v, p}}, nil
}

func (d *plan9VDir) Remove(ctx context.Context, name string) error {
	if err := fs.CheckName("remove", name); err != nil {
		return err
	}
	p := d.child(name)
	return plan9ViewError("remove", p, d.v.fsys.Remove(p))
}

func (d *plan9VDir) Rename(ctx context.Context, oldName string, newDir fs.Dir, newName string) error {
	for _, n := range []string{oldName, newName} {
		if err := fs.CheckName("rename", n); err != nil {
			return err
		}
	}
	nd, ok := newDir.(*plan9VDir)
	if !ok || nd.v != d.v {
		return &fs.Error{Op: "rename", Path: d.child(oldName), Kind: fs.CrossDevice}
	}
	from, to := d.child(oldName), nd.child(newName)
	src, err := d.v.fsys.Stat(from)
	if err != nil {
		return plan9ViewError("rename", from, err)
	}
	if from == to {
		return nil
	}
	if dst, err := d.v.fsys.Stat(to); err == nil {
		if (dst.Mode^src.Mode)&plan9.DMDIR != 0 {
			return &fs.Error{Op: "rename", Path: to, Kind: fs.Exist}
		}
		if err := plan9ViewRemoveAll(d.v.fsys, to); err != nil {
			return plan9ViewError("rename", to, err)
		}
	}
	if nd.path == d.path {
		var nst plan9.Dir
		nst.Null()
		nst.Name = newName
		return plan9ViewError("rename", from, d.v.fsys.Wstat(from, &nst))
	}
	if err := plan9ViewCopy(d.v.fsys, from, to, src); err != nil {
		return plan9ViewError("rename", from, err)
	}
	return plan9ViewError("rename", from, plan9ViewRemoveAll(d.v.fsys, from))
}

func plan9ViewCopy(fsys *client.Fsys, from, to string, st *plan9.Dir) error {
	if st.Mode&plan9.DMDIR != 0 {
		fid, err := fsys.Create(to, plan9.OREAD, st.Mode&(plan9.DMDIR|0o777))
		if err != nil {
			return err
		}
		fid.Close()
		src, err := fsys.Open(from, plan9.OREAD)
		if err != nil {
			return err
		}
		ents, err := src.Dirreadall()
		src.Close()
		if err != nil {
			return err
		}
		for _, e := range ents {
			if err := plan9ViewCopy(fsys, from+"/"+e.Name, to+"/"+e.Name, e); err != nil {
				return err
			}
		}
		return nil
	}
	src, err := fsys.Open(from, plan9.OREAD)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := fsys.Create(to, plan9.OWRITE, st.Mode&0o777)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
}

func plan9ViewRemoveAll(fsys *client.Fsys, p string) error {
	st, err := fsys.Stat(p)
	if err != nil {
		return err
	}
	if st.Mode&plan9.DMDIR != 0 {
		fid, err := fsys.Open(p, plan9.OREAD)
		if err != nil {
			return err
		}
		ents, err := fid.Dirreadall()
		fid.Close()
		if err != nil {
			return err
		}
		for _, e := range ents {
			if err := plan9ViewRemoveAll(fsys, p+"/"+e.Name); err != nil {
				return err
			}
		}
	}
	return fsys.Remove(p)
}

func (f *plan9VFile) Open(ctx context.Context, flag fs.Flag) (fs.Handle, error) {
	fid, err := f.v.fsys.Open(f.path, plan9ViewMode(flag))
	if err != nil {
		return nil, plan9ViewError("open", f.path, err)
	}
	return &plan9VHandle{fid: fid, path: f.path, flag: flag}, nil
}

type plan9VHandle struct {
	fid    *client.Fid
	path   string
	flag   fs.Flag
	closed atomic.Bool
}

func (h *plan9VHandle) check(op string) error {
	if h.closed.Load() {
		return &fs.Error{Op: op, Path: h.path, Kind: fs.BadHandle}
	}
	return nil
}

func (h *plan9VHandle) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if err := h.check("read"); err != nil {
		return 0, err
	}
	n, err := h.fid.ReadAt(p, off)
	if err == io.EOF {
		return n, io.EOF
	}
	return n, plan9ViewError("read", h.path, err)
}

func (h *plan9VHandle) WriteAt(ctx context.Context, p []byte, off int64) (int, error) {
	if err := h.check("write"); err != nil {
		return 0, err
	}
	if h.flag.Has(fs.Append) {
		st, err := h.fid.Stat()
		if err != nil {
			return 0, plan9ViewError("write", h.path, err)
		}
		off = int64(st.Length)
	}
	n, err := h.fid.WriteAt(p, off)
	return n, plan9ViewError("write", h.path, err)
}

// Sync is a wstat that changes nothing, which 9P2000 defines as a sync.
func (h *plan9VHandle) Sync(ctx context.Context) error {
	if err := h.check("sync"); err != nil {
		return err
	}
	var d plan9.Dir
	d.Null()
	return plan9ViewError("sync", h.path, h.fid.Wstat(&d))
}

func (h *plan9VHandle) Close(ctx context.Context) error {
	if h.closed.Swap(true) {
		return &fs.Error{Op: "close", Path: h.path, Kind: fs.BadHandle}
	}
	return plan9ViewError("close", h.path, h.fid.Close())
}
