package up

import (
	"bytes"
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"strata/fs"
	"strata/mount/remote"
	"strata/tiers/keyring"
)

func dialAs(t *testing.T, addr string, dial func(context.Context, string, string) (net.Conn, error)) (*remote.Tree, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tr, err := remote.Dial(ctx, "tcp", addr, remote.Options{Dial: dial, Timeout: 3 * time.Second})
	if err == nil {
		t.Cleanup(func() { tr.Close() })
	}
	return tr, err
}

// Each hop admits only its own peer, with its own link's key and method.
func TestLinksRefuseStrangers(t *testing.T) {
	h := start(t, Config{})
	g := h.Groups[0]
	for _, tc := range []struct {
		name, addr string
		dial       func(context.Context, string, string) (net.Conn, error)
		want       string
	}{
		// The edge offering link B's keyset (and method) to its app edge.
		{"wrong method", g.AppEdge.Addr(), h.Keys.Dial("edge/g1", keyring.LinkB("g1")), "method mismatch"},
		// A client's keyset presented as the edge.
		{"wrong key", g.AppEdge.Addr(), h.Keys.Dial("edge/g1", keyring.Client("g1-c1")), "key"},
		{"unknown peer", g.Edge.Addr(), h.Keys.Dial("mallory", keyring.Client("g1-c1")), "unknown peer"},
		{"client as another", g.Edge.Addr(), h.Keys.Dial("g1-c2", keyring.Client("g1-c1")), "key"},
		{"edge at the cloud", h.Cloud.Addr(), h.Keys.Dial("edge/g1", keyring.LinkA("g1")), "refused by server"},
		{"edge with link B at the cloud", h.Cloud.Addr(), h.Keys.Dial("edge/g1", keyring.LinkB("g1")), "unknown peer"},
		{"plain 9P on an encrypted port", g.Edge.Addr(), nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := dialAs(t, tc.addr, tc.dial)
			if err == nil {
				t.Fatal("admitted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("refused with %q, want it to say %q", err, tc.want)
			}
		})
	}
}

// A client's keyset rotated while it is connected: the open connection
// goes on, a new one with the new primary key is admitted, and once the
// old key is retired a client holding only it is refused.
func TestClientKeyRotation(t *testing.T) {
	h := start(t, Config{})
	g := h.Groups[0]
	c := g.Clients[0]
	p := keyring.Client(c)
	old, err := h.Keys.Keyset(p)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := dialAs(t, g.Edge.Addr(), h.Keys.Dial(c, p))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := invoke(t, tr.Root(), "upper", "before"); err != nil || got != "BEFORE" {
		t.Fatalf("%q %v", got, err)
	}
	newID, err := h.Keys.Rotate(p)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := invoke(t, tr.Root(), "upper", "during"); err != nil || got != "DURING" {
		t.Fatalf("the open connection after rotation: %q %v", got, err)
	}
	tr2, err := dialAs(t, g.Edge.Addr(), h.Keys.Dial(c, p))
	if err != nil {
		t.Fatalf("the new primary key is refused: %v", err)
	}
	if !tr2.State().Connected {
		t.Fatal("not connected")
	}
	// Retire the old primary: a client still holding only it is refused.
	oldID := old.KeysetInfo().GetPrimaryKeyId()
	if oldID == newID {
		t.Fatal("rotation kept the primary")
	}
	if err := h.Keys.Retire(p, oldID); err != nil {
		t.Fatal(err)
	}
	stale := keyring.StaticDial(c, p.Method(), old)
	if _, err := dialAs(t, g.Edge.Addr(), stale); err == nil {
		t.Fatal("a retired key was admitted")
	}
}

// recorder is a TCP proxy that keeps every byte it relays.
type recorder struct {
	ln  net.Listener
	mu  sync.Mutex
	buf bytes.Buffer
}

func newRecorder(t *testing.T, target string) *recorder {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			copyRec := func(dst, src net.Conn) {
				b := make([]byte, 32<<10)
				for {
					n, err := src.Read(b)
					if n > 0 {
						r.mu.Lock()
						r.buf.Write(b[:n])
						r.mu.Unlock()
						dst.Write(b[:n])
					}
					if err != nil {
						dst.Close()
						src.Close()
						return
					}
				}
			}
			go copyRec(s, c)
			go copyRec(c, s)
		}
	}()
	return r
}

// What a client stores never crosses its link in clear, nor do the
// request and answer of an invocation.
func TestStoredBytesNeverInClear(t *testing.T) {
	h := start(t, Config{})
	g := h.Groups[0]
	rec := newRecorder(t, g.Edge.Addr())
	c := g.Clients[0]
	tr, err := dialAs(t, rec.ln.Addr().String(), h.Keys.Dial(c, keyring.Client(c)))
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte(strings.Repeat("the quick brown fox keeps a secret. ", 200))
	ctx := context.Background()
	_, fh, err := tr.Dir("store").Create(ctx, "secret.txt", fs.WriteOnly, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fh.WriteAt(ctx, secret, 0); err != nil {
		t.Fatal(err)
	}
	if err := fh.Close(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := readAllFile(tr.File("store/secret.txt"))
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("read back %d bytes, %v", len(got), err)
	}
	if out, err := invoke(t, tr.Root(), "upper", "confidential request"); err != nil || out != "CONFIDENTIAL REQUEST" {
		t.Fatalf("%q %v", out, err)
	}
	tr.Close()
	rec.mu.Lock()
	capture := rec.buf.Bytes()
	rec.mu.Unlock()
	if len(capture) < len(secret) {
		t.Fatalf("captured only %d bytes", len(capture))
	}
	for _, needle := range [][]byte{secret[:16], []byte("keeps a secret"), []byte("confidential"), []byte("CONFIDENTIAL"), []byte("secret.txt")} {
		if bytes.Contains(capture, needle) {
			t.Fatalf("%q crossed the link in clear", needle)
		}
	}
}

// Deploying through the cloud's namespace: a bad module is refused at
// close with a reason; a good one becomes the next version.
func TestDeployThroughNamespace(t *testing.T) {
	h := start(t, Config{})
	tr, err := dialAs(t, h.Cloud.Local(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := tr.Dir("apps").Mkdir(ctx, "echo2", 0o755); err != nil {
		t.Fatal(err)
	}
	put := func(mod []byte) error {
		hd, err := tr.File("apps/echo2/module.wasm").Open(ctx, fs.WriteOnly|fs.Truncate)
		if err != nil {
			return err
		}
		if _, err := hd.WriteAt(ctx, mod, 0); err != nil {
			hd.Close(ctx)
			return err
		}
		return hd.Close(ctx)
	}
	if err := put([]byte("not wasm at all")); fs.KindOf(err) != fs.Invalid {
		t.Fatalf("a bad module: %v, want Invalid", err)
	}
	if err := put(modules["upper"]); err != nil {
		t.Fatal(err)
	}
	info, err := readAllFile(tr.File("apps/echo2/info"))
	if err != nil || !strings.Contains(string(info), "version 1\n") {
		t.Fatalf("info %q %v", info, err)
	}
	edgeRoot := client(t, h.Groups[0].Edge.Local())
	if out, err := invoke(t, edgeRoot, "echo2", "new app"); err != nil || out != "NEW APP" {
		t.Fatalf("the new app through the edge: %q %v", out, err)
	}
	// Deploying at another tier is refused.
	aeRoot := client(t, h.Groups[0].AppEdge.Local())
	n, err := fs.Walk(ctx, aeRoot, "apps/upper/module.wasm")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.(fs.File).Open(ctx, fs.WriteOnly); fs.KindOf(err) != fs.Permission {
		t.Fatalf("deploy at the app edge: %v, want Permission", err)
	}
	// Reading module.wasm through the edge downloads the app.
	n, err = fs.Walk(ctx, client(t, h.Groups[0].Edge.Local()), "apps/echo2/module.wasm")
	if err != nil {
		t.Fatal(err)
	}
	mod, err := readAllFile(n.(fs.File))
	if err != nil || !bytes.Equal(mod, modules["upper"]) {
		t.Fatalf("module.wasm through the edge: %d bytes, %v", len(mod), err)
	}
}
