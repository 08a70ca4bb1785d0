package web_test

import (
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"strata/tiers/up"
	"strata/tiers/web"
)

// ci reports whether the tests run under CI, where a missing browser is a
// failure, not a reason to skip.
func ci() bool {
	v := os.Getenv("CI")
	return v != "" && v != "0" && v != "false"
}

// chromium finds Debian's Chromium, or skips (fails under CI).
func chromium(t testing.TB) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := "no Chromium to drive (install Debian's chromium package: scripts/setup does)"
	if ci() {
		t.Fatal(msg + " (CI is set, so this fails instead of skipping)")
	}
	t.Skip(msg)
	return ""
}

// newBrowser starts a headless Chromium with a fresh profile and returns
// a tab's context. Everything stops when t ends.
func newBrowser(t testing.TB) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.NoFirstRun,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	// The browser lives as long as the context of its first run: bound
	// the whole of it, and each step below it.
	life, cancelL := context.WithTimeout(context.Background(), 10*time.Minute)
	actx, cancelA := chromedp.NewExecAllocator(life, opts...)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithErrorf(t.Logf))
	t.Cleanup(func() {
		cancel()
		cancelA()
		cancelL()
	})
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting Chromium: %v", err)
	}
	return ctx
}

// do runs actions with a deadline, failing t with what was being done.
func do(t testing.TB, ctx context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// eval evaluates a JavaScript expression in the page, awaiting a promise.
func eval[T any](t testing.TB, ctx context.Context, expr string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("evaluating %s: %v", expr, err)
	}
	return v
}

// waitFor waits until a JavaScript expression is true.
func waitFor(t testing.TB, ctx context.Context, what, expr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(45*time.Second), chromedp.WithPollingInterval(50*time.Millisecond))); err != nil {
		snap := eval[string](t, context.WithoutCancel(ctx), `document.querySelector('#main') ? document.body.innerText.slice(0, 2000) : ''`)
		t.Fatalf("waiting for %s (%s): %v\nthe page says:\n%s", what, expr, err, snap)
	}
}

func text(t testing.TB, ctx context.Context, sel string) string {
	t.Helper()
	return eval[string](t, ctx, `(document.querySelector(`+jsString(sel)+`) || {textContent: ''}).textContent.trim()`)
}

func jsString(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `'`, `\'`, "\n", `\n`)
	return "'" + r.Replace(s) + "'"
}

// shot writes a screenshot of the page into dir as name.png.
func shot(t testing.TB, ctx context.Context, dir, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Errorf("screenshot %s: %v", name, err)
		return
	}
	p := filepath.Join(dir, name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		t.Error(err)
		return
	}
	t.Logf("screenshot %s", p)
}

// screenshotDir is where the screenshots go: STRATA_SCREENSHOTS if set,
// else the test's temporary directory.
func screenshotDir(t testing.TB) string {
	if d := os.Getenv("STRATA_SCREENSHOTS"); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	return t.TempDir()
}

// throttle is a TCP proxy whose answers (target to client) can be slowed
// to a rate: the edge's HTTP responses as a slow network would carry them.
type throttle struct {
	ln     net.Listener
	target string
	rate   atomic.Int64 // bytes per second; 0: as fast as it goes
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]bool
}

func newThrottle(t testing.TB, target string) *throttle {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &throttle{ln: ln, target: target, conns: map[net.Conn]bool{}}
	p.wg.Go(p.accept)
	t.Cleanup(p.close)
	return p
}

func (p *throttle) addr() string { return p.ln.Addr().String() }

func (p *throttle) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[s] = true, true
		p.mu.Unlock()
		p.wg.Go(func() { io.Copy(s, c); s.Close() })
		p.wg.Go(func() { p.slowCopy(c, s); c.Close() })
	}
}

// slowCopy copies in chunks of 1 KiB, sleeping so as to keep to the rate.
func (p *throttle) slowCopy(dst, src net.Conn) {
	buf := make([]byte, 1024)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if r := p.rate.Load(); r > 0 {
				time.Sleep(time.Duration(int64(n) * int64(time.Second) / r))
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *throttle) close() {
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func clientEntry(t testing.TB, h *up.Hierarchy, name string) up.ClientEntry {
	for _, c := range h.Manifest.Clients {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no client %s", name)
	return up.ClientEntry{}
}

// TestBrowser drives the page in Chromium as a user would: sign in,
// upload, invoke, and after the sixth invocation hold the app; with the
// edge's answers slowed under threshold 2, run it in the browser. Two
// clients do not see each other's files, and a wrong or revoked token is
// refused with a page that says why.
func TestBrowser(t *testing.T) {
	h := startUp(t, up.Config{})
	c1, c2 := clientEntry(t, h, "g1-c1"), clientEntry(t, h, "g1-c2")
	e, _ := h.Manifest.Find("edge", "g1")
	webAddr := strings.TrimSuffix(strings.TrimPrefix(e.Web, "http://"), "/")
	if webAddr == "" {
		t.Fatalf("no edge web page in the manifest: %+v", h.Manifest.Tiers)
	}
	proxy := newThrottle(t, webAddr)
	base := "http://" + proxy.addr() + "/"
	shots := screenshotDir(t)
	ctx := newBrowser(t)

	// Sign in with the link strata up prints.
	do(t, ctx, "opening the sign-in link", chromedp.Navigate(base+"#token="+c1.Token))
	waitFor(t, ctx, "the page to load", `window.strata && document.querySelector('#main') && !document.querySelector('#main').hidden`)
	eval[bool](t, ctx, `window.strata.ready.then(() => true)`)
	if got := text(t, ctx, "#whoami"); got != "g1-c1" {
		t.Errorf("#whoami says %q", got)
	}
	if loc := eval[string](t, ctx, `location.href`); strings.Contains(loc, "token") {
		t.Errorf("the token stays in the address bar: %s", loc)
	}

	// Upload through the file picker; the file is in the client's store,
	// as a 9P client on the edge sees it.
	src := filepath.Join(t.TempDir(), "notes.txt")
	if err := os.WriteFile(src, []byte("uploaded from a browser\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	do(t, ctx, "choosing a file to upload", chromedp.SetUploadFiles(chromedp.CSS("#upload-input"), []string{src}))
	waitFor(t, ctx, "the upload", `document.querySelector('#upload-status').textContent.includes('uploaded') && document.querySelector('#store-list tr[data-name="notes.txt"]') !== null`)
	if got, err := read9(t, h, "g1-c1", "store/notes.txt"); err != nil || got != "uploaded from a browser\n" {
		t.Errorf("the uploaded file through 9P: %q, %v", got, err)
	}
	// Drag and drop a file onto the store, then delete it with its button.
	eval[bool](t, ctx, `(() => {
		const dt = new DataTransfer();
		dt.items.add(new File(['dropped\n'], 'dropped.txt', {type: 'text/plain'}));
		const zone = document.querySelector('#drop-zone');
		zone.dispatchEvent(new DragEvent('dragenter', {dataTransfer: dt, bubbles: true, cancelable: true}));
		zone.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
		return true;
	})()`)
	waitFor(t, ctx, "the dropped file", `document.querySelector('#store-list tr[data-name="dropped.txt"]') !== null`)
	if got, err := read9(t, h, "g1-c1", "store/dropped.txt"); err != nil || got != "dropped\n" {
		t.Errorf("the dropped file through 9P: %q, %v", got, err)
	}
	if p := eval[float64](t, ctx, `document.querySelector('#upload-progress').value / (document.querySelector('#upload-progress').max || 1)`); p != 1 {
		t.Errorf("the progress bar ends at %v, want full", p)
	}
	eval[bool](t, ctx, `(window.confirm = () => true, true)`)
	do(t, ctx, "deleting the dropped file", chromedp.Click(chromedp.CSS(`#store-list tr[data-name="dropped.txt"] button.delete`)))
	waitFor(t, ctx, "the deletion", `document.querySelector('#store-list tr[data-name="dropped.txt"]') === null`)
	if _, err := read9(t, h, "g1-c1", "store/dropped.txt"); err == nil {
		t.Errorf("the deleted file is still in the store")
	}
	shot(t, ctx, shots, "store")

	// Invoke upper: HELLO, and the tier that ran it.
	run := func(input string) {
		t.Helper()
		do(t, ctx, "running upper",
			chromedp.SetValue(chromedp.CSS("#app-select"), "upper"),
			chromedp.Evaluate[chromedp.Void](`document.querySelector('#app-select').dispatchEvent(new Event('change'))`),
			chromedp.SetValue(chromedp.CSS("#app-input"), input),
			chromedp.Click(chromedp.CSS("#run-button")))
		waitFor(t, ctx, "the answer", `['done', 'error'].includes(document.querySelector('#answer').dataset.state)`)
		if st := eval[string](t, ctx, `document.querySelector('#answer').dataset.state`); st != "done" {
			t.Fatalf("the call failed: %s", text(t, ctx, "#app-error"))
		}
	}
	run("hello")
	if got, where := text(t, ctx, "#answer"), text(t, ctx, "#answer-where"); got != "HELLO" || where != "appedge/g1" {
		t.Errorf("upper answered %q from %q, want HELLO from appedge/g1", got, where)
	}
	shot(t, ctx, shots, "app")

	// Six invocations in all: the module is downloaded and held.
	for i := 0; i < 5; i++ {
		run("again")
	}
	if n := eval[int](t, ctx, `window.strata.count('upper')`); n != 6 {
		t.Errorf("the page counted %d invocations, want 6", n)
	}
	waitFor(t, ctx, "the module to be held", `document.querySelector('#held').textContent.trim().startsWith('held in this browser')`)
	if v := eval[bool](t, ctx, `window.strata.held('upper').then(h => h !== null && h.hash.length === 64)`); !v {
		t.Errorf("window.strata.held('upper') has no copy")
	}

	// Slow the edge's answers under threshold 2 (50 KB/s): the next call
	// runs in the browser, with the same answer.
	proxy.rate.Store(20 << 10)
	do(t, ctx, "measuring the link", chromedp.Click(chromedp.CSS("#probe-button")))
	waitFor(t, ctx, "a slow measurement", `(() => { const s = window.strata.speed(); return s !== null && s.bps < 51200 && s.ageMs < 10000 })()`)
	run("hello")
	if got, where := text(t, ctx, "#answer"), text(t, ctx, "#answer-where"); got != "HELLO" || where != "this browser" {
		t.Errorf("with a slow link upper answered %q from %q, want HELLO from this browser", got, where)
	}
	shot(t, ctx, shots, "local")
	proxy.rate.Store(0)

	// A new version at the cloud: the page drops the copy it holds once it
	// sees the new hash, and the next call goes to the edge.
	dctx, dcancel := context.WithTimeout(context.Background(), 30*time.Second)
	if _, err := h.Cloud.Tier().Deploy(dctx, "upper", modules["wc"]); err != nil {
		t.Fatal(err)
	}
	dcancel()
	time.Sleep(2100 * time.Millisecond) // the page rereads the apps at most every 2 s
	run("hello")
	waitFor(t, ctx, "the stale copy to go", `document.querySelector('#held').textContent.trim().startsWith('not held')`)
	if where := text(t, ctx, "#answer-where"); where == "this browser" {
		t.Errorf("after a new version the old copy ran in the browser")
	}
	if v := eval[bool](t, ctx, `window.strata.held('upper').then(h => h === null)`); !v {
		t.Errorf("the stale copy is still in IndexedDB")
	}

	// Another client, another store.
	do(t, ctx, "signing out", chromedp.Click(chromedp.CSS("#logout")))
	waitFor(t, ctx, "the sign-in view", `!document.querySelector('#login').hidden`)
	if n := eval[int](t, ctx, `document.querySelectorAll('#store-list tr').length`); n != 0 {
		t.Errorf("after signing out the page still lists %d files", n)
	}
	b := newAPI(t, h, "g1-c2")
	b.want(201, "PUT", "/api/store/mine.txt", strings.NewReader("the second client's\n"))
	do(t, ctx, "signing in as the second client", chromedp.Navigate(base+"#token="+c2.Token))
	waitFor(t, ctx, "the second client's files", `document.querySelector('#whoami').textContent.trim() === 'g1-c2' && document.querySelector('#store-list tr[data-name="mine.txt"]') !== null`)
	if n := eval[int](t, ctx, `document.querySelectorAll('#store-list tr[data-name="notes.txt"]').length`); n != 0 {
		t.Errorf("the second client sees the first client's file")
	}

	// Revoke the second client's token: the page is refused with 401 and
	// says why.
	tokens, err := web.OpenTokens(h.Manifest.Tokens)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tokens.Revoke("g1-c2"); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	resp, err := chromedp.RunResponse(rctx, chromedp.Navigate(base))
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status != 401 {
		t.Errorf("the page with a revoked token: status %d, want 401", resp.Status)
	}
	waitFor(t, ctx, "the refusal", `!document.querySelector('#login').hidden && document.querySelector('#auth-error').textContent.includes('revoked')`)
	shot(t, ctx, shots, "revoked")

	// A wrong token in the sign-in link is refused, saying so.
	do(t, ctx, "signing in with a wrong token", chromedp.Navigate(base+"#token=stk_wrong"))
	waitFor(t, ctx, "the refusal of a wrong token", `document.querySelector('#auth-error').textContent.includes('unknown token')`)
	shot(t, ctx, shots, "wrong-token")

	// On a phone-sized screen the page fits the width.
	do(t, ctx, "signing in on a small screen",
		chromedp.EmulateViewport(375, 740),
		chromedp.Navigate(base+"#token="+c1.Token))
	waitFor(t, ctx, "the page on a small screen", `window.strata && document.querySelector('#whoami').textContent.trim() === 'g1-c1'`)
	eval[bool](t, ctx, `window.strata.ready.then(() => true)`)
	if w := eval[int](t, ctx, `document.documentElement.scrollWidth`); w > 375 {
		t.Errorf("the page is %d px wide on a 375 px screen", w)
	}
	shot(t, ctx, shots, "phone")
	if t.Failed() {
		t.Logf("screenshots in %s", shots)
	}
}
