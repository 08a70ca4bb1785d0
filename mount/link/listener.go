package link

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	"strata/fs"
)

const (
	// defaultHandshakeTimeout bounds a handshake when nothing else does.
	defaultHandshakeTimeout = 10 * time.Second

	// maxPendingHandshakes bounds the handshakes a Listener runs at once;
	// beyond it, accepting waits.
	maxPendingHandshakes = 256
)

// listener accepts connections from an inner listener and hands out the
// ones whose handshake succeeded.
type listener struct {
	inner   net.Listener
	cfg     ServerConfig
	log     *slog.Logger
	timeout time.Duration

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	conns  chan *Conn
	sem    chan struct{}
	failed chan struct{} // closed when the accept loop stopped on an error
	err    error         // that error; written before failed is closed
	once   sync.Once
	wg     sync.WaitGroup
}

// NewListener wraps inner so that Accept returns links (*Conn values)
// whose handshake, as cfg's server, has succeeded. Each connection's
// handshake runs in its own goroutine, bounded by cfg.HandshakeTimeout,
// so a slow peer does not hold up Accept. A failed handshake is logged to
// log (nil discards) and the connection dropped. Close closes inner and
// waits for the pending handshakes to end.
func NewListener(inner net.Listener, cfg ServerConfig, log *slog.Logger) net.Listener {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l := &listener{
		inner:   inner,
		cfg:     cfg,
		log:     log,
		timeout: cfg.HandshakeTimeout,
		conns:   make(chan *Conn),
		sem:     make(chan struct{}, maxPendingHandshakes),
		failed:  make(chan struct{}),
	}
	if l.timeout <= 0 {
		l.timeout = defaultHandshakeTimeout
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	l.wg.Add(1)
	go l.acceptLoop()
	return l
}

func (l *listener) acceptLoop() {
	defer l.wg.Done()
	backoff := 5 * time.Millisecond
	for {
		c, err := l.inner.Accept()
		if err != nil {
			if l.ctx.Err() != nil {
				return
			}
			if temporaryAcceptError(err) {
				l.log.Warn("link accept failed; retrying", "addr", l.inner.Addr().String(), "err", err, "in", backoff)
				select {
				case <-time.After(backoff):
				case <-l.ctx.Done():
					return
				}
				backoff = min(2*backoff, time.Second)
				continue
			}
			l.err = &fs.Error{Op: "link accept", Path: l.inner.Addr().String(), Kind: fs.KindOf(err), Err: err}
			close(l.failed)
			return
		}
		backoff = 5 * time.Millisecond
		select {
		case l.sem <- struct{}{}:
		case <-l.ctx.Done():
			c.Close()
			return
		}
		l.wg.Add(1)
		go l.handshake(c)
	}
}

func temporaryAcceptError(err error) bool {
	return isTimeout(err) || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}

func (l *listener) handshake(c net.Conn) {
	defer l.wg.Done()
	defer func() { <-l.sem }()
	ctx, cancel := context.WithTimeout(l.ctx, l.timeout)
	defer cancel()
	remote := c.RemoteAddr().String()
	lc, err := Server(ctx, c, l.cfg)
	if err != nil {
		l.log.Warn("link handshake failed", "remote", remote, "err", err)
		return
	}
	l.log.Debug("link up", "peer", lc.Peer(), "remote", remote, "method", string(lc.Method()), "key", lc.KeyID())
	select {
	case l.conns <- lc:
	case <-l.ctx.Done():
		lc.Close()
	}
}

// Accept returns the next link whose handshake succeeded.
func (l *listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.ctx.Done():
		return nil, &fs.Error{Op: "link accept", Path: l.inner.Addr().String(), Kind: fs.BadHandle, Err: net.ErrClosed}
	case <-l.failed:
		return nil, l.err
	}
}

// Close stops accepting, closes the inner listener and waits for pending
// handshakes to end. Links already returned by Accept stay open.
func (l *listener) Close() error {
	var err error
	l.once.Do(func() {
		l.cancel()
		err = l.inner.Close()
		l.wg.Wait()
	})
	return err
}

// Addr is the inner listener's address.
func (l *listener) Addr() net.Addr { return l.inner.Addr() }

// Dialer dials links.
type Dialer struct {
	// Config is the dialing side's configuration.
	Config Config
	// Timeout bounds connecting plus the handshake (a shorter deadline
	// on the context wins). Zero means 10 seconds.
	Timeout time.Duration
	// NetDialer makes the underlying connection; nil means a zero
	// net.Dialer.
	NetDialer *net.Dialer
}

// DialContext connects to addr and runs the handshake. It returns a
// *Conn; its signature fits APIs that take a dial function.
func (d *Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := d.dial(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (d *Dialer) dial(ctx context.Context, network, addr string) (*Conn, error) {
	timeout := d.Timeout
	if timeout <= 0 {
		timeout = defaultHandshakeTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	nd := d.NetDialer
	if nd == nil {
		nd = new(net.Dialer)
	}
	conn, err := nd.DialContext(ctx, network, addr)
	if err != nil {
		kind := fs.KindOf(err)
		if kind == fs.Other {
			kind = fs.Unavailable
		}
		return nil, &fs.Error{Op: "link dial", Path: addr, Kind: kind, Err: err}
	}
	return Client(ctx, conn, d.Config)
}

// Dial connects to addr and runs the handshake as cfg's client, within
// ctx and at most 10 seconds.
func Dial(ctx context.Context, network, addr string, cfg Config) (*Conn, error) {
	d := Dialer{Config: cfg}
	return d.dial(ctx, network, addr)
}
