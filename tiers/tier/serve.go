package tier

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"strata/fs/ninep"
	"strata/mount/remote"
)

// Ports says where a tier is served.
type Ports struct {
	// Listen is the TCP address of the encrypted port ("" for none).
	Listen string
	// Wrap turns the encrypted port's TCP listener into one whose
	// connections have passed the link handshake.
	Wrap func(net.Listener) net.Listener
	// Local is the TCP address of the plain 9P port for local tools
	// ("" for none). It must be a loopback address unless PublicLocal.
	Local string
	// PublicLocal allows the plain port on a non-loopback address.
	PublicLocal bool
}

// Server serves a tier on its ports.
type Server struct {
	t      *Tier
	srv    *ninep.Server
	addr   net.Addr
	local  net.Addr
	log    *slog.Logger
	errc   chan error
	closed sync.Once

	mu    sync.Mutex
	after []func()
}

// CheckLoopback reports an error unless addr's host is a loopback
// address (or "localhost").
func CheckLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("bad address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return fmt.Errorf("the plain 9P port %s: %q is neither an IP address nor localhost", addr, host)
	}
	if !ip.IsLoopback() {
		return fmt.Errorf("the plain 9P port %s is not on a loopback address: it has no encryption or authentication (pass the flag that allows it explicitly)", addr)
	}
	return nil
}

// LoopbackOnly returns a listener that accepts only connections from
// loopback peers: the others are closed at once, with a warning in log.
// A port bound to 127.0.0.1 is still reachable from the machine's other
// addresses (a local process may bind its end to any of them, and a
// forwarding rule may point outside traffic at it), so the bind address
// alone does not keep a plain port private.
func LoopbackOnly(ln net.Listener, log *slog.Logger) net.Listener {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &loopbackListener{Listener: ln, log: log}
}

type loopbackListener struct {
	net.Listener
	log     *slog.Logger
	refused atomic.Int64
}

func (l *loopbackListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if isLoopbackPeer(c.RemoteAddr()) {
			return c, nil
		}
		c.Close()
		// The first refusal and then one in a thousand: a flood of
		// strangers does not flood the log.
		if n := l.refused.Add(1); n == 1 || n%1000 == 0 {
			l.log.Warn("plain port: refused a peer that is not on loopback (the plain port has no encryption or authentication)",
				"peer", c.RemoteAddr().String(), "port", l.Addr().String(), "refused", n)
		}
	}
}

func isLoopbackPeer(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

// Serve starts serving t on ports. It returns once the ports listen.
func Serve(ctx context.Context, t *Tier, p Ports, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if p.Local != "" && !p.PublicLocal {
		if err := CheckLoopback(p.Local); err != nil {
			return nil, fmt.Errorf("%s: %w", t.cfg.Name, err)
		}
	}
	if p.Listen != "" && p.Wrap == nil {
		return nil, fmt.Errorf("%s: the encrypted port %s has no link configuration", t.cfg.Name, p.Listen)
	}
	s := &Server{t: t, log: log, errc: make(chan error, 2)}
	s.srv = &ninep.Server{Attach: t.Attach, Log: log.With("unit", "9p")}
	var lc net.ListenConfig
	var lns []net.Listener
	fail := func(err error) (*Server, error) {
		for _, ln := range lns {
			ln.Close()
		}
		return nil, err
	}
	if p.Listen != "" {
		ln, err := lc.Listen(ctx, "tcp", p.Listen)
		if err != nil {
			return fail(fmt.Errorf("%s: listening on %s: %w", t.cfg.Name, p.Listen, err))
		}
		lns = append(lns, ln)
		s.addr = ln.Addr()
		lns[len(lns)-1] = p.Wrap(ln)
	}
	if p.Local != "" {
		ln, err := lc.Listen(ctx, "tcp", p.Local)
		if err != nil {
			return fail(fmt.Errorf("%s: listening on %s: %w", t.cfg.Name, p.Local, err))
		}
		s.local = ln.Addr()
		if !p.PublicLocal {
			ln = LoopbackOnly(ln, log)
		}
		lns = append(lns, ln)
	}
	for _, ln := range lns {
		go func() { s.errc <- s.srv.Serve(context.WithoutCancel(ctx), ln) }()
	}
	log.Info("serving", "addr", addrString(s.addr), "local", addrString(s.local))
	return s, nil
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// Addr is the encrypted port's address ("" if none).
func (s *Server) Addr() string { return addrString(s.addr) }

// Local is the plain port's address ("" if none).
func (s *Server) Local() string { return addrString(s.local) }

// Tier is the tier served.
func (s *Server) Tier() *Tier { return s.t }

// Wait blocks until a port fails or ctx ends.
func (s *Server) Wait(ctx context.Context) error {
	select {
	case err := <-s.errc:
		if errors.Is(err, ninep.ErrServerClosed) {
			return nil
		}
		return err
	case <-ctx.Done():
		return nil
	}
}

// Shutdown stops the ports, closes the connections (waiting for them up to
// ctx's deadline) and stops the tier's background work.
func (s *Server) Shutdown(ctx context.Context) error {
	var err error
	s.closed.Do(func() {
		err = s.srv.Shutdown(ctx)
		s.t.Close()
		s.mu.Lock()
		after := s.after
		s.mu.Unlock()
		for i := len(after) - 1; i >= 0; i-- {
			after[i]()
		}
	})
	return err
}

// Parent says how a tier reaches its parent.
type Parent struct {
	Name string // "cloud", "appedge/g1"
	Addr string // TCP address of the parent's encrypted port
	// Dial opens the link (the encrypted channel) to Addr.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Timeout bounds each remote step (remote.DefaultTimeout if zero).
	Timeout time.Duration
	// Keepalive probes an idle link this often (0: DefaultKeepalive).
	Keepalive time.Duration
}

// ParentMsize is the 9P message size asked for on a parent link. The
// traffic is calls and the odd module download; hugelgupf/p9's server
// keeps a buffer of msize per read in flight (and makes a new one after
// each garbage collection), so a 4 MiB msize costs a call about half a
// millisecond of allocating and clearing for nothing.
const ParentMsize = 128 << 10

// DefaultKeepalive is how often an idle parent link is probed.
const DefaultKeepalive = 5 * time.Second

// Mount returns the parent's namespace as a tree. It does not connect
// until first used, so a tier starts even when its parent is down.
func (p Parent) Mount(log *slog.Logger) *remote.Tree {
	ka := p.Keepalive
	if ka == 0 {
		ka = DefaultKeepalive
	}
	return remote.New("tcp", p.Addr, remote.Options{Name: p.Name, Dial: p.Dial, Timeout: p.Timeout, Keepalive: ka, Msize: ParentMsize, Log: log})
}

// OnShutdown adds fn to what Shutdown does after the ports are closed.
func (s *Server) OnShutdown(fn func()) {
	s.mu.Lock()
	s.after = append(s.after, fn)
	s.mu.Unlock()
}

// Launch makes the tier of cfg, serves it on ports and starts its
// background work. closers release what the tier was given (its apps, its
// runtime, its parent); they run in reverse order at Shutdown, or at once
// if Launch fails.
func Launch(ctx context.Context, cfg Config, ports Ports, closers ...func()) (*Server, error) {
	undo := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	t, err := New(cfg)
	if err != nil {
		undo()
		return nil, err
	}
	s, err := Serve(ctx, t, ports, cfg.Log)
	if err != nil {
		undo()
		return nil, err
	}
	t.Start(context.WithoutCancel(ctx))
	for _, c := range closers {
		s.OnShutdown(c)
	}
	return s, nil
}
