// Package ninep serves a tree (strata/fs) over 9P on one port, in both
// dialects: 9P2000.L through github.com/hugelgupf/p9, and 9P2000 (Plan 9
// style, also answering "9P2000.u") through the message codec of
// github.com/knusbaum/go9p under a server loop of ours. The first message of
// a connection must be a Tversion; its version string picks the dialect.
// Anything else gets Rversion "unknown" and the connection is closed.
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
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"strata/fs"
)

// Limits and defaults.
const (
	// MinMsize is the smallest msize a client may ask for: enough for any
	// message header, a 255-byte name and a stat entry.
	MinMsize = 1024
	// MaxMsizeL is the largest msize offered in 9P2000.L.
	MaxMsizeL = 4 << 20
	// MaxMsize9P is the largest msize offered in 9P2000 (the go9p codec
	// reads no larger message).
	MaxMsize9P = 65535
	// DefaultMaxOutstanding is how many requests one connection may have
	// in flight before the server stops reading from it.
	DefaultMaxOutstanding = 1024
	// DefaultHandshakeTimeout bounds the wait for the first message.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultWriteTimeout bounds how long a reply may make no progress
	// before the connection is dropped (a peer that stops reading).
	DefaultWriteTimeout = 30 * time.Second

	maxVersionFrame = 4 + 1 + 2 + 4 + 2 + 64 // a Tversion with a version string of up to 64 bytes
)

// Message types the router needs.
const (
	msgTversion = 100
	msgRversion = 101
	msgRlerror  = 7
	msgRerror   = 107
)

// Server serves trees over 9P. The zero value is not usable: set Attach.
type Server struct {
	// Attach returns the tree that a connection sees. The connection tells
	// who the peer is; a later error refuses the attach with its message.
	Attach func(ctx context.Context, conn net.Conn) (fs.Dir, error)
	// Log receives connection and error events; nil discards them.
	Log *slog.Logger
	// MaxOutstanding caps the requests in flight per connection
	// (DefaultMaxOutstanding if zero). Past it the server reads no more
	// from that connection until replies have gone out.
	MaxOutstanding int
	// HandshakeTimeout bounds the wait for the Tversion
	// (DefaultHandshakeTimeout if zero).
	HandshakeTimeout time.Duration
	// WriteTimeout bounds how long writing a reply may make no progress
	// (DefaultWriteTimeout if zero); past it the connection is closed.
	WriteTimeout time.Duration
	// MaxOpen caps the files one connection may have open at once
	// (DefaultMaxOpen if zero); an open past it fails with Busy.
	MaxOpen int
	// FrameTimeout bounds how long a message may take to arrive once its
	// first byte has (DefaultFrameTimeout if zero): a peer that trickles
	// a message in is dropped. Between messages a connection may idle.
	FrameTimeout time.Duration
	// MaxConnsPerPeer caps the connections one peer may have at once
	// (DefaultMaxConnsPerPeer if zero). A peer is the name its link
	// authenticated (a connection with a Peer method), else its IP
	// address. A connection past the cap gets an error for its Tversion
	// and is closed.
	MaxConnsPerPeer int

	mu    sync.Mutex
	peers map[string]int // connections per peer
	conns map[net.Conn]struct{}
	lns   map[net.Listener]struct{}
	wg    sync.WaitGroup
	done  bool
}

// NewServer returns a server that shows every connection the same tree.
func NewServer(root fs.Dir, log *slog.Logger) *Server {
	return &Server{
		Attach: func(context.Context, net.Conn) (fs.Dir, error) { return root, nil },
		Log:    log,
	}
}

func (s *Server) log() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

func (s *Server) maxOutstanding() int {
	if s.MaxOutstanding <= 0 {
		return DefaultMaxOutstanding
	}
	return s.MaxOutstanding
}

// attach returns the tree that the connection c sees: Attach is given the
// connection as accepted, so that it can tell who the peer is.
func (s *Server) attach(ctx context.Context, c net.Conn) (fs.Dir, error) {
	if pc, ok := c.(progressConn); ok {
		c = pc.Conn
	}
	if s.Attach == nil {
		return nil, &fs.Error{Op: "attach", Kind: fs.Unavailable, Err: errors.New("server has no tree")}
	}
	return s.Attach(ctx, c)
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("ninep: server closed")

// Serve accepts connections on ln until ctx ends or Shutdown is called,
// serving each on its own goroutine. It returns ErrServerClosed then.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if !s.track(ln, true) {
		ln.Close()
		return ErrServerClosed
	}
	defer s.track(ln, false)
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.closed() || ctx.Err() != nil {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log().Warn("accept failed; retrying", "err", err, "in", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("ninep: accept on %s: %w", ln.Addr(), err)
		}
		backoff = 0
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.ServeConn(ctx, c); err != nil {
				s.log().Debug("connection ended", "remote", c.RemoteAddr().String(), "err", err)
			}
		}()
	}
}

// Shutdown closes the listeners and every connection, then waits for the
// connection goroutines to end or ctx to expire.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.done = true
	for ln := range s.lns {
		ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	ch := make(chan struct{})
	go func() { s.wg.Wait(); close(ch) }()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Server) closed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.done
}

func (s *Server) track(x any, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add && s.done {
		return false
	}
	switch v := x.(type) {
	case net.Listener:
		if s.lns == nil {
			s.lns = map[net.Listener]struct{}{}
		}
		if add {
			s.lns[v] = struct{}{}
		} else {
			delete(s.lns, v)
		}
	case net.Conn:
		if s.conns == nil {
			s.conns = map[net.Conn]struct{}{}
		}
		if add {
			s.conns[v] = struct{}{}
		} else {
			delete(s.conns, v)
		}
	}
	return true
}

// tversion is a connection's first message, read and checked by the router.
type tversion struct {
	tag     uint16
	msize   uint32 // already clamped to the dialect's limits
	version string // the dialect's name: "9P2000.L" or "9P2000"
	asked   string // what the client asked for
}

// ServeConn serves one connection until it closes or ctx ends. It closes c.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) error {
	if !s.track(c, true) {
		c.Close()
		return ErrServerClosed
	}
	defer s.track(c, false)
	defer c.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()

	log := s.log().With("remote", c.RemoteAddr().String())
	timeout := s.HandshakeTimeout
	if timeout <= 0 {
		timeout = DefaultHandshakeTimeout
	}
	c.SetReadDeadline(time.Now().Add(timeout))
	r := bufio.NewReaderSize(c, 64<<10)
	tv, err := readTversion(r)
	if err != nil {
		var re *refusal
		if errors.As(err, &re) {
			log.Info("9P connection refused", "why", re.why)
			c.SetWriteDeadline(time.Now().Add(timeout))
			c.Write(re.reply)
		}
		return err
	}
	c.SetReadDeadline(time.Time{})
	peer := peerOf(c)
	if !s.admit(peer) {
		why := fmt.Sprintf("too many connections from %s: the cap is %d at once", peer, s.maxConnsPerPeer())
		log.Warn("9P connection refused", "why", why)
		reply := rerror(tv.tag, why)
		if tv.version == "9P2000.L" {
			reply = rlerror(tv.tag, uint32(syscall.EMFILE))
		}
		c.SetWriteDeadline(time.Now().Add(timeout))
		c.Write(reply)
		return &refusal{why: why, reply: reply}
	}
	defer s.leave(peer)
	wt := s.WriteTimeout
	if wt <= 0 {
		wt = DefaultWriteTimeout
	}
	c = progressConn{Conn: c, timeout: wt}
	log = log.With("dialect", tv.version, "msize", tv.msize)
	log.Debug("9P connection", "asked", tv.asked)
	switch tv.version {
	case "9P2000.L":
		return s.serve9P2000L(ctx, c, r, tv, log)
	default:
		return s.serve9P2000(ctx, c, r, tv, log)
	}
}

// DefaultFrameTimeout is how long a message may take to arrive once
// begun, unless Server.FrameTimeout says otherwise.
const DefaultFrameTimeout = 30 * time.Second

func (s *Server) frameTimeout() time.Duration {
	if s.FrameTimeout <= 0 {
		return DefaultFrameTimeout
	}
	return s.FrameTimeout
}

// frameClock bounds the arrival of one message on a connection: start
// when its first byte is in, stop when it is whole.
type frameClock struct {
	c       net.Conn
	timeout time.Duration
}

// begin waits, without a bound, for the first byte of the next message on
// r, then starts the clock.
// A clock without a connection (in tests of the framing) does nothing.
func (fc frameClock) begin(r *bufio.Reader) error {
	fc.set(time.Time{})
	if _, err := r.Peek(1); err != nil {
		return err
	}
	fc.set(time.Now().Add(fc.timeout))
	return nil
}

// end stops the clock: the message is in.
func (fc frameClock) end() { fc.set(time.Time{}) }

func (fc frameClock) set(t time.Time) {
	if fc.c != nil {
		fc.c.SetReadDeadline(t)
	}
}

// why explains a read that failed under the clock.
func (fc frameClock) why(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("a message took more than %s to arrive: %w", fc.timeout, err)
	}
	return err
}

// DefaultMaxConnsPerPeer is how many connections one peer may have at
// once unless Server.MaxConnsPerPeer says otherwise.
const DefaultMaxConnsPerPeer = 256

func (s *Server) maxConnsPerPeer() int {
	if s.MaxConnsPerPeer <= 0 {
		return DefaultMaxConnsPerPeer
	}
	return s.MaxConnsPerPeer
}

// peerOf names the peer of c: the name its link authenticated, or its IP
// address.
func peerOf(c net.Conn) string {
	if p, ok := c.(interface{ Peer() string }); ok {
		return p.Peer()
	}
	host, _, err := net.SplitHostPort(c.RemoteAddr().String())
	if err != nil {
		return c.RemoteAddr().String()
	}
	return host
}

// admit counts a connection of peer, unless it has its cap already.
func (s *Server) admit(peer string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.peers == nil {
		s.peers = map[string]int{}
	}
	if s.peers[peer] >= s.maxConnsPerPeer() {
		return false
	}
	s.peers[peer]++
	return true
}

func (s *Server) leave(peer string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.peers[peer]--; s.peers[peer] <= 0 {
		delete(s.peers, peer)
	}
}

// progressConn fails a write that makes too little progress: every
// timeout a write must move progressPiece bytes (or all it has left), so
// a slow but live reader is served and a reader that stopped is dropped.
// A write goes to the socket whole and only a late one is re-armed: one
// system call per reply, not one per piece, which is worth a sixth of the
// throughput of large reads.
type progressConn struct {
	net.Conn
	timeout time.Duration
}

const progressPiece = 256 << 10

func (c progressConn) Write(p []byte) (int, error) {
	done := 0
	for {
		left := len(p) - done
		c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
		n, err := c.Conn.Write(p[done:])
		done += n
		if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) || n < min(progressPiece, left) {
			return done, err
		}
	}
}

// refusal is a first message the router will not serve: reply is sent,
// then the connection is closed.
type refusal struct {
	why   string
	reply []byte
}

func (r *refusal) Error() string { return "ninep: refused: " + r.why }

// readTversion reads and checks the first frame. It never allocates more
// than maxVersionFrame bytes, whatever the frame claims.
func readTversion(r *bufio.Reader) (tversion, error) {
	var hdr [7]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return tversion{}, fmt.Errorf("ninep: reading the first message: %w", err)
	}
	size := binary.LittleEndian.Uint32(hdr[0:4])
	typ := hdr[4]
	tag := binary.LittleEndian.Uint16(hdr[5:7])
	unknown := func(why string) error {
		return &refusal{why: why, reply: rversion(tag, 0, "unknown")}
	}
	if typ != msgTversion {
		return tversion{}, unknown(fmt.Sprintf("first message is type %d, not Tversion", typ))
	}
	if size < 4+1+2+4+2 || size > maxVersionFrame {
		return tversion{}, unknown(fmt.Sprintf("Tversion of %d bytes", size))
	}
	body := make([]byte, size-7)
	if _, err := io.ReadFull(r, body); err != nil {
		return tversion{}, fmt.Errorf("ninep: reading Tversion: %w", err)
	}
	msize := binary.LittleEndian.Uint32(body[0:4])
	n := int(binary.LittleEndian.Uint16(body[4:6]))
	if 6+n != len(body) {
		return tversion{}, unknown("malformed Tversion")
	}
	asked := string(body[6:])
	tv := tversion{tag: tag, asked: asked}
	var max uint32
	switch {
	case asked == "9P2000.L" || strings.HasPrefix(asked, "9P2000.L."):
		// "9P2000.L.Google.N" is hugelgupf/p9's versioned 9P2000.L.
		tv.version, max = "9P2000.L", MaxMsizeL
	case asked == "9P2000" || strings.HasPrefix(asked, "9P2000."):
		// 9P2000.u and any other 9P2000 variant are answered as 9P2000.
		tv.version, max = "9P2000", MaxMsize9P
	default:
		return tversion{}, unknown(fmt.Sprintf("version %q", strings.ToValidUTF8(asked, "?")))
	}
	if msize < MinMsize {
		why := fmt.Sprintf("msize %d is below the minimum %d", msize, MinMsize)
		if tv.version == "9P2000.L" {
			return tversion{}, &refusal{why: why, reply: rlerror(tag, 22 /* EINVAL */)}
		}
		return tversion{}, &refusal{why: why, reply: rerror(tag, "ninep: "+why)}
	}
	tv.msize = min(msize, max)
	return tv, nil
}

func rversion(tag uint16, msize uint32, version string) []byte {
	b := make([]byte, 4+1+2+4+2+len(version))
	binary.LittleEndian.PutUint32(b[0:], uint32(len(b)))
	b[4] = msgRversion
	binary.LittleEndian.PutUint16(b[5:], tag)
	binary.LittleEndian.PutUint32(b[7:], msize)
	binary.LittleEndian.PutUint16(b[11:], uint16(len(version)))
	copy(b[13:], version)
	return b
}

func rerror(tag uint16, msg string) []byte {
	b := make([]byte, 4+1+2+2+len(msg))
	binary.LittleEndian.PutUint32(b[0:], uint32(len(b)))
	b[4] = msgRerror
	binary.LittleEndian.PutUint16(b[5:], tag)
	binary.LittleEndian.PutUint16(b[7:], uint16(len(msg)))
	copy(b[9:], msg)
	return b
}

func rlerror(tag uint16, errno uint32) []byte {
	b := make([]byte, 4+1+2+4)
	binary.LittleEndian.PutUint32(b[0:], uint32(len(b)))
	b[4] = msgRlerror
	binary.LittleEndian.PutUint16(b[5:], tag)
	binary.LittleEndian.PutUint32(b[7:], errno)
	return b
}
