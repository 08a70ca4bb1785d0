package up

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"9fans.net/go/plan9"
	plan9client "9fans.net/go/plan9/client"

	"strata/fs"
	"strata/mount/remote"
	"strata/tiers/apps"
	"strata/tiers/call"
	"strata/tiers/keyring"
	"strata/tiers/tier"
	"strata/tiers/wasm"
)

// modules are the sample apps, built once for every test; wasmCache is
// the compile cache every test's hierarchy shares.
var (
	modules   map[string][]byte
	wasmCache string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "strata-up-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	modules, err = apps.Modules(ctx, dir)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "building the sample apps:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	wasmCache = filepath.Join(dir, "wasm-cache")
	// Compile every module once into the shared cache, so that no test
	// pays for a cold compile inside an invocation's budget.
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Minute)
	rt, err := wasm.New(ctx, wasm.Config{CacheDir: wasmCache})
	if err == nil {
		for _, mod := range modules {
			if err = rt.Compile(ctx, mod, wasm.Hash(mod)); err != nil {
				break
			}
		}
		rt.Close(ctx)
	}
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "compiling the sample apps:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// testLog writes the hierarchy's log to the test's log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func start(t testing.TB, cfg Config) *Hierarchy {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	if cfg.Modules == nil {
		cfg.Modules = modules
	}
	if cfg.WasmCache == "" {
		cfg.WasmCache = wasmCache
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	h, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		h.Shutdown(ctx)
	})
	return h
}

func fsys9(t *testing.T, addr string) *plan9client.Fsys {
	t.Helper()
	conn, err := plan9client.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fsys, err := conn.Attach(nil, "tester", "")
	if err != nil {
		t.Fatal(err)
	}
	return fsys
}

func read9(t *testing.T, fsys *plan9client.Fsys, name string) string {
	t.Helper()
	fid, err := fsys.Open(name, plan9.OREAD)
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	defer fid.Close()
	b, err := io.ReadAll(fid)
	if err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	return string(b)
}

// The Plan 9 client of 9fans.net on an edge's plain port: the store, the
// Plan 9 style ctl on one descriptor, the one-shot style, where.
func TestPlan9ClientAtEdge(t *testing.T) {
	h := start(t, Config{})
	fsys := fsys9(t, h.Groups[0].Edge.Local())

	fid, err := fsys.Create("store/hello.txt", plan9.OWRITE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fid.Write([]byte("kept\n")); err != nil {
		t.Fatal(err)
	}
	fid.Close()
	if got := read9(t, fsys, "store/hello.txt"); got != "kept\n" {
		t.Fatalf("store read back %q", got)
	}

	ctl, err := fsys.Open("apps/upper/ctl", plan9.ORDWR)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Write([]byte("hel")); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Write([]byte("lo")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	n, err := ctl.ReadAt(buf, 0)
	if err != nil && err != io.EOF {
		t.Fatal(err)
	}
	if string(buf[:n]) != "HELLO" {
		t.Fatalf("ctl answered %q, want HELLO", buf[:n])
	}
	ctl.Close()
	if w := read9(t, fsys, "apps/upper/where"); !strings.HasPrefix(w, "appedge/g1\n") {
		t.Fatalf("where for upper = %q, want the app edge", w)
	}

	// One-shot: the write runs at close, out has the answer.
	ctl, err = fsys.Open("apps/sha256/ctl", plan9.OWRITE)
	if err != nil {
		t.Fatal(err)
	}
	ctl.Write([]byte("abc"))
	if err := ctl.Close(); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("abc"))
	if got := read9(t, fsys, "apps/sha256/out"); strings.TrimSpace(got) != hex.EncodeToString(sum[:]) {
		t.Fatalf("sha256 out = %q", got)
	}
	if w := read9(t, fsys, "apps/sha256/where"); !strings.HasPrefix(w, "cloud\n") {
		t.Fatalf("where for sha256 = %q, want the cloud", w)
	}
	// Listing: each app once.
	dirs, err := fsys.Open("apps", plan9.OREAD)
	if err != nil {
		t.Fatal(err)
	}
	ds, err := dirs.Dirreadall()
	dirs.Close()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range ds {
		names = append(names, d.Name)
	}
	if strings.Join(names, " ") != "sha256 spin upper wc" {
		t.Fatalf("apps lists %v", names)
	}
	if info := read9(t, fsys, "apps/upper/info"); !strings.Contains(info, "replica yes") || !strings.Contains(info, "hash "+wasm.Hash(modules["upper"])) {
		t.Fatalf("info of upper:\n%s", info)
	}
	if st := read9(t, fsys, "status"); !strings.Contains(st, "tier edge/g1") {
		t.Fatalf("status:\n%s", st)
	}
}

// client opens a tier's plain port with the p9 client (through the
// remote tree).
func client(t *testing.T, addr string) fs.Dir {
	t.Helper()
	tr, err := remote.Dial(context.Background(), "tcp", addr, remote.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr.Root()
}

func readFile(t *testing.T, root fs.Dir, p string) string {
	t.Helper()
	n, err := fs.Walk(context.Background(), root, p)
	if err != nil {
		t.Fatal(err)
	}
	b, err := readAllFile(n.(fs.File))
	if err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	return string(b)
}

func readAllFile(f fs.File) ([]byte, error) {
	return fs.ReadAll(context.Background(), f, 64<<20)
}

func invoke(t *testing.T, root fs.Dir, app, input string) (string, error) {
	t.Helper()
	ctx := context.Background()
	n, err := fs.Walk(ctx, root, "apps/"+app+"/ctl")
	if err != nil {
		return "", err
	}
	h, err := n.(fs.File).Open(ctx, fs.ReadWrite)
	if err != nil {
		return "", err
	}
	defer h.Close(ctx)
	if _, err := h.WriteAt(ctx, []byte(input), 0); err != nil {
		return "", err
	}
	buf := make([]byte, 1<<16)
	k, err := h.ReadAt(remote.WithTimeout(ctx, 20*time.Second), buf, 0)
	if err != nil && err != io.EOF {
		return "", err
	}
	return string(buf[:k]), nil
}

// The p9 client on an edge's plain port, and clients on the encrypted
// port, each with its own store.
func TestP9ClientAndClientStores(t *testing.T) {
	h := start(t, Config{})
	root := client(t, h.Groups[0].Edge.Local())
	if got, err := invoke(t, root, "upper", "hello"); err != nil || got != "HELLO" {
		t.Fatalf("upper = %q, %v", got, err)
	}
	if got, err := invoke(t, root, "wc", "a b\nc\n"); err != nil || got != "      2       3       6\n" {
		t.Fatalf("wc = %q, %v", got, err)
	}
	if w := readFile(t, root, "apps/wc/where"); !strings.HasPrefix(w, "cloud\n") || !strings.Contains(w, "route edge/g1 > appedge/g1 > cloud") {
		t.Fatalf("where for wc:\n%s", w)
	}

	// Two clients over the encrypted client port.
	stores := map[string]fs.Dir{}
	for _, c := range h.Groups[0].Clients {
		tr, err := remote.Dial(context.Background(), "tcp", h.Groups[0].Edge.Addr(), remote.Options{Dial: h.Keys.Dial(c, keyring.Client(c))})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		stores[c] = tr.Root()
	}
	c1, c2 := h.Groups[0].Clients[0], h.Groups[0].Clients[1]
	ctx := context.Background()
	sd, err := fs.Walk(ctx, stores[c1], "store")
	if err != nil {
		t.Fatal(err)
	}
	_, fh, err := sd.(fs.Dir).Create(ctx, "mine", fs.WriteOnly, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	fh.WriteAt(ctx, []byte("secret of c1"), 0)
	if err := fh.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, stores[c1], "store/mine"); got != "secret of c1" {
		t.Fatalf("c1 reads %q", got)
	}
	if _, err := fs.Walk(ctx, stores[c2], "store/mine"); fs.KindOf(err) != fs.NotExist {
		t.Fatalf("c2 sees c1's file: %v", err)
	}
	if _, err := fs.Walk(ctx, stores[c2], "store/../"+c1+"/mine"); err == nil {
		t.Fatal("c2 walked into c1's store")
	}
	if got, err := invoke(t, stores[c2], "upper", "x"); err != nil || got != "X" {
		t.Fatalf("upper for c2 = %q, %v", got, err)
	}
	// The local port's store is the client "local": it does not see c1's.
	if _, err := fs.Walk(ctx, root, "store/mine"); fs.KindOf(err) != fs.NotExist {
		t.Fatalf("local sees c1's file: %v", err)
	}
}

// A retried request ID gets the recorded reply: the app does not run
// again at any tier.
func TestRetrySameID(t *testing.T) {
	var logs syncBuffer
	h := start(t, Config{Log: slog.New(slog.NewTextHandler(&logs, nil))})
	edgeTree, err := remote.Dial(context.Background(), "tcp", h.Groups[0].Edge.Local(), remote.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer edgeTree.Close()
	id := call.NewID(call.KindApp, "sha256")
	req := &call.Request{ID: id, App: "sha256", Input: []byte("once"), Budget: 5 * time.Second}
	var replies []*call.Reply
	for range 3 {
		r, err := tier.Forward(context.Background(), edgeTree, req)
		if err != nil {
			t.Fatal(err)
		}
		replies = append(replies, r)
	}
	for _, r := range replies[1:] {
		if !bytes.Equal(r.Out, replies[0].Out) || !r.OK {
			t.Fatalf("replies differ: %+v vs %+v", r, replies[0])
		}
	}
	st := readFile(t, client(t, h.Cloud.Local()), "status")
	if !strings.Contains(st, "app sha256 invocations 1 ") {
		t.Fatalf("the cloud ran sha256 more than once:\n%s", st)
	}
	est := readFile(t, client(t, h.Groups[0].Edge.Local()), "status")
	if !strings.Contains(est, "replayed 2") {
		t.Fatalf("the edge did not replay:\n%s", est)
	}
	// Every tier that handled it logged its ID.
	for _, tierName := range []string{"edge/g1", "appedge/g1", "cloud"} {
		found := false
		for _, line := range strings.Split(logs.String(), "\n") {
			if strings.Contains(line, "tier="+tierName+" ") && strings.Contains(line, "msg=invocation ") && strings.Contains(line, "id="+id) {
				found = true
			}
		}
		if !found {
			t.Errorf("no log line of %s names request %s", tierName, id)
		}
	}
}

// spin is stopped at its limit; upper calls made meanwhile finish.
func TestSpinStoppedOthersFinish(t *testing.T) {
	h := start(t, Config{Limits: wasm.Limits{Timeout: 1500 * time.Millisecond}})
	root := client(t, h.Groups[0].Edge.Local())
	var wg sync.WaitGroup
	wg.Add(1)
	var spinErr error
	var spinTook time.Duration
	go func() {
		defer wg.Done()
		start := time.Now()
		var out string
		out, spinErr = invoke(t, root, "spin", "")
		t.Logf("spin: %q %v", out, spinErr)
		spinTook = time.Since(start)
	}()
	time.Sleep(100 * time.Millisecond)
	for i := range 10 {
		got, err := invoke(t, root, "upper", fmt.Sprint("call ", i))
		if err != nil || got != strings.ToUpper(fmt.Sprint("call ", i)) {
			t.Fatalf("upper during spin = %q, %v", got, err)
		}
	}
	wg.Wait()
	if spinErr == nil {
		t.Fatal("spin returned without an error")
	}
	if spinTook < 1400*time.Millisecond {
		t.Fatalf("spin stopped after %v, before its limit", spinTook)
	}
	if e := readFile(t, root, "apps/spin/err"); !strings.Contains(e, "time limit") {
		t.Fatalf("spin's err file says:\n%s", e)
	}
}

// A corrupt primary copy at the cloud is served from the backup and
// repaired.
func TestCorruptPrimaryServedFromBackup(t *testing.T) {
	dir := t.TempDir()
	h := start(t, Config{Dir: dir})
	p := filepath.Join(dir, "cloud", "apps", "sha256.wasm")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	root := client(t, h.Groups[0].Edge.Local())
	got, err := invoke(t, root, "sha256", "abc")
	sum := sha256.Sum256([]byte("abc"))
	if err != nil || strings.TrimSpace(got) != hex.EncodeToString(sum[:]) {
		t.Fatalf("sha256 with a corrupt primary = %q, %v", got, err)
	}
	fixed, err := os.ReadFile(p)
	if err != nil || wasm.Hash(fixed) != wasm.Hash(modules["sha256"]) {
		t.Fatalf("the primary was not repaired: %v", err)
	}
}

// A version deployed at the cloud reaches the app edge's replica within
// the refresh interval.
func TestNewVersionReachesReplicas(t *testing.T) {
	refresh := 300 * time.Millisecond
	h := start(t, Config{Refresh: refresh})
	root := client(t, h.Groups[0].Edge.Local())
	if got, _ := invoke(t, root, "upper", "ab"); got != "AB" {
		t.Fatalf("upper = %q", got)
	}
	if _, err := h.Cloud.Tier().Deploy(context.Background(), "upper", modules["sha256"]); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("ab"))
	deadline := time.Now().Add(2*refresh + 3*time.Second)
	for {
		got, err := invoke(t, root, "upper", "ab")
		if err == nil && strings.TrimSpace(got) == hex.EncodeToString(sum[:]) {
			if w := readFile(t, root, "apps/upper/where"); !strings.HasPrefix(w, "appedge/g1\n") {
				t.Fatalf("new version ran at %q", w)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the new version is not served after %v: %q, %v", 2*refresh+3*time.Second, got, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// An app missed often enough at the app edge is pulled in.
func TestMissesPullReplica(t *testing.T) {
	h := start(t, Config{PullAfter: 2})
	root := client(t, h.Groups[0].Edge.Local())
	for range 2 {
		if _, err := invoke(t, root, "wc", "x"); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.Groups[0].AppEdge.Tier().WaitHeld(ctx, "wc"); err != nil {
		t.Fatal(err)
	}
	invoke(t, root, "wc", "x")
	if w := readFile(t, root, "apps/wc/where"); !strings.HasPrefix(w, "appedge/g1\n") {
		t.Fatalf("wc after pulling ran at %q", w)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// An app's own limits, set at the cloud, hold wherever it runs.
func TestAppLimits(t *testing.T) {
	refresh := 300 * time.Millisecond
	h := start(t, Config{Refresh: refresh})
	ctx := context.Background()
	cloudRoot := client(t, h.Cloud.Local())
	setLimits := func(app, text string) {
		t.Helper()
		n, err := fs.Walk(ctx, cloudRoot, "apps/"+app+"/limits")
		if err != nil {
			t.Fatal(err)
		}
		hd, err := n.(fs.File).Open(ctx, fs.WriteOnly|fs.Truncate)
		if err != nil {
			t.Fatal(err)
		}
		hd.WriteAt(ctx, []byte(text), 0)
		if err := hd.Close(ctx); err != nil {
			t.Fatalf("limits %q: %v", text, err)
		}
	}
	// A bad line is refused with a reason.
	n, _ := fs.Walk(ctx, cloudRoot, "apps/spin/limits")
	hd, _ := n.(fs.File).Open(ctx, fs.WriteOnly)
	hd.WriteAt(ctx, []byte("timeout forever\n"), 0)
	if err := hd.Close(ctx); fs.KindOf(err) != fs.Invalid {
		t.Fatalf("a bad limit: %v", err)
	}

	setLimits("spin", "timeout 600ms\n")
	root := client(t, h.Groups[0].Edge.Local())
	if got := readFile(t, root, "apps/spin/limits"); !strings.HasPrefix(got, "timeout 600ms\n") {
		t.Fatalf("limits of spin seen at the edge: %q", got)
	}
	start := time.Now()
	if _, err := invoke(t, root, "spin", ""); err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("spin with a 600ms limit: %v after %v", err, time.Since(start))
	}
	if e := readFile(t, root, "apps/spin/err"); !strings.Contains(e, "time limit of 600ms") {
		t.Fatalf("err: %q", e)
	}

	// upper runs at the app edge, under the limits the cloud set.
	setLimits("upper", "memory-mib 1\n")
	deadline := time.Now().Add(2*refresh + 5*time.Second)
	for {
		_, err := invoke(t, root, "upper", "x")
		if err != nil && strings.Contains(readFile(t, root, "apps/upper/err"), "memory cap") {
			if w := readFile(t, root, "apps/upper/where"); !strings.HasPrefix(w, "appedge/g1\n") {
				t.Fatalf("upper ran at %q", w)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the app edge does not apply the cloud's limits: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	setLimits("upper", "")
	deadline = time.Now().Add(2*refresh + 5*time.Second)
	for {
		if got, err := invoke(t, root, "upper", "x"); err == nil && got == "X" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("upper did not go back to the default limits")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
