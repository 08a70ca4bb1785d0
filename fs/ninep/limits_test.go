package ninep

import (
	"log/slog"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"9fans.net/go/plan9"
	"github.com/hugelgupf/p9/linux"
	"github.com/hugelgupf/p9/p9"
)

// TestLinuxCaps: a 9P2000.L connection may have MaxOpen files open and
// MaxFidsL fids; past either cap it gets EBUSY with the reason in the
// server's log, a clunk gives the place back, and each connection has
// its own count.
func TestLinuxCaps(t *testing.T) {
	root := plan9TestTree(t, map[string]string{"a": "1", "b": "2", "c": "3", "d": "4"})
	addr, logs := startL(t, root, func(s *Server) { s.MaxOpen = 3 })
	_, r := dialL(t, addr, 64<<10)

	var open []p9.File
	for _, name := range []string{"a", "b", "c"} {
		f := walkTo(t, r, name)
		if _, _, err := f.Open(p9.ReadOnly); err != nil {
			t.Fatalf("open %s: %v", name, err)
		}
		open = append(open, f)
	}
	d := walkTo(t, r, "d")
	_, _, err := d.Open(p9.ReadOnly)
	wantErrno(t, "a fourth open", err, linux.EBUSY)
	if !strings.Contains(logs.String(), "too many open files: a connection may have 3 open at once") {
		t.Errorf("the log does not say why:\n%s", logs)
	}
	_, _, _, err = r.Create("e", p9.WriteOnly, 0o644, 0, 0)
	wantErrno(t, "a create past the cap", err, linux.EBUSY)

	// Another connection has a count of its own.
	_, r2 := dialL(t, addr, 64<<10)
	if _, _, err := walkTo(t, r2, "d").Open(p9.ReadOnly); err != nil {
		t.Errorf("open on a second connection: %v", err)
	}

	// Clunking an open file gives its place back.
	if err := open[0].Close(); err != nil {
		t.Fatal(err)
	}
	d = walkTo(t, r, "d")
	if _, _, err := d.Open(p9.ReadOnly); err != nil {
		t.Errorf("open after a clunk: %v", err)
	}

	// Fids: MaxFidsL in all, the root's and the walked files' included
	// (this connection holds a handful already).
	var fids []p9.File
	for len(fids) <= MaxFidsL {
		_, f, err := r.Walk(nil)
		if err != nil {
			wantErrno(t, "a fid past the cap", err, linux.EBUSY)
			break
		}
		fids = append(fids, f)
	}
	if n := len(fids); n >= MaxFidsL || n < MaxFidsL-10 {
		t.Fatalf("%d more fids were given; the cap is %d in all", n, MaxFidsL)
	}
	fids[0].Close()
	if _, _, err := r.Walk(nil); err != nil {
		t.Errorf("a walk after a clunk: %v", err)
	}
}

// TestPlan9OpenCap: the same cap on a 9P2000 connection, with its reason
// in the Rerror.
func TestPlan9OpenCap(t *testing.T) {
	root := plan9TestTree(t, map[string]string{"a": "1", "b": "2", "c": "3"})
	addr := plan9Serve(t, root, func(s *Server) { s.MaxOpen = 2 })
	_, fsys := plan9Mount(t, addr, "u")
	fa, err := fsys.Open("a", 0)
	if err != nil {
		t.Fatal(err)
	}
	fb, err := fsys.Open("b", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	if _, err := fsys.Open("c", 0); err == nil || !strings.Contains(err.Error(), "too many open files: a connection may have 2 open at once") {
		t.Errorf("a third open: %v", err)
	}
	if _, err := fsys.Create("new", 1, 0o644); err == nil || !strings.Contains(err.Error(), "too many open files") {
		t.Errorf("a create past the cap: %v", err)
	}
	fa.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		fc, err := fsys.Open("c", 0)
		if err == nil {
			fc.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("open after a close: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestConnsPerPeer: a peer may hold MaxConnsPerPeer connections; the next
// one is refused in its own dialect (EMFILE for 9P2000.L, a sentence for
// 9P2000) and closed, and a closed connection gives its place back.
func TestConnsPerPeer(t *testing.T) {
	root := plan9TestTree(t, map[string]string{"a": "1"})
	addr, logs := startL(t, root, func(s *Server) { s.MaxConnsPerPeer = 2 })
	c1, _ := dialL(t, addr, 64<<10)
	dialL(t, addr, 64<<10)

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := p9.NewClient(c); err == nil {
		t.Errorf("a third 9P2000.L connection was admitted")
	}
	rc := plan9Dial(t, addr)
	rx := rc.rpc(&plan9.Fcall{Type: plan9.Tversion, Tag: plan9.NOTAG, Msize: 8192, Version: "9P2000"})
	if rx.Type != plan9.Rerror || !strings.Contains(rx.Ename, "too many connections from 127.0.0.1: the cap is 2 at once") {
		t.Errorf("a third 9P2000 connection was answered %v", rx)
	}
	if !strings.Contains(logs.String(), "too many connections") {
		t.Errorf("the refusal is not logged:\n%s", logs)
	}

	c1.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		cl, err := p9.NewClient(c)
		if err == nil {
			cl.Close()
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatalf("no connection admitted after one closed: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSlowTrickle: in both dialects a message that has begun must arrive
// within FrameTimeout, or the connection is closed; a connection that
// idles between messages stays.
func TestSlowTrickle(t *testing.T) {
	root := plan9TestTree(t, map[string]string{"a": "1"})
	for _, dialect := range []string{"9P2000.L", "9P2000"} {
		t.Run(dialect, func(t *testing.T) {
			addr, logs := startL(t, root, func(s *Server) { s.FrameTimeout = 300 * time.Millisecond })
			idle, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer idle.Close()
			slow, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer slow.Close()
			for _, c := range []net.Conn{idle, slow} {
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := c.Write(ltversionFrame(0xffff, 8192, dialect)); err != nil {
					t.Fatal(err)
				}
				if typ, _, _ := readFrame(t, c); typ != msgRversion {
					t.Fatalf("Tversion answered with type %d", typ)
				}
			}
			// Three bytes of a message, then nothing: closed.
			slow.Write([]byte{20, 0, 0})
			start := time.Now()
			if _, err := slow.Read(make([]byte, 1)); err == nil {
				t.Errorf("the trickling connection got an answer")
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("closed after %s", took)
			}
			// The idle one, past the timeout, still works: a Tversion
			// again.
			time.Sleep(500 * time.Millisecond)
			if _, err := idle.Write(ltversionFrame(0xffff, 8192, dialect)); err != nil {
				t.Fatalf("the idle connection: %v", err)
			}
			if typ, _, _ := readFrame(t, idle); typ != msgRversion {
				t.Errorf("the idle connection's Tversion answered with type %d", typ)
			}
			for deadline := time.Now().Add(3 * time.Second); !strings.Contains(logs.String(), "a message took more than 300ms to arrive"); time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Errorf("the log does not say why the connection was closed:\n%s", logs)
					break
				}
			}
		})
	}
}

// heapInUse is the live heap after a full collection.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// TestCapsFreedOnDisconnect: connections that fill every per-connection
// cap (open files, fids, in both dialects) and then hang up leave nothing
// behind: the server's goroutines and live heap go back to what they were
// before the connections came.
func TestCapsFreedOnDisconnect(t *testing.T) {
	root := plan9TestTree(t, map[string]string{"a": strings.Repeat("x", 100)})
	// No log kept: a test's log buffer would grow with the connections.
	addr, _ := startL(t, root, func(s *Server) { s.Log = slog.New(slog.DiscardHandler) })
	// Warm up: one connection that comes and goes, so that what is made
	// once per process (pools, the tree's nodes) is in the baseline.
	{
		c, r := dialL(t, addr, 64<<10)
		walkTo(t, r, "a").Close()
		c.Close()
	}
	time.Sleep(100 * time.Millisecond)
	g0, h0 := runtime.NumGoroutine(), heapInUse()

	var clients []*p9.Client
	var held []p9.File // the client clunks a file it no longer references
	for range 3 {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c, err := p9.NewClient(conn, p9.WithMessageSize(64<<10))
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
		r, err := c.Attach("")
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, r)
		for i := 0; ; i++ {
			f := walkTo(t, r, "a")
			held = append(held, f)
			if _, _, err := f.Open(p9.ReadOnly); err != nil {
				wantErrno(t, "an open past the cap", err, linux.EBUSY)
				if i != DefaultMaxOpen {
					t.Fatalf("%d opens admitted, the cap is %d", i, DefaultMaxOpen)
				}
				break
			}
		}
		for {
			_, f, err := r.Walk(nil)
			if err != nil {
				wantErrno(t, "a fid past the cap", err, linux.EBUSY)
				break
			}
			held = append(held, f)
		}
	}
	p := plan9DialAttach(t, addr)
	for fid := uint32(1); ; fid++ {
		rx := p.rpc(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: fid})
		if rx.Type == plan9.Rerror {
			if !strings.Contains(rx.Ename, "too many fids") || fid != MaxFids9P {
				t.Fatalf("fid %d: %v", fid, rx.Ename)
			}
			break
		}
	}
	g1, h1 := runtime.NumGoroutine(), heapInUse()
	if len(held) < 3*MaxFidsL-30 {
		t.Fatalf("%d fids held on 3 connections, the cap is %d each", len(held), MaxFidsL)
	}
	held = nil

	for _, c := range clients {
		c.Close()
	}
	clients = nil // what the clients hold is not the server's to free
	p.c.Close()
	p.r = nil
	var g2 int
	var h2 uint64
	deadline := time.Now().Add(20 * time.Second)
	for {
		g2, h2 = runtime.NumGoroutine(), heapInUse()
		if g2 <= g0 && h2 <= h0+(h1-h0)/10+(256<<10) {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("after the disconnect: %d goroutines (before %d, with the connections %d), heap %d KiB (before %d KiB, with the connections %d KiB)\n%s",
				g2, g0, g1, h2>>10, h0>>10, h1>>10, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("goroutines %d -> %d -> %d; heap in use %d KiB -> %d KiB -> %d KiB", g0, g1, g2, h0>>10, h1>>10, h2>>10)
}
