package fuse

import (
	"context"
	"encoding/binary"
	"errors"
	"hash/fnv"
	iofs "io/fs"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"weak"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"

	"strata/fs"
)

// Flags of renameat2(2).
const (
	renameNoReplace = 0x1
	renameExchange  = 0x2
)

// ident is what the kernel nodes of one identity share: the fs.Node they
// stand for, and the state of the handles open on it. An identity is an
// inode number, a type and a path: the number alone is not enough, as a
// tree without generation numbers (one whose IDs are the disk's inode
// numbers) may give a freed number to a new file elsewhere at once. A
// lookup that finds the identity again updates the node that the kernel
// already uses.
type ident struct {
	ino  uint64
	mode uint32  // syscall.S_IFDIR or syscall.S_IFREG
	gen  uint64  // tells apart identities with one inode number
	box  *keyBox // the identity's key in Mounted.idents

	mu       sync.Mutex
	node     fs.Node // nil until resolved
	epoch    uint64  // the mount's epoch when node was resolved
	stream   bool    // the node is a Stream file
	rewrites map[*handle]struct{}
	writers  map[*handle]struct{} // handles that write behind (handle.wb)
	// content counts the changes of the content through the mount: a
	// read-ahead is good only in the generation it was read in.
	content atomic.Uint64
	// rewritten: a rewrite through the mount has replaced the file, and
	// the tree may have given it a new ID (see Mounted.adopt).
	rewritten bool
	closing   int           // handles being closed
	idle      chan struct{} // closed when closing drops to 0
	last      fs.Info       // the attributes the kernel was last given
	known     bool          // last is set
}

// identKey is the identity of a node: its inode number, type and path.
type identKey struct {
	id   uint64 // the tree's ID (fs.PathID of the path if it has none)
	mode uint32
	path string
}

// keyBox holds an ident's key, which a rename through the mount changes.
type keyBox struct{ key identKey }

func (id *ident) attr() fusefs.StableAttr {
	return fusefs.StableAttr{Mode: id.mode, Ino: id.ino, Gen: id.gen}
}

func (id *ident) get() (fs.Node, uint64) {
	id.mu.Lock()
	defer id.mu.Unlock()
	return id.node, id.epoch
}

func (id *ident) set(n fs.Node, epoch uint64) {
	id.mu.Lock()
	defer id.mu.Unlock()
	if id.node == nil || epoch >= id.epoch {
		id.node, id.epoch = n, epoch
	}
}

func (id *ident) isStream() bool {
	id.mu.Lock()
	defer id.mu.Unlock()
	return id.stream
}

func (id *ident) setStream(s bool) {
	id.mu.Lock()
	id.stream = s
	id.mu.Unlock()
}

// remember records info as the attributes the kernel was last given for
// id, which a node removed through the mount keeps (see lastInfo).
func (id *ident) remember(info fs.Info) {
	id.mu.Lock()
	id.last, id.known = info, true
	id.mu.Unlock()
}

// lastInfo returns the attributes the kernel was last given for id.
func (id *ident) lastInfo() (fs.Info, bool) {
	id.mu.Lock()
	defer id.mu.Unlock()
	return id.last, id.known
}

// addRewrite and dropRewrite track the handles of id that are writing a
// new content the tree may not show until they sync (an atomic rewrite).
func (id *ident) addRewrite(h *handle) {
	id.mu.Lock()
	defer id.mu.Unlock()
	if id.rewrites == nil {
		id.rewrites = map[*handle]struct{}{}
	}
	id.rewrites[h] = struct{}{}
}

// dropRewrite ends the rewrite of h: it is in the tree, or lost.
func (id *ident) dropRewrite(h *handle) {
	id.mu.Lock()
	delete(id.rewrites, h)
	id.rewritten = true
	id.mu.Unlock()
}

// addWriter and dropWriter track the handles of id that write behind the
// requests (handle.wb), whose writes may not be in the tree yet.
func (id *ident) addWriter(h *handle) {
	id.mu.Lock()
	defer id.mu.Unlock()
	if id.writers == nil {
		id.writers = map[*handle]struct{}{}
	}
	id.writers[h] = struct{}{}
}

func (id *ident) dropWriter(h *handle) {
	id.mu.Lock()
	delete(id.writers, h)
	id.mu.Unlock()
}

// settleWriters waits until the writes under way through every handle of
// id are in the tree (or ctx ends), so that what comes next sees them.
func (id *ident) settleWriters(ctx context.Context) {
	id.mu.Lock()
	if len(id.writers) == 0 {
		id.mu.Unlock()
		return
	}
	hs := make([]*handle, 0, len(id.writers))
	for h := range id.writers {
		hs = append(hs, h)
	}
	id.mu.Unlock()
	for _, h := range hs {
		h.wb.wait(ctx)
	}
}

// changed records that the content of id changes through the mount:
// what was read ahead is stale.
func (id *ident) changed() { id.content.Add(1) }

// truncated records that id was cut or extended to size through the
// mount, or, with except not nil, replaced by what except wrote: what its
// other handles wrote ends there at most.
func (id *ident) truncated(size int64, except *handle) {
	id.changed()
	id.mu.Lock()
	defer id.mu.Unlock()
	for h := range id.writers {
		for h != except {
			e := h.extent.Load()
			if e <= size || h.extent.CompareAndSwap(e, size) {
				break
			}
		}
	}
}

// overlay returns info as the mount's writers see it: while handles
// write a new content that the tree does not show yet, the file is at
// least as long as what they wrote, and if the tree still shows the old
// content of a file opened with O_TRUNC, exactly that long. A handle that
// writes behind the requests may have written further than the tree
// shows: the file is at least as long as that too.
func (id *ident) overlay(info fs.Info) fs.Info {
	id.mu.Lock()
	defer id.mu.Unlock()
	if len(id.rewrites) == 0 && len(id.writers) == 0 {
		return info
	}
	size := info.Size
	if len(id.rewrites) > 0 {
		var written int64
		hidden := false
		for h := range id.rewrites {
			written = max(written, h.extent.Load())
			hidden = hidden || h.hides
		}
		if hidden {
			size = written
		} else {
			size = max(size, written)
		}
	}
	for h := range id.writers {
		if !h.rewrite.Load() {
			size = max(size, h.extent.Load())
		}
	}
	info.Size = size
	return info
}

// beginClose and endClose bracket the closing of a handle of id; waitClosed
// waits (up to max) until none is being closed, so that what a close
// commits is seen by the next stat or open.
func (id *ident) beginClose() {
	id.mu.Lock()
	defer id.mu.Unlock()
	if id.closing == 0 {
		id.idle = make(chan struct{})
	}
	id.closing++
}

func (id *ident) endClose() {
	id.mu.Lock()
	defer id.mu.Unlock()
	id.closing--
	if id.closing == 0 {
		close(id.idle)
	}
}

func (id *ident) waitClosed(ctx context.Context, max time.Duration) {
	id.mu.Lock()
	if id.closing == 0 {
		id.mu.Unlock()
		return
	}
	idle := id.idle
	id.mu.Unlock()
	t := time.NewTimer(max)
	defer t.Stop()
	select {
	case <-idle:
	case <-ctx.Done():
	case <-t.C:
	}
}

// identFor returns the ident for k, made if there is none, and sets its
// node to n (found in epoch) unless n is nil.
func (m *Mounted) identFor(k identKey, n fs.Node, epoch uint64, stream bool) *ident {
	m.imu.Lock()
	defer m.imu.Unlock()
	if wp, ok := m.idents[k]; ok {
		if id := wp.Value(); id != nil {
			if n != nil {
				id.set(n, epoch)
			}
			id.setStream(stream)
			return id
		}
	}
	m.gen++
	id := &ident{ino: inoFor(k.id, k.path), mode: k.mode, gen: m.gen, box: &keyBox{k}, node: n, epoch: epoch, stream: stream}
	m.idents[k] = weak.Make(id)
	runtime.AddCleanup(id, m.dropIdent, id.box)
	return id
}

// adopt keeps the identity of the file that the kernel knows as name in
// parent when a rewrite through the mount has replaced it: the tree (the
// store) may give the new content a new ID, and k, the key found now,
// differs from the node's by that ID alone. The node takes k, so that the
// lookup finds the node the kernel has, with its inode number, as a
// rewrite in place would: a descriptor open on it still follows the name
// (a later unlink or rename over it reaches it), and tools see one file.
func (m *Mounted) adopt(parent *node, name string, k identKey) {
	ch := parent.GetChild(name)
	if ch == nil {
		return
	}
	cn, ok := ch.Operations().(*node)
	if !ok || cn.id.box == nil {
		return
	}
	id := cn.id
	id.mu.Lock()
	rewritten := id.rewritten && id.mode == k.mode
	id.mu.Unlock()
	if !rewritten {
		return
	}
	m.imu.Lock()
	defer m.imu.Unlock()
	old := id.box.key
	if old == k || old.path != k.path || old.mode != k.mode {
		return
	}
	if wp, ok := m.idents[k]; ok && wp.Value() != nil {
		return // a node of its own already
	}
	if wp, ok := m.idents[old]; ok && wp.Value() == id {
		delete(m.idents, old)
	}
	m.idents[k] = weak.Make(id)
	id.box.key = k
	id.mu.Lock()
	id.rewritten = false
	id.mu.Unlock()
}

// dropIdent forgets an ident's key once no kernel node uses it.
func (m *Mounted) dropIdent(box *keyBox) {
	m.imu.Lock()
	defer m.imu.Unlock()
	if wp, ok := m.idents[box.key]; ok && wp.Value() == nil {
		delete(m.idents, box.key)
	}
}

// rekey moves id to path p, after a rename through the mount.
func (m *Mounted) rekey(id *ident, p string) {
	m.imu.Lock()
	defer m.imu.Unlock()
	old := id.box.key
	if wp, ok := m.idents[old]; ok && wp.Value() == id {
		delete(m.idents, old)
	}
	k := old
	k.path = p
	m.idents[k] = weak.Make(id)
	id.box.key = k
}

// keyOf is the identity of a node with info at path p.
func keyOf(info fs.Info, isDir bool, p string) identKey {
	id := info.ID
	if id == 0 {
		id = fs.PathID(p)
	}
	mode := uint32(syscall.S_IFREG)
	if isDir {
		mode = syscall.S_IFDIR
	}
	return identKey{id: id, mode: mode, path: p}
}

// inoOf is the inode number of the node k: that of its ident if the
// kernel holds one (which keeps its number across a rename), or the one it
// will get.
func (m *Mounted) inoOf(k identKey) uint64 {
	m.imu.Lock()
	defer m.imu.Unlock()
	if wp, ok := m.idents[k]; ok {
		if id := wp.Value(); id != nil {
			return id.ino
		}
	}
	return inoFor(k.id, k.path)
}

// inoFor is the kernel's inode number for a new node with the tree's ID
// id at path p: an FNV-1a hash of both.
//
// The path is mixed in because a tree may give a gone node's ID to a new
// one (the store's IDs are disk inode numbers, and an atomic rewrite
// replaces a file's inode), while the kernel keeps the number it was first
// told for as long as it holds the node. With the ID alone, a new file
// could show the number of another, rewritten one, and tools such as mv,
// cp and tar would take the two names for one file.
func inoFor(id uint64, p string) uint64 {
	h := fnv.New64a()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], id)
	h.Write(b[:])
	h.Write([]byte(p))
	ino := h.Sum64()
	if reservedIno(ino) {
		ino = 2
	}
	return ino
}

// reservedIno reports whether ino cannot name a node other than the root:
// 0 (none), 1 (the root) and ^0 (go-fuse's own).
func reservedIno(ino uint64) bool { return ino <= 1 || ino == ^uint64(0) }

// node is a directory or file of the mounted tree, as the kernel sees it.
type node struct {
	fusefs.Inode
	m     *Mounted
	id    *ident
	isDir bool
}

var (
	_ fusefs.NodeLookuper       = (*node)(nil)
	_ fusefs.NodeGetattrer      = (*node)(nil)
	_ fusefs.NodeSetattrer      = (*node)(nil)
	_ fusefs.NodeOpener         = (*node)(nil)
	_ fusefs.NodeCreater        = (*node)(nil)
	_ fusefs.NodeMkdirer        = (*node)(nil)
	_ fusefs.NodeUnlinker       = (*node)(nil)
	_ fusefs.NodeRmdirer        = (*node)(nil)
	_ fusefs.NodeRenamer        = (*node)(nil)
	_ fusefs.NodeOpendirHandler = (*node)(nil)
	_ fusefs.NodeStatfser       = (*node)(nil)
)

// path is the node's path in the tree, as far as the kernel knows it.
func (n *node) path() string { return n.Path(nil) }

func (n *node) childPath(name string) func() string {
	return func() string { return fs.Join(n.Path(nil), name) }
}

var (
	errOrphan   = errors.New("the node was removed")
	errReplaced = errors.New("the name now holds a node of another type")
	errNotNode  = errors.New("the tree returned a node that is neither a Dir nor a File")
)

// fsNode returns the tree's node for n, looking it up again from its
// parent if it was not resolved since the last rename through the mount.
func (n *node) fsNode(ctx context.Context) (fs.Node, error) {
	if n.IsRoot() {
		return n.m.root, nil
	}
	cur, at := n.id.get()
	if cur != nil && at == n.m.epoch.Load() {
		return cur, nil
	}
	return n.lookupAgain(ctx, cur)
}

// lookupAgain looks n up in its parent and remembers what it finds; cur
// is what n was, which stays if n has no parent any more.
func (n *node) lookupAgain(ctx context.Context, cur fs.Node) (fs.Node, error) {
	epoch := n.m.epoch.Load()
	name, parent := n.Parent()
	if parent == nil {
		if cur != nil {
			return cur, nil // removed: what it was is all there is
		}
		return nil, &fs.Error{Op: "lookup", Path: n.path(), Kind: fs.NotExist, Err: errOrphan}
	}
	pn, ok := parent.Operations().(*node)
	if !ok {
		return nil, &fs.Error{Op: "lookup", Path: n.path(), Kind: fs.IO, Err: errors.New("parent is not a mounted node")}
	}
	pd, err := pn.dir(ctx)
	if err != nil {
		return nil, err
	}
	c, err := pd.Lookup(ctx, name)
	if err != nil {
		return nil, err
	}
	if isDir, ok := kind(c); !ok || isDir != n.isDir {
		return nil, &fs.Error{Op: "lookup", Path: fs.Join(parent.Path(nil), name), Kind: fs.NotExist, Err: errReplaced}
	}
	n.id.set(c, epoch)
	return c, nil
}

// withNode calls f with the tree's node for n. If f finds that the node
// no longer exists, and n still has a name, the name is looked up again and
// f is tried once more: a tree whose nodes stand for one file (not a
// path) gives a new node when a file is replaced behind the mount.
func (n *node) withNode(ctx context.Context, f func(fs.Node) error) error {
	c, err := n.fsNode(ctx)
	if err != nil {
		return err
	}
	err = f(c)
	if fs.KindOf(err) != fs.NotExist || n.IsRoot() {
		return err
	}
	if c, rerr := n.lookupAgain(ctx, nil); rerr == nil {
		return f(c)
	}
	return err
}

func (n *node) dir(ctx context.Context) (fs.Dir, error) {
	c, err := n.fsNode(ctx)
	if err != nil {
		return nil, err
	}
	d, ok := c.(fs.Dir)
	if !ok {
		return nil, &fs.Error{Op: "lookup", Path: n.path(), Kind: fs.NotDir}
	}
	return d, nil
}

// kind reports whether c is a directory, and whether it is a Dir or File
// at all.
func kind(c fs.Node) (isDir, ok bool) {
	switch c.(type) {
	case fs.Dir:
		return true, true
	case fs.File:
		return false, true
	}
	return false, false
}

// newChild makes the kernel node for c, found as name in parent, and
// fills out.
func (m *Mounted) newChild(ctx context.Context, parent *node, name string, c fs.Node, info fs.Info, epoch uint64, out *gofuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	isDir, ok := kind(c)
	if !ok {
		return nil, m.errno("lookup", parent.childPath(name), &fs.Error{Op: "lookup", Path: fs.Join(parent.path(), name), Kind: fs.IO, Err: errNotNode})
	}
	stream := info.Stream && !isDir
	k := keyOf(info, isDir, fs.Join(parent.path(), name))
	m.adopt(parent, name, k)
	id := m.identFor(k, c, epoch, stream)
	ch := parent.NewInode(ctx, &node{m: m, id: id, isDir: isDir}, id.attr())
	id.remember(info)
	m.fillEntry(out, id.overlay(info), isDir)
	return ch, 0
}

func (m *Mounted) fillEntry(out *gofuse.EntryOut, info fs.Info, isDir bool) {
	m.fillAttr(&out.Attr, info, isDir)
	out.SetEntryTimeout(m.entryTTL)
	out.SetAttrTimeout(m.attrTTLFor(info, isDir))
}

// attrTTLFor is how long the kernel may keep the attributes info: not at
// all for a Stream file.
func (m *Mounted) attrTTLFor(info fs.Info, isDir bool) time.Duration {
	if info.Stream && !isDir {
		return 0
	}
	return m.attrTTL
}

func (m *Mounted) fillAttr(a *gofuse.Attr, info fs.Info, isDir bool) {
	perm := uint32(info.Mode.Perm())
	if isDir {
		a.Mode = syscall.S_IFDIR | perm
		a.Nlink = 2
	} else {
		a.Mode = syscall.S_IFREG | perm
		a.Nlink = 1
	}
	size := info.Size
	if size < 0 || (info.Stream && !isDir) {
		size = 0
	}
	a.Size = uint64(size)
	t := info.ModTime
	if t.IsZero() {
		t = m.start
	}
	a.SetTimes(&t, &t, &t)
	a.Uid, a.Gid = m.uid, m.gid
}

// Lookup implements fusefs.NodeLookuper.
func (n *node) Lookup(ctx context.Context, name string, out *gofuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	var (
		c     fs.Node
		info  fs.Info
		epoch uint64
	)
	errno, _ := n.m.do(ctx, "lookup", n.childPath(name), func(ctx context.Context) error {
		epoch = n.m.epoch.Load()
		d, err := n.dir(ctx)
		if err != nil {
			return err
		}
		if c, err = d.Lookup(ctx, name); err != nil {
			return err
		}
		info, err = c.Stat(ctx)
		return err
	}, nil)
	if errno != 0 {
		return nil, errno
	}
	return n.m.newChild(ctx, n, name, c, info, epoch, out)
}

// Getattr implements fusefs.NodeGetattrer. A node that still has a name
// is described by the tree's node at that name. One that was removed, or
// replaced by a rename, through the mount is not at its name any more:
// fstat(2) of an open descriptor of it is answered by the open handle,
// where it can describe the file it has open (fs.HandleStater), else with
// the attributes the node last had, with no links. go-fuse hands an open
// handle of the node to a stat by name too, so the handle is asked only
// when the name cannot be: the node is unlinked, or its name is gone
// from the tree (removed behind the mount).
func (n *node) Getattr(ctx context.Context, fh fusefs.FileHandle, out *gofuse.AttrOut) syscall.Errno {
	n.id.waitClosed(ctx, n.m.timeout)
	h, _ := fh.(*handle)
	if n.unlinked() {
		return n.getattrUnlinked(ctx, h, out)
	}
	var info fs.Info
	errno, _ := n.m.do(ctx, "stat", n.path, func(ctx context.Context) error {
		return n.withNode(ctx, func(c fs.Node) (err error) {
			info, err = c.Stat(ctx)
			return err
		})
	}, nil)
	if errno == syscall.ENOENT && h != nil && h.stater() != nil {
		return n.getattrUnlinked(ctx, h, out)
	}
	if errno != 0 {
		return errno
	}
	n.id.setStream(info.Stream && !n.isDir)
	n.id.remember(info)
	n.m.fillAttr(&out.Attr, n.id.overlay(info), n.isDir)
	out.SetTimeout(n.m.attrTTLFor(info, n.isDir))
	return 0
}

// unlinked reports whether n was removed, or replaced by a rename,
// through the mount: the kernel no longer reaches it by any name.
func (n *node) unlinked() bool {
	if n.IsRoot() {
		return false
	}
	_, parent := n.Parent()
	return parent == nil
}

// getattrUnlinked describes a node that has no name: through h, the open
// handle the request came with, if it can say, else as it last was.
func (n *node) getattrUnlinked(ctx context.Context, h *handle, out *gofuse.AttrOut) syscall.Errno {
	var info fs.Info
	if hs := h.stater(); hs != nil {
		errno, _ := h.call(ctx, "fstat", func(ctx context.Context) (err error) {
			info, err = hs.Stat(ctx)
			return err
		})
		if errno != 0 {
			return errno
		}
	} else if last, ok := n.id.lastInfo(); ok {
		info = last
	} else {
		return n.m.refuse("stat", n.path, syscall.ENOENT, "the node was removed")
	}
	n.m.fillAttr(&out.Attr, n.id.overlay(info), n.isDir)
	out.Attr.Nlink = 0
	out.SetTimeout(n.m.attrTTLFor(info, n.isDir))
	return 0
}

// Setattr implements fusefs.NodeSetattrer: size (truncate), permission
// bits and modification time go to fs.Node.SetAttr. Access times are
// not kept; a change of owner to another than the mount's is refused.
func (n *node) Setattr(ctx context.Context, fh fusefs.FileHandle, in *gofuse.SetAttrIn, out *gofuse.AttrOut) syscall.Errno {
	var a fs.Attr
	change := false
	if sz, ok := in.GetSize(); ok {
		s := int64(sz)
		if s < 0 {
			return n.m.refuse("setattr", n.path, syscall.EINVAL, "size out of range")
		}
		a.Size, change = &s, true
	}
	if md, ok := in.GetMode(); ok {
		p := iofs.FileMode(md).Perm()
		a.Mode, change = &p, true
	}
	if mt, ok := in.GetMTime(); ok {
		a.ModTime, change = &mt, true
	}
	if uid, ok := in.GetUID(); ok && uid != n.m.uid {
		return n.m.refuse("setattr", n.path, syscall.EPERM, "owners cannot be changed")
	}
	if gid, ok := in.GetGID(); ok && gid != n.m.gid {
		return n.m.refuse("setattr", n.path, syscall.EPERM, "groups cannot be changed")
	}
	// The change comes after the writes under way through the mount, as
	// it would have if they had been made when they were answered.
	n.id.settleWriters(ctx)
	h, _ := fh.(*handle)
	if h != nil && a.Size != nil && h.rewrite.Load() {
		// A size set through a handle that is rewriting the file: the
		// tree's file is the old one until the rewrite is committed, so
		// commit it first.
		if errno := h.sync(ctx, "setattr"); errno != 0 {
			return errno
		}
	}
	var info fs.Info
	errno, _ := n.m.do(ctx, "setattr", n.path, func(ctx context.Context) error {
		return n.withNode(ctx, func(c fs.Node) (err error) {
			if change {
				if err := c.SetAttr(ctx, a); err != nil {
					return err
				}
			}
			info, err = c.Stat(ctx)
			return err
		})
	}, nil)
	if errno != 0 {
		return errno
	}
	if h != nil && a.Size != nil {
		h.dirty.Store(true)
	}
	if a.Size != nil {
		n.id.truncated(*a.Size, nil)
	}
	n.id.remember(info)
	n.m.fillAttr(&out.Attr, n.id.overlay(info), n.isDir)
	out.Ino = n.StableAttr().Ino // go-fuse sets it after Getattr, not after Setattr
	out.SetTimeout(n.m.attrTTLFor(info, n.isDir))
	return 0
}

// openFlag maps open(2) flags to an fs.Flag: the access mode, O_APPEND,
// and O_TRUNC where the access mode allows writing.
func openFlag(flags uint32) fs.Flag {
	fl := fs.Flag(int(flags) & syscall.O_ACCMODE)
	if flags&syscall.O_APPEND != 0 {
		fl |= fs.Append
	}
	if flags&syscall.O_TRUNC != 0 && fl.Writable() {
		fl |= fs.Truncate
	}
	return fl
}

// Open implements fusefs.NodeOpener. O_TRUNC with O_RDONLY truncates, as
// Linux does, by setting the size to 0 before opening.
func (n *node) Open(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	n.id.waitClosed(ctx, n.m.timeout)
	n.id.settleWriters(ctx)
	fl := openFlag(flags)
	truncRO := flags&syscall.O_TRUNC != 0 && !fl.Writable()
	var (
		h     fs.Handle
		hides bool
	)
	errno, _ := n.m.do(ctx, "open", n.path, func(ctx context.Context) error {
		return n.withNode(ctx, func(c fs.Node) (err error) {
			f, ok := c.(fs.File)
			if !ok {
				return &fs.Error{Op: "open", Path: n.path(), Kind: fs.IsDir}
			}
			if truncRO {
				zero := int64(0)
				if err := f.SetAttr(ctx, fs.Attr{Size: &zero}); err != nil {
					return err
				}
			}
			if h, err = f.Open(ctx, fl); err != nil {
				return err
			}
			if fl.Has(fs.Truncate) {
				// Does the tree still show the old content (an atomic
				// rewrite), or did it truncate in place?
				info, err := f.Stat(ctx)
				hides = err == nil && info.Size > 0
			}
			return nil
		})
	}, func() { n.m.closeLate(h) })
	if errno != 0 {
		return nil, 0, errno
	}
	hd := n.m.newHandle(n, h, fl, flags, n.id.isStream(), fl.Has(fs.Truncate), hides)
	return hd, hd.fuseFlags(), 0
}

// closeLate closes a handle opened by a call the mount stopped waiting for.
func (m *Mounted) closeLate(h fs.Handle) {
	if h == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), m.timeout)
	defer cancel()
	if err := h.Close(ctx); err != nil {
		m.log.Warn("fuse: closing a handle opened too late", "err", err)
	}
}

// Create implements fusefs.NodeCreater with fs.Dir.Create.
func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *gofuse.EntryOut) (*fusefs.Inode, fusefs.FileHandle, uint32, syscall.Errno) {
	fl := openFlag(flags)
	if flags&syscall.O_EXCL != 0 {
		fl |= fs.Excl
	}
	perm := iofs.FileMode(mode).Perm()
	var (
		f     fs.File
		h     fs.Handle
		info  fs.Info
		epoch uint64
	)
	errno, _ := n.m.do(ctx, "create", n.childPath(name), func(ctx context.Context) error {
		epoch = n.m.epoch.Load()
		d, err := n.dir(ctx)
		if err != nil {
			return err
		}
		f, h, err = d.Create(ctx, name, fl, perm)
		if err != nil {
			return err
		}
		if info, err = f.Stat(ctx); err != nil {
			h.Close(ctx)
			h = nil
		}
		return err
	}, func() { n.m.closeLate(h) })
	if errno != 0 {
		return nil, nil, 0, errno
	}
	ch, errno := n.m.newChild(ctx, n, name, f, info, epoch, out)
	if errno != 0 {
		n.m.closeLate(h)
		return nil, nil, 0, errno
	}
	cn, _ := ch.Operations().(*node)
	if cn == nil {
		cn = n
	}
	// A new (or empty) file is written from nothing: as with O_TRUNC, a
	// tree may show it only once the handle syncs.
	trunc := fl.Has(fs.Truncate)
	hd := n.m.newHandle(cn, h, fl, flags, info.Stream, trunc || info.Size == 0, trunc && info.Size > 0)
	return ch, hd, hd.fuseFlags(), 0
}

// Mkdir implements fusefs.NodeMkdirer with fs.Dir.Mkdir.
func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *gofuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	perm := iofs.FileMode(mode).Perm()
	var (
		d     fs.Dir
		info  fs.Info
		epoch uint64
	)
	errno, _ := n.m.do(ctx, "mkdir", n.childPath(name), func(ctx context.Context) error {
		epoch = n.m.epoch.Load()
		pd, err := n.dir(ctx)
		if err != nil {
			return err
		}
		if d, err = pd.Mkdir(ctx, name, perm); err != nil {
			return err
		}
		info, err = d.Stat(ctx)
		return err
	}, nil)
	if errno != 0 {
		return nil, errno
	}
	return n.m.newChild(ctx, n, name, d, info, epoch, out)
}

// Unlink implements fusefs.NodeUnlinker with fs.Dir.Remove.
func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	return n.remove(ctx, name)
}

// Rmdir implements fusefs.NodeRmdirer with fs.Dir.Remove.
func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	return n.remove(ctx, name)
}

func (n *node) remove(ctx context.Context, name string) syscall.Errno {
	errno, _ := n.m.do(ctx, "remove", n.childPath(name), func(ctx context.Context) error {
		d, err := n.dir(ctx)
		if err != nil {
			return err
		}
		return d.Remove(ctx, name)
	}, nil)
	return errno
}

// Rename implements fusefs.NodeRenamer with fs.Dir.Rename.
// RENAME_NOREPLACE is checked with a lookup first; other flags fail with
// EINVAL.
func (n *node) Rename(ctx context.Context, name string, newParent fusefs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	where := n.childPath(name)
	if flags&^renameNoReplace != 0 {
		why := "rename flags are not supported"
		if flags&renameExchange != 0 {
			why = "RENAME_EXCHANGE is not supported"
		}
		return n.m.refuse("rename", where, syscall.EINVAL, why)
	}
	np, ok := newParent.(*node)
	if !ok {
		return n.m.refuse("rename", where, syscall.EXDEV, "the target directory is not in this mount")
	}
	moved := n.GetChild(name)
	errno, _ := n.m.do(ctx, "rename", where, func(ctx context.Context) error {
		d, err := n.dir(ctx)
		if err != nil {
			return err
		}
		nd, err := np.dir(ctx)
		if err != nil {
			return err
		}
		if flags&renameNoReplace != 0 {
			_, err := nd.Lookup(ctx, newName)
			if err == nil {
				return &fs.Error{Op: "rename", Path: fs.Join(np.path(), newName), Kind: fs.Exist, Err: errors.New("RENAME_NOREPLACE: the target exists")}
			}
			if fs.KindOf(err) != fs.NotExist {
				return err
			}
		}
		if err := d.Rename(ctx, name, nd, newName); err != nil {
			return err
		}
		// Nodes below a moved directory may be paths that changed: look
		// them up again when next used. The moved node itself is looked
		// up now.
		epoch := n.m.epoch.Load()
		if moved == nil || moved.IsDir() {
			epoch = n.m.epoch.Add(1)
		}
		if mn, ok := moveOps(moved); ok {
			n.m.rekey(mn.id, fs.Join(np.path(), newName))
			if c, err := nd.Lookup(ctx, newName); err == nil {
				mn.id.set(c, epoch)
			}
		}
		return nil
	}, nil)
	return errno
}

func moveOps(in *fusefs.Inode) (*node, bool) {
	if in == nil {
		return nil, false
	}
	mn, ok := in.Operations().(*node)
	return mn, ok
}

// Statfs implements fusefs.NodeStatfser. The tree has no notion of
// capacity; the block size and the longest name are what it reports.
func (n *node) Statfs(ctx context.Context, out *gofuse.StatfsOut) syscall.Errno {
	out.Bsize = 4096
	out.Frsize = 4096
	out.NameLen = fs.MaxNameLen
	return 0
}

// OpendirHandle implements fusefs.NodeOpendirHandler: the listing is read
// at the first readdir and again after a rewind.
func (n *node) OpendirHandle(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	return &dirHandle{n: n}, 0, 0
}

// dirHandle is an open directory. go-fuse serializes the calls on one.
type dirHandle struct {
	n       *node
	loaded  bool
	entries []gofuse.DirEntry
	infos   map[string]fs.Info
	next    int
}

var (
	_ fusefs.FileReaddirenter = (*dirHandle)(nil)
	_ fusefs.FileSeekdirer    = (*dirHandle)(nil)
	_ fusefs.FileLookuper     = (*dirHandle)(nil)
	_ fusefs.FileFsyncdirer   = (*dirHandle)(nil)
	_ fusefs.FileReleasedirer = (*dirHandle)(nil)
)

func (d *dirHandle) load(ctx context.Context) syscall.Errno {
	n := d.n
	var list []fs.Info
	errno, _ := n.m.do(ctx, "readdir", n.path, func(ctx context.Context) error {
		dir, err := n.dir(ctx)
		if err != nil {
			return err
		}
		list, err = dir.ReadDir(ctx)
		return err
	}, nil)
	if errno != 0 {
		return errno
	}
	self := n.StableAttr().Ino
	up := self
	if _, p := n.Parent(); p != nil {
		up = p.StableAttr().Ino
	}
	p := n.path()
	d.entries = append(d.entries[:0],
		gofuse.DirEntry{Name: ".", Mode: syscall.S_IFDIR, Ino: self},
		gofuse.DirEntry{Name: "..", Mode: syscall.S_IFDIR, Ino: up})
	d.infos = make(map[string]fs.Info, len(list))
	for _, info := range list {
		if fs.CheckName("readdir", info.Name) != nil {
			continue
		}
		k := keyOf(info, info.IsDir(), fs.Join(p, info.Name))
		n.m.adopt(n, info.Name, k)
		d.entries = append(d.entries, gofuse.DirEntry{Name: info.Name, Mode: k.mode, Ino: d.n.m.inoOf(k)})
		d.infos[info.Name] = info
	}
	d.loaded = true
	return 0
}

// Readdirent implements fusefs.FileReaddirenter.
func (d *dirHandle) Readdirent(ctx context.Context) (*gofuse.DirEntry, syscall.Errno) {
	if !d.loaded {
		if errno := d.load(ctx); errno != 0 {
			return nil, errno
		}
		d.next = 0
	}
	if d.next >= len(d.entries) {
		return nil, 0
	}
	e := d.entries[d.next]
	d.next++
	e.Off = uint64(d.next)
	return &e, 0
}

// Seekdir implements fusefs.FileSeekdirer; a rewind reads the directory
// again.
func (d *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	if off == 0 {
		d.loaded = false
		d.next = 0
		return 0
	}
	if off > uint64(len(d.entries)) {
		return syscall.EINVAL
	}
	d.next = int(off)
	return 0
}

// Lookup implements fusefs.FileLookuper for READDIRPLUS: the entry comes
// from the listing, and its node is looked up in the tree when first used.
func (d *dirHandle) Lookup(ctx context.Context, name string, out *gofuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	info, ok := d.infos[name]
	if !ok {
		return d.n.Lookup(ctx, name, out)
	}
	n := d.n
	isDir := info.IsDir()
	k := keyOf(info, isDir, fs.Join(n.path(), name))
	n.m.adopt(n, name, k)
	id := n.m.identFor(k, nil, 0, info.Stream && !isDir)
	ch := n.NewInode(ctx, &node{m: n.m, id: id, isDir: isDir}, id.attr())
	id.remember(info)
	n.m.fillEntry(out, id.overlay(info), isDir)
	return ch, 0
}

// Fsyncdir implements fusefs.FileFsyncdirer: a tree's directory changes
// are done when they return, so there is nothing to do.
func (d *dirHandle) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno { return 0 }

// Releasedir implements fusefs.FileReleasedirer.
func (d *dirHandle) Releasedir(ctx context.Context, releaseFlags uint32) {}
