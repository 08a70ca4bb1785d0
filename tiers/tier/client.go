package tier

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"strata/fs"
	"strata/tiers/call"
)

// The client role: the patent's detection unit and call unit. A client
// counts invocations per app; past PullAfter invocations it downloads the
// app (verified by the hash the edge's info states); it estimates the
// speed of its link from real transfers, and from a small probe when the
// estimate is stale; when the link is slower than SlowBelow and it holds
// the current copy, it runs the app itself, else it sends the request on.

// Client defaults.
const (
	DefaultClientPullAfter = 5
	DefaultSlowBelow       = 50 << 10 // bytes per second: the patent's 50 KB/s
	// ProbeSize is the size of /probe, read to measure a link.
	ProbeSize = 32 << 10
	// speedStale is how old an estimate may be before a probe.
	speedStale = 15 * time.Second
	// minSample is the smallest transfer that says anything about speed
	// (smaller ones measure latency).
	minSample = 16 << 10
)

// speed is an estimate of a link's throughput.
type speed struct {
	mu      sync.Mutex
	bps     float64 // exponentially weighted
	at      time.Time
	samples int64
	probing bool
}

// speedJump is the factor by which a sample must differ from the estimate
// to replace it rather than be averaged in: the link changed (a fast link
// became a slow one), and one old fast transfer must not hide that for
// the next several calls.
const speedJump = 4

// observe records a transfer of n bytes that took d. Samples within a
// factor of speedJump of the estimate are averaged in (weight one half);
// a sample farther off, or the first after a long silence, replaces it.
func (s *speed) observe(n int, d time.Duration) {
	if n < minSample || d <= 0 {
		return
	}
	v := float64(n) / d.Seconds()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.samples == 0 || time.Since(s.at) > 4*speedStale || v > speedJump*s.bps || v*speedJump < s.bps {
		s.bps = v
	} else {
		s.bps = 0.5*s.bps + 0.5*v
	}
	s.at = time.Now()
	s.samples++
}

// estimate returns the estimate in bytes per second and its age; ok is
// false if there is none.
func (s *speed) estimate() (bps float64, age time.Duration, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.samples == 0 {
		return 0, 0, false
	}
	return s.bps, time.Since(s.at), true
}

// probe measures the link by reading the parent's /probe, unless a probe
// is under way.
func (t *Tier) probe(ctx context.Context) error {
	t.speed.mu.Lock()
	if t.speed.probing {
		t.speed.mu.Unlock()
		return nil
	}
	t.speed.probing = true
	t.speed.mu.Unlock()
	defer func() {
		t.speed.mu.Lock()
		t.speed.probing = false
		t.speed.mu.Unlock()
	}()
	start := time.Now()
	b, err := fs.ReadAll(ctx, t.cfg.Parent.File("probe"), ProbeSize*2)
	if err != nil {
		return err
	}
	t.speed.observe(len(b), time.Since(start))
	return nil
}

// probeIfStale starts a probe in the background when the estimate is
// missing or old.
func (t *Tier) probeIfStale() {
	if _, age, ok := t.speed.estimate(); ok && age < speedStale {
		return
	}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := t.probe(ctx); err != nil {
			t.log.Debug("probing the link failed", "err", err)
		}
	}()
}

// routeClient is the client's policy.
func (t *Tier) routeClient(ctx context.Context, req *call.Request) *call.Reply {
	t.mu.Lock()
	n := t.app(req.App).invocations + 1 // this one included
	t.mu.Unlock()
	if t.cfg.PullAfter > 0 && n > int64(t.cfg.PullAfter) {
		if _, held := t.Held(req.App); !held {
			t.pullLater(req.App)
		}
	}
	t.probeIfStale()
	bps, _, known := t.speed.estimate()
	slow := known && bps < float64(t.cfg.SlowBelow)
	if _, held := t.Held(req.App); held && slow {
		t.mu.Lock()
		t.app(req.App).hits++
		t.mu.Unlock()
		r := t.runHere(ctx, req, fmt.Sprintf("link at %s, below %s, and a current copy held", rate(bps), rate(float64(t.cfg.SlowBelow))))
		if r.OK || fs.KindOf(r.Error()) != fs.NotExist {
			return r
		}
	}
	why := "link fast enough"
	switch {
	case !known:
		why = "link speed not measured yet"
	case slow:
		why = fmt.Sprintf("link at %s but no current copy held", rate(bps))
	}
	r := t.forward(ctx, req, why)
	if r.Transient {
		// The edge cannot be reached: a held copy still answers.
		if _, held := t.Held(req.App); held {
			return t.runHere(ctx, req, "edge unreachable, a copy held: "+r.Reason)
		}
	}
	return r
}

// rate formats bytes per second.
func rate(bps float64) string {
	switch {
	case math.IsInf(bps, 0) || bps >= 1<<30:
		return fmt.Sprintf("%.1f GB/s", bps/(1<<30))
	case bps >= 1<<20:
		return fmt.Sprintf("%.1f MB/s", bps/(1<<20))
	}
	return fmt.Sprintf("%.1f KB/s", bps/(1<<10))
}

// probeFile is /probe: ProbeSize bytes that a child reads to measure its
// link to this tier.
type probeFile struct{ fs.FileDefaults }

func (probeFile) Stat(context.Context) (fs.Info, error) {
	return fs.Info{Name: "probe", Mode: 0o444, Size: ProbeSize, ModTime: time.Unix(0, 0)}, nil
}

func (probeFile) Open(_ context.Context, flag fs.Flag) (fs.Handle, error) {
	if flag.Writable() {
		return nil, &fs.Error{Op: "open", Path: "probe", Kind: fs.Permission}
	}
	return &bytesHandle{b: probeBytes[:]}, nil
}

var probeBytes [ProbeSize]byte
