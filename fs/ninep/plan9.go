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
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/knusbaum/go9p/proto"

	"strata/fs"
)

// The 9P2000 server: our own loop over the go9p codec.
//
// One reader goroutine per connection reads frames (plan9_guard.go),
// answers Tflush and Tversion itself, and starts one goroutine per other
// request. A connection has at most Server.MaxOutstanding requests in
// flight; past that the reader takes no further frame off the socket until
// a reply has gone out (backpressure, never a drop).
//
// Two locks order every reply: the tag lock (tmu) guards the table of
// requests in flight, the send lock (wmu) the socket. A reply takes tmu,
// checks that its request was not flushed, takes wmu, then lets go of tmu;
// Tflush takes the same two in the same order. So once Rflush(oldtag) is
// written no reply for oldtag can follow it, and a reply that won the race
// is on the wire before the Rflush. A change of state that a reply reports
// (a new fid, an open) is made under the tag lock too, and only if the
// reply goes out: a flushed request leaves no trace in the fid table.
//
// Requests run concurrently, but the changes to the fid table that a
// client may count on as soon as it has sent a request (a clunked fid is
// gone, a new fid number is taken) are made by the reader in arrival
// order, and a fid number is given back before the reply or Rflush that
// tells the client it is free.

const (
	// MaxFids9P caps the fids one 9P2000 connection may hold at once.
	MaxFids9P = 4096

	plan9NoFid       = ^uint32(0)
	plan9IOHdrSize   = 24 // IOHDRSZ: iounit = msize - IOHDRSZ
	plan9RreadHdr    = plan9HdrSize + 4
	plan9MaxEname    = 1024
	plan9MaxUname    = fs.MaxNameLen
	plan9DefaultUser = "strata"
	// plan9CloseTimeout bounds the closing of handles left open when a
	// connection ends.
	plan9CloseTimeout = 30 * time.Second
)

var errPlan9AuthNotRequired = errors.New("authentication not required")

type plan9Conn struct {
	srv    *Server
	nc     net.Conn
	r      *bufio.Reader
	log    *slog.Logger
	ctx    context.Context // canceled when the connection ends
	cancel context.CancelFunc
	msize  uint32 // changed only by the reader while no request is in flight

	slots chan struct{} // one token per request in flight
	wg    sync.WaitGroup

	tmu  sync.Mutex // the tag lock
	tags map[uint16]*plan9Req

	wmu  sync.Mutex // the send lock
	werr error

	fmu  sync.Mutex
	fids map[uint32]*plan9Fid

	openFiles *openFiles // the open handles, against Server.MaxOpen

	refused int // malformed frames answered with Rerror; reader only
}

// plan9Req is one request in flight.
type plan9Req struct {
	tag    uint16
	ctx    context.Context
	cancel context.CancelFunc
	done   bool      // answered or flushed: nothing more may be sent; under tmu
	newfid *plan9Fid // the fid number a Tattach or Twalk reserved; under tmu
}

// serve9P2000 serves a 9P2000 connection whose Tversion tv the router has read.
func (s *Server) serve9P2000(ctx context.Context, c net.Conn, r *bufio.Reader, tv tversion, log *slog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cn := &plan9Conn{
		srv:       s,
		nc:        c,
		r:         r,
		log:       log,
		ctx:       ctx,
		cancel:    cancel,
		msize:     tv.msize,
		slots:     make(chan struct{}, s.maxOutstanding()),
		tags:      map[uint16]*plan9Req{},
		fids:      map[uint32]*plan9Fid{},
		openFiles: &openFiles{max: s.maxOpen()},
	}
	cn.wmu.Lock()
	cn.writeLocked(rversion(tv.tag, tv.msize, "9P2000"))
	err := cn.werr
	cn.wmu.Unlock()
	if err == nil {
		err = cn.readLoop()
	}
	cn.end()
	return err
}

// readLoop reads and dispatches frames until the connection ends.
func (cn *plan9Conn) readLoop() error {
	buf := make([]byte, cn.msize)
	for {
		select {
		case cn.slots <- struct{}{}:
		case <-cn.ctx.Done():
			return cn.endErr(nil)
		}
		clock := frameClock{c: cn.nc, timeout: cn.srv.frameTimeout()}
		if err := clock.begin(cn.r); err != nil {
			<-cn.slots
			if err == io.EOF {
				err = nil
			}
			return cn.endErr(err)
		}
		frame, err := plan9ReadFrame(cn.r, buf, cn.msize)
		clock.end()
		if err != nil {
			err = clock.why(err)
			<-cn.slots
			var fe *plan9FrameError
			if errors.As(err, &fe) {
				cn.log.Info("9P2000 framing lost; closing the connection", "err", err)
				return err
			}
			if err == io.EOF {
				err = nil
			}
			return cn.endErr(err)
		}
		started, err := cn.dispatch(frame)
		if !started {
			<-cn.slots
		}
		if err != nil {
			return err
		}
	}
}

// endErr is what the loop returns when reading stops: a send failure or
// a cancellation explains a read error better than the read error itself.
func (cn *plan9Conn) endErr(readErr error) error {
	cn.wmu.Lock()
	werr := cn.werr
	cn.wmu.Unlock()
	switch {
	case werr != nil:
		return werr
	case cn.ctx.Err() != nil:
		return nil
	}
	return readErr
}

// dispatch handles one frame. It reports whether a request goroutine took
// over the reader's slot, and returns an error only when the connection
// must end.
func (cn *plan9Conn) dispatch(frame []byte) (bool, error) {
	typ, tag := frame[4], binary.LittleEndian.Uint16(frame[5:7])
	if err := plan9Check(frame); err != nil {
		cn.refused++
		cn.log.Debug("9P2000 malformed message refused", "type", typ, "tag", tag, "err", err)
		cn.sendError(tag, err)
		return false, nil
	}
	fc, err := plan9Parse(frame)
	if err != nil {
		cn.refused++
		cn.log.Warn("9P2000 message the guard passed failed to parse", "type", typ, "tag", tag, "err", err)
		cn.sendError(tag, err)
		return false, nil
	}
	switch m := fc.(type) {
	case *proto.TFlush:
		cn.flush(m)
		return false, nil
	case *proto.TRVersion:
		return false, cn.version(m)
	}
	req, err := cn.start(tag)
	if err != nil {
		cn.refused++
		cn.log.Debug("9P2000 request refused", "type", typ, "tag", tag, "err", err)
		cn.sendError(tag, err)
		return false, nil
	}
	f, reserved, err := cn.prepare(fc)
	if reserved {
		cn.tmu.Lock()
		req.newfid = f
		cn.tmu.Unlock()
	}
	cn.wg.Add(1)
	go cn.run(req, fc, f, err)
	return true, nil
}

// prepare makes, in the order requests arrive, the changes to the fid
// table that the client may count on as soon as it has sent a request:
// Tclunk and Tremove take their fid out at once, Tattach and Twalk take
// their new fid number at once (as lib9p does). A client may then reuse a
// clunked fid number before the Rclunk, as the 9fans client does, even
// though the requests run concurrently.
func (cn *plan9Conn) prepare(fc proto.FCall) (f *plan9Fid, reserved bool, err error) {
	switch m := fc.(type) {
	case *proto.TAttach:
		f, err = cn.reserve("attach", m.Fid)
		return f, err == nil, err
	case *proto.TWalk:
		if m.Newfid != m.Fid {
			f, err = cn.reserve("walk", m.Newfid)
			return f, err == nil, err
		}
	case *proto.TClunk:
		f, err = cn.take("clunk", m.Fid)
	case *proto.TRemove:
		f, err = cn.take("remove", m.Fid)
	}
	return f, false, err
}

// start registers a request under its tag.
func (cn *plan9Conn) start(tag uint16) (*plan9Req, error) {
	cn.tmu.Lock()
	defer cn.tmu.Unlock()
	if _, busy := cn.tags[tag]; busy {
		return nil, fmt.Errorf("tag %d is already in use by a request in flight", tag)
	}
	ctx, cancel := context.WithCancel(cn.ctx)
	req := &plan9Req{tag: tag, ctx: ctx, cancel: cancel}
	cn.tags[tag] = req
	return req, nil
}

// run handles one request on its own goroutine and gives its slot back.
// f and prepErr are what prepare said.
func (cn *plan9Conn) run(req *plan9Req, fc proto.FCall, f *plan9Fid, prepErr error) {
	defer cn.wg.Done()
	defer func() { <-cn.slots }()
	defer req.cancel()
	defer func() {
		if v := recover(); v != nil {
			cn.log.Error("9P2000 request handler panicked", "req", fc.String(), "panic", v, "stack", string(debug.Stack()))
			cn.respondError(req, fmt.Errorf("internal server error handling %s", plan9FcallName(fc)))
		}
	}()
	if cn.log.Enabled(req.ctx, slog.LevelDebug) {
		cn.log.Debug("9P2000 request", "req", fc.String())
	}
	err := prepErr
	if err == nil {
		err = cn.handle(req, fc, f)
	}
	if err != nil {
		if cn.log.Enabled(req.ctx, slog.LevelDebug) {
			cn.log.Debug("9P2000 request failed", "tag", req.tag, "err", err)
		}
		cn.respondError(req, err)
	}
}

// respond sends frame as the reply to req unless req was flushed. commit,
// if not nil, runs first under the tag lock: a change of state that must
// happen if and only if the reply goes out (a new fid, an open). It reports
// whether the reply was sent; when it was not, the caller undoes its work.
func (cn *plan9Conn) respond(req *plan9Req, frame []byte, commit func()) bool {
	cn.tmu.Lock()
	if req.done {
		cn.tmu.Unlock()
		return false
	}
	req.done = true
	if cn.tags[req.tag] == req {
		delete(cn.tags, req.tag)
	}
	if commit != nil {
		commit()
	}
	cn.wmu.Lock()
	cn.tmu.Unlock()
	cn.writeLocked(frame)
	cn.wmu.Unlock()
	return true
}

func (cn *plan9Conn) respondError(req *plan9Req, err error) {
	cn.respond(req, cn.rerror(req.tag, err), nil)
}

// sendError answers a frame that never became a request.
func (cn *plan9Conn) sendError(tag uint16, err error) {
	frame := cn.rerror(tag, err)
	cn.wmu.Lock()
	cn.writeLocked(frame)
	cn.wmu.Unlock()
}

func (cn *plan9Conn) rerror(tag uint16, err error) []byte {
	msg := err.Error()
	if max := min(plan9MaxEname, int(cn.msize)-plan9HdrSize-2); len(msg) > max {
		msg = strings.ToValidUTF8(msg[:max-3], "") + "..."
	}
	return (&proto.RError{Header: proto.Header{Type: proto.Rerror, Tag: tag}, Ename: msg}).Compose()
}

// writeLocked writes one frame; wmu must be held. After a failure nothing
// more is written and the connection is torn down.
func (cn *plan9Conn) writeLocked(frame []byte) {
	if cn.werr != nil {
		return
	}
	if _, err := cn.nc.Write(frame); err != nil {
		cn.werr = fmt.Errorf("ninep: 9P2000 send: %w", err)
		cn.cancel()
		cn.nc.Close()
	}
}

// flush answers Tflush: the request under oldtag, if still in flight, is
// canceled and will send nothing; then Rflush goes out.
func (cn *plan9Conn) flush(m *proto.TFlush) {
	cn.tmu.Lock()
	if _, busy := cn.tags[m.Tag]; busy {
		cn.tmu.Unlock()
		cn.sendError(m.Tag, fmt.Errorf("tag %d is already in use by a request in flight", m.Tag))
		return
	}
	if old := cn.tags[m.Oldtag]; old != nil {
		old.done = true
		old.cancel()
		delete(cn.tags, m.Oldtag)
		if old.newfid != nil {
			// The flushed request never happened: its fid number is free
			// as soon as the client has the Rflush.
			cn.drop(old.newfid)
		}
		if cn.log.Enabled(cn.ctx, slog.LevelDebug) {
			cn.log.Debug("9P2000 request flushed", "tag", m.Oldtag)
		}
	}
	cn.wmu.Lock()
	cn.tmu.Unlock()
	cn.writeLocked((&proto.RFlush{Header: proto.Header{Type: proto.Rflush, Tag: m.Tag}}).Compose())
	cn.wmu.Unlock()
}

// abortAll cancels every request in flight; none of them will answer.
func (cn *plan9Conn) abortAll() {
	cn.tmu.Lock()
	for tag, req := range cn.tags {
		req.done = true
		req.cancel()
		delete(cn.tags, tag)
	}
	cn.tmu.Unlock()
}

// version answers a Tversion in the middle of a connection: the session
// starts again, so every request is aborted and every fid clunked first.
func (cn *plan9Conn) version(m *proto.TRVersion) error {
	cn.abortAll()
	cn.wg.Wait()
	cn.clunkAll("Tversion")
	v := m.Version
	if v != "9P2000" && (!strings.HasPrefix(v, "9P2000.") || v == "9P2000.L" || strings.HasPrefix(v, "9P2000.L.")) {
		cn.log.Info("9P2000 Tversion for another protocol; closing", "version", strings.ToValidUTF8(v, "?"))
		cn.wmu.Lock()
		cn.writeLocked(rversion(m.Tag, 0, "unknown"))
		cn.wmu.Unlock()
		return fmt.Errorf("ninep: Tversion %q in a 9P2000 session", strings.ToValidUTF8(v, "?"))
	}
	if m.Msize < MinMsize {
		cn.sendError(m.Tag, fmt.Errorf("msize %d is below the minimum %d", m.Msize, MinMsize))
		return nil
	}
	cn.msize = min(m.Msize, cn.msize)
	cn.wmu.Lock()
	cn.writeLocked(rversion(m.Tag, cn.msize, "9P2000"))
	cn.wmu.Unlock()
	return nil
}

// end tears the connection down: every request is canceled and waited
// for, then every fid is clunked (handles closed, ORCLOSE files removed).
func (cn *plan9Conn) end() {
	if cn.refused > 0 {
		cn.log.Info("9P2000 connection sent malformed messages", "refused", cn.refused)
	}
	cn.cancel()
	cn.nc.Close()
	cn.abortAll()
	cn.wg.Wait()
	cn.clunkAll("connection end")
}

// clunkAll releases every fid. No request may be in flight.
func (cn *plan9Conn) clunkAll(why string) {
	cn.fmu.Lock()
	fids := cn.fids
	cn.fids = map[uint32]*plan9Fid{}
	cn.fmu.Unlock()
	if len(fids) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(cn.ctx), plan9CloseTimeout)
	defer cancel()
	for _, f := range fids {
		if f.reserved {
			continue
		}
		f.mu.Lock()
		err := f.release(ctx, true)
		f.mu.Unlock()
		if err != nil {
			cn.log.Warn("9P2000 fid released with an error", "why", why, "fid", f.num, "path", f.pathString(), "err", err)
		}
	}
}

func plan9FcallName(fc proto.FCall) string {
	s := fc.String()
	if i := strings.IndexByte(s, ':'); i > 0 {
		return s[:i]
	}
	return s
}
