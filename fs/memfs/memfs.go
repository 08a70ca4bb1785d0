// Package memfs is an in-memory, writable tree: the reference
// implementation of the fs interfaces, for tests and scratch namespaces.
// Nothing in it is durable.
package memfs

import (
	"context"
	iofs "io/fs"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"strata/fs"
)

// New returns the root of a new, empty tree.
func New() fs.Dir {
	t := &tree{}
	return t.newDir(nil, "", 0o755)
}

type tree struct {
	mu     sync.RWMutex // guards every node of the tree
	nextID atomic.Uint64
}

type node struct {
	t       *tree
	parent  *dir
	name    string
	id      uint64
	mode    iofs.FileMode
	mtime   time.Time
	version uint32
	removed bool
}

func (n *node) path() string {
	if n.parent == nil {
		return ""
	}
	p := n.parent.path()
	if p == "" {
		return n.name
	}
	return p + "/" + n.name
}

func (n *node) child(name string) string {
	p := n.path()
	if p == "" {
		return name
	}
	return p + "/" + name
}

type dir struct {
	node
	kids map[string]any // *dir or *file
}

type file struct {
	node
	data []byte
}

func (t *tree) newDir(parent *dir, name string, perm iofs.FileMode) *dir {
	return &dir{
		node: node{t: t, parent: parent, name: name, id: t.nextID.Add(1), mode: iofs.ModeDir | perm.Perm(), mtime: time.Now()},
		kids: map[string]any{},
	}
}

func (n *node) info(size int64) fs.Info {
	return fs.Info{Name: n.name, Size: size, Mode: n.mode, ModTime: n.mtime, ID: n.id, Version: n.version}
}

func (n *node) setattr(op string, a fs.Attr, data *[]byte) error {
	if n.removed {
		return &fs.Error{Op: op, Path: n.path(), Kind: fs.NotExist}
	}
	if a.Size != nil {
		if data == nil {
			return &fs.Error{Op: op, Path: n.path(), Kind: fs.IsDir}
		}
		if *a.Size < 0 {
			return &fs.Error{Op: op, Path: n.path(), Kind: fs.Invalid}
		}
		*data = resize(*data, *a.Size)
		n.touch()
	}
	if a.Mode != nil {
		n.mode = n.mode.Type() | a.Mode.Perm()
	}
	if a.ModTime != nil {
		n.mtime = *a.ModTime
	}
	return nil
}

func (n *node) touch() {
	n.mtime = time.Now()
	n.version++
}

func resize(b []byte, size int64) []byte {
	if size <= int64(len(b)) {
		return b[:size]
	}
	return append(b, make([]byte, size-int64(len(b)))...)
}

func (d *dir) Stat(context.Context) (fs.Info, error) {
	d.t.mu.RLock()
	defer d.t.mu.RUnlock()
	return d.info(int64(len(d.kids))), nil
}

func (d *dir) SetAttr(_ context.Context, a fs.Attr) error {
	d.t.mu.Lock()
	defer d.t.mu.Unlock()
	return d.setattr("setattr", a, nil)
}

func (d *dir) Lookup(_ context.Context, name string) (fs.Node, error) {
	if err := fs.CheckName("lookup", name); err != nil {
		return nil, err
	}
	d.t.mu.RLock()
	defer d.t.mu.RUnlock()
	k, ok := d.kids[name]
	if !ok || d.removed {
		return nil, &fs.Error{Op: "lookup", Path: d.child(name), Kind: fs.NotExist}
	}
	return k.(fs.Node), nil
}

func (d *dir) ReadDir(context.Context) ([]fs.Info, error) {
	d.t.mu.RLock()
	defer d.t.mu.RUnlock()
	if d.removed {
		return nil, &fs.Error{Op: "readdir", Path: d.path(), Kind: fs.NotExist}
	}
	infos := make([]fs.Info, 0, len(d.kids))
	for _, k := range d.kids {
		switch k := k.(type) {
		case *dir:
			infos = append(infos, k.info(int64(len(k.kids))))
		case *file:
			infos = append(infos, k.info(int64(len(k.data))))
		}
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].Name < infos[j].Name })
	return infos, nil
}

func (d *dir) Create(_ context.Context, name string, flag fs.Flag, perm iofs.FileMode) (fs.File, fs.Handle, error) {
	if err := fs.CheckName("create", name); err != nil {
		return nil, nil, err
	}
	d.t.mu.Lock()
	defer d.t.mu.Unlock()
	if d.removed {
		return nil, nil, &fs.Error{Op: "create", Path: d.child(name), Kind: fs.NotExist}
	}
	var f *file
	switch k := d.kids[name].(type) {
	case nil:
		f = &file{node: node{t: d.t, parent: d, name: name, id: d.t.nextID.Add(1), mode: perm.Perm(), mtime: time.Now()}}
		d.kids[name] = f
		d.touch()
	case *dir:
		return nil, nil, &fs.Error{Op: "create", Path: d.child(name), Kind: fs.IsDir}
	case *file:
		if flag.Has(fs.Excl) {
			return nil, nil, &fs.Error{Op: "create", Path: d.child(name), Kind: fs.Exist}
		}
		f = k
	}
	if flag.Has(fs.Truncate) && flag.Writable() {
		f.data = nil
		f.touch()
	}
	return f, &handle{f: f, flag: flag}, nil
}

func (d *dir) Mkdir(_ context.Context, name string, perm iofs.FileMode) (fs.Dir, error) {
	if err := fs.CheckName("mkdir", name); err != nil {
		return nil, err
	}
	d.t.mu.Lock()
	defer d.t.mu.Unlock()
	if d.removed {
		return nil, &fs.Error{Op: "mkdir", Path: d.child(name), Kind: fs.NotExist}
	}
	if _, ok := d.kids[name]; ok {
		return nil, &fs.Error{Op: "mkdir", Path: d.child(name), Kind: fs.Exist}
	}
	c := d.t.newDir(d, name, perm)
	d.kids[name] = c
	d.touch()
	return c, nil
}

func (d *dir) Remove(_ context.Context, name string) error {
	if err := fs.CheckName("remove", name); err != nil {
		return err
	}
	d.t.mu.Lock()
	defer d.t.mu.Unlock()
	switch k := d.kids[name].(type) {
	case nil:
		return &fs.Error{Op: "remove", Path: d.child(name), Kind: fs.NotExist}
	case *dir:
		if len(k.kids) > 0 {
			return &fs.Error{Op: "remove", Path: d.child(name), Kind: fs.NotEmpty}
		}
		k.removed = true
	case *file:
		k.removed = true
	}
	delete(d.kids, name)
	d.touch()
	return nil
}

func (d *dir) Rename(_ context.Context, oldName string, newDir fs.Dir, newName string) error {
	if err := fs.CheckName("rename", oldName); err != nil {
		return err
	}
	if err := fs.CheckName("rename", newName); err != nil {
		return err
	}
	nd, ok := newDir.(*dir)
	if !ok || nd.t != d.t {
		return &fs.Error{Op: "rename", Path: d.child(oldName), Kind: fs.CrossDevice}
	}
	d.t.mu.Lock()
	defer d.t.mu.Unlock()
	src, ok := d.kids[oldName]
	if !ok {
		return &fs.Error{Op: "rename", Path: d.child(oldName), Kind: fs.NotExist}
	}
	if nd.removed {
		return &fs.Error{Op: "rename", Path: nd.child(newName), Kind: fs.NotExist}
	}
	if sd, ok := src.(*dir); ok {
		for a := nd; a != nil; a = a.parent {
			if a == sd {
				return &fs.Error{Op: "rename", Path: d.child(oldName), Kind: fs.Invalid}
			}
		}
	}
	if d == nd && oldName == newName {
		return nil
	}
	switch dst := nd.kids[newName].(type) {
	case *dir:
		if _, isDir := src.(*dir); !isDir {
			return &fs.Error{Op: "rename", Path: nd.child(newName), Kind: fs.IsDir}
		}
		if len(dst.kids) > 0 {
			return &fs.Error{Op: "rename", Path: nd.child(newName), Kind: fs.NotEmpty}
		}
		dst.removed = true
	case *file:
		if _, isDir := src.(*dir); isDir {
			return &fs.Error{Op: "rename", Path: nd.child(newName), Kind: fs.NotDir}
		}
		dst.removed = true
	}
	delete(d.kids, oldName)
	nd.kids[newName] = src
	switch s := src.(type) {
	case *dir:
		s.parent, s.name = nd, newName
	case *file:
		s.parent, s.name = nd, newName
	}
	d.touch()
	nd.touch()
	return nil
}

func (f *file) Stat(context.Context) (fs.Info, error) {
	f.t.mu.RLock()
	defer f.t.mu.RUnlock()
	return f.info(int64(len(f.data))), nil
}

func (f *file) SetAttr(_ context.Context, a fs.Attr) error {
	f.t.mu.Lock()
	defer f.t.mu.Unlock()
	return f.setattr("setattr", a, &f.data)
}

func (f *file) Open(_ context.Context, flag fs.Flag) (fs.Handle, error) {
	f.t.mu.Lock()
	defer f.t.mu.Unlock()
	if f.removed {
		return nil, &fs.Error{Op: "open", Path: f.path(), Kind: fs.NotExist}
	}
	if flag.Has(fs.Truncate) && flag.Writable() {
		f.data = nil
		f.touch()
	}
	return &handle{f: f, flag: flag}, nil
}

type handle struct {
	f      *file
	flag   fs.Flag
	closed atomic.Bool
}

func (h *handle) check(op string, want func(fs.Flag) bool) error {
	if h.closed.Load() {
		return &fs.Error{Op: op, Path: h.f.path(), Kind: fs.BadHandle}
	}
	if !want(h.flag) {
		return &fs.Error{Op: op, Path: h.f.path(), Kind: fs.BadHandle, Err: errMode}
	}
	return nil
}

type constError string

func (e constError) Error() string { return string(e) }

const errMode = constError("not open for that")

func (h *handle) ReadAt(_ context.Context, p []byte, off int64) (int, error) {
	h.f.t.mu.RLock()
	defer h.f.t.mu.RUnlock()
	if err := h.check("read", fs.Flag.Readable); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, &fs.Error{Op: "read", Path: h.f.path(), Kind: fs.Invalid}
	}
	if off >= int64(len(h.f.data)) {
		return 0, nil
	}
	return copy(p, h.f.data[off:]), nil
}

func (h *handle) WriteAt(_ context.Context, p []byte, off int64) (int, error) {
	h.f.t.mu.Lock()
	defer h.f.t.mu.Unlock()
	if err := h.check("write", fs.Flag.Writable); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, &fs.Error{Op: "write", Path: h.f.path(), Kind: fs.Invalid}
	}
	if h.flag.Has(fs.Append) {
		off = int64(len(h.f.data))
	}
	if end := off + int64(len(p)); end > int64(len(h.f.data)) {
		h.f.data = resize(h.f.data, end)
	}
	copy(h.f.data[off:], p)
	h.f.touch()
	return len(p), nil
}

func (h *handle) Sync(context.Context) error {
	if h.closed.Load() {
		return h.badHandle("sync")
	}
	return nil
}

func (h *handle) Close(context.Context) error {
	if h.closed.Swap(true) {
		return h.badHandle("close")
	}
	return nil
}

func (h *handle) badHandle(op string) error {
	h.f.t.mu.RLock()
	defer h.f.t.mu.RUnlock()
	return &fs.Error{Op: op, Path: h.f.path(), Kind: fs.BadHandle}
}
