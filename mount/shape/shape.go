// Package shape is a delay line for TCP: a proxy that holds every byte
// for a fixed time in each direction, and can limit each direction's
// rate, so that tests and the multi-host topology get links with the
// round-trip time of a real network on a kernel without netem.
//
//	p, err := shape.Start(ctx, shape.Config{Listen: "127.0.0.1:5700", Target: "10.77.0.1:5640", Delay: 40 * time.Millisecond})
//
// Delay is one way: a round trip through the proxy takes 2*Delay more.
// Bytes keep their order; each direction buffers at most MaxQueue bytes
// in flight (then the reader waits, as a full network path would).
//
// # Faults
//
// A running proxy also breaks its link on demand, for tests of what the
// two ends do when the network misbehaves:
//
//   - SetDelay and SetRate change the delay and the rate of the bytes
//     read from then on (bytes already in flight keep their schedule).
//   - Blackhole(true) makes packets vanish: bytes in both directions are
//     read and dropped, those in flight too, and nothing else happens;
//     no FIN, no RST, the connections stay open. New connections are
//     accepted and connected to the target as usual, and their bytes
//     vanish as well. An end of stream seen meanwhile is passed on only
//     once the blackhole is lifted. Bytes dropped are gone: a connection
//     that carried some is corrupt afterwards, and the ends find out.
//   - Reset cuts every current connection with an RST on both sides, as
//     a middlebox that drops its state does.
//   - ResetAfter arms a reset in the middle of a transfer: once n more
//     bytes have passed in a direction, on whichever connection carries
//     them, that connection is cut with an RST on both sides right after
//     the n-th byte, so a large write arrives only in part.
//   - Clear lifts every fault and restores the Config's delay and rate.
//
// Stats counts connections, resets and bytes.
package shape

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Limits of a Config.
const (
	MaxDelay        = 10 * time.Second
	DefaultMaxQueue = 8 << 20
	chunkSize       = 32 << 10
)

// Config is one shaped link.
type Config struct {
	Listen string // TCP address to accept on
	Target string // TCP address to connect each accepted connection to
	// Delay holds each direction's bytes this long (0 to MaxDelay).
	Delay time.Duration
	// Rate limits each direction to this many bytes per second (0: none).
	Rate int64
	// MaxQueue bounds the bytes in flight per direction (DefaultMaxQueue
	// if zero).
	MaxQueue int
	// DialTimeout bounds the connection to Target (5 s if zero).
	DialTimeout time.Duration
	Log         *slog.Logger
}

// Direction is a direction of the bytes through the proxy.
type Direction int

// The directions.
const (
	Both       Direction = iota // either direction, whichever comes first
	ToTarget                    // from the accepted connection to the target
	FromTarget                  // from the target back to the accepted connection
)

func (d Direction) String() string {
	switch d {
	case Both:
		return "both"
	case ToTarget:
		return "to-target"
	case FromTarget:
		return "from-target"
	}
	return fmt.Sprintf("Direction(%d)", int(d))
}

// Stats counts what a proxy did.
type Stats struct {
	Accepted int64 // connections accepted
	Open     int   // proxied connections open now
	Resets   int64 // proxied connections cut with an RST (Reset, ResetAfter)
	Dropped  int64 // bytes the blackhole dropped
	Passed   int64 // bytes delivered, both directions
}

// Proxy is a running delay line. Its methods may be called from many
// goroutines.
type Proxy struct {
	cfg Config
	ln  net.Listener
	log *slog.Logger

	delay     atomic.Int64 // time.Duration
	rate      atomic.Int64
	blackhole atomic.Bool
	accepted  atomic.Int64
	resets    atomic.Int64
	dropped   atomic.Int64
	passed    atomic.Int64

	mu     sync.Mutex
	pairs  map[*pair]struct{}
	trip   *trip // the armed ResetAfter, if any
	closed bool
	wg     sync.WaitGroup
}

// pair is one proxied connection: the accepted side and the target side
// (nil while it is being dialed). Its fields are guarded by Proxy.mu.
type pair struct {
	c, s  net.Conn
	reset bool
}

// trip is an armed ResetAfter.
type trip struct {
	dir   Direction
	left  int64
	fired chan struct{}
}

// Start listens on cfg.Listen and shapes every connection to cfg.Target
// until Close.
func Start(ctx context.Context, cfg Config) (*Proxy, error) {
	if err := checkDelay(cfg.Delay); err != nil {
		return nil, err
	}
	if err := checkRate(cfg.Rate); err != nil {
		return nil, err
	}
	if cfg.Target == "" {
		return nil, errors.New("shape: no target address")
	}
	if cfg.MaxQueue <= 0 {
		cfg.MaxQueue = DefaultMaxQueue
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("shape: listening on %s: %w", cfg.Listen, err)
	}
	p := &Proxy{cfg: cfg, ln: ln, log: log, pairs: map[*pair]struct{}{}}
	p.delay.Store(int64(cfg.Delay))
	p.rate.Store(cfg.Rate)
	p.wg.Go(p.accept)
	log.Info("shaping", "listen", ln.Addr().String(), "target", cfg.Target, "delay", cfg.Delay, "rate", cfg.Rate)
	return p, nil
}

func checkDelay(d time.Duration) error {
	if d < 0 || d > MaxDelay {
		return fmt.Errorf("shape: delay %s is outside 0 to %s", d, MaxDelay)
	}
	return nil
}

func checkRate(r int64) error {
	if r < 0 {
		return fmt.Errorf("shape: negative rate %d", r)
	}
	return nil
}

// Addr is the address the proxy accepts on.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetDelay changes the one-way delay of the bytes read from now on.
func (p *Proxy) SetDelay(d time.Duration) error {
	if err := checkDelay(d); err != nil {
		return err
	}
	p.delay.Store(int64(d))
	p.log.Info("shape: delay changed", "listen", p.Addr(), "delay", d)
	return nil
}

// SetRate changes each direction's limit in bytes per second (0: none).
func (p *Proxy) SetRate(r int64) error {
	if err := checkRate(r); err != nil {
		return err
	}
	p.rate.Store(r)
	p.log.Info("shape: rate changed", "listen", p.Addr(), "rate", r)
	return nil
}

// Blackhole turns the blackhole on or off: while it is on, bytes in both
// directions vanish and the connections stay open.
func (p *Proxy) Blackhole(on bool) {
	p.blackhole.Store(on)
	p.log.Info("shape: blackhole", "listen", p.Addr(), "on", on)
}

// Reset cuts every current connection with an RST on both sides, and
// returns how many it cut.
func (p *Proxy) Reset() int {
	p.mu.Lock()
	var conns []net.Conn
	n := 0
	for pr := range p.pairs {
		if pr.reset {
			continue
		}
		pr.reset = true
		n++
		conns = append(conns, pr.c)
		if pr.s != nil {
			conns = append(conns, pr.s)
		}
	}
	p.mu.Unlock()
	for _, c := range conns {
		rst(c)
	}
	p.resets.Add(int64(n))
	p.log.Info("shape: reset", "listen", p.Addr(), "connections", n)
	return n
}

// ResetAfter arms a reset in the middle of a transfer: once n more bytes
// have passed in direction dir (counted over every connection), the
// connection that carries the n-th byte is cut with an RST on both sides
// right after it. The returned channel is closed when that happens. It
// fires once; a new call, or Clear, disarms a reset not yet fired (its
// channel then never closes).
func (p *Proxy) ResetAfter(dir Direction, n int64) <-chan struct{} {
	t := &trip{dir: dir, left: max(n, 0), fired: make(chan struct{})}
	p.mu.Lock()
	p.trip = t
	p.mu.Unlock()
	p.log.Info("shape: reset armed", "listen", p.Addr(), "direction", dir, "after-bytes", n)
	return t.fired
}

// Clear lifts every fault: the blackhole is off, a pending ResetAfter is
// disarmed, and the delay and rate are the Config's again.
func (p *Proxy) Clear() {
	p.mu.Lock()
	p.trip = nil
	p.mu.Unlock()
	p.delay.Store(int64(p.cfg.Delay))
	p.rate.Store(p.cfg.Rate)
	p.blackhole.Store(false)
	p.log.Info("shape: faults cleared", "listen", p.Addr())
}

// Stats reports the counters.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	open := len(p.pairs)
	p.mu.Unlock()
	return Stats{Accepted: p.accepted.Load(), Open: open, Resets: p.resets.Load(), Dropped: p.dropped.Load(), Passed: p.passed.Load()}
}

// Close stops accepting, cuts every connection and waits for them.
func (p *Proxy) Close() error {
	err := p.ln.Close()
	p.mu.Lock()
	p.closed = true
	for pr := range p.pairs {
		pr.c.Close()
		if pr.s != nil {
			pr.s.Close()
		}
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

// rst closes c with an RST rather than a FIN.
func rst(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.accepted.Add(1)
		pr := &pair{c: c}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			return
		}
		p.pairs[pr] = struct{}{}
		p.mu.Unlock()
		p.wg.Go(func() { p.serve(pr) })
	}
}

// attach records s as pr's target side; false if the pair is already
// cut or the proxy closed.
func (p *Proxy) attach(pr *pair, s net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || pr.reset {
		return false
	}
	pr.s = s
	return true
}

// gone reports whether pr was cut or the proxy closed.
func (p *Proxy) gone(pr *pair) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed || pr.reset
}

// closeWrite passes an end of stream on to dst, unless pr is being cut:
// a reset must reach both sides as an RST, not as a FIN that the end of
// the other side's stream would otherwise send first.
func (p *Proxy) closeWrite(pr *pair, dst net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pr.reset {
		return
	}
	if tc, ok := dst.(interface{ CloseWrite() error }); ok {
		tc.CloseWrite()
	}
}

// resetPair cuts pr with an RST on both sides.
func (p *Proxy) resetPair(pr *pair) {
	p.mu.Lock()
	if pr.reset {
		p.mu.Unlock()
		return
	}
	pr.reset = true
	c, s := pr.c, pr.s
	p.mu.Unlock()
	rst(c)
	if s != nil {
		rst(s)
	}
	p.resets.Add(1)
}

// serve connects pr's accepted side to the target and shapes both
// directions.
func (p *Proxy) serve(pr *pair) {
	c := pr.c
	defer func() {
		p.mu.Lock()
		delete(p.pairs, pr)
		p.mu.Unlock()
	}()
	defer c.Close()
	s, err := net.DialTimeout("tcp", p.cfg.Target, p.cfg.DialTimeout)
	if err != nil {
		p.log.Warn("shape: the target does not answer", "target", p.cfg.Target, "err", err)
		return
	}
	if !p.attach(pr, s) {
		rst(s)
		return
	}
	defer s.Close()
	var wg sync.WaitGroup
	wg.Go(func() { p.pipe(pr, s, c, ToTarget) })
	wg.Go(func() { p.pipe(pr, c, s, FromTarget) })
	wg.Wait()
}

// take accounts for n bytes about to pass in direction dir against an
// armed ResetAfter: it returns how many of them to deliver and whether to
// cut the connection after them.
func (p *Proxy) take(dir Direction, n int) (int, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	t := p.trip
	if t == nil || (t.dir != Both && t.dir != dir) {
		return n, false
	}
	if int64(n) < t.left {
		t.left -= int64(n)
		return n, false
	}
	p.trip = nil
	close(t.fired)
	return int(t.left), true
}

type chunk struct {
	b   []byte
	due time.Time
}

// readSize is how much one read takes: no more than the rate allows in a
// tenth of a second, so that pacing stays smooth.
func (p *Proxy) readSize() int {
	if r := p.rate.Load(); r > 0 && r/10 < chunkSize {
		return max(int(r/10), 512)
	}
	return chunkSize
}

// pipe copies src to dst, each chunk held until the delay after it was
// read and paced to the rate, dropped while the blackhole is on, cut by
// an armed ResetAfter. The end of src is passed on as a half close, after
// the bytes before it.
func (p *Proxy) pipe(pr *pair, dst, src net.Conn, dir Direction) {
	slots := p.cfg.MaxQueue / chunkSize
	if slots < 1 {
		slots = 1
	}
	q := make(chan chunk, slots)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var next time.Time // when the rate allows the next byte out
		for ch := range q {
			if d := time.Until(ch.due); d > 0 {
				time.Sleep(d)
			}
			if p.blackhole.Load() {
				p.dropped.Add(int64(len(ch.b)))
				continue
			}
			if r := p.rate.Load(); r > 0 {
				now := time.Now()
				if next.Before(now) {
					next = now
				}
				next = next.Add(time.Duration(int64(len(ch.b)) * int64(time.Second) / r))
				if d := time.Until(next); d > 0 {
					time.Sleep(d)
				}
			}
			n, cut := p.take(dir, len(ch.b))
			if n > 0 {
				if _, err := dst.Write(ch.b[:n]); err != nil {
					src.Close() // the other side is gone: stop reading
					for range q {
					}
					return
				}
				p.passed.Add(int64(n))
			}
			if cut {
				p.log.Info("shape: reset in the middle of a transfer", "listen", p.Addr(), "direction", dir)
				p.resetPair(pr)
				for range q {
				}
				return
			}
		}
		// An end of stream is a packet too: it vanishes in a blackhole,
		// so pass it on only once the blackhole is lifted.
		for p.blackhole.Load() && !p.gone(pr) {
			time.Sleep(20 * time.Millisecond)
		}
		p.closeWrite(pr, dst)
	}()
	for {
		b := make([]byte, p.readSize())
		n, err := src.Read(b)
		if n > 0 {
			if p.blackhole.Load() {
				p.dropped.Add(int64(n))
			} else {
				q <- chunk{b: b[:n], due: time.Now().Add(time.Duration(p.delay.Load()))}
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				p.log.Debug("shape: a connection ended", "err", err)
			}
			break
		}
	}
	close(q)
	<-done
}
