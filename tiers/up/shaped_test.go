package up

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// shapeChunk is the most a shaper forwards at once: small, so that a
// limit is smooth rather than bursty.
const shapeChunk = 1 << 10

// bucket is a token bucket for one direction of a shaped link. Its rate
// is in bytes per second; 0 means unlimited. It holds at most one chunk
// of tokens, so a limit has no burst to speak of.
type bucket struct {
	mu     sync.Mutex
	rate   int64
	tokens float64
	last   time.Time
}

func (b *bucket) setRate(bps int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rate = max(bps, 0)
	b.tokens = 0
	b.last = time.Now()
}

// take waits until n bytes (at most shapeChunk) may pass. It returns
// false if done is closed first.
func (b *bucket) take(n int, done <-chan struct{}) bool {
	for {
		b.mu.Lock()
		if b.rate <= 0 {
			b.mu.Unlock()
			return true
		}
		now := time.Now()
		b.tokens = min(b.tokens+now.Sub(b.last).Seconds()*float64(b.rate), float64(shapeChunk))
		b.last = now
		if b.tokens >= float64(n) {
			b.tokens -= float64(n)
			b.mu.Unlock()
			return true
		}
		// Sleep for the missing tokens, in steps short enough that a
		// change of rate is seen soon.
		wait := time.Duration((float64(n) - b.tokens) / float64(b.rate) * float64(time.Second))
		b.mu.Unlock()
		timer := time.NewTimer(min(max(wait, time.Millisecond), 50*time.Millisecond))
		select {
		case <-done:
			timer.Stop()
			return false
		case <-timer.C:
		}
	}
}

// shaper is a TCP proxy on loopback in front of one address, limiting
// each direction to a rate that can be changed while it runs. The limit
// is shared by every connection through it, as one link's would be.
type shaper struct {
	ln     net.Listener
	target string
	up     bucket // towards the target
	down   bucket // back from it
	done   chan struct{}
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// startShaper starts an unlimited shaper in front of target; it stops
// when the test ends.
func startShaper(t testing.TB, target string) *shaper {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &shaper{ln: ln, target: target, done: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go s.serve()
	t.Cleanup(s.close)
	return s
}

func (s *shaper) Addr() string { return s.ln.Addr().String() }

// SetRate limits both directions to bps bytes per second (0: no limit).
func (s *shaper) SetRate(bps int64) {
	s.up.setRate(bps)
	s.down.setRate(bps)
}

func (s *shaper) close() {
	close(s.done)
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// track adds c to the open connections, or closes it if the shaper is
// closing.
func (s *shaper) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.done:
		c.Close()
		return false
	default:
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *shaper) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
}

// serve accepts until the listener is closed.
func (s *shaper) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		if !s.track(c) {
			return
		}
		s.wg.Add(1)
		go s.handle(c)
	}
}

func (s *shaper) handle(c net.Conn) {
	defer s.wg.Done()
	defer s.untrack(c)
	p, err := net.DialTimeout("tcp", s.target, 5*time.Second)
	if err != nil || !s.track(p) {
		return
	}
	defer s.untrack(p)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); s.pipe(p, c, &s.up) }()
	go func() { defer wg.Done(); s.pipe(c, p, &s.down) }()
	wg.Wait()
}

// pipe copies src to dst a chunk at a time at b's rate. At src's end it
// passes the end on; on an error it ends both connections.
func (s *shaper) pipe(dst, src net.Conn, b *bucket) {
	buf := make([]byte, shapeChunk)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !b.take(n, s.done) {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				src.Close()
				return
			}
		}
		if err != nil {
			if tc, ok := dst.(*net.TCPConn); ok && errors.Is(err, io.EOF) {
				tc.CloseWrite()
				return
			}
			dst.Close()
			return
		}
	}
}

// linkSpeedLine is the link-speed line of a client's status.
var linkSpeedLine = regexp.MustCompile(`link-speed [^\n]*\((\d+) bytes/s\)`)

// linkSpeed is the client's estimate in bytes per second, from its
// status.
func linkSpeed(status string) (int64, bool) {
	m := linkSpeedLine.FindStringSubmatch(status)
	if m == nil {
		return 0, false
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	return n, err == nil
}

// The detection and call units through a FUSE mount, on a link shaped
// by a proxy in front of the edge, with the default thresholds: an app
// used past threshold 1 is downloaded; it runs at the client while the
// link is below threshold 2 and remotely once the link is fast again; an
// app not downloaded goes remote whatever the link.
func TestDetectionShapedLink(t *testing.T) {
	requireFUSE(t)
	h := start(t, Config{})
	px := startShaper(t, h.Groups[0].Edge.Addr())
	mnt, c := mountClient(t, h, px.Addr(), 0)
	self := "client/" + h.Groups[0].Clients[0]
	threshold := int64(50 << 10)

	// status is the client's status and the last error of each app used,
	// for failure messages.
	status := func() string {
		b, err := os.ReadFile(filepath.Join(mnt, "status"))
		if err != nil {
			return "status: " + err.Error()
		}
		s := string(b)
		for _, app := range []string{"sha256", "wc", "upper"} {
			if e, err := os.ReadFile(filepath.Join(mnt, "apps", app, "err")); err == nil && len(e) > 0 {
				s += app + " err: " + string(e)
			}
		}
		return s
	}
	// sh runs script in the mountpoint and returns its output lines.
	sh := func(script string) []string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		// The shell changes into the mountpoint itself: a child that did
		// so between fork and exec would need this process, which serves
		// the mount, while the runtime may be stopping the world for the
		// fork.
		cmd := exec.CommandContext(ctx, "sh", "-c", `cd "$1" || exit 1; `+script, "sh", mnt)
		cmd.WaitDelay = time.Second
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("sh -c %q: %v\nstderr: %s\nclient status:\n%s", script, err, stderr.String(), status())
		}
		return strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	}
	sum := sha256.Sum256([]byte("abc"))
	wantSum := hex.EncodeToString(sum[:])
	// callSHA invokes sha256 on "abc" through the mount, checks the
	// answer and returns the first line of where.
	callSHA := func() string {
		t.Helper()
		lines := sh("printf abc > apps/sha256/ctl; cat apps/sha256/out; head -1 apps/sha256/where")
		if len(lines) != 2 || lines[0] != wantSum {
			t.Fatalf("sha256 of abc: got %q, want %s and where\nclient status:\n%s", lines, wantSum, status())
		}
		return lines[1]
	}
	remote := func(where string) bool {
		return strings.HasPrefix(where, "cloud") || strings.HasPrefix(where, "appedge")
	}
	// bigCall sends n bytes to app through the mount: a transfer large
	// enough to count for the estimate if it goes to the edge.
	bigCall := func(app string, n int) {
		t.Helper()
		in := bytes.Repeat([]byte("strata "), n/7+1)[:n]
		if err := os.WriteFile(filepath.Join(mnt, "apps", app, "ctl"), in, 0o644); err != nil {
			t.Fatalf("%d bytes into %s: %v\nclient status:\n%s", n, app, err, status())
		}
	}
	began := time.Now()

	// An unlimited link: five calls run remotely, the sixth passes
	// threshold 1 and the app is downloaded, and a seventh still runs
	// remotely as the link is fast.
	for i := 1; i <= 6; i++ {
		if w := callSHA(); !remote(w) {
			t.Fatalf("call %d on a fast link ran at %q\nclient status:\n%s", i, w, status())
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Tier().WaitHeld(ctx, "sha256"); err != nil {
		t.Fatalf("sha256 not downloaded after 6 calls: %v\nclient status:\n%s", err, status())
	}
	if w := callSHA(); !remote(w) {
		t.Fatalf("with a copy held on a fast link sha256 ran at %q\nclient status:\n%s", w, status())
	}
	t.Logf("fast link: %v in, status:\n%s", time.Since(began).Round(time.Millisecond), status())

	// 32 KB/s: calls with inputs of 20 KiB are measured until the
	// estimate is under threshold 2; then the held copy runs here.
	px.SetRate(32 << 10)
	slowAt := time.Now()
	deadline := slowAt.Add(30 * time.Second)
	calls := 0
	for {
		if bps, ok := linkSpeed(status()); ok && bps < threshold {
			break
		}
		if calls >= 40 || time.Now().After(deadline) {
			t.Fatalf("after %d calls in %v at 32 KB/s the estimate is not under 50 KB/s\nclient status:\n%s", calls, time.Since(slowAt).Round(time.Millisecond), status())
		}
		bigCall("sha256", 20<<10)
		calls++
	}
	t.Logf("shaped to 32 KB/s: the estimate fell under 50 KB/s after %d calls of 20 KiB in %v", calls, time.Since(slowAt).Round(time.Millisecond))
	if w := callSHA(); w != self {
		t.Fatalf("on a slow link with a copy held sha256 ran at %q, want %s\nclient status:\n%s", w, self, status())
	}
	// An app that was never downloaded still goes to the edge.
	if _, held := c.Tier().Held("wc"); held {
		t.Fatalf("wc is held before its first call\nclient status:\n%s", status())
	}
	lines := sh("printf 'a b\\nc\\n' > apps/wc/ctl; cat apps/wc/out; head -1 apps/wc/where")
	if len(lines) != 2 || strings.Join(strings.Fields(lines[0]), " ") != "2 3 6" || !remote(lines[1]) {
		t.Fatalf("wc on a slow link, not downloaded: got %q, want its count from the cloud or the app edge\nclient status:\n%s", lines, status())
	}
	if bps, ok := linkSpeed(status()); !ok || bps >= threshold {
		t.Fatalf("the estimate went back over 50 KB/s while the link was shaped\nclient status:\n%s", status())
	}

	// The limit removed: one fast transfer (upper, not downloaded, goes
	// to the edge) and calls go remote again.
	px.SetRate(0)
	fastAt := time.Now()
	calls = 0
	for {
		if bps, ok := linkSpeed(status()); ok && bps >= threshold {
			break
		}
		if calls >= 10 {
			t.Fatalf("after %d fast calls of 20 KiB the estimate is still under 50 KB/s\nclient status:\n%s", calls, status())
		}
		bigCall("upper", 20<<10)
		calls++
	}
	t.Logf("unlimited again: the estimate was over 50 KB/s after %d calls in %v", calls, time.Since(fastAt).Round(time.Millisecond))
	if w := callSHA(); !remote(w) {
		t.Fatalf("on a fast link again sha256 ran at %q\nclient status:\n%s", w, status())
	}
	if _, held := c.Tier().Held("sha256"); !held {
		t.Fatalf("the copy of sha256 was dropped\nclient status:\n%s", status())
	}
	t.Logf("whole test %v; client status:\n%s", time.Since(began).Round(time.Millisecond), status())
}
