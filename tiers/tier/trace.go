package tier

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"strata/fs"
	"strata/tiers/call"
)

// Traces: /trace/ID.
//
// Every tier keeps, in memory, a record of each invocation it handled
// recently (the last DefaultTraces request IDs, for at most
// DefaultTraceTTL), and serves it as /trace/ID. Reading it gives this
// tier's record, then, if the tier forwarded the invocation, its parent's
// /trace/ID (see the query files in query.go for how long it waits), so
// one read at an edge or on a client's mount shows the whole path. The
// text is one block per arrival of the request at a tier, in order:
//
//	# edge/g1
//	request app.sha256.18ebbd777ad26fc5-f43f8a56c7139213
//	arrived 2026-01-02T15:04:05.123Z
//	decision forwarded to appedge/g1: app requests go up
//	where cloud
//	took-ms 7.412
//	outcome ok
//	# appedge/g1
//	request app.sha256.18ebbd777ad26fc5-f43f8a56c7139213
//	arrived 2026-01-02T15:04:05.124Z
//	decision forwarded to cloud: no replica here
//	where cloud
//	took-ms 6.950
//	outcome ok
//	# cloud
//	...
//	decision ran here: it holds every app (version 1)
//	...
//
// "arrived" is RFC 3339 in UTC with milliseconds. "decision" is "ran
// here: WHY", "forwarded to PARENT: WHY" or "replayed from the recorder"
// (a retry of a request answered before: the recorded answer, the app did
// not run again); a tier that did two things says both, joined by "; then"
// (an app edge whose replica vanished under a hit forwards the miss). "where"
// is the tier whose answer this tier gave, "took-ms" the time the
// invocation spent at this tier and above it, "outcome" is "ok", "failed:
// REASON" (one line) or "running" while it is under way (its took-ms is
// then the time so far). A tier that keeps more arrivals of one ID than
// maxTraceArrivals says how many it left out. When the parent cannot be
// asked, its section is one line: "unreachable REASON", "no record of
// this request (it did not arrive there, or its record is gone)", or "not
// asked: WHY". An ID this tier has no record of is a NotExist error.
//
// ls /trace lists the recorded IDs (the newest DefaultTraceList), sorted
// by name as every directory is; each entry's time is the request's
// first arrival here, so `ls -tr /trace` lists the newest last.

// Trace defaults.
const (
	DefaultTraces   = 10000
	DefaultTraceTTL = 10 * time.Minute
	// DefaultTraceList is how many IDs ls /trace shows at most.
	DefaultTraceList = 1000
	// maxTraceArrivals is how many arrivals of one ID a tier keeps.
	maxTraceArrivals = 16
)

// traceRing keeps the recent traces of a tier, oldest first.
type traceRing struct {
	mu  sync.Mutex
	m   map[string]*traceRec
	win call.Window // IDs by first arrival, oldest first
}

// traceRec is what a tier knows of one request ID.
type traceRec struct {
	first    time.Time
	arrivals []*arrival
	dropped  int // arrivals not kept
}

// arrival is one arrival of a request at the tier. Its fields are guarded
// by the ring's mutex.
type arrival struct {
	at        time.Time
	decisions []string
	forwarded bool
	replayed  bool
	done      bool
	took      time.Duration
	where     string
	ok        bool
	reason    string
}

func newTraceRing(max int, ttl time.Duration) *traceRing {
	if max <= 0 {
		max = DefaultTraces
	}
	if ttl <= 0 {
		ttl = DefaultTraceTTL
	}
	return &traceRing{m: map[string]*traceRec{}, win: call.Window{Max: max, TTL: ttl}}
}

// expire drops the records past the TTL. r.mu is held.
func (r *traceRing) expire(now time.Time) {
	for _, id := range r.win.Expire(now) {
		delete(r.m, id)
	}
}

// arrive records an arrival of id at time at.
func (r *traceRing) arrive(id string, at time.Time) *arrival {
	a := &arrival{at: at}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.expire(at)
	rec := r.m[id]
	if rec == nil {
		rec = &traceRec{first: at}
		r.m[id] = rec
		for _, old := range r.win.Add(id, at) {
			delete(r.m, old)
		}
	}
	if len(rec.arrivals) < maxTraceArrivals {
		rec.arrivals = append(rec.arrivals, a)
	} else {
		rec.dropped++
	}
	return a
}

// decide adds a decision to a.
func (r *traceRing) decide(a *arrival, decision string, forwarded bool) {
	r.mu.Lock()
	a.decisions = append(a.decisions, decision)
	a.forwarded = a.forwarded || forwarded
	r.mu.Unlock()
}

// finish records how a ended.
func (r *traceRing) finish(a *arrival, reply *call.Reply, replayed bool, took time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	a.done, a.took, a.replayed = true, took, replayed
	a.where, a.ok, a.reason = reply.Where, reply.OK, reply.Reason
}

func (r *traceRing) has(id string) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.expire(time.Now())
	rec := r.m[id]
	if rec == nil {
		return time.Time{}, false
	}
	return rec.first, true
}

// Len is the number of IDs recorded.
func (r *traceRing) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.expire(time.Now())
	return r.win.Len()
}

// list returns the newest n records' IDs and first arrivals, sorted by ID.
func (r *traceRing) list(n int) []fs.Info {
	r.mu.Lock()
	r.expire(time.Now())
	ids := r.win.Newest(n)
	infos := make([]fs.Info, 0, len(ids))
	for _, id := range ids {
		infos = append(infos, fs.Info{Name: id, Mode: 0o444, ModTime: r.m[id].first, Stream: true})
	}
	r.mu.Unlock()
	sort.Slice(infos, func(i, j int) bool { return infos[i].Name < infos[j].Name })
	return infos
}

// traceTime is the format of "arrived".
const traceTime = "2006-01-02T15:04:05.000Z07:00"

// text is the tier's blocks for id; forwarded reports whether any arrival
// was sent to the parent. ok is false if id has no record.
func (r *traceRing) text(id, tierName string) (text []byte, forwarded, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rec := r.m[id]
	if rec == nil {
		return nil, false, false
	}
	var b bytes.Buffer
	for _, a := range rec.arrivals {
		fmt.Fprintf(&b, "# %s\nrequest %s\narrived %s\n", tierName, id, a.at.UTC().Format(traceTime))
		switch {
		case a.replayed && len(a.decisions) == 0:
			b.WriteString("decision replayed from the recorder\n")
		case len(a.decisions) == 0 && a.done:
			b.WriteString("decision none: it waited for the same request already under way here\n")
		case len(a.decisions) == 0:
			b.WriteString("decision pending\n")
		default:
			fmt.Fprintf(&b, "decision %s\n", call.OneLine(strings.Join(a.decisions, "; then ")))
		}
		took := a.took
		if !a.done {
			took = time.Since(a.at)
		}
		if a.done {
			fmt.Fprintf(&b, "where %s\n", call.OneLine(a.where))
		}
		fmt.Fprintf(&b, "took-ms %.3f", float64(took.Microseconds())/1000)
		switch {
		case !a.done:
			b.WriteString(" so far\noutcome running\n")
		case a.ok:
			b.WriteString("\noutcome ok\n")
		default:
			fmt.Fprintf(&b, "\noutcome failed: %s\n", call.OneLine(a.reason))
		}
		forwarded = forwarded || a.forwarded
	}
	if rec.dropped > 0 {
		fmt.Fprintf(&b, "# %s\nrequest %s\nmore-arrivals %d not kept (at most %d are)\n", tierName, id, rec.dropped, maxTraceArrivals)
	}
	return b.Bytes(), forwarded, true
}

// traceKey is the context key of the arrival being routed.
type traceKey struct{}

type traceCtx struct {
	ring *traceRing
	a    *arrival
}

// decide records a decision about the invocation ctx carries, if it is
// this tier's.
func (t *Tier) decide(ctx context.Context, decision string, forwarded bool) {
	if tc, ok := ctx.Value(traceKey{}).(traceCtx); ok && tc.ring == t.traces {
		t.traces.decide(tc.a, decision, forwarded)
	}
}

// traceText is the text of /trace/ID.
func (t *Tier) traceText(ctx context.Context, id string, q query) ([]byte, error) {
	deadline := time.Now().Add(q.budget)
	b, forwarded, ok := t.traces.text(id, t.cfg.Name)
	if !ok {
		return nil, t.noTrace("read", id)
	}
	if forwarded && t.cfg.Parent != nil {
		b = append(b, t.parentSection(ctx, q, deadline, "trace/"+id, "no record of this request (it did not arrive there, or its record is gone)")...)
	}
	return b, nil
}

func (t *Tier) noTrace(op, id string) error {
	return &fs.Error{Op: op, Path: "trace/" + id, Kind: fs.NotExist,
		Err: fmt.Errorf("%s has no record of request %s: it did not pass here, or it is older than %v or than the last %d requests", t.cfg.Name, id, t.traces.win.TTL, t.traces.win.Max)}
}

// traceDir is /trace.
type traceDir struct {
	fs.DirDefaults
	t *Tier
}

func (d *traceDir) Stat(context.Context) (fs.Info, error) { return dirInfo("trace"), nil }

func (d *traceDir) Lookup(_ context.Context, name string) (fs.Node, error) {
	if err := fs.CheckName("lookup", name); err != nil {
		return nil, err
	}
	if _, _, err := call.ParseID(name); err != nil {
		return nil, &fs.Error{Op: "lookup", Path: "trace/" + name, Kind: fs.NotExist, Err: err}
	}
	first, ok := d.t.traces.has(name)
	if !ok {
		return nil, d.t.noTrace("lookup", name)
	}
	return &queryFile{name: name, modTime: first, gen: func(ctx context.Context, q query) ([]byte, error) {
		return d.t.traceText(ctx, name, q)
	}}, nil
}

func (d *traceDir) ReadDir(context.Context) ([]fs.Info, error) {
	return d.t.traces.list(DefaultTraceList), nil
}
