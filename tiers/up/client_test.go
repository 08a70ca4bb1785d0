package up

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"strata/fs"
	clienttier "strata/tiers/client"
	"strata/tiers/keyring"
	"strata/tiers/tier"
)

func startClient(t *testing.T, h *Hierarchy, slowBelow int64, refresh time.Duration) *tier.Server {
	t.Helper()
	return startClientAt(t, h, h.Groups[0].Edge.Addr(), slowBelow, refresh)
}

// startClientAt starts group 1's first client against edgeAddr.
func startClientAt(t testing.TB, h *Hierarchy, edgeAddr string, slowBelow int64, refresh time.Duration) *tier.Server {
	t.Helper()
	g := h.Groups[0]
	name := g.Clients[0]
	s, err := clienttier.Start(context.Background(), clienttier.Config{
		Name:  name,
		Ports: tier.Ports{Local: "127.0.0.1:0"},
		Edge:  tier.Parent{Name: "edge/g1", Addr: edgeAddr, Dial: h.Keys.Dial(name, keyring.Client(name)), Timeout: 2 * time.Second},
		Data:  t.TempDir(), SlowBelow: slowBelow, Refresh: refresh, CallTimeout: 5 * time.Second,
		WasmCache: wasmCache,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return s
}

// The detection and call units: past threshold 1 the client downloads the
// app; on a link slower than threshold 2 it runs its copy; on a fast link
// it sends the request on.
func TestClientRunsLocallyWhenSlow(t *testing.T) {
	h := start(t, Config{PullAfter: -1}) // sha256 stays at the cloud
	// Threshold 2 far above loopback speed: the link counts as slow.
	c := startClient(t, h, 1<<50, time.Second)
	root := client(t, c.Local())
	sum := sha256.Sum256([]byte("abc"))
	want := hex.EncodeToString(sum[:]) + "\n"
	for i := 1; i <= 5; i++ {
		if got, err := invoke(t, root, "sha256", "abc"); err != nil || got != want {
			t.Fatalf("call %d: %q %v", i, got, err)
		}
		if w := readFile(t, root, "apps/sha256/where"); !strings.HasPrefix(w, "cloud\n") {
			t.Fatalf("call %d ran at %q, want the cloud (no copy yet)", i, w)
		}
	}
	// The sixth passes threshold 1: the app is downloaded.
	invoke(t, root, "sha256", "abc")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Tier().WaitHeld(ctx, "sha256"); err != nil {
		t.Fatal(err)
	}
	if got, err := invoke(t, root, "sha256", "abc"); err != nil || got != want {
		t.Fatalf("local run: %q %v", got, err)
	}
	if w := readFile(t, root, "apps/sha256/where"); !strings.HasPrefix(w, "client/g1-c1\n") {
		t.Fatalf("with a copy on a slow link sha256 ran at %q", w)
	}
	st := readFile(t, root, "status")
	for _, s := range []string{"threshold-1 5", "threshold-2 ", "link-speed ", "app sha256 invocations 7"} {
		if !strings.Contains(st, s) {
			t.Fatalf("status lacks %q:\n%s", s, st)
		}
	}
	if info := readFile(t, root, "apps/sha256/info"); !strings.Contains(info, "copy yes") || !strings.Contains(info, "# cloud") {
		t.Fatalf("info:\n%s", info)
	}
	// The client's /store is its own store at the edge.
	_, fh, err := mustDir(t, root, "store").Create(ctx, "from-client", fs.WriteOnly, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	fh.WriteAt(ctx, []byte("hi"), 0)
	if err := fh.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := fs.Walk(ctx, client(t, h.Groups[0].Edge.Local()), "store/from-client"); fs.KindOf(err) != fs.NotExist {
		t.Fatalf("the local port's store has the client's file: %v", err)
	}

	// A new version at the cloud: the old copy is not used once seen.
	if _, err := h.Cloud.Tier().Deploy(ctx, "sha256", modules["upper"]); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		got, err := invoke(t, root, "sha256", "abc")
		if err == nil && got == "ABC" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the client still runs the old version: %q %v", got, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// On a fast link the client sends requests on even when it holds a copy.
func TestClientForwardsWhenFast(t *testing.T) {
	h := start(t, Config{})
	c := startClient(t, h, 1, time.Second) // threshold 2 of 1 byte/s: never slow
	root := client(t, c.Local())
	for range 7 {
		if got, err := invoke(t, root, "upper", "x"); err != nil || got != "X" {
			t.Fatalf("%q %v", got, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Tier().WaitHeld(ctx, "upper"); err != nil {
		t.Fatal(err)
	}
	invoke(t, root, "upper", "x")
	if w := readFile(t, root, "apps/upper/where"); !strings.HasPrefix(w, "appedge/g1\n") {
		t.Fatalf("on a fast link upper ran at %q", w)
	}
}

func mustDir(t *testing.T, root fs.Dir, p string) fs.Dir {
	t.Helper()
	n, err := fs.Walk(context.Background(), root, p)
	if err != nil {
		t.Fatal(err)
	}
	return n.(fs.Dir)
}
