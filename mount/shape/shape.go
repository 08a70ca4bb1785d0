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
package shape

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
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

// Proxy is a running delay line.
type Proxy struct {
	cfg Config
	ln  net.Listener
	log *slog.Logger

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// Start listens on cfg.Listen and shapes every connection to cfg.Target
// until Close.
func Start(ctx context.Context, cfg Config) (*Proxy, error) {
	if cfg.Delay < 0 || cfg.Delay > MaxDelay {
		return nil, fmt.Errorf("shape: delay %s is outside 0 to %s", cfg.Delay, MaxDelay)
	}
	if cfg.Rate < 0 {
		return nil, fmt.Errorf("shape: negative rate %d", cfg.Rate)
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
	p := &Proxy{cfg: cfg, ln: ln, log: log, conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.accept)
	log.Info("shaping", "listen", ln.Addr().String(), "target", cfg.Target, "delay", cfg.Delay, "rate", cfg.Rate)
	return p, nil
}

// Addr is the address the proxy accepts on.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Close stops accepting, cuts every connection and waits for them.
func (p *Proxy) Close() error {
	err := p.ln.Close()
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			c.Close()
			return
		}
		p.wg.Go(func() { p.serve(c) })
	}
}

// serve connects c to the target and shapes both directions.
func (p *Proxy) serve(c net.Conn) {
	defer p.untrack(c)
	defer c.Close()
	s, err := net.DialTimeout("tcp", p.cfg.Target, p.cfg.DialTimeout)
	if err != nil {
		p.log.Warn("shape: the target does not answer", "target", p.cfg.Target, "err", err)
		return
	}
	if !p.track(s) {
		s.Close()
		return
	}
	defer p.untrack(s)
	defer s.Close()
	var wg sync.WaitGroup
	wg.Go(func() { p.pipe(s, c) })
	wg.Go(func() { p.pipe(c, s) })
	wg.Wait()
}

type chunk struct {
	b   []byte
	due time.Time
}

// pipe copies src to dst, each chunk held until Delay after it was read
// and paced to Rate. The end of src is passed on as a half close, after
// the bytes before it.
func (p *Proxy) pipe(dst, src net.Conn) {
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
			if r := p.cfg.Rate; r > 0 {
				now := time.Now()
				if next.Before(now) {
					next = now
				}
				next = next.Add(time.Duration(int64(len(ch.b)) * int64(time.Second) / r))
				if d := time.Until(next); d > 0 {
					time.Sleep(d)
				}
			}
			if _, err := dst.Write(ch.b); err != nil {
				src.Close() // the other side is gone: stop reading
				for range q {
				}
				return
			}
		}
		if tc, ok := dst.(interface{ CloseWrite() error }); ok {
			tc.CloseWrite()
		}
	}()
	// Read in pieces no larger than the rate allows in a tenth of a
	// second, so that pacing stays smooth.
	size := chunkSize
	if r := p.cfg.Rate; r > 0 && r/10 < int64(size) {
		size = max(int(r/10), 512)
	}
	for {
		b := make([]byte, size)
		n, err := src.Read(b)
		if n > 0 {
			q <- chunk{b: b[:n], due: time.Now().Add(p.cfg.Delay)}
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
