package web_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"sort"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"strata/fs"
	"strata/mount/remote"
	"strata/tiers/keyring"
	"strata/tiers/up"
)

const transferSize = 64 << 20

// BenchmarkTransfer moves a 64 MiB file up and down through the web API
// and, in the same run, through the edge's 9P export: over the client's
// encrypted link (what a client tier uses) and over the plain local port.
//
//	go test -run '^$' -bench Transfer -benchtime 3x ./tiers/web/
func BenchmarkTransfer(b *testing.B) {
	h := startUp(b, up.Config{MaxUpload: 2 * transferSize})
	data := make([]byte, transferSize)
	rand.Read(data)

	a := newAPI(b, h, "g1-c1")
	a.c.Timeout = 5 * time.Minute
	b.Run("http/upload", func(b *testing.B) {
		b.SetBytes(transferSize)
		for b.Loop() {
			a.want(201, "PUT", "/api/store/big", bytes.NewReader(data))
		}
	})
	b.Run("http/download", func(b *testing.B) {
		b.SetBytes(transferSize)
		for b.Loop() {
			req, _ := http.NewRequest("GET", a.base+"/api/store/big", nil)
			req.Header.Set("Authorization", "Bearer "+a.token)
			resp, err := a.c.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			n, err := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil || n != transferSize {
				b.Fatalf("downloaded %d bytes: %v", n, err)
			}
		}
	})

	g := h.Groups[0]
	for _, link := range []struct {
		name, addr string
		opts       remote.Options
	}{
		{"9p-client-link", g.Edge.Addr(), remote.Options{Dial: h.Keys.Dial("g1-c1", keyring.Client("g1-c1")), Msize: 1 << 20, Timeout: time.Minute}},
		{"9p-plain-local", g.Edge.Local(), remote.Options{Msize: 1 << 20, Timeout: time.Minute}},
	} {
		tr, err := remote.Dial(context.Background(), "tcp", link.addr, link.opts)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { tr.Close() })
		b.Run(link.name+"/upload", func(b *testing.B) {
			b.SetBytes(transferSize)
			for b.Loop() {
				put9(b, tr, data)
			}
		})
		b.Run(link.name+"/download", func(b *testing.B) {
			b.SetBytes(transferSize)
			for b.Loop() {
				if n := get9(b, tr); n != transferSize {
					b.Fatalf("downloaded %d bytes", n)
				}
			}
		})
	}
}

const chunk9 = 1<<20 - 4096 // one 9P message's worth

func put9(b *testing.B, tr *remote.Tree, data []byte) {
	ctx := context.Background()
	d := tr.Dir("store")
	var h fs.Handle
	n, err := d.Lookup(ctx, "big9")
	if err == nil {
		h, err = n.(fs.File).Open(ctx, fs.WriteOnly|fs.Truncate)
	} else {
		_, h, err = d.Create(ctx, "big9", fs.WriteOnly|fs.Truncate, 0o644)
	}
	if err != nil {
		b.Fatal(err)
	}
	for off := 0; off < len(data); off += chunk9 {
		if _, err := h.WriteAt(ctx, data[off:min(off+chunk9, len(data))], int64(off)); err != nil {
			b.Fatal(err)
		}
	}
	if err := h.Close(ctx); err != nil {
		b.Fatal(err)
	}
}

func get9(b *testing.B, tr *remote.Tree) int64 {
	ctx := context.Background()
	h, err := tr.File("store/big9").Open(ctx, fs.ReadOnly)
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close(ctx)
	buf := make([]byte, chunk9)
	var off int64
	for {
		n, err := h.ReadAt(ctx, buf, off)
		off += int64(n)
		if err == io.EOF || n == 0 && err == nil {
			return off
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBrowserInvoke times upper invoked from the page in Chromium:
// sent to the edge (answered by the app edge), and run in the browser from
// the held copy, side by side in one run. It reports the medians.
//
//	go test -run '^$' -bench BrowserInvoke -benchtime 50x ./tiers/web/
func BenchmarkBrowserInvoke(b *testing.B) {
	h := startUp(b, up.Config{})
	c1 := clientEntry(b, h, "g1-c1")
	e, _ := h.Manifest.Find("edge", "g1")
	ctx := newBrowser(b)
	do(b, ctx, "signing in", chromedp.Navigate(e.Web+"#token="+c1.Token))
	waitFor(b, ctx, "the page", `window.strata && document.querySelector('#whoami').textContent.trim() === 'g1-c1'`)
	eval[bool](b, ctx, `window.strata.ready.then(() => true)`)
	for range 6 {
		do(b, ctx, "running upper",
			chromedp.SetValue(chromedp.CSS("#app-select"), "upper"),
			chromedp.Evaluate[chromedp.Void](`document.querySelector('#app-select').dispatchEvent(new Event('change'))`),
			chromedp.SetValue(chromedp.CSS("#app-input"), "hello"),
			chromedp.Click(chromedp.CSS("#run-button")))
		waitFor(b, ctx, "the answer", `document.querySelector('#answer').dataset.state === 'done'`)
	}
	waitFor(b, ctx, "the copy", `document.querySelector('#held').textContent.trim().startsWith('held in this browser')`)
	// Warm both paths once.
	eval[[]float64](b, ctx, `window.strata.measure('upper', 'hello', 'remote', 3)`)
	eval[[]float64](b, ctx, `window.strata.measure('upper', 'hello', 'local', 3)`)
	var remoteMs, localMs []float64
	b.ResetTimer()
	for b.Loop() {
		remoteMs = append(remoteMs, eval[[]float64](b, ctx, `window.strata.measure('upper', 'hello', 'remote', 1)`)...)
		localMs = append(localMs, eval[[]float64](b, ctx, `window.strata.measure('upper', 'hello', 'local', 1)`)...)
	}
	b.StopTimer()
	b.ReportMetric(median(remoteMs), "remote-ms-p50")
	b.ReportMetric(median(localMs), "local-ms-p50")
	b.ReportMetric(0, "ns/op")
	b.Log(summary("remote", remoteMs), "; ", summary("in-browser", localMs))
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func summary(name string, v []float64) string {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 0 {
		return name + ": none"
	}
	return fmt.Sprintf("%s: n=%d p50 %.2f ms p90 %.2f ms max %.2f ms", name, len(s), s[len(s)/2], s[len(s)*9/10], s[len(s)-1])
}
