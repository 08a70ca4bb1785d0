package fuse

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"syscall"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"

	"strata/fs"
)

// Flusher is implemented by an fs.Handle that has work to finish, and an
// error to report, when a descriptor of it is closed after writing: a ctl
// file runs its pending request. The mount calls Flush at a close(2) of a
// descriptor of the handle (of any dup of it, in any process that
// inherited it) if the handle was written since it was opened or since
// the previous Flush; close(2) returns after Flush, and fails with the
// errno of its error. Flush may run while other descriptors of the handle
// read and write. A handle without Flush is synced instead.
type Flusher interface {
	Flush(ctx context.Context) error
}

// Phases of a Stream handle, for its offsets.
const (
	phaseNone = iota
	phaseRead
	phaseWrite
)

// handle is one open(2): one fs.Handle.
type handle struct {
	m      *Mounted
	n      *node
	h      fs.Handle
	flag   fs.Flag
	stream bool // a Stream file: direct I/O, offsets per phase
	osync  bool // O_SYNC or O_DSYNC: sync after each write

	dirty atomic.Bool // written (or truncated) since the last flush or sync

	// rewrite: the handle writes a new content from nothing (O_TRUNC, or a
	// new file) that the tree may show only once it syncs; extent is how
	// far it has written so far (sent to the tree or not); hides: the
	// tree showed the old content after the O_TRUNC open. See
	// ident.overlay.
	rewrite atomic.Bool
	extent  atomic.Int64
	hides   bool

	wb *writeBehind // nil: each write is made before it is answered
	ra *readAhead   // nil: no read-ahead

	mu    sync.Mutex // guards phase and base
	phase int
	base  int64 // the kernel offset that is offset 0 of this phase

	wg      sync.WaitGroup // calls into the tree under way
	running atomic.Int32   // how many
	once    sync.Once      // Close
}

var (
	_ fusefs.FileReader   = (*handle)(nil)
	_ fusefs.FileWriter   = (*handle)(nil)
	_ fusefs.FileFlusher  = (*handle)(nil)
	_ fusefs.FileFsyncer  = (*handle)(nil)
	_ fusefs.FileReleaser = (*handle)(nil)
)

func (m *Mounted) newHandle(n *node, h fs.Handle, fl fs.Flag, flags uint32, stream, rewrite, hides bool) *handle {
	hd := &handle{
		m:      m,
		n:      n,
		h:      h,
		flag:   fl,
		stream: stream,
		osync:  flags&(syscall.O_SYNC|syscall.O_DSYNC) != 0,
		hides:  hides,
	}
	if rewrite && !stream && fl.Writable() {
		hd.rewrite.Store(true)
		n.id.addRewrite(hd)
	}
	if fl.Has(fs.Truncate) || flags&syscall.O_TRUNC != 0 {
		n.id.truncated(0, nil)
	}
	// Writes are made behind the requests where their order does not
	// matter to the tree and no one waits for each: not for a Stream
	// file (a write is a request, and its error is the request's), nor
	// with O_APPEND (the tree appends in the order it gets them), nor
	// with O_SYNC.
	if !stream && fl.Writable() && !fl.Has(fs.Append) && !hd.osync {
		hd.wb = newWriteBehind()
		n.id.addWriter(hd)
	}
	if !stream && fl.Readable() && m.attrTTL > 0 {
		hd.ra = &readAhead{h: hd, gen: n.id.content.Load()}
	}
	m.track(hd)
	return hd
}

// synced records that what h wrote is in the tree: a rewrite is done.
func (h *handle) synced() {
	if h.rewrite.Swap(false) {
		h.n.id.dropRewrite(h)
		// What other handles wrote went to the file replaced.
		h.n.id.truncated(0, h)
	}
}

// settle waits for the writes of h under way and returns the errno of
// one that failed, if any. A handle that writes as it is asked has none.
func (h *handle) settle(ctx context.Context) syscall.Errno {
	if h.wb == nil {
		return 0
	}
	return h.wb.settle(ctx)
}

// stater is h's fs.Handle as an fs.HandleStater, or nil if it cannot
// describe its file (or h is nil).
func (h *handle) stater() fs.HandleStater {
	if h == nil {
		return nil
	}
	hs, _ := h.h.(fs.HandleStater)
	return hs
}

func (h *handle) fuseFlags() uint32 {
	if h.stream {
		return gofuse.FOPEN_DIRECT_IO
	}
	return 0
}

// call runs f on the handle under the mount's bounds, counting it so that
// Close waits for calls left running.
func (h *handle) call(ctx context.Context, op string, f func(context.Context) error) (syscall.Errno, bool) {
	h.wg.Add(1)
	h.running.Add(1)
	return h.m.do(ctx, op, h.n.path, func(ctx context.Context) error {
		defer func() {
			h.running.Add(-1)
			h.wg.Done()
		}()
		return f(ctx)
	}, nil)
}

// offset maps the kernel's offset to the tree's: unchanged for a regular
// file; for a Stream file, counted from the first offset of the current
// run of reads or writes.
func (h *handle) offset(off int64, phase int) int64 {
	if !h.stream {
		return off
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.phase != phase || off < h.base {
		h.phase, h.base = phase, off
	}
	return off - h.base
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 128<<10); return &b }}

func getBuf(n int) *[]byte {
	bp := bufPool.Get().(*[]byte)
	if cap(*bp) < n {
		b := make([]byte, n)
		bp = &b
	}
	*bp = (*bp)[:n]
	return bp
}

// Read implements fusefs.FileReader. A regular file is read until dest is
// full or the file ends (a short read tells the kernel where the file
// ends), from what was read ahead as far as it goes; a Stream file
// answers with one ReadAt. A read waits for the writes under way on the
// file through the mount, so that it sees them.
func (h *handle) Read(ctx context.Context, dest []byte, off int64) (gofuse.ReadResult, syscall.Errno) {
	toff := h.offset(off, phaseRead)
	h.n.id.settleWriters(ctx)
	got := 0
	if h.ra != nil {
		if res := h.ra.read(ctx, len(dest), toff); res != nil {
			if res.eof || res.n == len(dest) {
				return res, 0
			}
			got = res.copyTo(dest)
			res.Done()
		}
	}
	bp := getBuf(len(dest) - got)
	buf := *bp
	var n int
	errno, finished := h.call(ctx, "read", func(ctx context.Context) error {
		var err error
		n, err = h.readAt(ctx, buf, toff+int64(got))
		return err
	})
	if !finished {
		return nil, errno // buf stays with the call left running
	}
	defer bufPool.Put(bp)
	if errno != 0 && got+n == 0 {
		return nil, errno
	}
	copy(dest[got:], buf[:n])
	if h.ra != nil && got == 0 && errno == 0 {
		h.ra.after(toff, n, len(dest))
	}
	return gofuse.ReadResultData(dest[:got+n]), 0
}

func (h *handle) readAt(ctx context.Context, buf []byte, off int64) (int, error) {
	done := 0
	for done < len(buf) {
		n, err := h.h.ReadAt(ctx, buf[done:], off+int64(done))
		done += n
		switch {
		case errors.Is(err, io.EOF):
			return done, nil
		case err != nil:
			if done > 0 {
				return done, nil // the error comes again at the next read
			}
			return 0, err
		case n == 0 || h.stream:
			return done, nil
		}
	}
	return done, nil
}

// Write implements fusefs.FileWriter. A write to a regular file (not
// O_APPEND, not O_SYNC) is answered once it is on its way to the tree:
// behindWrites of them at most are under way at once. One that fails
// fails the next write, flush, fsync and close of the handle, all of
// which wait for the writes under way; nothing written is acknowledged
// before a flush or fsync returns anyway.
func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if h.wb == nil {
		return h.writeNow(ctx, data, off)
	}
	end := off + int64(len(data))
	place, errno := h.wb.reserve(ctx, off, end)
	if errno != 0 {
		return 0, errno
	}
	bp := getBuf(len(data))
	buf := *bp
	copy(buf, data)
	h.dirty.Store(true)
	h.grow(end)
	h.n.id.changed()
	h.background("write", func(ctx context.Context) error {
		return h.writeAll(ctx, buf, off)
	}, func(errno syscall.Errno, finished bool) {
		if finished {
			bufPool.Put(bp)
		}
		h.wb.done(place, errno)
	})
	return uint32(len(data)), 0
}

// grow records that h has written up to end.
func (h *handle) grow(end int64) {
	for {
		e := h.extent.Load()
		if end <= e || h.extent.CompareAndSwap(e, end) {
			return
		}
	}
}

// writeAll writes buf at off, all of it or an error.
func (h *handle) writeAll(ctx context.Context, buf []byte, off int64) error {
	for n := 0; n < len(buf); {
		k, err := h.h.WriteAt(ctx, buf[n:], off+int64(n))
		n += k
		if err != nil {
			return err
		}
		if k == 0 {
			return &fs.Error{Op: "write", Path: h.n.path(), Kind: fs.IO, Err: io.ErrShortWrite}
		}
	}
	return nil
}

// writeNow makes a write before it answers it.
func (h *handle) writeNow(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	toff := h.offset(off, phaseWrite)
	bp := getBuf(len(data))
	buf := *bp
	copy(buf, data)
	h.dirty.Store(true)
	h.n.id.changed()
	var n int
	errno, finished := h.call(ctx, "write", func(ctx context.Context) error {
		for n < len(buf) {
			k, err := h.h.WriteAt(ctx, buf[n:], toff+int64(n))
			n += k
			if err != nil {
				return err
			}
			if k == 0 {
				return &fs.Error{Op: "write", Path: h.n.path(), Kind: fs.IO, Err: io.ErrShortWrite}
			}
		}
		if h.osync {
			return h.h.Sync(ctx)
		}
		return nil
	})
	if !finished {
		return 0, errno
	}
	bufPool.Put(bp)
	if n > 0 && h.rewrite.Load() {
		h.grow(toff + int64(n))
	}
	switch {
	case errno != 0 && (n == 0 || n == len(buf)):
		return 0, errno // nothing written, or written but not synced
	case errno != 0:
		return uint32(n), 0 // a short write: the error comes again
	case h.osync:
		h.synced()
	}
	return uint32(n), 0
}

// Flush implements fusefs.FileFlusher. If the handle was written since it
// was opened or last flushed or synced, it calls Flusher.Flush if the
// handle has it, else Sync. A flush with nothing written does nothing:
// a shell flushes every descriptor it redirects once before writing
// (when it closes the descriptor it dup'ed onto stdout), and that must not
// run an empty request or commit a rewrite that is still empty.
func (h *handle) Flush(ctx context.Context) syscall.Errno {
	if !h.dirty.Swap(false) {
		return 0
	}
	if errno := h.settle(ctx); errno != 0 {
		h.dirty.Store(true)
		return errno
	}
	if fl, ok := h.h.(Flusher); ok {
		// What is written next is a new request, from offset 0.
		h.mu.Lock()
		h.phase = phaseNone
		h.mu.Unlock()
		errno, _ := h.call(ctx, "flush", fl.Flush)
		return errno
	}
	errno := h.sync(ctx, "flush")
	if errno != 0 {
		h.dirty.Store(true)
	}
	return errno
}

// sync calls Sync for op, once the writes under way are made.
func (h *handle) sync(ctx context.Context, op string) syscall.Errno {
	if errno := h.settle(ctx); errno != 0 {
		return errno
	}
	errno, _ := h.call(ctx, op, h.h.Sync)
	if errno == 0 {
		h.synced()
	}
	return errno
}

// Fsync implements fusefs.FileFsyncer with Sync, once the writes under
// way through every handle of the file are made: fsync(2) makes the
// file's data durable, whichever descriptor wrote it.
func (h *handle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	h.n.id.settleWriters(ctx)
	dirty := h.dirty.Swap(false)
	errno := h.sync(ctx, "fsync")
	if errno != 0 && dirty {
		h.dirty.Store(true)
	}
	return errno
}

// Release implements fusefs.FileReleaser: it closes the fs.Handle, once
// every call on it has returned (go-fuse has waited for the requests; a
// call left running past its bound may not have). Nobody sees its error,
// so it is logged.
func (h *handle) Release(ctx context.Context) syscall.Errno {
	if h.m.untrack(h) {
		h.release()
	}
	return 0
}

// release closes the handle, now or once the calls left running on it
// have returned. Until the close is done, a stat or open of the node
// waits for it (ident.waitClosed), so that the next command sees what the
// close committed.
func (h *handle) release() {
	h.n.id.beginClose()
	if h.ra != nil {
		h.ra.stop()
	}
	if h.running.Load() == 0 {
		h.close()
		return
	}
	go func() {
		h.wg.Wait()
		h.close()
	}()
}

func (h *handle) close() {
	h.once.Do(func() {
		if h.wb != nil {
			if errno := h.wb.err(); errno != 0 {
				h.m.log.Warn("fuse: closing a handle after a write failed", "path", show(h.n.path()), "errno", errno.Error())
			}
		}
		h.m.do(context.Background(), "close", h.n.path, h.h.Close, nil)
		h.synced()
		h.n.id.dropWriter(h)
		h.n.id.endClose()
	})
}
