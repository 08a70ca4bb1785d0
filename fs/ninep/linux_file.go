package ninep

import (
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hugelgupf/p9/fsimpl/templatefs"
	"github.com/hugelgupf/p9/linux"
	"github.com/hugelgupf/p9/p9"

	"strata/fs"
)

// lconn is one 9P2000.L connection's view of its tree. It is the
// p9.Attacher of that connection's p9.Server.
type lconn struct {
	attach func(context.Context) (fs.Dir, error)
	ctx    context.Context // for operations; ends when the connection does
	cctx   context.Context // for closing handles: outlives the connection
	log    *slog.Logger

	mu   sync.Mutex
	root fs.Dir // from Server.Attach, once it has succeeded

	fids atomic.Int64 // live lfiles: fids and the ancestors they hold
	open *openFiles
}

// newFile makes the lfile for a new fid, unless the connection holds
// MaxFidsL already.
func (lc *lconn) newFile(op string, node fs.Node, path string, h fs.Handle) (*lfile, error) {
	if lc.fids.Add(1) > MaxFidsL {
		lc.fids.Add(-1)
		return nil, lc.fail(op, path, &fs.Error{Op: op, Path: path, Kind: fs.Busy, Err: fmt.Errorf("too many fids: a connection may hold %d; clunk some", MaxFidsL)})
	}
	return &lfile{lc: lc, node: node, path: path, h: h}, nil
}

// Attach implements p9.Attacher. p9 passes no user or aname (it walks to
// the aname itself), so the tree comes from Server.Attach with the
// connection: the first attach that succeeds fixes it for the connection.
func (lc *lconn) Attach() (p9.File, error) {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if lc.root == nil {
		root, err := lc.attach(lc.ctx)
		if err != nil {
			lc.log.Info("9P2000.L attach refused", "err", err.Error())
			return nil, lerrno(err)
		}
		lc.root = root
	}
	return lc.newFile("attach", lc.root, "", nil)
}

// lerrno is what p9 sends for err: the errno of err's kind, as the
// linux.Errno that p9 extracts.
func lerrno(err error) error {
	return linux.Errno(fs.ErrnoOf(err))
}

// fail logs err at debug level, with the operation and path, and returns
// the errno for the client.
func (lc *lconn) fail(op, path string, err error) error {
	errno := fs.ErrnoOf(err)
	if lc.log.Enabled(lc.ctx, slog.LevelDebug) {
		lc.log.Debug("9P2000.L request failed", "op", op, "path", "/"+path, "err", fs.WithPath(err, op, path).Error(), "errno", errno.Error())
	}
	return linux.Errno(errno)
}

// lfile adapts a node of the tree to p9.File. The p9 server serializes
// what it must (see p9.File); mu guards what it does not: the path, which
// Renamed changes, and the state of an open directory.
type lfile struct {
	templatefs.XattrUnimplemented
	templatefs.NotLockable
	templatefs.NotSymlinkFile

	lc *lconn

	mu   sync.Mutex
	node fs.Node
	path string // slash-separated from the root; "" is the root

	// Set by Open or Create.
	h       fs.Handle
	entries []fs.Info // directory listing taken at offset 0
	closed  bool      // Close has given back the fid's place
}

var _ p9.File = (*lfile)(nil)

func (f *lfile) where() (fs.Node, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.node, f.path
}

// lqid is the qid of a node: its ID, or a hash of its path if it has none.
func lqid(info fs.Info, path string) p9.QID {
	q := p9.QID{Type: p9.ModeFromOS(info.Mode).QIDType(), Version: info.Version, Path: info.ID}
	if q.Path == 0 {
		q.Path = fs.PathID(path)
	}
	return q
}

// lattr converts info. A Stream file's size is not known: the Size bit is
// left out of the valid mask so that clients do not trust it.
func lattr(info fs.Info) (p9.AttrMask, p9.Attr) {
	mtime := info.ModTime
	if mtime.IsZero() {
		mtime = time.Unix(0, 0)
	}
	sec, nsec := uint64(mtime.Unix()), uint64(mtime.Nanosecond())
	a := p9.Attr{
		Mode:             p9.ModeFromOS(info.Mode),
		NLink:            1,
		BlockSize:        4096,
		ATimeSeconds:     sec,
		ATimeNanoSeconds: nsec,
		MTimeSeconds:     sec,
		MTimeNanoSeconds: nsec,
		CTimeSeconds:     sec,
		CTimeNanoSeconds: nsec,
		DataVersion:      uint64(info.Version),
	}
	if info.IsDir() {
		a.NLink = 2
	}
	valid := p9.AttrMask{Mode: true, NLink: true, UID: true, GID: true, ATime: true, MTime: true, CTime: true, Size: true, Blocks: true, DataVersion: true}
	if info.Stream {
		valid.Size, valid.Blocks = false, false
	} else if info.Size > 0 {
		a.Size = uint64(info.Size)
		a.Blocks = (a.Size + 511) / 512
	}
	return valid, a
}

// Walk implements p9.File. p9 refuses "", ".", ".." and names with a slash
// before calling it; fs.CheckName refuses the rest (NUL, long names). A walk
// can only go down from the node, so nothing outside the root is reached.
func (f *lfile) Walk(names []string) ([]p9.QID, p9.File, error) {
	qids, nf, _, _, err := f.walk(names, false)
	return qids, nf, err
}

// WalkGetAttr implements p9.File: the walk and the attributes of where it
// ends come from one Stat.
func (f *lfile) WalkGetAttr(names []string) ([]p9.QID, p9.File, p9.AttrMask, p9.Attr, error) {
	return f.walk(names, true)
}

func (f *lfile) walk(names []string, getattr bool) ([]p9.QID, p9.File, p9.AttrMask, p9.Attr, error) {
	n, path := f.where()
	var qids []p9.QID
	var info fs.Info
	if len(names) == 0 && !getattr {
		nf, err := f.lc.newFile("walk", n, path, nil)
		if err != nil {
			return nil, nil, p9.AttrMask{}, p9.Attr{}, err
		}
		return nil, nf, p9.AttrMask{}, p9.Attr{}, nil
	}
	if len(names) == 0 {
		i, err := n.Stat(f.lc.ctx)
		if err != nil {
			return nil, nil, p9.AttrMask{}, p9.Attr{}, f.lc.fail("walk", path, err)
		}
		info = i
	}
	for _, name := range names {
		if err := fs.CheckName("walk", name); err != nil {
			return nil, nil, p9.AttrMask{}, p9.Attr{}, f.lc.fail("walk", path, err)
		}
		d, ok := n.(fs.Dir)
		if !ok {
			return nil, nil, p9.AttrMask{}, p9.Attr{}, f.lc.fail("walk", path, &fs.Error{Op: "walk", Path: path, Kind: fs.NotDir})
		}
		path = fs.Join(path, name)
		c, err := d.Lookup(f.lc.ctx, name)
		if err != nil {
			return nil, nil, p9.AttrMask{}, p9.Attr{}, f.lc.fail("walk", path, err)
		}
		i, err := c.Stat(f.lc.ctx)
		if err != nil {
			return nil, nil, p9.AttrMask{}, p9.Attr{}, f.lc.fail("walk", path, err)
		}
		n, info = c, i
		qids = append(qids, lqid(info, path))
	}
	valid, attr := lattr(info)
	nf, err := f.lc.newFile("walk", n, path, nil)
	if err != nil {
		return nil, nil, p9.AttrMask{}, p9.Attr{}, err
	}
	return qids, nf, valid, attr, nil
}

// GetAttr implements p9.File. A fid with an open handle describes the
// file it has open, where the handle can (fs.HandleStater): after an
// unlink, or a rename or atomic rewrite over its name, that is no longer
// the file at the fid's path, and fstat(2) of an open file asks for it.
func (f *lfile) GetAttr(p9.AttrMask) (p9.QID, p9.AttrMask, p9.Attr, error) {
	f.mu.Lock()
	n, path, h := f.node, f.path, f.h
	f.mu.Unlock()
	var (
		info fs.Info
		err  error
	)
	if hs := handleStater(h); hs != nil {
		info, err = hs.Stat(f.lc.ctx)
	} else {
		info, err = n.Stat(f.lc.ctx)
	}
	if err != nil {
		return p9.QID{}, p9.AttrMask{}, p9.Attr{}, f.lc.fail("getattr", path, err)
	}
	valid, attr := lattr(info)
	return lqid(info, path), valid, attr, nil
}

// handleStater is h as an fs.HandleStater, or nil if it is none (or
// there is no handle).
func handleStater(h fs.Handle) fs.HandleStater {
	if c, ok := h.(*countedHandle); ok {
		h = c.Handle
	}
	hs, _ := h.(fs.HandleStater)
	return hs
}

// SetAttr implements p9.File. Owners do not exist in the tree: changing
// them is refused. Access and change times are not kept: setting only
// those succeeds and changes nothing.
func (f *lfile) SetAttr(valid p9.SetAttrMask, attr p9.SetAttr) error {
	n, path := f.where()
	if valid.UID || valid.GID {
		return f.lc.fail("setattr", path, &fs.Error{Op: "setattr", Path: path, Kind: fs.Permission, Err: errors.New("files have no owners")})
	}
	var a fs.Attr
	if valid.Size {
		if attr.Size > 1<<62 {
			return f.lc.fail("setattr", path, &fs.Error{Op: "setattr", Path: path, Kind: fs.TooLarge})
		}
		size := int64(attr.Size)
		a.Size = &size
	}
	if valid.Permissions {
		mode := iofs.FileMode(attr.Permissions.Permissions()).Perm()
		a.Mode = &mode
	}
	if valid.MTime {
		t := time.Now()
		if valid.MTimeNotSystemTime {
			t = time.Unix(int64(attr.MTimeSeconds), int64(attr.MTimeNanoSeconds))
		}
		a.ModTime = &t
	}
	if a.Size == nil && a.Mode == nil && a.ModTime == nil {
		return nil
	}
	if err := n.SetAttr(f.lc.ctx, a); err != nil {
		return f.lc.fail("setattr", path, err)
	}
	return nil
}

// Linux open(2) flags as 9P2000.L sends them, whatever the local OS.
const (
	lOWRONLY = 0o1
	lORDWR   = 0o2
	lOCREAT  = 0o100
	lOEXCL   = 0o200
	lOTRUNC  = 0o1000
	lOAPPEND = 0o2000
)

func lflag(o p9.OpenFlags) fs.Flag {
	var fl fs.Flag
	switch o & p9.OpenFlagsModeMask {
	case lOWRONLY:
		fl = fs.WriteOnly
	case lORDWR:
		fl = fs.ReadWrite
	default:
		fl = fs.ReadOnly
	}
	if o&lOTRUNC != 0 {
		fl |= fs.Truncate
	}
	if o&lOAPPEND != 0 {
		fl |= fs.Append
	}
	if o&lOEXCL != 0 {
		fl |= fs.Excl
	}
	return fl
}

// Open implements p9.File. A directory has no handle: Readdir reads it.
// The iounit is 0, so clients use msize.
func (f *lfile) Open(mode p9.OpenFlags) (p9.QID, uint32, error) {
	n, path := f.where()
	info, err := n.Stat(f.lc.ctx)
	if err != nil {
		return p9.QID{}, 0, f.lc.fail("open", path, err)
	}
	switch n := n.(type) {
	case fs.Dir:
	case fs.File:
		if err := f.lc.open.acquire("open", path); err != nil {
			return p9.QID{}, 0, f.lc.fail("open", path, err)
		}
		h, err := n.Open(f.lc.ctx, lflag(mode))
		if err != nil {
			f.lc.open.release()
			return p9.QID{}, 0, f.lc.fail("open", path, err)
		}
		f.mu.Lock()
		f.h = f.lc.open.hold(h)
		f.mu.Unlock()
	default:
		return p9.QID{}, 0, f.lc.fail("open", path, &fs.Error{Op: "open", Path: path, Kind: fs.Unsupported})
	}
	return lqid(info, path), 0, nil
}

func (f *lfile) handle(op string) (fs.Handle, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.h == nil {
		if _, ok := f.node.(fs.Dir); ok {
			return nil, f.path, f.lc.fail(op, f.path, &fs.Error{Op: op, Path: f.path, Kind: fs.IsDir})
		}
		return nil, f.path, f.lc.fail(op, f.path, &fs.Error{Op: op, Path: f.path, Kind: fs.BadHandle})
	}
	return f.h, f.path, nil
}

// ReadAt implements p9.File. A short read with io.EOF is passed on as is:
// p9 sends the bytes read.
func (f *lfile) ReadAt(p []byte, off int64) (int, error) {
	h, path, err := f.handle("read")
	if err != nil {
		return 0, err
	}
	n, err := h.ReadAt(f.lc.ctx, p, off)
	if err != nil && !errors.Is(err, io.EOF) {
		if n > 0 {
			return n, nil // the error comes again with the next read
		}
		return 0, f.lc.fail("read", path, err)
	}
	return n, err
}

// WriteAt implements p9.File.
func (f *lfile) WriteAt(p []byte, off int64) (int, error) {
	h, path, err := f.handle("write")
	if err != nil {
		return 0, err
	}
	n, err := h.WriteAt(f.lc.ctx, p, off)
	if err != nil {
		if n > 0 {
			return n, nil // a short count tells the client; the error comes again
		}
		return 0, f.lc.fail("write", path, err)
	}
	return n, nil
}

// FSync implements p9.File: it acknowledges what was written.
func (f *lfile) FSync() error {
	f.mu.Lock()
	h, path := f.h, f.path
	f.mu.Unlock()
	if h == nil {
		return nil
	}
	if err := h.Sync(f.lc.ctx); err != nil {
		return f.lc.fail("fsync", path, err)
	}
	return nil
}

// Close implements p9.File. p9 calls it when the last reference to the
// fid goes (on Tclunk, or when the connection ends) and sends its error
// in the Rclunk: that is how a writer learns its data was not
// acknowledged.
func (f *lfile) Close() error {
	f.mu.Lock()
	h, path := f.h, f.path
	f.h, f.entries = nil, nil
	closed := f.closed
	f.closed = true
	f.mu.Unlock()
	if !closed {
		f.lc.fids.Add(-1)
	}
	if h == nil {
		return nil
	}
	if f.lc.ctx.Err() != nil {
		// The connection has ended: p9 closes what its client left
		// open. Nothing written through it was acknowledged.
		if err := abandon(f.lc.cctx, h); err != nil {
			return f.lc.fail("close at the connection's end", path, err)
		}
		return nil
	}
	if err := h.Close(f.lc.cctx); err != nil {
		return f.lc.fail("close", path, err)
	}
	return nil
}

func (f *lfile) dir(op string) (fs.Dir, string, error) {
	n, path := f.where()
	d, ok := n.(fs.Dir)
	if !ok {
		return nil, path, f.lc.fail(op, path, &fs.Error{Op: op, Path: path, Kind: fs.NotDir})
	}
	return d, path, nil
}

// Create implements p9.File.
func (f *lfile) Create(name string, flags p9.OpenFlags, perm p9.FileMode, _ p9.UID, _ p9.GID) (p9.File, p9.QID, uint32, error) {
	d, path, err := f.dir("create")
	if err != nil {
		return nil, p9.QID{}, 0, err
	}
	if err := fs.CheckName("create", name); err != nil {
		return nil, p9.QID{}, 0, f.lc.fail("create", path, err)
	}
	p := fs.Join(path, name)
	if err := f.lc.open.acquire("create", p); err != nil {
		return nil, p9.QID{}, 0, f.lc.fail("create", p, err)
	}
	nf, h, err := d.Create(f.lc.ctx, name, lflag(flags)|fs.CreateNew, iofs.FileMode(perm.Permissions()).Perm())
	if err != nil {
		f.lc.open.release()
		return nil, p9.QID{}, 0, f.lc.fail("create", p, err)
	}
	h = f.lc.open.hold(h)
	info, err := nf.Stat(f.lc.ctx)
	if err != nil {
		h.Close(f.lc.cctx)
		return nil, p9.QID{}, 0, f.lc.fail("create", p, err)
	}
	lf, err := f.lc.newFile("create", nf, p, h)
	if err != nil {
		h.Close(f.lc.cctx)
		return nil, p9.QID{}, 0, err
	}
	return lf, lqid(info, p), 0, nil
}

// Mkdir implements p9.File.
func (f *lfile) Mkdir(name string, perm p9.FileMode, _ p9.UID, _ p9.GID) (p9.QID, error) {
	d, path, err := f.dir("mkdir")
	if err != nil {
		return p9.QID{}, err
	}
	if err := fs.CheckName("mkdir", name); err != nil {
		return p9.QID{}, f.lc.fail("mkdir", path, err)
	}
	p := fs.Join(path, name)
	nd, err := d.Mkdir(f.lc.ctx, name, iofs.FileMode(perm.Permissions()).Perm())
	if err != nil {
		return p9.QID{}, f.lc.fail("mkdir", p, err)
	}
	info, err := nd.Stat(f.lc.ctx)
	if err != nil {
		return p9.QID{}, f.lc.fail("mkdir", p, err)
	}
	return lqid(info, p), nil
}

// Symlink, Link and Mknod: the tree has only files and directories.
func (f *lfile) Symlink(_, name string, _ p9.UID, _ p9.GID) (p9.QID, error) {
	_, path := f.where()
	return p9.QID{}, f.lc.fail("symlink", fs.Join(path, name), &fs.Error{Op: "symlink", Kind: fs.Unsupported})
}

func (f *lfile) Link(_ p9.File, name string) error {
	_, path := f.where()
	return f.lc.fail("link", fs.Join(path, name), &fs.Error{Op: "link", Kind: fs.Unsupported})
}

func (f *lfile) Mknod(name string, _ p9.FileMode, _, _ uint32, _ p9.UID, _ p9.GID) (p9.QID, error) {
	_, path := f.where()
	return p9.QID{}, f.lc.fail("mknod", fs.Join(path, name), &fs.Error{Op: "mknod", Kind: fs.Unsupported})
}

// RenameAt implements p9.File.
func (f *lfile) RenameAt(oldName string, newDir p9.File, newName string) error {
	d, path, err := f.dir("rename")
	if err != nil {
		return err
	}
	old := fs.Join(path, oldName)
	for _, name := range []string{oldName, newName} {
		if err := fs.CheckName("rename", name); err != nil {
			return f.lc.fail("rename", old, err)
		}
	}
	nf, ok := newDir.(*lfile)
	if !ok || nf.lc != f.lc {
		return f.lc.fail("rename", old, &fs.Error{Op: "rename", Path: old, Kind: fs.CrossDevice})
	}
	nd, _, err := nf.dir("rename")
	if err != nil {
		return err
	}
	if err := d.Rename(f.lc.ctx, oldName, nd, newName); err != nil {
		return f.lc.fail("rename", old, err)
	}
	return nil
}

// Rename implements p9.File. The p9 server never calls it (it calls
// RenameAt on the parent).
func (f *lfile) Rename(p9.File, string) error { return linux.ENOSYS }

// Renamed implements p9.File: the node was moved to newDir/newName. The
// node is looked up again where the tree supports it, so that trees whose
// nodes remember their path keep working.
func (f *lfile) Renamed(newDir p9.File, newName string) {
	nd, ok := newDir.(*lfile)
	if !ok {
		return
	}
	dn, dpath := nd.where()
	p := fs.Join(dpath, newName)
	var fresh fs.Node
	if d, ok := dn.(fs.Dir); ok {
		if n, err := d.Lookup(f.lc.ctx, newName); err == nil {
			fresh = n
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.path = p
	if fresh != nil {
		f.node = fresh
	}
}

// Linux unlinkat(2) flag for removing a directory.
const lATREMOVEDIR = 0x200

// UnlinkAt implements p9.File. Without AT_REMOVEDIR a directory is not
// removed (EISDIR), with it a file is not (ENOTDIR), as for unlinkat(2).
func (f *lfile) UnlinkAt(name string, flags uint32) error {
	d, path, err := f.dir("remove")
	if err != nil {
		return err
	}
	p := fs.Join(path, name)
	if err := fs.CheckName("remove", name); err != nil {
		return f.lc.fail("remove", p, err)
	}
	c, err := d.Lookup(f.lc.ctx, name)
	if err != nil {
		return f.lc.fail("remove", p, err)
	}
	_, isDir := c.(fs.Dir)
	switch {
	case flags&lATREMOVEDIR != 0 && !isDir:
		return f.lc.fail("remove", p, &fs.Error{Op: "remove", Path: p, Kind: fs.NotDir})
	case flags&lATREMOVEDIR == 0 && isDir:
		return f.lc.fail("remove", p, &fs.Error{Op: "remove", Path: p, Kind: fs.IsDir})
	}
	if err := d.Remove(f.lc.ctx, name); err != nil {
		return f.lc.fail("remove", p, err)
	}
	return nil
}

// ldirentSize is the encoded size of a dirent without its name.
const ldirentSize = 13 + 8 + 1 + 2

// Readdir implements p9.File. The listing is taken when offset is 0 and
// kept until the fid is closed; an entry's offset is its index in that
// listing plus one, so offsets stay valid while the directory changes.
// "." and ".." are not listed.
func (f *lfile) Readdir(offset uint64, count uint32) (p9.Dirents, error) {
	d, path, err := f.dir("readdir")
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	entries := f.entries
	f.mu.Unlock()
	if offset == 0 || entries == nil {
		entries, err = d.ReadDir(f.lc.ctx)
		if err != nil {
			return nil, f.lc.fail("readdir", path, err)
		}
		f.mu.Lock()
		f.entries = entries
		f.mu.Unlock()
	}
	var out p9.Dirents
	budget := int(count)
	for i := offset; i < uint64(len(entries)); i++ {
		e := entries[i]
		budget -= ldirentSize + len(e.Name)
		if budget < 0 {
			break
		}
		q := lqid(e, fs.Join(path, e.Name))
		out = append(out, p9.Dirent{QID: q, Offset: i + 1, Type: q.Type, Name: e.Name})
	}
	return out, nil
}

// StatFS implements p9.File. The tree reports no capacity; the numbers
// are those of an empty file system that accepts 255-byte names.
func (f *lfile) StatFS() (p9.FSStat, error) {
	return p9.FSStat{Type: lv9fsMagic, BlockSize: 4096, NameLength: fs.MaxNameLen}, nil
}

const lv9fsMagic = 0x01021997
