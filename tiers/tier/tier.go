// Package tier is what every level of the hierarchy is made of: a tier
// holds some local parts (apps, a store), may have a parent tier, and
// exports one namespace. The roles (cloud, app edge, edge) differ only in
// the Config they give: which parts they hold and how an invocation is
// routed.
//
//   - cloud: every app and a backup of each; it runs every invocation.
//   - app edge: replicas of some apps; a hit runs here, a miss goes to the
//     parent, and an app missed often enough is pulled in as a replica.
//   - edge: a store per client; invocations always go to the parent.
//
// An invocation carries a request ID (package call) through every tier;
// each tier logs it and records the reply, so a retry with the same ID
// gets the recorded reply without running the app again. Each tier also
// keeps a trace of it, /trace/ID (trace.go): when it arrived, what the
// tier decided, how long it took and how it ended, followed by the
// parent's trace. /status, likewise, is this tier's section followed by
// its parent's (query.go says how long a read waits for the parents).
package tier

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"strata/fs"
	"strata/mount/remote"
	"strata/tiers/call"
	"strata/tiers/repo"
	"strata/tiers/wasm"
)

// Role is the part a tier plays.
type Role string

// The roles.
const (
	Cloud   Role = "cloud"
	AppEdge Role = "appedge"
	Edge    Role = "edge"
	Client  Role = "client"
)

// Defaults.
const (
	DefaultCallTimeout = 10 * time.Second
	DefaultPullAfter   = 3
	DefaultRefresh     = 2 * time.Second
	// DefaultMaxInput caps the request written to a ctl or call file.
	DefaultMaxInput = 64 << 20
	// MaxModule caps a module written to module.wasm.
	MaxModule = 64 << 20
)

// Config is a tier's parts and policy.
type Config struct {
	Role Role
	// Name names the tier in logs, errors and where files: "cloud",
	// "appedge/g1", "edge/g1".
	Name string
	// Apps holds the apps that run here: every app at the cloud (with a
	// backup), the replicas at an app edge, nil at an edge.
	Apps *repo.Repo
	// Runtime runs apps; nil at an edge.
	Runtime *wasm.Runtime
	// Limits bound each run of an app here, unless the app has its own.
	Limits wasm.Limits
	// LimitsFile is where a cloud kept the apps' own limits before its
	// repo held them: read at start, moved into Apps, and removed ("" for
	// none).
	LimitsFile string
	// Parent is the parent tier's namespace; nil at the cloud.
	Parent *remote.Tree
	// ParentName names the parent in errors ("cloud", "appedge/g1").
	ParentName string
	// Store returns the store a peer sees (edge only). peer is the
	// authenticated name of the client, or "local" on the plain port.
	Store func(ctx context.Context, peer string) (fs.Dir, error)
	// CallTimeout is the budget of an invocation that starts here
	// (DefaultCallTimeout if zero).
	CallTimeout time.Duration
	// PullAfter is how many misses of an app an app edge waits for before
	// pulling a replica (DefaultPullAfter if zero; negative: never).
	PullAfter int
	// Pinned apps are held by an app edge whatever their use.
	Pinned []string
	// SlowBelow is the client's threshold 2, in bytes per second: below
	// it a held copy runs at the client (DefaultSlowBelow if zero).
	SlowBelow int64
	// Refresh is how often an app edge (or a client) checks its copies
	// against the parent (DefaultRefresh if zero): a version deployed at the cloud is
	// served here within about Refresh plus the time to copy it.
	Refresh time.Duration
	// MaxInput caps a request (DefaultMaxInput if zero).
	MaxInput int
	// Log receives one line per invocation and the tier's events; the
	// caller names the tier in it.
	Log *slog.Logger
}

// Tier is a running tier. Its methods may be called from many goroutines.
type Tier struct {
	cfg   Config
	log   *slog.Logger
	rec   *call.Recorder
	start time.Time
	// traces are the recent invocations' records, for /trace.
	traces *traceRing

	stats struct {
		invocations, ranHere, forwarded, replayed, failed, pulls atomic.Int64
	}
	mu      sync.Mutex
	perApp  map[string]*appStats
	pulling map[string]bool
	// pendingApps are app directories made at the cloud whose module has
	// not been written yet.
	pendingApps map[string]bool
	// upSeen is when the parent last said it has an app.
	upSeen map[string]time.Time
	// upList is the parent's latest listing of /apps, and when it came:
	// shown while the parent cannot answer (see remembered).
	upList   []fs.Info
	upListAt time.Time
	// appLimits are the apps' own limits as taken with their replicas
	// (not at the cloud, whose repo keeps them).
	appLimits map[string]wasm.Limits
	// speed estimates the link to the parent (client).
	speed speed

	stop chan struct{}
	wg   sync.WaitGroup
}

type appStats struct {
	invocations, hits, misses, failed int64
	last                              time.Time
}

// New returns a tier. Start its background work with Start.
func New(cfg Config) (*Tier, error) {
	if cfg.Name == "" {
		cfg.Name = string(cfg.Role)
	}
	switch cfg.Role {
	case Cloud:
		if cfg.Apps == nil || cfg.Runtime == nil {
			return nil, errors.New("tier: a cloud needs apps and a runtime")
		}
	case AppEdge:
		if cfg.Apps == nil || cfg.Runtime == nil || cfg.Parent == nil {
			return nil, errors.New("tier: an app edge needs apps, a runtime and a parent")
		}
	case Edge:
		if cfg.Parent == nil || cfg.Store == nil {
			return nil, errors.New("tier: an edge needs a parent and a store")
		}
	case Client:
		if cfg.Apps == nil || cfg.Runtime == nil || cfg.Parent == nil {
			return nil, errors.New("tier: a client needs apps, a runtime and a parent")
		}
		if cfg.PullAfter == 0 {
			cfg.PullAfter = DefaultClientPullAfter
		}
		if cfg.SlowBelow <= 0 {
			cfg.SlowBelow = DefaultSlowBelow
		}
	default:
		return nil, fmt.Errorf("tier: unknown role %q", cfg.Role)
	}
	if cfg.ParentName == "" {
		cfg.ParentName = "parent"
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = DefaultCallTimeout
	}
	if cfg.PullAfter == 0 {
		cfg.PullAfter = DefaultPullAfter
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = DefaultRefresh
	}
	if cfg.MaxInput <= 0 {
		cfg.MaxInput = DefaultMaxInput
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := &Tier{
		cfg:     cfg,
		log:     log,
		rec:     call.NewRecorder(0, 0, 0),
		traces:  newTraceRing(0, 0),
		start:   time.Now(),
		perApp:  map[string]*appStats{},
		pulling: map[string]bool{},

		pendingApps: map[string]bool{},
		upSeen:      map[string]time.Time{},
		appLimits:   map[string]wasm.Limits{},
		stop:        make(chan struct{}),
	}
	if err := t.moveLimits(); err != nil {
		return nil, fmt.Errorf("tier %s: %w", cfg.Name, err)
	}
	return t, nil
}

// Name is the tier's name.
func (t *Tier) Name() string { return t.cfg.Name }

// Start starts the background work: compiling the apps held here, so
// that a first invocation does not pay for it, and at an app edge pinning
// and refreshing replicas.
func (t *Tier) Start(ctx context.Context) {
	if t.cfg.Apps != nil {
		for _, a := range t.cfg.Apps.List() {
			t.warm(a.ID)
		}
	}
	if t.cfg.Role != AppEdge && t.cfg.Role != Client {
		return
	}
	for _, id := range t.cfg.Pinned {
		if _, err := t.cfg.Apps.Stat(id); err == nil {
			t.cfg.Apps.Pin(id, true)
		}
	}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		t.refreshAll(ctx)
		tick := time.NewTicker(t.cfg.Refresh)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				t.refreshAll(ctx)
			case <-t.stop:
				return
			case <-ctx.Done():
				return
			}
		}
	}()
}

// Close stops the background work and waits for it.
func (t *Tier) Close() {
	select {
	case <-t.stop:
	default:
		close(t.stop)
	}
	t.wg.Wait()
}

func (t *Tier) app(id string) *appStats {
	s := t.perApp[id]
	if s == nil {
		s = &appStats{}
		t.perApp[id] = s
	}
	return s
}

// Invoke runs or forwards an invocation, by the tier's policy. It never
// returns nil; a failure is a Reply that is not OK. A request whose ID was
// seen recently gets the recorded reply.
func (t *Tier) Invoke(ctx context.Context, req *call.Request) *call.Reply {
	start := time.Now()
	budget := req.Budget
	if budget <= 0 || budget > t.cfg.CallTimeout*10 {
		budget = t.cfg.CallTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	arr := t.traces.arrive(req.ID, start)
	ctx = context.WithValue(ctx, traceKey{}, traceCtx{ring: t.traces, a: arr})
	reply, replayed := t.rec.Do(ctx, req.ID, func(ctx context.Context) *call.Reply {
		return t.route(ctx, req)
	})
	if reply.Where == "" {
		reply.Where = t.cfg.Name
	}
	t.traces.finish(arr, reply, replayed, time.Since(start))
	t.stats.invocations.Add(1)
	if replayed {
		t.stats.replayed.Add(1)
	}
	t.mu.Lock()
	as := t.app(req.App)
	as.invocations++
	as.last = time.Now()
	if !reply.OK {
		as.failed++
		t.stats.failed.Add(1)
	}
	t.mu.Unlock()
	attrs := []any{"id", req.ID, "app", req.App, "where", reply.Where, "ok", reply.OK, "ms", float64(time.Since(start).Microseconds()) / 1000}
	if replayed {
		attrs = append(attrs, "replayed", true)
	}
	if !reply.OK {
		attrs = append(attrs, "reason", reply.Reason)
		t.log.Warn("invocation failed", attrs...)
	} else {
		t.log.Info("invocation", attrs...)
	}
	return reply
}

// route applies the policy.
func (t *Tier) route(ctx context.Context, req *call.Request) *call.Reply {
	switch t.cfg.Role {
	case Cloud:
		return t.runHere(ctx, req, "it holds every app")
	case AppEdge:
		if _, err := t.cfg.Apps.Stat(req.App); err == nil {
			t.mu.Lock()
			t.app(req.App).hits++
			t.mu.Unlock()
			r := t.runHere(ctx, req, "replica hit")
			if r.OK || fs.KindOf(r.Error()) != fs.NotExist {
				return r
			}
			// The replica went away under us (evicted): fall through.
		}
		t.mu.Lock()
		as := t.app(req.App)
		as.misses++
		misses := as.misses
		t.mu.Unlock()
		if t.cfg.PullAfter > 0 && misses >= int64(t.cfg.PullAfter) {
			t.pullLater(req.App)
		}
		return t.forward(ctx, req, "no replica here")
	case Client:
		return t.routeClient(ctx, req)
	default:
		return t.forward(ctx, req, "app requests go up")
	}
}

// runHere runs the app with the local runtime.
func (t *Tier) runHere(ctx context.Context, req *call.Request, why string) *call.Reply {
	t.stats.ranHere.Add(1)
	app, err := t.cfg.Apps.Get(ctx, req.App)
	if err != nil {
		t.decide(ctx, "ran here: "+why, false)
		r := call.Failed(req.ID, t.cfg.Name, err)
		r.Transient = fs.KindOf(err) != fs.NotExist
		return r
	}
	lim, _ := t.limitsFor(req.App)
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		if lim.Timeout <= 0 {
			lim.Timeout = wasm.DefaultTimeout
		}
		lim.Timeout = min(lim.Timeout, left)
	}
	why = fmt.Sprintf("%s (version %d)", why, app.Version)
	t.decide(ctx, "ran here: "+why, false)
	res, err := t.cfg.Runtime.Run(ctx, app.Module, app.Hash, req.Input, lim)
	r := &call.Reply{ID: req.ID, OK: err == nil, Where: t.cfg.Name, Why: why, Route: t.cfg.Name, Out: res.Stdout, Err: res.Stderr}
	if err != nil {
		f := call.Failed(req.ID, t.cfg.Name, fmt.Errorf("app %s at %s: %w", req.App, t.cfg.Name, err))
		r.Kind, r.Reason = f.Kind, f.Reason
		// The app ran and was stopped, or failed: that is its answer,
		// unless the caller went away.
		r.Transient = ctx.Err() != nil && fs.KindOf(err) == fs.Canceled
	}
	return r
}

// forward sends the invocation to the parent and returns its reply.
func (t *Tier) forward(ctx context.Context, req *call.Request, why string) *call.Reply {
	t.stats.forwarded.Add(1)
	t.decide(ctx, "forwarded to "+t.cfg.ParentName+": "+why, true)
	start := time.Now()
	r, err := Forward(ctx, t.cfg.Parent, req)
	if err == nil {
		t.speed.observe(len(req.Input)+len(r.Out)+len(r.Err), time.Since(start))
	}
	if err != nil {
		f := call.Failed(req.ID, t.cfg.Name, fmt.Errorf("%s: %w", t.cfg.ParentName, err))
		f.Why = why
		f.Route = t.cfg.Name
		f.Transient = true
		return f
	}
	r.Route = t.cfg.Name + " > " + r.Route
	return r
}

// margin is the part of a budget a tier keeps for itself, so that its
// parent's answer (or timeout) arrives before its own caller gives up.
func margin(left time.Duration) time.Duration {
	return min(left/10, 500*time.Millisecond)
}

// Forward invokes req on the tier whose namespace is parent through its
// call file, and returns the reply. An error means no reply came back.
func Forward(ctx context.Context, parent *remote.Tree, req *call.Request) (*call.Reply, error) {
	return ForwardFile(ctx, parent.File("apps/"+req.App+"/calls/"+req.ID), req)
}

// ForwardFile invokes req through f, a tier's /apps/<app>/calls/<id>
// file, and returns the reply. An error means no reply came back.
func ForwardFile(ctx context.Context, f fs.File, req *call.Request) (*call.Reply, error) {
	left := req.Budget
	if dl, ok := ctx.Deadline(); ok {
		left = time.Until(dl)
	}
	if left <= 0 {
		return nil, &fs.Error{Op: "invoke", Path: req.App, Kind: fs.Timeout, Err: errors.New("no time left for the call")}
	}
	fwd := *req
	fwd.Budget = left - margin(left)
	h, err := f.Open(ctx, fs.ReadWrite)
	if err != nil {
		return nil, err
	}
	// The clunk's answer says nothing about the call: send it without
	// waiting for it.
	defer func() { go h.Close(context.WithoutCancel(ctx)) }()
	msg := call.EncodeRequest(&fwd)
	if _, err := h.WriteAt(ctx, msg, 0); err != nil {
		return nil, err
	}
	lctx := remote.WithTimeout(ctx, left+remote.DefaultTimeout) // the ctx deadline stops this caller first; the link is closed only if truly stuck
	buf := make([]byte, 64<<10)
	var got []byte
	for {
		n, err := h.ReadAt(lctx, buf, int64(len(got)))
		got = append(got, buf[:n]...)
		if total := call.ReplyLen(got); total >= 0 && len(got) >= total {
			break
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, err
		}
		if n == 0 {
			break
		}
	}
	return call.DecodeReply(req.ID, got)
}

// pullLater copies app from the parent into the replica set in the
// background, unless that is under way.
func (t *Tier) pullLater(app string) {
	t.mu.Lock()
	if t.pulling[app] {
		t.mu.Unlock()
		return
	}
	t.pulling[app] = true
	t.mu.Unlock()
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		defer func() {
			t.mu.Lock()
			delete(t.pulling, app)
			t.mu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := t.pull(ctx, app); err != nil {
			t.log.Warn("pulling a replica failed", "app", app, "err", err)
		}
	}()
}

// pull copies app from the parent if the parent's version differs from
// the one held.
func (t *Tier) pull(ctx context.Context, app string) error {
	info, err := fs.ReadAll(ctx, t.cfg.Parent.File("apps/"+app+"/info"), 64<<10)
	if err != nil {
		return err
	}
	version, hash, err := ParseInfo(info)
	if err != nil {
		return fmt.Errorf("info of %s at %s: %w", app, t.cfg.ParentName, err)
	}
	if lim, ok, err := ParseLimits(info, "limit-"); err == nil {
		t.setLimits(app, lim, ok)
	}
	if held, err := t.cfg.Apps.Stat(app); err == nil && held.Hash == hash && held.Version == version {
		return nil
	}
	start := time.Now()
	mod, err := fs.ReadAll(ctx, t.cfg.Parent.File("apps/"+app+"/module.wasm"), MaxModule)
	if err != nil {
		return err
	}
	t.speed.observe(len(mod), time.Since(start))
	a, err := t.cfg.Apps.PutVersion(ctx, app, mod, version, hash)
	if err != nil {
		return err
	}
	if slices.Contains(t.cfg.Pinned, app) {
		t.cfg.Apps.Pin(app, true)
	}
	t.stats.pulls.Add(1)
	t.warm(app)
	t.log.Info("replica pulled", "app", app, "version", a.Version, "hash", a.Hash, "bytes", a.Size)
	return nil
}

// refreshAll brings every held replica, and every pinned app, up to the
// parent's version.
func (t *Tier) refreshAll(ctx context.Context) {
	ids := map[string]bool{}
	for _, a := range t.cfg.Apps.List() {
		ids[a.ID] = true
	}
	for _, id := range t.cfg.Pinned {
		ids[id] = true
	}
	for id := range ids {
		select {
		case <-t.stop:
			return
		default:
		}
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := t.pull(cctx, id)
		cancel()
		if err != nil && fs.KindOf(err) == fs.NotExist {
			if _, serr := t.cfg.Apps.Stat(id); serr == nil && !slices.Contains(t.cfg.Pinned, id) {
				// Undeployed at the parent: drop the replica.
				t.cfg.Apps.Remove(ctx, id)
				t.log.Info("replica dropped: the parent no longer has it", "app", id)
			}
		} else if err != nil {
			t.log.Debug("refreshing a replica failed", "app", id, "err", err)
		}
	}
}

// Held returns the hash of the copy of id held here, if any.
func (t *Tier) Held(id string) (string, bool) {
	if t.cfg.Apps == nil {
		return "", false
	}
	a, err := t.cfg.Apps.Stat(id)
	if err != nil {
		return "", false
	}
	return a.Hash, true
}

// WaitHeld waits until every app in ids is held here, or ctx ends.
func (t *Tier) WaitHeld(ctx context.Context, ids ...string) error {
	for {
		missing := ""
		for _, id := range ids {
			if _, ok := t.Held(id); !ok {
				missing = id
				break
			}
		}
		if missing == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s does not hold %s yet: %w", t.cfg.Name, missing, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// warm compiles app in the background.
func (t *Tier) warm(app string) {
	if t.cfg.Runtime == nil {
		return
	}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			select {
			case <-t.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		a, err := t.cfg.Apps.Get(ctx, app)
		if err == nil {
			err = t.cfg.Runtime.Compile(ctx, a.Module, a.Hash)
		}
		if err != nil && ctx.Err() == nil {
			t.log.Warn("compiling an app failed", "app", app, "err", err)
		}
	}()
}
