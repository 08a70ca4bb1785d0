package link

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"strata/fs"
)

const (
	sessionIDSize = 32
	// adSize is the associated data of a frame: session ID, direction,
	// sequence number, record type.
	adSize = sessionIDSize + 1 + 8 + 1

	dirClient byte = 'c' // frames the dialer sends
	dirServer byte = 's' // frames the acceptor sends

	// closeTimeout bounds how long Close waits to send the close frame.
	closeTimeout = 2 * time.Second
)

// Conn is an established link: a net.Conn whose bytes are sealed in AEAD
// frames. One goroutine may Read while another Writes; Close may be
// called from any goroutine, any number of times.
//
// Errors are *fs.Error values (Op "link read" or "link write", Path the
// peer's name) except for deadline timeouts, which are the underlying
// connection's error (a net.Error whose Timeout is true, matching
// os.ErrDeadlineExceeded). A Read that times out may be retried. A Write
// that times out after sending part of a frame breaks the link for
// writing, as in crypto/tls; one that sent nothing may be retried.
type Conn struct {
	conn   net.Conn
	sess   *session
	sid    [sessionIDSize]byte
	peer   string
	method Method
	keyID  uint32
	client bool

	rmu     sync.Mutex
	rr      *recordReader
	rseq    uint64
	rad     [adSize]byte
	pending []byte // plaintext of the last frame not yet returned; may alias rr's buffer
	rerr    error  // sticky: io.EOF after the close frame, or the fatal error

	wmu  sync.Mutex
	wseq uint64
	wad  [adSize]byte
	werr error  // sticky
	wbuf []byte // sealed frames on their way out; grows to one batch

	closed atomic.Bool
	fatal  atomic.Pointer[fs.Error] // why the link was torn down, if it was
}

func newConn(conn net.Conn, rr *recordReader, sess *session, sid [sessionIDSize]byte, client bool, peer string, m Method, keyID uint32) *Conn {
	c := &Conn{conn: conn, rr: rr, sess: sess, sid: sid, client: client, peer: peer, method: m, keyID: keyID}
	send, recv := dirServer, dirClient
	if client {
		send, recv = dirClient, dirServer
	}
	copy(c.wad[:], sid[:])
	c.wad[sessionIDSize] = send
	copy(c.rad[:], sid[:])
	c.rad[sessionIDSize] = recv
	return c
}

func setAD(ad *[adSize]byte, seq uint64, typ byte) []byte {
	binary.BigEndian.PutUint64(ad[sessionIDSize+1:], seq)
	ad[adSize-1] = typ
	return ad[:]
}

// Peer is the peer's name as proven by the handshake. On a link whose
// keyset is shared by every peer, the name is only as trustworthy as the
// peers holding the key.
func (c *Conn) Peer() string { return c.peer }

// Method is the link's AEAD method.
func (c *Conn) Method() Method { return c.method }

// SessionID is the hash of both hellos: unique to this session.
func (c *Conn) SessionID() []byte { return append([]byte(nil), c.sid[:]...) }

// KeyID is the ID of the keyset key this session's keys were derived from.
func (c *Conn) KeyID() uint32 { return c.keyID }

// LocalAddr is the underlying connection's local address.
func (c *Conn) LocalAddr() net.Addr { return c.conn.LocalAddr() }

// RemoteAddr is the underlying connection's remote address.
func (c *Conn) RemoteAddr() net.Addr { return c.conn.RemoteAddr() }

// SetDeadline sets the underlying connection's read and write deadlines.
func (c *Conn) SetDeadline(t time.Time) error { return c.conn.SetDeadline(t) }

// SetReadDeadline sets the underlying connection's read deadline.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.conn.SetReadDeadline(t) }

// SetWriteDeadline sets the underlying connection's write deadline.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.conn.SetWriteDeadline(t) }

// Read reads authenticated plaintext. It returns io.EOF only after the
// peer's close frame; every other end of the stream is an error.
func (c *Conn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.rerr == nil && c.closed.Load() {
		c.rerr = &fs.Error{Op: "link read", Path: c.peer, Kind: fs.BadHandle, Err: closedCause(c)}
	}
	if len(c.pending) == 0 && c.rerr != nil {
		return 0, c.rerr
	}
	n := 0
	for n < len(p) {
		if len(c.pending) > 0 {
			k := copy(p[n:], c.pending)
			c.pending = c.pending[k:]
			n += k
			continue
		}
		// Having returned something, decrypt only frames already here.
		if n > 0 && (c.rerr != nil || !c.rr.buffered()) {
			break
		}
		if n == 0 {
			if err := c.rr.ensure(maxFrameBody); err != nil {
				return 0, c.streamErr(err)
			}
		}
		if k := c.openBuffered(p[n:]); k > 0 {
			n += k
			continue
		}
		pt, direct, err := c.readFrame(p[n:])
		if err != nil {
			if n > 0 {
				break // the error (sticky, or a timeout) comes with the next call
			}
			return 0, err
		}
		if direct {
			n += len(pt)
		} else {
			c.pending = pt
		}
	}
	return n, nil
}

// readFrame reads and opens the next frame. If its plaintext fits in
// room, it is decrypted there (direct is true); else in the read buffer.
// Called with rmu held.
func (c *Conn) readFrame(room []byte) (pt []byte, direct bool, err error) {
	seq := c.rseq
	typ, body, err := c.rr.next(maxFrameBody)
	if err != nil {
		return nil, false, c.streamErr(err)
	}
	switch typ {
	case recData, recClose:
	case recRefusal:
		return nil, false, c.failRead(fs.Permission, &RefusedError{By: c.peerRole(), Reason: sanitize(body) + " (unauthenticated)"})
	default:
		return nil, false, c.failRead(fs.Invalid, fmt.Errorf("%w: frame %d has unknown type 0x%02x", ErrProtocol, seq, typ))
	}
	var dst []byte
	if c.sess.frames.maxPlain(body) <= len(room) {
		dst = room[:0:len(room)]
	}
	pt, err = c.sess.frames.open(dst, body, setAD(&c.rad, seq, typ))
	if err != nil {
		return nil, false, c.failRead(fs.IO, fmt.Errorf("frame %d %w", seq, ErrFrameAuth))
	}
	c.rseq++
	if typ == recClose {
		if len(pt) != 0 {
			return nil, false, c.failRead(fs.Invalid, fmt.Errorf("%w: close frame %d carries data", ErrProtocol, seq))
		}
		c.rerr = io.EOF
		return nil, false, io.EOF
	}
	if len(pt) == 0 {
		return nil, false, c.failRead(fs.Invalid, fmt.Errorf("%w: frame %d is empty", ErrProtocol, seq))
	}
	return pt, dst != nil, nil
}

// streamErr turns an error from reading the next frame into the error
// Read returns: a timeout as it is (nothing was consumed, so the caller
// may retry), anything else fatal. Called with rmu held.
func (c *Conn) streamErr(err error) error {
	seq := c.rseq
	var tl errRecordTooLong
	switch {
	case isTimeout(err) && !c.closed.Load():
		return err
	case c.closed.Load():
		return c.failRead(fs.BadHandle, closedCause(c))
	case errors.As(err, &tl):
		return c.failRead(fs.Invalid, fmt.Errorf("%w: frame %d: %v", ErrProtocol, seq, tl))
	case err == io.EOF:
		return c.failRead(fs.Unavailable, fmt.Errorf("%w: connection ended without close frame", ErrTruncated))
	case err == io.ErrUnexpectedEOF:
		return c.failRead(fs.Unavailable, fmt.Errorf("%w: connection ended inside frame %d", ErrTruncated, seq))
	default:
		return c.failRead(fs.Unavailable, fmt.Errorf("frame %d: %w", seq, err))
	}
}

// openBuffered opens the data frames already in the read buffer whose
// plaintexts fit in room one after another, several at a time, and
// returns how much plaintext it put in room. It stops before the first
// frame that fails to open, or that is not a non-empty data frame, and
// leaves that frame to readFrame, which reports it; so a frame is
// consumed, and its plaintext counted, only once it and every frame
// before it have been authenticated. It does nothing, returning 0,
// unless at least two frames qualify and they carry enough to be worth
// sharing out. Called with rmu held.
func (c *Conn) openBuffered(room []byte) int {
	ov := c.sess.frames.overhead()
	if ov < 0 {
		return 0
	}
	type frame struct {
		body []byte
		at   int // offset of its plaintext in room
		ok   bool
	}
	var batch [maxOpenBatch]frame
	count, off, used := 0, 0, 0
	for count < len(batch) {
		typ, body, size, ok := c.rr.peek(off)
		if !ok || typ != recData || len(body) <= ov || len(body) > maxFrameBody || len(body)-ov > len(room)-used {
			break
		}
		batch[count] = frame{body: body, at: used}
		count++
		used += len(body) - ov
		off += size
	}
	if count < 2 || used < minParallelOpen {
		return 0
	}
	seq0, ad0 := c.rseq, c.rad
	parallel(count, func(i int) {
		f := &batch[i]
		ad := ad0
		pt := room[f.at : f.at : f.at+len(f.body)-ov]
		pt, err := c.sess.frames.open(pt, f.body, setAD(&ad, seq0+uint64(i), recData))
		f.ok = err == nil && len(pt) == len(f.body)-ov
	})
	n, consumed := 0, 0
	for i := range count {
		f := &batch[i]
		if !f.ok {
			break
		}
		n += len(f.body) - ov
		consumed += headerSize + len(f.body)
		c.rseq++
	}
	clear(room[n:used]) // frames after one that failed: never returned
	c.rr.discard(consumed)
	return n
}

func (c *Conn) peerRole() string {
	if c.client {
		return "server"
	}
	return "client"
}

// failRead records a fatal read error and tears the link down.
func (c *Conn) failRead(kind fs.Kind, cause error) error {
	e := &fs.Error{Op: "link read", Path: c.peer, Kind: kind, Err: cause}
	c.rerr = e
	if c.closed.CompareAndSwap(false, true) {
		c.fatal.Store(e)
		c.conn.Close()
	}
	return e
}

// closedCause says why a closed link is closed.
func closedCause(c *Conn) error {
	if f := c.fatal.Load(); f != nil {
		return fmt.Errorf("link closed after an earlier error: %w", f.Err)
	}
	return fmt.Errorf("link is closed: %w", net.ErrClosed)
}

func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Write seals p into frames of at most MaxFramePayload bytes and sends
// them, up to writeBatch frames, sealed in parallel, to a system call.
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return 0, c.werr
	}
	n := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), writeBatch*MaxFramePayload)]
		seq0 := c.wseq
		buf, err := c.sealFrames(chunk)
		if err != nil {
			c.wseq = seq0
			c.werr = &fs.Error{Op: "link write", Path: c.peer, Kind: fs.Other, Err: err}
			return n, c.werr
		}
		w, err := c.conn.Write(buf)
		if err != nil {
			if w == 0 && isTimeout(err) && !c.closed.Load() {
				c.wseq = seq0 // nothing went out; the stream is intact
				return n, err
			}
			c.werr = c.writeErr(err)
			return n, c.werr
		}
		p = p[len(chunk):]
		n += len(chunk)
	}
	return n, nil
}

// sealFrames seals chunk as the next data frames, of MaxFramePayload
// bytes but the last, into c.wbuf and returns the records. If the
// ciphertext sizes are known in advance, each frame has its place in the
// buffer and the frames are sealed in parallel. Called with wmu held.
func (c *Conn) sealFrames(chunk []byte) ([]byte, error) {
	frames := (len(chunk) + MaxFramePayload - 1) / MaxFramePayload
	ov := c.sess.frames.overhead()
	need := len(chunk) + frames*(headerSize+max(ov, frameOverhead))
	if cap(c.wbuf) < need {
		c.wbuf = make([]byte, 0, max(need, min(2*cap(c.wbuf), maxWriteBuf)))
	}
	if ov < 0 || frames < 2 {
		buf := c.wbuf[:0]
		for off := 0; off < len(chunk); {
			k := min(len(chunk)-off, MaxFramePayload)
			h := len(buf)
			buf = append(buf, 0, 0, 0, 0)
			var err error
			buf, err = c.sess.frames.seal(buf, chunk[off:off+k], setAD(&c.wad, c.wseq, recData))
			if err != nil {
				return nil, err
			}
			putHeader(buf[h:], recData, len(buf)-h-headerSize)
			c.wseq++
			off += k
		}
		return buf, nil
	}
	buf := c.wbuf[:len(chunk)+frames*(headerSize+ov)]
	seq0, ad0 := c.wseq, c.wad
	errs := make([]error, frames)
	parallel(frames, func(i int) {
		off := i * MaxFramePayload
		pt := chunk[off:min(len(chunk), off+MaxFramePayload)]
		rec := buf[i*(headerSize+MaxFramePayload+ov):][:headerSize+len(pt)+ov]
		putHeader(rec, recData, len(rec)-headerSize)
		ad := ad0
		// The capacity is exactly the record's, so a seal that wrote
		// more than expected would move, not overwrite the next frame.
		ct, err := c.sess.frames.seal(rec[headerSize:headerSize:len(rec)], pt, setAD(&ad, seq0+uint64(i), recData))
		if err == nil && len(ct) != len(rec)-headerSize {
			err = fmt.Errorf("sealed frame is %d bytes, expected %d", len(ct), len(rec)-headerSize)
		}
		errs[i] = err
	})
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	c.wseq += uint64(frames)
	return buf, nil
}

func (c *Conn) writeErr(err error) error {
	switch {
	case c.closed.Load():
		return &fs.Error{Op: "link write", Path: c.peer, Kind: fs.BadHandle, Err: closedCause(c)}
	case isTimeout(err):
		return &fs.Error{Op: "link write", Path: c.peer, Kind: fs.Timeout,
			Err: fmt.Errorf("timed out inside a frame, the link is broken: %w", err)}
	default:
		return &fs.Error{Op: "link write", Path: c.peer, Kind: fs.Unavailable, Err: err}
	}
}

// sealRecord seals plaintext as the next frame of type typ with Tink's
// primitive and returns the whole record. Called with wmu held, or
// before the Conn is shared.
func (c *Conn) sealRecord(typ byte, plaintext []byte) ([]byte, error) {
	ct, err := c.sess.tink.Encrypt(plaintext, setAD(&c.wad, c.wseq, typ))
	if err != nil {
		return nil, err
	}
	c.wseq++
	return appendRecord(make([]byte, 0, headerSize+len(ct)), typ, ct), nil
}

// openRecord opens body as the next frame of type typ with Tink's
// primitive. Called with rmu held, or before the Conn is shared.
func (c *Conn) openRecord(typ byte, body []byte) ([]byte, error) {
	pt, err := c.sess.tink.Decrypt(body, setAD(&c.rad, c.rseq, typ))
	if err != nil {
		return nil, err
	}
	c.rseq++
	return pt, nil
}

// Close sends the authenticated close frame (waiting at most two seconds
// for the connection to take it) and closes the connection. Only the
// first call does anything; later calls return nil.
func (c *Conn) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return nil
	}
	c.conn.SetWriteDeadline(time.Now().Add(closeTimeout))
	c.wmu.Lock()
	if c.werr == nil {
		if rec, err := c.sealRecord(recClose, []byte{}); err == nil {
			c.conn.Write(rec)
		}
		c.werr = &fs.Error{Op: "link write", Path: c.peer, Kind: fs.BadHandle, Err: closedCause(c)}
	}
	c.wmu.Unlock()
	if err := c.conn.Close(); err != nil {
		return &fs.Error{Op: "link close", Path: c.peer, Kind: fs.Other, Err: err}
	}
	return nil
}
