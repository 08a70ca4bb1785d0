package fuse

import (
	"context"
	"errors"
	"io"
	"sync"
	"syscall"
	"time"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
)

// Read-ahead and write-behind for regular files. Every FUSE request is one
// call into the tree, and for a remote tree one round trip; the kernel
// reads ahead little (128 KiB by default, 1 MiB where the mount may set
// it) and sends the writes of a file one at a time, each waiting for its
// answer. So a handle keeps a few calls in flight itself: reads of what a
// sequential reader will ask for next, and the writes it has been sent.
const (
	// aheadChunk is the size of one read ahead: one call into the tree
	// (one Tread, for a remote tree).
	aheadChunk = 1 << 20
	// aheadChunks bounds the chunks a handle holds, read or being read:
	// aheadChunks*aheadChunk bytes at most.
	aheadChunks = 4
	// aheadAfter is how many reads in a row must follow each other before
	// a handle reads ahead.
	aheadAfter = 2
	// aheadSlack is how far from the end of the reads so far a read may
	// start and still count as sequential: the kernel sends its own
	// read-ahead alongside the read that asked for it, and they may
	// arrive in either order.
	aheadSlack = 512 << 10
	// aheadBudget bounds the read-ahead memory of a mount, over all its
	// handles; past it, handles read as they are asked.
	aheadBudget = 256 << 20

	// behindWrites bounds the writes of a handle under way at once; a
	// write beyond waits for one to finish. With the largest FUSE write
	// (MaxWrite), a handle holds at most behindWrites MiB of them.
	behindWrites = 4
	// maxWrite is the largest FUSE read or write the kernel is asked to
	// send (go-fuse's MaxWrite).
	maxWrite = 1 << 20
)

// chunkPool holds the buffers of read-ahead chunks.
var chunkPool = sync.Pool{New: func() any { b := make([]byte, aheadChunk); return &b }}

// readAhead is a handle's read-ahead: once reads follow each other, the
// chunks after them are read in the background, aheadChunks at most, and
// reads inside them are answered from memory. Chunks are dropped when the
// reads stop following them, when the file is written or truncated
// through the mount (ident.content changes), and when they are older than the
// mount's attribute timeout, which bounds how long a change behind the
// mount goes unseen, as for the kernel's own cache.
type readAhead struct {
	h *handle

	mu      sync.Mutex
	chunks  []*chunk // in offset order
	fetch   int64    // where the next chunk starts
	end     int64    // the end of the reads so far
	streak  int      // reads in a row that followed each other
	gen     uint64   // the ident's generation the chunks were read in
	stopped bool     // the handle is closing
}

// chunk is one read ahead. refs counts who holds buf: the list, the call
// reading into it, and readers copying from it; the last one gives buf
// back, unless the call was abandoned (it may still write to buf).
type chunk struct {
	off  int64
	bp   *[]byte
	done chan struct{} // closed when n and err are set
	n    int           // bytes read; fewer than aheadChunk at the end of the file
	err  bool          // the read failed: the reader asks the tree itself
	at   time.Time     // when the read finished
	gen  uint64        // the ident's generation when the read began
	refs int           // guarded by readAhead.mu
	lost bool          // the call was abandoned and keeps buf
}

func (r *readAhead) unref(c *chunk) {
	c.refs--
	if c.refs == 0 && !c.lost {
		chunkPool.Put(c.bp)
		r.h.m.ahead.Add(-aheadChunk)
	}
}

// dropLocked forgets every chunk. r.mu is held.
func (r *readAhead) dropLocked() {
	for _, c := range r.chunks {
		r.unref(c)
	}
	clear(r.chunks)
	r.chunks = r.chunks[:0]
	r.streak = 0
}

// stop drops the chunks and reads no more ahead: the handle is closing.
func (r *readAhead) stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopped = true
	r.dropLocked()
}

// fresh drops the chunks if the file changed through the mount since they
// were read, or they are too old. r.mu is held.
func (r *readAhead) fresh() {
	gen := r.h.n.id.content.Load()
	if gen != r.gen {
		r.dropLocked()
		r.gen = gen
		return
	}
	if len(r.chunks) > 0 {
		c := r.chunks[0]
		select {
		case <-c.done:
			if time.Since(c.at) > r.h.m.attrTTL {
				r.dropLocked()
			}
		default:
		}
	}
}

// find returns the chunk that holds off, if any. r.mu is held.
func (r *readAhead) find(off int64) *chunk {
	for _, c := range r.chunks {
		if c.off <= off && off < c.off+aheadChunk {
			return c
		}
	}
	return nil
}

// read answers a read of want bytes at off from the chunks, as far as
// they hold it: a result of res.n bytes, res.eof if the file ends there,
// or nil if they do not hold off. The result holds the chunks it shows
// until its Done. The caller reads the rest from the tree, and calls
// after if it read all of it.
func (r *readAhead) read(ctx context.Context, want int, off int64) *aheadResult {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fresh()
	res := &aheadResult{r: r}
	for res.n < want && !res.eof {
		at := off + int64(res.n)
		c := r.find(at)
		if c == nil {
			break
		}
		c.refs++
		r.mu.Unlock()
		select {
		case <-c.done:
		case <-ctx.Done():
		}
		r.mu.Lock()
		ok := false
		select {
		case <-c.done:
			ok = !c.err && c.gen == r.gen
		default:
		}
		if !ok {
			r.unref(c)
			r.dropLocked()
			break
		}
		k := 0
		if pos := int(at - c.off); pos < c.n {
			k = min(c.n-pos, want-res.n)
			res.held = append(res.held, c)
			res.vecs = append(res.vecs, (*c.bp)[pos:pos+k])
		} else {
			r.unref(c)
		}
		res.n += k
		res.eof = c.n < aheadChunk && at+int64(k) >= c.off+int64(c.n)
		if k == 0 && !res.eof {
			break
		}
	}
	if res.n == 0 && !res.eof {
		return nil
	}
	r.advance(off, res.n)
	return res
}

// aheadResult is a read answered from chunks: go-fuse writes them to the
// kernel as they are (writev), and calls Done once it has.
type aheadResult struct {
	r    *readAhead
	held []*chunk
	vecs [][]byte
	n    int
	eof  bool
}

var _ gofuse.ReadResult = (*aheadResult)(nil)

// Slices returns the bytes of the result, in the chunks: go-fuse writes
// them with writev (its withSlice).
func (a *aheadResult) Slices() ([][]byte, gofuse.Status) { return a.vecs, gofuse.OK }

// Bytes implements gofuse.ReadResult.
func (a *aheadResult) Bytes(buf []byte) ([]byte, gofuse.Status) {
	if len(a.vecs) == 1 {
		return a.vecs[0], gofuse.OK
	}
	return buf[:a.copyTo(buf)], gofuse.OK
}

// copyTo copies the bytes of the result to buf.
func (a *aheadResult) copyTo(buf []byte) int {
	n := 0
	for _, v := range a.vecs {
		n += copy(buf[n:], v)
	}
	return n
}

// Size implements gofuse.ReadResult.
func (a *aheadResult) Size() int { return a.n }

// Done implements gofuse.ReadResult: the chunks are free.
func (a *aheadResult) Done() {
	a.r.mu.Lock()
	defer a.r.mu.Unlock()
	for _, c := range a.held {
		a.r.unref(c)
	}
	a.held, a.vecs = nil, nil
}

// after records a read of want bytes at off that the tree answered with
// n bytes, and reads ahead if the reads follow each other.
func (r *readAhead) after(off int64, n, want int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fresh()
	if off < r.end-aheadSlack || off > r.end+aheadSlack {
		r.dropLocked()
	}
	r.streak++
	if n < want {
		r.end = max(r.end, off+int64(n))
		return // the end of the file: nothing to read ahead
	}
	if len(r.chunks) == 0 {
		r.fetch = off + int64(n)
	}
	r.advance(off, n)
}

// advance records a read of n bytes at off, drops the chunks before it
// and starts reading the next ones. r.mu is held.
func (r *readAhead) advance(off int64, n int) {
	r.end = max(r.end, off+int64(n))
	keep := r.chunks[:0]
	for _, c := range r.chunks {
		if c.off+aheadChunk <= off-aheadSlack {
			r.unref(c)
			continue
		}
		keep = append(keep, c)
	}
	clear(r.chunks[len(keep):])
	r.chunks = keep
	if r.streak < aheadAfter || r.stopped {
		return
	}
	for len(r.chunks) < aheadChunks {
		if last := len(r.chunks); last > 0 {
			c := r.chunks[last-1]
			select {
			case <-c.done:
				if c.n < aheadChunk {
					return // it reached the end of the file
				}
			default:
			}
		}
		if r.fetch < off {
			r.fetch = off + int64(n) // the reads have overtaken the chunks
		}
		if !r.start(r.fetch) {
			return
		}
		r.fetch += aheadChunk
	}
}

// start reads the chunk at off in the background. r.mu is held.
func (r *readAhead) start(off int64) bool {
	m := r.h.m
	if m.ahead.Add(aheadChunk) > aheadBudget {
		m.ahead.Add(-aheadChunk)
		return false
	}
	c := &chunk{off: off, bp: chunkPool.Get().(*[]byte), done: make(chan struct{}), gen: r.gen, refs: 2}
	r.chunks = append(r.chunks, c)
	h := r.h
	var n int
	h.background("read ahead", func(ctx context.Context) error {
		var err error
		n, err = h.readChunk(ctx, *c.bp, off)
		return err
	}, func(errno syscall.Errno, finished bool) {
		r.mu.Lock()
		defer r.mu.Unlock()
		c.err, c.at = errno != 0 || !finished, time.Now()
		if finished {
			c.n = n
		} else {
			// The call, still running, keeps the buffer; the mount's
			// budget does not.
			c.lost = true
			m.ahead.Add(-aheadChunk)
		}
		close(c.done)
		r.unref(c)
	})
	return true
}

// readChunk fills buf from off, up to the end of the file: a short count
// is the end of the file, never a failure part way.
func (h *handle) readChunk(ctx context.Context, buf []byte, off int64) (int, error) {
	done := 0
	for done < len(buf) {
		n, err := h.h.ReadAt(ctx, buf[done:], off+int64(done))
		done += n
		switch {
		case errors.Is(err, io.EOF):
			return done, nil
		case err != nil:
			return done, err
		case n == 0:
			return done, nil
		}
	}
	return done, nil
}

// writeBehind is a handle's writes under way: a write is answered once it
// is sent to the tree, behindWrites at most at once; one that overlaps a
// write under way waits for it, so that the last write of a byte wins.
// The first failure is kept and fails every later write, flush and fsync
// of the handle; settle waits for the writes and returns it.
type writeBehind struct {
	mu      sync.Mutex
	ranges  map[*[2]int64]struct{} // the writes under way: [off, end)
	changed chan struct{}          // closed and replaced when one ends
	failed  syscall.Errno          // the first failure
}

func newWriteBehind() *writeBehind {
	return &writeBehind{ranges: map[*[2]int64]struct{}{}, changed: make(chan struct{})}
}

// reserve waits until [off, end) can be written: fewer than behindWrites
// writes under way and none overlapping it. It returns the place to give
// to done, or the errno of an earlier failure, or EINTR if ctx ends first.
func (w *writeBehind) reserve(ctx context.Context, off, end int64) (*[2]int64, syscall.Errno) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for {
		if w.failed != 0 {
			return nil, w.failed
		}
		free := len(w.ranges) < behindWrites
		for r := range w.ranges {
			if free && r[0] < end && off < r[1] {
				free = false
			}
		}
		if free {
			r := &[2]int64{off, end}
			w.ranges[r] = struct{}{}
			return r, 0
		}
		ch := w.changed
		w.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			w.mu.Lock()
			return nil, syscall.EINTR
		}
		w.mu.Lock()
	}
}

// done ends the write at r, which failed with errno if it is not 0.
func (w *writeBehind) done(r *[2]int64, errno syscall.Errno) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.ranges, r)
	if errno != 0 && w.failed == 0 {
		w.failed = errno
	}
	close(w.changed)
	w.changed = make(chan struct{})
}

// wait waits until no write is under way, or ctx ends.
func (w *writeBehind) wait(ctx context.Context) {
	w.mu.Lock()
	for len(w.ranges) > 0 {
		ch := w.changed
		w.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return
		}
		w.mu.Lock()
	}
	w.mu.Unlock()
}

// settle waits for the writes under way and returns the errno of the
// first write that failed, if any; EINTR if ctx ends first.
func (w *writeBehind) settle(ctx context.Context) syscall.Errno {
	w.wait(ctx)
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.ranges) > 0 {
		return syscall.EINTR
	}
	return w.failed
}

// err is the errno of the first write that failed, if any.
func (w *writeBehind) err() syscall.Errno {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.failed
}

// background runs f as a call on the handle that no request waits for
// (see Mounted.doBehind), and then done with its errno and whether it
// finished (if not, f is left running, past its bound). Close waits for
// it, as for any call on the handle.
func (h *handle) background(op string, f func(context.Context) error, done func(errno syscall.Errno, finished bool)) {
	h.wg.Add(1)
	h.running.Add(1)
	go func() {
		errno, finished := h.m.doBehind(op, h.n.path, func(ctx context.Context) error {
			defer func() {
				h.running.Add(-1)
				h.wg.Done()
			}()
			return f(ctx)
		})
		done(errno, finished)
	}()
}
