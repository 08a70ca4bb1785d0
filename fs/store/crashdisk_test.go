package store

import (
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// crashDisk is a disk in memory that fails as a real one does when the
// power goes: it loses, tears or garbles what was not synced, in the
// spirit of SQLite's crash tests and bbolt's power-failure tests. A store
// runs on it until a chosen call, where the power goes; Crash then gives
// the image left on the platters, on which a new store recovers.
//
// # The model
//
// File data. A file's bytes, size and attributes (permission bits,
// modification time, owner) are durable as of its last Sync. After a
// power loss its size is the synced size or the latest one, and each
// 512-byte sector that holds bytes written since the Sync (by WriteAt or
// Write, or as zeros by a write or Truncate past the end) is,
// independently: old (those bytes as synced, zero past the synced size),
// new (those bytes as last written) or garbled (random bytes, or zeros,
// as when the size reached the disk and the data did not). A Truncate
// that shrinks the file writes nothing: if the old size comes back, the
// bytes it cut off come back as they were. Bytes not written since the
// Sync are never damaged.
//
// Directories. Every create, mkdir, remove and rename is one change to
// the entries of one directory, or of two for a rename between
// directories. A change is durable once every directory it changed has
// been synced after it. A file's Sync does not make its name durable, and
// a directory's Sync does not make its own name durable: POSIX promises
// neither (ext4 does the first). After a power loss each change that was
// not durable is, independently, kept or lost, and the kept ones are
// replayed in order on the durable ones; a rename is kept or lost whole.
//
// # Where the model is weaker, and where stronger, than a real disk
//
// Weaker (harder on the store): changes to different directories, and
// changes not yet durable, are kept or lost independently of their
// order, where a journaling file system keeps a prefix of them (so a
// file renamed twice, neither rename durable, may show at two names); a
// rename between directories is durable only once both are synced, where
// ext4 and XFS make it durable with either; unsynced sectors may come
// back as garbage, where most file systems return old data or zeros.
//
// Stronger (what no store can do without): a sector is torn only in the
// bytes written to it since the last Sync: bytes beside them are never
// damaged (SQLite's "powersafe overwrite", without which no in-place
// update is safe); a rename is atomic, so the renamed entry is at its old
// name or its new one after a crash, never at neither (every journaling
// file system ensures it, and the store's atomic rewrite rests on it);
// synced data and durable entries are never lost, and a Sync that
// returned nil did its work (no lost fsync errors).
//
// Not modelled: permission checks, symbolic and hard links, the flock,
// and running out of space.
//
// # Crash points
//
// The disk counts every call that reaches it, of the disk and of its
// open files, reads and Close included. With crashAt set to N, the Nth
// call and every later one fail with EIO and change nothing, as after a
// power loss. (A call cut in the middle needs no point of its own: what it
// wrote is unsynced, and Crash may keep any part of it.)
//
// Crash(seed) gives the image a power loss leaves, and may be called
// many times, for many images of one crash. Seed 0 loses everything not
// durable (what a cut usually does); seed 1 keeps everything (the cache
// was written just before the cut); the others choose per change and per
// sector, pseudo-randomly from the seed.
type crashDisk struct {
	*platter
	top *dnode // the directory that names are relative to
}

var (
	_ disk     = (*crashDisk)(nil)
	_ diskFile = (*crashFile)(nil)
)

// platter is the state shared by a crashDisk and the sub-roots opened on it.
type platter struct {
	mu      sync.Mutex
	root    *dnode
	nextIno uint64

	calls   int    // calls counted so far
	crashAt int    // the call that crashes; 0 for none
	crashed string // the call that crashed, once it has

	base map[*dnode]map[string]*dnode // the entries of the directories at the last image
	log  []*change                    // the changes of entries since
}

const sectorSize = 512

// A dnode is a file or a directory of a crashDisk: its inode.
type dnode struct {
	ino uint64
	dir bool

	attr, syncedAttr attr

	data   []byte // what a file holds now
	synced []byte // what it held at its last Sync
	dirty  []span // the bytes changed since

	entries map[string]*dnode // a directory's entries now
}

// attr is the attributes that a file's Sync makes durable.
type attr struct {
	perm     iofs.FileMode
	mtime    time.Time
	uid, gid int
}

// span is the byte range [from, to).
type span struct{ from, to int }

// change is a create, mkdir, remove or rename: n leaves from/fromName (if
// from is not nil) and arrives at to/toName (if to is not nil).
type change struct {
	from, to         *dnode
	fromName, toName string
	n                *dnode
	wait             []*dnode // the directories still to sync for it to be durable
}

var errPowerLoss = syscall.EIO

// newCrashDisk returns an empty disk.
func newCrashDisk() *crashDisk {
	p := &platter{nextIno: 1}
	p.root = p.newNode(true, 0o755)
	p.base = map[*dnode]map[string]*dnode{p.root: {}}
	return &crashDisk{platter: p, top: p.root}
}

func (p *platter) newNode(dir bool, perm iofs.FileMode) *dnode {
	n := &dnode{ino: p.nextIno, dir: dir}
	p.nextIno++
	n.attr = attr{perm: perm.Perm(), mtime: p.now()}
	n.syncedAttr = n.attr
	if dir {
		n.entries = map[string]*dnode{}
	}
	return n
}

// now is a clock that ticks with every call, so that runs repeat exactly.
func (p *platter) now() time.Time {
	return time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(p.calls) * time.Millisecond)
}

// call counts a call, described by what, and reports whether the power
// is still on. p.mu is held.
func (p *platter) call(what string) bool {
	if p.crashed != "" {
		return false
	}
	p.calls++
	if p.calls == p.crashAt {
		p.crashed = fmt.Sprintf("call %d, %s", p.calls, what)
		return false
	}
	return true
}

// setCrash makes the nth call that reaches the disk, counted from its
// start, crash; 0 makes none crash.
func (p *platter) setCrash(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.crashAt = n
}

// state reports the calls made so far and the call that crashed, if any.
func (p *platter) state() (calls int, crashed string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls, p.crashed
}

func pathErr(op, name string, err error) error {
	return &iofs.PathError{Op: op, Path: name, Err: err}
}

// lookup finds name from d.top. p.mu is held.
func (d *crashDisk) lookup(name string) (*dnode, error) {
	if name == "." {
		return d.top, nil
	}
	n := d.top
	for _, e := range strings.Split(name, "/") {
		if e == "" || e == "." || e == ".." {
			return nil, syscall.EINVAL // the store passes clean paths only
		}
		if !n.dir {
			return nil, syscall.ENOTDIR
		}
		if n = n.entries[e]; n == nil {
			return nil, syscall.ENOENT
		}
	}
	return n, nil
}

// parent finds the directory of name and name's last element. p.mu is held.
func (d *crashDisk) parent(name string) (*dnode, string, error) {
	i := strings.LastIndexByte(name, '/')
	dir, base := ".", name
	if i >= 0 {
		dir, base = name[:i], name[i+1:]
	}
	if base == "" || base == "." || base == ".." {
		return nil, "", syscall.EINVAL
	}
	n, err := d.lookup(dir)
	if err != nil {
		return nil, "", err
	}
	if !n.dir {
		return nil, "", syscall.ENOTDIR
	}
	return n, base, nil
}

// record logs a change of entries, which waits for the directories it changed.
func (p *platter) record(c *change) {
	for _, dir := range []*dnode{c.from, c.to} {
		if dir != nil && !slices.Contains(c.wait, dir) {
			c.wait = append(c.wait, dir)
		}
	}
	p.log = append(p.log, c)
}

func (d *crashDisk) OpenFile(name string, flag int, perm iofs.FileMode) (diskFile, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.call("open " + name) {
		return nil, pathErr("open", name, errPowerLoss)
	}
	var n *dnode
	if name == "." {
		n = d.top
	} else {
		dir, base, err := d.parent(name)
		if err != nil {
			return nil, pathErr("open", name, err)
		}
		n = dir.entries[base]
		if n == nil {
			if flag&os.O_CREATE == 0 {
				return nil, pathErr("open", name, syscall.ENOENT)
			}
			n = d.newNode(false, perm)
			dir.entries[base] = n
			d.record(&change{to: dir, toName: base, n: n})
		} else if flag&(os.O_CREATE|os.O_EXCL) == os.O_CREATE|os.O_EXCL {
			return nil, pathErr("open", name, syscall.EEXIST)
		}
	}
	acc := flag & (os.O_RDONLY | os.O_WRONLY | os.O_RDWR)
	switch {
	case n.dir && (acc != os.O_RDONLY || flag&os.O_CREATE != 0):
		return nil, pathErr("open", name, syscall.EISDIR)
	case !n.dir && flag&syscall.O_DIRECTORY != 0:
		return nil, pathErr("open", name, syscall.ENOTDIR)
	}
	f := &crashFile{d: d.platter, n: n, name: name, flag: flag}
	if flag&os.O_TRUNC != 0 && f.writable() {
		d.resize(n, 0)
	}
	return f, nil
}

func (d *crashDisk) OpenRoot(name string) (disk, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.call("openroot " + name) {
		return nil, pathErr("openat", name, errPowerLoss)
	}
	n, err := d.lookup(name)
	if err == nil && !n.dir {
		err = syscall.ENOTDIR
	}
	if err != nil {
		return nil, pathErr("openat", name, err)
	}
	return &crashDisk{platter: d.platter, top: n}, nil
}

func (d *crashDisk) Lstat(name string) (iofs.FileInfo, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.call("lstat " + name) {
		return nil, pathErr("lstat", name, errPowerLoss)
	}
	n, err := d.lookup(name)
	if err != nil {
		return nil, pathErr("lstat", name, err)
	}
	return n.info(name), nil
}

func (d *crashDisk) Mkdir(name string, perm iofs.FileMode) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.call("mkdir " + name) {
		return pathErr("mkdir", name, errPowerLoss)
	}
	dir, base, err := d.parent(name)
	if err != nil {
		return pathErr("mkdir", name, err)
	}
	if dir.entries[base] != nil {
		return pathErr("mkdir", name, syscall.EEXIST)
	}
	n := d.newNode(true, perm)
	dir.entries[base] = n
	d.record(&change{to: dir, toName: base, n: n})
	return nil
}

func (d *crashDisk) Remove(name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.call("remove " + name) {
		return pathErr("remove", name, errPowerLoss)
	}
	dir, base, err := d.parent(name)
	if err != nil {
		return pathErr("remove", name, err)
	}
	n := dir.entries[base]
	switch {
	case n == nil:
		return pathErr("remove", name, syscall.ENOENT)
	case n.dir && len(n.entries) > 0:
		return pathErr("remove", name, syscall.ENOTEMPTY)
	}
	delete(dir.entries, base)
	d.record(&change{from: dir, fromName: base, n: n})
	return nil
}

func (d *crashDisk) Rename(oldname, newname string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	fail := func(err error) error { return &os.LinkError{Op: "renameat", Old: oldname, New: newname, Err: err} }
	if !d.call("rename " + oldname + " " + newname) {
		return fail(errPowerLoss)
	}
	from, fromName, err := d.parent(oldname)
	if err != nil {
		return fail(err)
	}
	to, toName, err := d.parent(newname)
	if err != nil {
		return fail(err)
	}
	n, old := from.entries[fromName], to.entries[toName]
	switch {
	case n == nil:
		return fail(syscall.ENOENT)
	case n == old:
		return nil
	case n.dir && strings.HasPrefix(newname, oldname+"/"):
		return fail(syscall.EINVAL)
	case old == nil:
	case n.dir && !old.dir:
		return fail(syscall.ENOTDIR)
	case !n.dir && old.dir:
		return fail(syscall.EISDIR)
	case old.dir && len(old.entries) > 0:
		return fail(syscall.ENOTEMPTY)
	}
	delete(from.entries, fromName)
	to.entries[toName] = n
	d.record(&change{from: from, fromName: fromName, to: to, toName: toName, n: n})
	return nil
}

func (d *crashDisk) Chmod(name string, mode iofs.FileMode) error {
	return d.setAttr("chmod", name, func(a *attr) { a.perm = mode.Perm() })
}

func (d *crashDisk) Chtimes(name string, _, mtime time.Time) error {
	return d.setAttr("chtimes", name, func(a *attr) {
		if !mtime.IsZero() {
			a.mtime = mtime
		}
	})
}

func (d *crashDisk) setAttr(op, name string, set func(*attr)) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.call(op + " " + name) {
		return pathErr(op, name, errPowerLoss)
	}
	n, err := d.lookup(name)
	if err != nil {
		return pathErr(op, name, err)
	}
	set(&n.attr)
	return nil
}

// Close does nothing: the platter lives on, for Crash.
func (d *crashDisk) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.call("close") {
		return pathErr("close", ".", errPowerLoss)
	}
	return nil
}

// resize sets the size of the file n. What it cuts off is not written:
// if the old size comes back after a crash, so do those bytes. What it
// adds is written, as zeros. p.mu is held.
func (p *platter) resize(n *dnode, size int) {
	if old := len(n.data); size < old {
		n.data = n.data[:size]
	} else if size > old {
		n.dirty = append(n.dirty, span{old, size})
		n.data = append(n.data, make([]byte, size-old)...)
	}
	n.attr.mtime = p.now()
}

// write writes b at off in the file n. p.mu is held.
func (p *platter) write(n *dnode, b []byte, off int) {
	if end := off + len(b); end > len(n.data) {
		p.resize(n, end)
	}
	n.dirty = append(n.dirty, span{off, off + len(b)})
	copy(n.data[off:], b)
	n.attr.mtime = p.now()
}

// sync makes n durable: its data and attributes, and, for a directory,
// the changes of its entries. p.mu is held.
func (p *platter) sync(n *dnode) {
	n.synced = slices.Clone(n.data)
	n.dirty = nil
	n.syncedAttr = n.attr
	if n.dir {
		for _, c := range p.log {
			c.wait = slices.DeleteFunc(c.wait, func(d *dnode) bool { return d == n })
		}
	}
}

// info describes n, called name.
func (n *dnode) info(name string) iofs.FileInfo {
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		name = name[i+1:]
	}
	mode := n.attr.perm
	if n.dir {
		mode |= iofs.ModeDir
	}
	return &crashInfo{
		name:  name,
		size:  int64(len(n.data)),
		mode:  mode,
		mtime: n.attr.mtime,
		sys:   &syscall.Stat_t{Ino: n.ino, Uid: uint32(n.attr.uid), Gid: uint32(n.attr.gid)},
	}
}

type crashInfo struct {
	name  string
	size  int64
	mode  iofs.FileMode
	mtime time.Time
	sys   *syscall.Stat_t
}

func (i *crashInfo) Name() string                 { return i.name }
func (i *crashInfo) Size() int64                  { return i.size }
func (i *crashInfo) Mode() iofs.FileMode          { return i.mode }
func (i *crashInfo) ModTime() time.Time           { return i.mtime }
func (i *crashInfo) IsDir() bool                  { return i.mode.IsDir() }
func (i *crashInfo) Sys() any                     { return i.sys }
func (i *crashInfo) Type() iofs.FileMode          { return i.mode.Type() }
func (i *crashInfo) Info() (iofs.FileInfo, error) { return i, nil }

// crashFile is an open file or directory of a crashDisk. It follows its
// inode through renames, as a descriptor does.
type crashFile struct {
	d      *platter
	n      *dnode
	name   string
	flag   int
	off    int // where Write writes, without O_APPEND
	listed int // the entries ReadDir returned so far
	closed bool
}

func (f *crashFile) writable() bool { return f.flag&(os.O_WRONLY|os.O_RDWR) != 0 }

// begin counts the call op and checks that f can serve it. f.d.mu is held.
func (f *crashFile) begin(op string) error {
	if !f.d.call(op + " " + f.name) {
		return pathErr(op, f.name, errPowerLoss)
	}
	if f.closed {
		return pathErr(op, f.name, os.ErrClosed)
	}
	return nil
}

func (f *crashFile) ReadAt(b []byte, off int64) (int, error) {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	if err := f.begin("read"); err != nil {
		return 0, err
	}
	switch {
	case f.n.dir:
		return 0, pathErr("read", f.name, syscall.EISDIR)
	case f.flag&(os.O_WRONLY|os.O_RDWR) == os.O_WRONLY:
		return 0, pathErr("read", f.name, syscall.EBADF)
	case off < 0:
		return 0, pathErr("read", f.name, syscall.EINVAL)
	case off >= int64(len(f.n.data)):
		return 0, io.EOF
	}
	k := copy(b, f.n.data[off:])
	if k < len(b) {
		return k, io.EOF
	}
	return k, nil
}

func (f *crashFile) WriteAt(b []byte, off int64) (int, error) {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	if err := f.begin("write"); err != nil {
		return 0, err
	}
	switch {
	case !f.writable():
		return 0, pathErr("write", f.name, syscall.EBADF)
	case f.flag&os.O_APPEND != 0:
		return 0, errors.New("os: invalid use of WriteAt on file opened with O_APPEND")
	case off < 0:
		return 0, pathErr("write", f.name, syscall.EINVAL)
	}
	f.d.write(f.n, b, int(off))
	return len(b), nil
}

func (f *crashFile) Write(b []byte) (int, error) {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	if err := f.begin("write"); err != nil {
		return 0, err
	}
	if !f.writable() {
		return 0, pathErr("write", f.name, syscall.EBADF)
	}
	if f.flag&os.O_APPEND != 0 {
		f.off = len(f.n.data)
	}
	f.d.write(f.n, b, f.off)
	f.off += len(b)
	return len(b), nil
}

func (f *crashFile) ReadDir(count int) ([]iofs.DirEntry, error) {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	if err := f.begin("readdirent"); err != nil {
		return nil, err
	}
	if !f.n.dir {
		return nil, pathErr("readdirent", f.name, syscall.ENOTDIR)
	}
	names := slices.Sorted(maps.Keys(f.n.entries))
	names = names[min(f.listed, len(names)):]
	if count > 0 {
		if len(names) == 0 {
			return nil, io.EOF
		}
		names = names[:min(count, len(names))]
	}
	f.listed += len(names)
	list := make([]iofs.DirEntry, len(names))
	for i, name := range names {
		list[i] = f.n.entries[name].info(name).(*crashInfo)
	}
	return list, nil
}

func (f *crashFile) Stat() (iofs.FileInfo, error) {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	if err := f.begin("stat"); err != nil {
		return nil, err
	}
	return f.n.info(f.name), nil
}

func (f *crashFile) Truncate(size int64) error {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	if err := f.begin("truncate"); err != nil {
		return err
	}
	switch {
	case f.n.dir || !f.writable():
		return pathErr("truncate", f.name, syscall.EINVAL)
	case size < 0:
		return pathErr("truncate", f.name, syscall.EINVAL)
	}
	f.d.resize(f.n, int(size))
	return nil
}

func (f *crashFile) Chmod(mode iofs.FileMode) error {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	if err := f.begin("chmod"); err != nil {
		return err
	}
	f.n.attr.perm = mode.Perm()
	return nil
}

func (f *crashFile) Chown(uid, gid int) error {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	if err := f.begin("chown"); err != nil {
		return err
	}
	f.n.attr.uid, f.n.attr.gid = uid, gid
	return nil
}

func (f *crashFile) Sync() error {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	if err := f.begin("sync"); err != nil {
		return err
	}
	f.d.sync(f.n)
	return nil
}

func (f *crashFile) Close() error {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	err := f.begin("close")
	f.closed = true
	return err
}

// Crash cuts the power, if a crash point has not already, and returns
// the image it leaves, chosen by seed, as a new disk with everything on
// it durable. This disk fails every later call.
func (d *crashDisk) Crash(seed uint64) *crashDisk {
	p := d.platter
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.crashed == "" {
		p.crashed = fmt.Sprintf("after call %d", p.calls)
	}
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	var keep func() bool
	switch seed {
	case 0:
		keep = func() bool { return false }
	case 1:
		keep = func() bool { return true }
	default:
		keep = func() bool { return rng.IntN(2) == 0 }
	}

	// Replay the changes of entries on the durable ones.
	entries := map[*dnode]map[string]*dnode{}
	of := func(dir *dnode) map[string]*dnode {
		m := entries[dir]
		if m == nil {
			m = map[string]*dnode{}
			entries[dir] = m
		}
		return m
	}
	for dir, m := range p.base {
		entries[dir] = maps.Clone(m)
	}
	for _, c := range p.log {
		if len(c.wait) > 0 && !keep() {
			continue
		}
		if c.from != nil && of(c.from)[c.fromName] == c.n {
			delete(of(c.from), c.fromName)
		}
		if c.to != nil {
			of(c.to)[c.toName] = c.n
		}
	}

	// Copy what is reachable, in name order, so that a seed always
	// draws the same numbers for the same inodes.
	img := &platter{nextIno: p.nextIno, calls: 0, base: map[*dnode]map[string]*dnode{}}
	made := map[*dnode]*dnode{}
	var copyNode func(n *dnode) *dnode
	copyNode = func(n *dnode) *dnode {
		if c := made[n]; c != nil {
			return c
		}
		c := &dnode{ino: n.ino, dir: n.dir}
		made[n] = c
		c.attr = n.syncedAttr
		if n.attr != n.syncedAttr && keep() {
			c.attr = n.attr
		}
		c.syncedAttr = c.attr
		if n.dir {
			c.entries = map[string]*dnode{}
			m := of(n)
			for _, name := range slices.Sorted(maps.Keys(m)) {
				c.entries[name] = copyNode(m[name])
			}
			img.base[c] = maps.Clone(c.entries)
		} else {
			c.data = n.afterLoss(rng, keep, seed)
			c.synced = slices.Clone(c.data)
		}
		return c
	}
	img.root = copyNode(p.root)
	return &crashDisk{platter: img, top: img.root}
}

// afterLoss is what the file n holds after a power loss that seed
// chooses, keeping what keep says.
func (n *dnode) afterLoss(rng *rand.Rand, keep func() bool, seed uint64) []byte {
	if len(n.dirty) == 0 && len(n.data) == len(n.synced) {
		return slices.Clone(n.synced)
	}
	size := len(n.synced)
	if len(n.data) != size && keep() {
		size = len(n.data)
	}
	out := make([]byte, size)
	copy(out, n.synced)
	const (
		old = iota // as synced: out holds it already
		latest
		garbage
		zeros
	)
	fate := map[int]int{} // by sector
	for _, s := range n.dirty {
		for i := s.from; i < min(s.to, size); i++ {
			sector := i / sectorSize
			f, ok := fate[sector]
			if !ok {
				switch seed {
				case 0:
					f = old
				case 1:
					f = latest
				default:
					f = rng.IntN(4)
				}
				fate[sector] = f
			}
			switch {
			case f == latest && i < len(n.data):
				out[i] = n.data[i]
			case f == latest, f == zeros:
				out[i] = 0
			case f == garbage:
				out[i] = byte(rng.Uint32())
			}
		}
	}
	return out
}

// files lists the paths of every file and directory on d now, durable or not.
func (d *crashDisk) files() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	var walk func(dir *dnode, p string)
	walk = func(dir *dnode, p string) {
		for _, name := range slices.Sorted(maps.Keys(dir.entries)) {
			q := name
			if p != "" {
				q = p + "/" + name
			}
			out = append(out, q)
			if n := dir.entries[name]; n.dir {
				walk(n, q)
			}
		}
	}
	walk(d.top, "")
	return out
}
