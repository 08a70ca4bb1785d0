package web_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	plan9client "9fans.net/go/plan9/client"

	"strata/tiers/apps"
	"strata/tiers/keyring"
	"strata/tiers/up"
	"strata/tiers/wasm"
	"strata/tiers/web"
)

var (
	modules   map[string][]byte
	wasmCache string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "strata-web-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		var err error
		if modules, err = apps.Modules(ctx, dir); err != nil {
			fmt.Fprintln(os.Stderr, "building the sample apps:", err)
			return 1
		}
		wasmCache = filepath.Join(dir, "wasm-cache")
		rt, err := wasm.New(ctx, wasm.Config{CacheDir: wasmCache})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer rt.Close(ctx)
		for _, mod := range modules {
			if err := rt.Compile(ctx, mod, wasm.Hash(mod)); err != nil {
				fmt.Fprintln(os.Stderr, "compiling the sample apps:", err)
				return 1
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// startUp starts a hierarchy with its web pages.
func startUp(t testing.TB, cfg up.Config) *up.Hierarchy {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	cfg.Modules, cfg.WasmCache = modules, wasmCache
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	h, err := up.Start(ctx, cfg)
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

// api is a client of the web API with a bearer token.
type api struct {
	t     testing.TB
	base  string // "http://127.0.0.1:P"
	token string
	c     *http.Client
}

func newAPI(t testing.TB, h *up.Hierarchy, client string) *api {
	t.Helper()
	for _, c := range h.Manifest.Clients {
		if c.Name == client {
			base := strings.TrimSuffix(c.Login[:strings.Index(c.Login, "#")], "/")
			return &api{t: t, base: base, token: c.Token, c: &http.Client{Timeout: 30 * time.Second}}
		}
	}
	t.Fatalf("no client %s", client)
	return nil
}

func (a *api) do(method, path string, body io.Reader, hdr ...string) (*http.Response, []byte) {
	a.t.Helper()
	req, err := http.NewRequest(method, a.base+path, body)
	if err != nil {
		a.t.Fatal(err)
	}
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := a.c.Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		a.t.Fatalf("%s %s: reading the answer: %v", method, path, err)
	}
	return resp, b
}

// want checks a response's status and returns its body.
func (a *api) want(status int, method, path string, body io.Reader, hdr ...string) []byte {
	a.t.Helper()
	resp, b := a.do(method, path, body, hdr...)
	if resp.StatusCode != status {
		a.t.Fatalf("%s %s: status %d, want %d; body %s", method, path, resp.StatusCode, status, b)
	}
	return b
}

// wantErr checks an error response: its status, kind and message.
func (a *api) wantErr(status int, kind, msg, method, path string, body io.Reader) {
	a.t.Helper()
	resp, b := a.do(method, path, body)
	var e struct{ Error, Kind string }
	if err := json.Unmarshal(b, &e); err != nil {
		a.t.Fatalf("%s %s: the error is not JSON: %s", method, path, b)
	}
	if resp.StatusCode != status || e.Kind != kind || !strings.Contains(e.Error, msg) {
		a.t.Errorf("%s %s: %d %s %q, want %d %s and a message with %q", method, path, resp.StatusCode, e.Kind, e.Error, status, kind, msg)
	}
}

type listing struct {
	Path    string
	Entries []struct {
		Name string
		Dir  bool
		Size int64
	}
}

func (a *api) list(p string) listing {
	a.t.Helper()
	var l listing
	if err := json.Unmarshal(a.want(200, "GET", "/api/store/"+p, nil), &l); err != nil {
		a.t.Fatal(err)
	}
	return l
}

func (l listing) names() string {
	var n []string
	for _, e := range l.Entries {
		s := e.Name
		if e.Dir {
			s += "/"
		}
		n = append(n, s)
	}
	return strings.Join(n, " ")
}

// read9 reads a file of the client's namespace through the 9fans plan9
// client, over the client's encrypted link to the edge.
func read9(t *testing.T, h *up.Hierarchy, client, p string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := h.Keys.Dial(client, keyring.Client(client))(ctx, "tcp", h.Groups[0].Edge.Addr())
	if err != nil {
		t.Fatal(err)
	}
	c, err := plan9client.NewConn(conn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fsys, err := c.Attach(nil, client, "")
	if err != nil {
		t.Fatal(err)
	}
	f, err := fsys.Open(p, 0)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	return string(b), err
}

func TestAuth(t *testing.T) {
	h := startUp(t, up.Config{})
	a := newAPI(t, h, "g1-c1")
	a.want(200, "GET", "/api/whoami", nil)

	anon := *a
	anon.token = ""
	anon.wantErr(401, "unauthorized", "no token", "GET", "/api/whoami", nil)
	anon.token = "stk_not-a-real-token"
	anon.wantErr(401, "unauthorized", "unknown token", "GET", "/api/store/", nil)

	// A revoked token is refused at once, on a running edge, saying so;
	// the page itself answers 401 and says why.
	tokens := h.Manifest.Tokens
	other := newAPI(t, h, "g1-c2")
	if err := revoke(tokens, "g1-c2"); err != nil {
		t.Fatal(err)
	}
	other.wantErr(401, "unauthorized", "revoked", "GET", "/api/whoami", nil)
	resp, body := other.do("GET", "/", nil, "Cookie", "strata_token="+other.token, "Authorization", "")
	if resp.StatusCode != 401 || !strings.Contains(string(body), "was revoked at") {
		t.Errorf("the page with a revoked cookie: %d, want 401 and the reason in the page", resp.StatusCode)
	}
	anon.token = ""
	if resp, body := anon.do("GET", "/", nil); resp.StatusCode != 200 || !strings.Contains(string(body), `id="auth-error"`) {
		t.Errorf("the page without a token: %d, want 200 and the sign-in", resp.StatusCode)
	}

	// Sign-in sets a cookie that works; a change from another site is
	// refused.
	jar, _ := cookiejar.New(nil)
	cc := &api{t: t, base: a.base, c: &http.Client{Jar: jar, Timeout: 10 * time.Second}}
	cc.wantErr(401, "unauthorized", "unknown token", "POST", "/api/login", strings.NewReader(`{"token":"stk_wrong"}`))
	cc.want(204, "POST", "/api/login", strings.NewReader(`{"token":"`+a.token+`"}`))
	var who struct{ Client, Tier string }
	json.Unmarshal(cc.want(200, "GET", "/api/whoami", nil), &who)
	if who.Client != "g1-c1" || who.Tier != "edge/g1" {
		t.Errorf("whoami: %+v", who)
	}
	resp, _ = cc.do("POST", "/api/store/x?op=mkdir", nil, "Origin", "http://evil.example")
	if resp.StatusCode != 403 {
		t.Errorf("a cross-site change with the cookie: %d, want 403", resp.StatusCode)
	}
	cc.want(201, "POST", "/api/store/x?op=mkdir", nil, "Origin", a.base)
}

func revoke(file, client string) error {
	tokens, err := web.OpenTokens(file)
	if err != nil {
		return err
	}
	_, err = tokens.Revoke(client)
	return err
}

func TestStore(t *testing.T) {
	h := startUp(t, up.Config{MaxUpload: 1 << 20})
	a := newAPI(t, h, "g1-c1")
	b := newAPI(t, h, "g1-c2")

	if got := a.list("").names(); got != "" {
		t.Errorf("a new store lists %q", got)
	}
	a.want(201, "POST", "/api/store/docs?op=mkdir", nil)
	a.want(201, "PUT", "/api/store/docs/hello.txt", strings.NewReader("hello, web\n"))
	a.want(201, "PUT", "/api/store/top.txt", strings.NewReader("top\n"))
	if got := a.list("").names(); got != "docs/ top.txt" {
		t.Errorf("the root lists %q", got)
	}
	if got := string(a.want(200, "GET", "/api/store/docs/hello.txt", nil)); got != "hello, web\n" {
		t.Errorf("download: %q", got)
	}
	// The same file through a 9P client we did not write, as that client.
	if got, err := read9(t, h, "g1-c1", "store/docs/hello.txt"); err != nil || got != "hello, web\n" {
		t.Errorf("through 9P: %q, %v", got, err)
	}
	// Ranges, and a download header on request.
	resp, body := a.do("GET", "/api/store/docs/hello.txt?download=1", nil, "Range", "bytes=7-9")
	if resp.StatusCode != 206 || string(body) != "web" || !strings.Contains(resp.Header.Get("Content-Disposition"), "attachment") {
		t.Errorf("a range: %d %q %q", resp.StatusCode, body, resp.Header.Get("Content-Disposition"))
	}

	// Rename, and its errors; delete, and its errors.
	a.want(200, "POST", "/api/store/top.txt?op=rename&to=docs/moved.txt", nil)
	if got := a.list("docs").names(); got != "hello.txt moved.txt" {
		t.Errorf("after the rename docs lists %q", got)
	}
	a.wantErr(404, "not-exist", "top.txt", "POST", "/api/store/top.txt?op=rename&to=x", nil)
	a.wantErr(400, "invalid", "op=mkdir", "POST", "/api/store/docs?op=chmod", nil)
	a.wantErr(409, "not-empty", "not empty", "DELETE", "/api/store/docs", nil)
	a.want(204, "DELETE", "/api/store/docs/moved.txt", nil)
	a.wantErr(404, "not-exist", "moved.txt", "DELETE", "/api/store/docs/moved.txt", nil)
	a.wantErr(409, "exist", "exists", "POST", "/api/store/docs?op=mkdir", nil)
	a.wantErr(404, "not-exist", "nowhere", "PUT", "/api/store/nowhere/f", strings.NewReader("x"))
	a.wantErr(409, "is-dir", "directory", "PUT", "/api/store/docs", strings.NewReader("x"))

	// Names that try to leave the store, however they are spelled, are
	// refused or cleaned to a name inside it.
	for _, p := range []string{"..%2F..%2Fetc%2Fpasswd", "docs/..%2F..%2Fg1-c2%2Fsecret", "%2e%2e/g1-c2", "docs/%2e%2e/%2e%2e/x"} {
		resp, body := a.do("PUT", "/api/store/"+p, strings.NewReader("escape"))
		if resp.StatusCode < 400 {
			t.Errorf("PUT %s: %d %s, want a refusal", p, resp.StatusCode, body)
		}
		resp, body = a.do("GET", "/api/store/"+p, nil)
		if resp.StatusCode == 200 && strings.Contains(string(body), "escape") {
			t.Errorf("GET %s found the file: %s", p, body)
		}
	}
	a.wantErr(400, "invalid", "bad name", "POST", "/api/store/docs/hello.txt?op=rename&to=..%2F..%2Fg1-c2%2Fstolen", nil)

	// One client never sees the other's store.
	b.want(201, "PUT", "/api/store/secret.txt", strings.NewReader("b's secret\n"))
	if got := a.list("").names(); strings.Contains(got, "secret") {
		t.Errorf("client a lists client b's file: %q", got)
	}
	a.wantErr(404, "not-exist", "secret.txt", "GET", "/api/store/secret.txt", nil)
	if got := b.list("").names(); got != "secret.txt" {
		t.Errorf("client b lists %q", got)
	}

	// Uploads over the cap are refused, by length or as they stream, and
	// the old content stays.
	a.want(201, "PUT", "/api/store/big", strings.NewReader("old"))
	a.wantErr(413, "too-large", "cap of 1048576 bytes", "PUT", "/api/store/big", bytes.NewReader(make([]byte, 2<<20)))
	a.wantErr(413, "too-large", "cap of 1048576 bytes", "PUT", "/api/store/big", io.MultiReader(strings.NewReader("new"), bytes.NewReader(make([]byte, 2<<20))))
	a.wantErr(413, "too-large", "nothing was stored", "PUT", "/api/store/fresh", io.MultiReader(bytes.NewReader(make([]byte, 2<<20))))
	if got := string(a.want(200, "GET", "/api/store/big", nil)); got != "old" {
		t.Errorf("after refused uploads the file holds %d bytes", len(got))
	}
	if got := a.list("").names(); strings.Contains(got, "fresh") {
		t.Errorf("a refused upload of a new file left it: %q", got)
	}
}

// TestDownloadDuringRewrite: a file downloaded while it is rewritten again
// and again is one version whole, never a mix.
func TestDownloadDuringRewrite(t *testing.T) {
	h := startUp(t, up.Config{})
	a := newAPI(t, h, "g1-c1")
	const size = 256 << 10
	version := func(i int) []byte { return bytes.Repeat([]byte{byte('a' + i%26)}, size) }
	a.want(201, "PUT", "/api/store/f", bytes.NewReader(version(0)))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		w := *a
		w.t = t
		for i := 1; i < 200; i++ {
			select {
			case <-stop:
				return
			default:
			}
			resp, _ := w.do("PUT", "/api/store/f", bytes.NewReader(version(i)))
			if resp.StatusCode != 201 {
				t.Errorf("rewrite %d: %d", i, resp.StatusCode)
				return
			}
		}
	})
	seen := map[byte]bool{}
	for i := 0; i < 60; i++ {
		b := a.want(200, "GET", "/api/store/f", nil)
		if len(b) != size || !bytes.Equal(b, bytes.Repeat(b[:1], size)) {
			t.Fatalf("download %d is not one version whole: %d bytes, starting %q", i, len(b), b[:min(len(b), 8)])
		}
		seen[b[0]] = true
	}
	close(stop)
	wg.Wait()
	if len(seen) < 2 {
		t.Logf("the downloads saw only %d version(s)", len(seen))
	}
}

func TestApps(t *testing.T) {
	h := startUp(t, up.Config{Limits: wasm.Limits{Timeout: time.Second}})
	a := newAPI(t, h, "g1-c1")

	var list struct {
		Apps []struct {
			ID, Hash, Info string
			Version        uint64
			Size           int64
		}
	}
	json.Unmarshal(a.want(200, "GET", "/api/apps", nil), &list)
	byID := map[string]int{}
	for i, ap := range list.Apps {
		byID[ap.ID] = i
	}
	for _, id := range []string{"upper", "wc", "sha256", "spin"} {
		i, ok := byID[id]
		if !ok {
			t.Fatalf("/api/apps lacks %s: %+v", id, list.Apps)
		}
		sum := sha256.Sum256(modules[id])
		if ap := list.Apps[i]; ap.Hash != hex.EncodeToString(sum[:]) || ap.Version == 0 || ap.Size != int64(len(modules[id])) || !strings.Contains(ap.Info, "# edge/g1") {
			t.Errorf("%s: version %d hash %.12s size %d, info %.40q", id, ap.Version, ap.Hash, ap.Size, ap.Info)
		}
	}

	// The module, with the hash and version the page checks it against.
	resp, mod := a.do("GET", "/api/apps/upper/module.wasm", nil)
	sum := sha256.Sum256(mod)
	if resp.StatusCode != 200 || resp.Header.Get("X-Strata-Hash") != hex.EncodeToString(sum[:]) || !bytes.Equal(mod, modules["upper"]) {
		t.Errorf("module.wasm: %d, %d bytes, hash header %q", resp.StatusCode, len(mod), resp.Header.Get("X-Strata-Hash"))
	}

	// An invocation: the answer, and which tier ran it.
	resp, out := a.do("POST", "/api/apps/upper/call", strings.NewReader("hello"))
	if resp.StatusCode != 200 || string(out) != "HELLO" || resp.Header.Get("X-Strata-Where") != "appedge/g1" {
		t.Fatalf("call upper: %d %q where %q", resp.StatusCode, out, resp.Header.Get("X-Strata-Where"))
	}
	if w := string(a.want(200, "GET", "/api/apps/upper/where", nil)); !strings.Contains(w, "appedge/g1") {
		t.Errorf("where: %q", w)
	}
	resp, out = a.do("POST", "/api/apps/sha256/call", strings.NewReader("abc"))
	if resp.StatusCode != 200 || !strings.HasPrefix(string(out), "ba7816bf") || resp.Header.Get("X-Strata-Where") != "cloud" {
		t.Errorf("call sha256: %d %q where %q", resp.StatusCode, out, resp.Header.Get("X-Strata-Where"))
	}

	// A retry with the same request id gets the recorded answer: the app
	// does not run twice.
	id := "app.wc.0123456789ab-retry"
	first := a.want(200, "POST", "/api/apps/wc/call", strings.NewReader("one two\n"), "X-Strata-Request-ID", id)
	again := a.want(200, "POST", "/api/apps/wc/call", strings.NewReader("something else entirely\n"), "X-Strata-Request-ID", id)
	if string(first) != string(again) {
		t.Errorf("a retry with the same id answered %q, then %q", first, again)
	}
	status := string(a.want(200, "GET", "/api/status", nil))
	if !strings.Contains(status, "replayed 1") {
		t.Errorf("the edge's status does not count the replay:\n%s", status)
	}

	// Bad requests get clear errors.
	for _, bad := range []string{"bogus", "app.upper.0123456789ab", "store.wc.0123456789ab", "app.wc.short"} {
		resp, body := a.do("POST", "/api/apps/wc/call", nil, "X-Strata-Request-ID", bad)
		if resp.StatusCode != 400 || !strings.Contains(string(body), "is not app.wc.<unique>") {
			t.Errorf("request id %q: %d %s", bad, resp.StatusCode, body)
		}
	}
	a.wantErr(400, "invalid", "app id", "GET", "/api/apps/UP%20PER/info", nil)
	a.wantErr(404, "not-exist", "nosuch", "POST", "/api/apps/nosuch/call", strings.NewReader("x"))
	resp, body := a.do("POST", "/api/apps/spin/call", nil)
	if resp.StatusCode != 504 && resp.StatusCode != 422 || !strings.Contains(string(body), "spin") {
		t.Errorf("a runaway app: %d %s", resp.StatusCode, body)
	}
	a.wantErr(400, "invalid", "probe size", "GET", "/api/probe?n=0", nil)
	if b := a.want(200, "GET", "/api/probe?n=1000", nil); len(b) != 1000 {
		t.Errorf("probe: %d bytes", len(b))
	}
}
