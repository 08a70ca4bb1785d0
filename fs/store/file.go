package store

import (
	"context"
	"errors"
	"io"
	iofs "io/fs"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	"strata/fs"
)

// file is a regular file of the store.
type file struct{ *node }

// Open opens the file. With fs.Truncate (which needs write access) the
// Handle writes an atomic rewrite; otherwise it reads and writes in place.
// With fs.Append every write goes to the end, whatever its offset.
func (f *file) Open(ctx context.Context, flag fs.Flag) (fs.Handle, error) {
	const op = "open"
	s := f.s
	s.ns.RLock()
	defer s.ns.RUnlock()
	if err := f.ready(ctx, op); err != nil {
		return nil, err
	}
	if flag.Has(fs.CreateNew | fs.Excl) {
		return nil, &fs.Error{Op: op, Path: f.at.Path, Kind: fs.Exist}
	}
	h, err := f.open(op, flag&^(fs.CreateNew|fs.Excl))
	if err != nil {
		return nil, err
	}
	return h, nil
}

// open opens f. s.ns is held for reading.
func (f *file) open(op string, flag fs.Flag) (*handle, error) {
	s, p := f.s, f.at.Path
	if flag.Has(fs.Truncate) {
		if !flag.Writable() {
			return nil, &fs.Error{Op: op, Path: p, Kind: fs.Invalid, Err: errTruncRO}
		}
		// Open the file for writing, to be refused as that would be.
		probe, err := s.openFile(p, os.O_WRONLY)
		if err != nil {
			return nil, fail(op, p, err)
		}
		fi, err := probe.Stat()
		probe.Close()
		if err == nil && !fi.Mode().IsRegular() {
			err = notFile(op, p, fi)
		}
		if err != nil {
			return nil, fail(op, p, err)
		}
		return f.rewrite(op, fi, flag)
	}
	of, err := s.openFile(p, osFlag(flag))
	if err != nil {
		return nil, fail(op, p, err)
	}
	fi, err := of.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = notFile(op, p, fi)
	}
	if err != nil {
		of.Close()
		return nil, fail(op, p, err)
	}
	return s.newHandle(op, f.node, of, nil, flag)
}

// osFlag is the access and append part of flag, for os.OpenFile.
func osFlag(flag fs.Flag) int {
	f := int(flag.Access())
	if flag.Has(fs.Append) {
		f |= os.O_APPEND
	}
	return f
}

// rewrite starts an atomic rewrite of f: the Handle writes to a new
// temporary file beside it, with the permission bits (and, where allowed,
// the owner) that like describes. s.ns is held for reading.
func (f *file) rewrite(op string, like os.FileInfo, flag fs.Flag) (*handle, error) {
	s := f.s
	dp, _ := fs.Split(f.at.Path)
	var (
		tp  string
		t   diskFile
		err error
	)
	for range 8 {
		tp = fs.Join(dp, TempPrefix+strconv.FormatUint(rand.Uint64(), 36))
		t, err = s.disk.OpenFile(tp, osFlag(flag)|os.O_CREATE|os.O_EXCL, 0o600)
		if !errors.Is(err, iofs.ErrExist) {
			break
		}
	}
	if err == nil {
		if err = t.Chmod(like.Mode().Perm()); err != nil {
			t.Close()
			s.disk.Remove(tp)
		}
	}
	if err != nil {
		return nil, fail(op, f.at.Path, err)
	}
	if st, ok := like.Sys().(*syscall.Stat_t); ok {
		t.Chown(int(st.Uid), int(st.Gid)) // fails, harmlessly, without the privilege
	}
	h, err := s.newHandle(op, f.node, t, s.node(tp), flag)
	if err != nil {
		return nil, err
	}
	h.like = like
	return h, nil
}

// handle is an open file. mu is held for reading by ReadAt and WriteAt,
// and for writing by Sync and Close, which change f and tmp.
type handle struct {
	s    *Store
	n    *node // the file
	flag fs.Flag

	mu    sync.RWMutex
	f     diskFile    // nil once closed
	tmp   *node       // the temporary file of a pending rewrite, or nil
	like  os.FileInfo // the file as the rewrite found it
	dirty atomic.Bool // written since the last fsync
}

// newHandle returns a handle on f, writing to the temporary file tmp if
// that is not nil. If the store has closed, it closes f and removes tmp.
// s.ns is held for reading.
func (s *Store) newHandle(op string, n *node, f diskFile, tmp *node, flag fs.Flag) (*handle, error) {
	h := &handle{s: s, n: n, f: f, tmp: tmp, flag: flag}
	if !s.register(h) {
		h.dropTemp()
		f.Close()
		return nil, &fs.Error{Op: op, Path: n.at.Path, Kind: fs.BadHandle, Err: errClosed}
	}
	return h, nil
}

var errHandleClosed = errors.New("handle closed")

// usable reports why h cannot be used. h.mu is held.
func (h *handle) usable(ctx context.Context, op string) error {
	if h.f == nil {
		return &fs.Error{Op: op, Path: h.n.where(), Kind: fs.BadHandle, Err: errHandleClosed}
	}
	if err := ctx.Err(); err != nil {
		return fail(op, h.n.where(), err)
	}
	return nil
}

// ReadAt reads from the file at off. Reads through a Handle that is
// rewriting the file see what it wrote. At the end of the file it returns
// io.EOF, as io.ReaderAt does.
func (h *handle) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	const op = "read"
	h.mu.RLock()
	defer h.mu.RUnlock()
	if err := h.usable(ctx, op); err != nil {
		return 0, err
	}
	if !h.flag.Readable() {
		return 0, &fs.Error{Op: op, Path: h.n.where(), Kind: fs.BadHandle, Err: errNoRead}
	}
	if off < 0 {
		return 0, &fs.Error{Op: op, Path: h.n.where(), Kind: fs.Invalid, Err: errNegative}
	}
	n, err := h.f.ReadAt(p, off)
	if err != nil && err != io.EOF {
		err = fail(op, h.n.where(), err)
	}
	return n, err
}

// WriteAt writes to the file at off, or at its end if it was opened with
// fs.Append.
func (h *handle) WriteAt(ctx context.Context, p []byte, off int64) (int, error) {
	const op = "write"
	h.mu.RLock()
	defer h.mu.RUnlock()
	if err := h.usable(ctx, op); err != nil {
		return 0, err
	}
	if !h.flag.Writable() {
		return 0, &fs.Error{Op: op, Path: h.n.where(), Kind: fs.BadHandle, Err: errNoWrite}
	}
	if off < 0 {
		return 0, &fs.Error{Op: op, Path: h.n.where(), Kind: fs.Invalid, Err: errNegative}
	}
	h.dirty.Store(true)
	var (
		n   int
		err error
	)
	if h.flag.Has(fs.Append) {
		n, err = h.f.Write(p) // the descriptor has O_APPEND
	} else {
		n, err = h.f.WriteAt(p, off)
	}
	if err != nil {
		err = fail(op, h.n.where(), err)
	}
	return n, err
}

// Sync makes what was written durable. A pending rewrite replaces the file
// now, and the Handle writes in place from then on.
func (h *handle) Sync(ctx context.Context) error {
	const op = "sync"
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.usable(ctx, op); err != nil {
		return err
	}
	return h.commit(op)
}

// Close makes what was written durable, as Sync does, and closes the
// Handle. It does so even if ctx is done: a Close is never half done. If
// it fails, a pending rewrite is discarded and the file keeps its old
// content. A rewrite that wrote nothing, of a file that is empty and
// unchanged since it began (one that Create made), leaves the file in
// place, with its ID and times: it is what the rewrite would make it. A
// second Close fails with BadHandle.
func (h *handle) Close(context.Context) error {
	const op = "close"
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.usable(context.Background(), op); err != nil {
		return err
	}
	var err error
	if !h.idle() {
		err = h.commit(op)
	}
	if h.tmp != nil {
		h.s.ns.RLock()
		h.dropTemp()
		h.s.ns.RUnlock()
	}
	if cerr := h.f.Close(); err == nil && cerr != nil {
		err = fail(op, h.n.where(), cerr)
	}
	h.f = nil
	h.s.unregister(h)
	return err
}

// Abort implements fs.Aborter: it closes h without finishing a pending
// rewrite, whose temporary file is removed. Writes made in place are not
// undone. A second Close or Abort fails with BadHandle.
func (h *handle) Abort(context.Context) error {
	h.mu.Lock()
	closed := h.f == nil
	h.mu.Unlock()
	if closed {
		return &fs.Error{Op: "abort", Path: h.n.where(), Kind: fs.BadHandle, Err: errHandleClosed}
	}
	h.abandon()
	return nil
}

// Stat implements fs.HandleStater: it describes the file h has open, or,
// while h is rewriting the file, what it wrote so far.
func (h *handle) Stat(ctx context.Context) (fs.Info, error) {
	const op = "stat"
	h.mu.RLock()
	defer h.mu.RUnlock()
	if err := h.usable(ctx, op); err != nil {
		return fs.Info{}, err
	}
	fi, err := h.f.Stat()
	if err != nil {
		return fs.Info{}, fail(op, h.n.where(), err)
	}
	_, name := fs.Split(h.n.where())
	return info(name, fi), nil
}

// abandon closes h without making anything durable: a pending rewrite is
// discarded. h.mu and s.ns must not be held.
func (h *handle) abandon() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.f == nil {
		return
	}
	if h.tmp != nil {
		h.s.ns.RLock()
		h.dropTemp()
		h.s.ns.RUnlock()
	}
	h.f.Close()
	h.f = nil
	h.s.unregister(h)
}

// idle reports whether h is a rewrite that wrote nothing of a file that
// is empty and unchanged since the rewrite began (the file that Create
// made, say): the file is already what the rewrite would make it, and
// closing h leaves it as it is (the same file, with its ID and times)
// rather than put an empty copy in its place. h.mu is held for writing.
func (h *handle) idle() bool {
	if h.tmp == nil || h.like == nil || h.dirty.Load() || h.like.Size() != 0 {
		return false
	}
	s := h.s
	s.ns.RLock()
	defer s.ns.RUnlock()
	if h.n.at.Gone || h.tmp.at.Gone {
		return false
	}
	fi, err := s.disk.Lstat(h.n.at.Path)
	return err == nil && sameInode(fi, h.like) && fi.Size() == 0 &&
		fi.Mode() == h.like.Mode() && fi.ModTime().Equal(h.like.ModTime())
}

// sameInode reports whether a and b describe one inode.
func sameInode(a, b os.FileInfo) bool {
	sa, ok1 := a.Sys().(*syscall.Stat_t)
	sb, ok2 := b.Sys().(*syscall.Stat_t)
	return ok1 && ok2 && sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// commit fsyncs what was written and finishes a pending rewrite. h.mu is
// held for writing.
func (h *handle) commit(op string) error {
	if h.tmp == nil && !h.dirty.Load() {
		return nil
	}
	if err := h.f.Sync(); err != nil {
		return fail(op, h.n.where(), err)
	}
	h.dirty.Store(false)
	if h.tmp == nil {
		return nil
	}
	s := h.s
	s.ns.RLock()
	dirs, err := h.replace()
	p := h.n.at.Path
	s.ns.RUnlock()
	if err != nil {
		return fail(op, p, err)
	}
	if err := syncDirs(dirs); err != nil {
		return fail(op, p, err)
	}
	return nil
}

// replace renames the temporary file over the file and returns the
// directories to fsync: the file's, and the temporary file's if the file
// has moved to another directory since the rewrite began, for a rename is
// durable only once both directories it changes are. If the file was
// removed or replaced meanwhile, the rewrite is dropped: it lost to the
// later change. h.mu is held for writing, s.ns for reading.
func (h *handle) replace() ([]diskFile, error) {
	s := h.s
	tmp, target := h.tmp.at, h.n.at
	switch {
	case tmp.Gone: // removed with its directory
		h.tmp = nil
		return nil, nil
	case target.Gone:
		h.dropTemp()
		return nil, nil
	}
	dp, _ := fs.Split(target.Path)
	tp, _ := fs.Split(tmp.Path)
	dirs, err := s.openDirs(dp, tp)
	if err != nil {
		return nil, err
	}
	if err := s.disk.Rename(tmp.Path, target.Path); err != nil {
		for _, df := range dirs {
			df.Close()
		}
		return nil, err
	}
	s.retire(tmp)
	h.tmp = nil
	return dirs, nil
}

// dropTemp removes the temporary file of a pending rewrite. s.ns is held
// for reading, and h.mu for writing unless no one else has h yet.
func (h *handle) dropTemp() {
	if h.tmp == nil {
		return
	}
	s, tmp := h.s, h.tmp.at
	if !tmp.Gone {
		if err := s.disk.Remove(tmp.Path); err != nil && !errors.Is(err, iofs.ErrNotExist) {
			s.log.Warn("store: removing a temporary file", "path", tmp.Path, "err", err)
		}
		s.retire(tmp)
	}
	h.tmp = nil
}
