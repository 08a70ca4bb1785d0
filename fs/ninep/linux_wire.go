package ninep

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// The 9P2000.L connection is served by p9.Server.Handle, which reads T
// messages from an io.Reader and writes R messages to an io.Writer. These
// two wrappers sit between it and the connection and understand frames
// (size[4] type[1] tag[2] ...), which lets us
//
//   - replay the Tversion that the router has already read,
//   - answer Tauth ourselves (p9 answers ENOSYS, which diod's tools treat
//     as fatal; ENOENT means "no authentication needed"),
//   - close a connection whose frame is larger than msize before p9 tries
//     to allocate it,
//   - cap the requests in flight (Server.MaxOutstanding): p9 starts a
//     goroutine per request without limit.

const (
	lmsgTauth = 102

	lhdrLen = 7

	lENOENT = 2
)

// lwriter writes R messages to the connection. p9 writes one message
// as two or three Write calls (header, fixed part, payload), so the writer
// follows frame boundaries: it holds mu from a frame's first byte to its
// last, which lets inject put a whole frame of ours between two of p9's.
// Small parts are gathered and sent with the part that completes the frame,
// in one write when that part is small too: one packet per reply, where
// separate writes would cost a system call (and, through an encrypted
// link, a sealed record) each.
type lwriter struct {
	mu  sync.Mutex // held while a frame is in progress
	dst io.Writer

	// Used only by p9's sends, which p9 serializes.
	rem     int    // bytes of the current frame not yet seen
	hdr     []byte // the first bytes of a frame whose size is not yet known
	pending []byte // gathered small parts of the current frame
	vec     [2][]byte

	// Flow control: requests read but not yet answered.
	st          sync.Mutex
	cond        *sync.Cond
	outstanding int
	max         int
	err         error // sticky: the connection failed or was closed
}

// lgatherLimit is the largest part that is copied to be sent with the next
// one; larger parts go out directly.
const lgatherLimit = 16 << 10

func newLWriter(dst io.Writer, maxOutstanding int) *lwriter {
	w := &lwriter{dst: dst, max: maxOutstanding, pending: make([]byte, 0, 512)}
	w.cond = sync.NewCond(&w.st)
	return w
}

// Write implements io.Writer for p9's send.
func (w *lwriter) Write(p []byte) (int, error) {
	if err := w.failed(); err != nil {
		// The reply is dropped; it still counts as answered.
		w.abandon()
		w.answered()
		return 0, err
	}
	total := len(p)
	for len(p) > 0 {
		if w.rem == 0 && len(w.hdr) == 0 {
			// A new frame begins.
			w.mu.Lock()
		}
		if w.rem == 0 {
			// Learn the frame's size from its first four bytes.
			need := 4 - len(w.hdr)
			if len(p) < need {
				w.hdr = append(w.hdr, p...)
				return total, nil
			}
			w.hdr = append(w.hdr, p[:need]...)
			size := int(binary.LittleEndian.Uint32(w.hdr))
			if size < lhdrLen {
				err := fmt.Errorf("ninep: p9 wrote a frame of %d bytes", size)
				w.fail(err)
				w.hdr = w.hdr[:0]
				w.mu.Unlock()
				w.answered()
				return 0, err
			}
			w.pending = append(w.pending[:0], w.hdr...)
			w.hdr = w.hdr[:0]
			w.rem = size - 4
			p = p[need:]
			continue
		}
		n := min(len(p), w.rem)
		part := p[:n]
		p = p[n:]
		w.rem -= n
		if w.rem > 0 && n <= lgatherLimit {
			w.pending = append(w.pending, part...)
			continue
		}
		err := w.send(part)
		if err != nil {
			w.fail(err)
		}
		if w.rem == 0 || err != nil {
			w.rem = 0
			w.mu.Unlock()
			w.answered()
		}
		if err != nil {
			return total - len(p) - n, err
		}
	}
	return total, nil
}

// abandon drops the frame in progress, if any, after a failure.
func (w *lwriter) abandon() {
	if w.rem > 0 || len(w.hdr) > 0 {
		w.rem = 0
		w.hdr = w.hdr[:0]
		w.pending = w.pending[:0]
		w.mu.Unlock()
	}
}

// drain waits until every request read has been answered or dropped, or
// until timeout: a client that reused a tag in flight gets no answer to
// one of the two requests (p9 drops it), so the count may never reach 0.
func (w *lwriter) drain(timeout time.Duration) {
	expired := false
	t := time.AfterFunc(timeout, func() {
		w.st.Lock()
		expired = true
		w.st.Unlock()
		w.cond.Broadcast()
	})
	defer t.Stop()
	w.st.Lock()
	defer w.st.Unlock()
	for w.outstanding > 0 && !expired {
		w.cond.Wait()
	}
}

// send writes the gathered parts and part: a small part is copied after
// them, a large one is written from where it is.
func (w *lwriter) send(part []byte) error {
	var err error
	switch {
	case len(w.pending) == 0:
		_, err = w.dst.Write(part)
	case len(part) <= lgatherLimit:
		// One write, so one packet (or one sealed record) per reply.
		w.pending = append(w.pending, part...)
		_, err = w.dst.Write(w.pending)
	default:
		w.vec[0], w.vec[1] = w.pending, part
		bufs := net.Buffers(w.vec[:])
		_, err = bufs.WriteTo(w.dst)
		w.vec[0], w.vec[1] = nil, nil
	}
	w.pending = w.pending[:0]
	return err
}

// inject writes a whole frame of ours between p9's frames.
func (w *lwriter) inject(frame []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.failed(); err != nil {
		return err
	}
	if _, err := w.dst.Write(frame); err != nil {
		w.fail(err)
		return err
	}
	return nil
}

// Close implements io.Closer for p9; the router closes the connection.
func (w *lwriter) Close() error {
	w.fail(net.ErrClosed)
	return nil
}

func (w *lwriter) failed() error {
	w.st.Lock()
	defer w.st.Unlock()
	return w.err
}

func (w *lwriter) fail(err error) {
	w.st.Lock()
	if w.err == nil {
		w.err = err
	}
	w.st.Unlock()
	w.cond.Broadcast()
}

// answered records that a reply went out.
func (w *lwriter) answered() {
	w.st.Lock()
	if w.outstanding > 0 {
		w.outstanding--
	}
	w.st.Unlock()
	w.cond.Broadcast()
}

// admit waits until another request may be read.
func (w *lwriter) admit() error {
	w.st.Lock()
	defer w.st.Unlock()
	for w.outstanding >= w.max && w.err == nil {
		w.cond.Wait()
	}
	if w.err != nil {
		return w.err
	}
	w.outstanding++
	return nil
}

// lreader gives p9 the connection's T messages: first the replayed
// Tversion, then frames read from src as they arrive. It never buffers a
// whole frame: a 4 MiB Twrite streams through into p9's buffer.
type lreader struct {
	pre    []byte // the replayed Tversion, not yet read
	src    *bufio.Reader
	w      *lwriter
	msize  uint32
	log    *slog.Logger
	onFail func(error) // called once, with the error that ends reading
	clock  frameClock

	// Owned by p9's receiving goroutine (p9 serializes recv).
	rem      int  // bytes of the current frame not yet read
	admitted bool // the current frame counts as outstanding but is not all read
	err      error
}

func newLReader(first []byte, src *bufio.Reader, w *lwriter, msize uint32, log *slog.Logger, clock frameClock, onFail func(error)) *lreader {
	return &lreader{pre: first, src: src, w: w, msize: msize, log: log, clock: clock, onFail: onFail}
}

// errLFrameSize closes a connection that sent a frame p9 must not read.
var errLFrameSize = errors.New("frame size out of bounds")

// Read implements io.Reader for p9's recv.
func (r *lreader) Read(p []byte) (int, error) {
	if len(r.pre) > 0 {
		n := copy(p, r.pre)
		r.pre = r.pre[n:]
		return n, nil
	}
	if r.err != nil {
		return 0, r.err
	}
	if r.rem == 0 {
		if err := r.next(); err != nil {
			return 0, r.fail(err)
		}
	}
	if len(p) > r.rem {
		p = p[:r.rem]
	}
	n, err := r.src.Read(p)
	r.rem -= n
	if r.rem == 0 {
		r.admitted = false // p9 has the whole frame and will answer it
		r.clock.end()
	}
	if err != nil {
		return n, r.fail(r.clock.why(err))
	}
	return n, nil
}

// lquiesce is how long a failing read waits, after the last answer,
// before p9 sees the error. After reading a message, p9's server starts a
// new receiving goroutine if none is waiting, and that goroutine's first
// act is pendingWg.Add(1). Should that Add come while the connection's
// final pendingWg.Wait is under way, the WaitGroup panics ("reused before
// previous Wait has returned") and takes the process down; under -race it
// is reported as a race. While this read is in progress the count is at
// least one, so an Add now is harmless: the wait gives every goroutine p9
// has started time to make its Add.
const lquiesce = 20 * time.Millisecond

// ldrainTimeout bounds the wait for the answers still due when reading
// ends. Operations are canceled by then, so it is only reached when a
// client broke the protocol or a tree ignores cancellation.
const ldrainTimeout = 5 * time.Second

// fail ends reading: the operations still running are canceled, every
// request read is answered (or its answer dropped), and p9 is given the
// error only after lquiesce.
func (r *lreader) fail(err error) error {
	r.err = err
	if r.admitted {
		r.admitted = false
		r.w.answered() // p9 will not answer a frame it did not get whole
	}
	r.onFail(err)
	r.w.drain(ldrainTimeout)
	time.Sleep(lquiesce)
	return err
}

// next waits for room, then reads frame headers until one is for p9.
// Tauth frames are answered here and dropped.
func (r *lreader) next() error {
	if err := r.w.admit(); err != nil {
		return err
	}
	r.admitted = true
	for {
		if err := r.clock.begin(r.src); err != nil {
			return err
		}
		hdr, err := r.src.Peek(lhdrLen)
		if err != nil {
			return r.clock.why(err)
		}
		size := binary.LittleEndian.Uint32(hdr)
		typ := hdr[4]
		tag := binary.LittleEndian.Uint16(hdr[5:])
		if size < lhdrLen || size > r.msize {
			r.log.Info("9P2000.L connection closed: frame size out of bounds", "size", size, "type", typ, "msize", r.msize)
			return fmt.Errorf("ninep: %w: %d bytes, msize %d", errLFrameSize, size, r.msize)
		}
		switch typ {
		case lmsgTauth:
			if _, err := r.src.Discard(int(size)); err != nil {
				return r.clock.why(err)
			}
			r.log.Debug("Tauth answered ENOENT: no authentication needed", "tag", tag)
			if err := r.w.inject(rlerror(tag, lENOENT)); err != nil {
				return err
			}
			continue
		case msgTversion:
			// A later Tversion renegotiates; p9 answers it with
			// min(asked, its 4 MiB limit).
			if b, err := r.src.Peek(lhdrLen + 4); err == nil {
				r.msize = min(max(binary.LittleEndian.Uint32(b[lhdrLen:]), MinMsize), MaxMsizeL)
			}
		}
		r.rem = int(size)
		return nil
	}
}

// Close implements io.Closer for p9; the router closes the connection.
func (r *lreader) Close() error { return nil }

// ltversionFrame builds the Tversion that p9 is given to answer.
func ltversionFrame(tag uint16, msize uint32, version string) []byte {
	b := make([]byte, lhdrLen+4+2+len(version))
	binary.LittleEndian.PutUint32(b[0:], uint32(len(b)))
	b[4] = msgTversion
	binary.LittleEndian.PutUint16(b[5:], tag)
	binary.LittleEndian.PutUint32(b[7:], msize)
	binary.LittleEndian.PutUint16(b[11:], uint16(len(version)))
	copy(b[13:], version)
	return b
}

// watch fails w when ctx ends, so a reader waiting for room wakes up.
func (w *lwriter) watch(ctx context.Context) (stop func() bool) {
	return context.AfterFunc(ctx, func() { w.fail(context.Cause(ctx)) })
}
