package tier

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hugelgupf/p9/p9"

	"strata/fs"
	"strata/fs/memfs"
)

func TestCheckLoopback(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:1": true, "[::1]:1": true, "localhost:1": true, "127.9.9.9:0": true,
		"0.0.0.0:1": false, ":1": false, "[::]:1": false, "10.1.2.3:1": false, "example.com:1": false, "nonsense": false,
	} {
		if err := CheckLoopback(addr); (err == nil) != ok {
			t.Errorf("CheckLoopback(%q) = %v", addr, err)
		}
	}
}

// The plain port is refused on a non-loopback address unless allowed.
func TestServeRefusesPublicPlainPort(t *testing.T) {
	if _, err := New(Config{Role: Edge, Parent: Parent{Name: "p", Addr: "127.0.0.1:1"}.Mount(nil)}); err == nil || !strings.Contains(err.Error(), "store") {
		t.Fatalf("an edge without a store: %v", err)
	}
	st := memfs.New()
	ctx := context.Background()
	cl, err := New(Config{Role: Edge, Parent: Parent{Name: "p", Addr: "127.0.0.1:1"}.Mount(nil), Store: func(context.Context, string) (fs.Dir, error) { return st, nil }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Serve(ctx, cl, Ports{Local: "0.0.0.0:0"}, nil); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("plain port on 0.0.0.0: %v", err)
	}
	s, err := Serve(ctx, cl, Ports{Local: "127.0.0.1:0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Shutdown(ctx)
}

// strangerAddr is a non-loopback address of this machine, from which a
// connection to a port on 127.0.0.1 arrives with a non-loopback peer.
func strangerAddr(t *testing.T) net.IP {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			return n.IP
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("this machine has no non-loopback IPv4 address to connect from")
	}
	t.Skip("no non-loopback IPv4 address to connect from")
	return nil
}

// versionFrom dials addr from the local address from (nil: any) and
// negotiates 9P2000.L; it returns the client's error.
func versionFrom(from net.IP, addr string) error {
	d := net.Dialer{Timeout: 5 * time.Second}
	if from != nil {
		d.LocalAddr = &net.TCPAddr{IP: from}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return err
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	cl, err := p9.NewClient(c)
	if err != nil {
		c.Close()
		return err
	}
	return cl.Close()
}

// The plain port is on 127.0.0.1, yet a process of this machine can reach
// it from a non-loopback address: such a peer is closed before it can send
// a single request, unless the plain port is public.
func TestPlainPortRefusesStrangers(t *testing.T) {
	from := strangerAddr(t)
	st := memfs.New()
	ctx := context.Background()
	for _, public := range []bool{false, true} {
		cl, err := New(Config{Role: Edge, Parent: Parent{Name: "p", Addr: "127.0.0.1:1"}.Mount(nil), Store: func(context.Context, string) (fs.Dir, error) { return st, nil }})
		if err != nil {
			t.Fatal(err)
		}
		var logs strings.Builder
		var mu sync.Mutex
		log := slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))
		s, err := Serve(ctx, cl, Ports{Local: "127.0.0.1:0", PublicLocal: public}, log)
		if err != nil {
			t.Fatal(err)
		}
		if err := versionFrom(nil, s.Local()); err != nil {
			t.Errorf("public=%v: a loopback peer: %v", public, err)
		}
		err = versionFrom(from, s.Local())
		switch {
		case public && err != nil:
			t.Errorf("public plain port: a peer at %v was refused: %v", from, err)
		case !public && err == nil:
			t.Errorf("a peer at %v negotiated 9P on the plain port", from)
		}
		s.Shutdown(ctx)
		mu.Lock()
		warned := strings.Contains(logs.String(), "refused a peer that is not on loopback") && strings.Contains(logs.String(), from.String())
		mu.Unlock()
		if warned == public {
			t.Errorf("public=%v: the log says refused=%v:\n%s", public, warned, logs.String())
		}
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
