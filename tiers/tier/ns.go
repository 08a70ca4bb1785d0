package tier

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"net"
	"slices"
	"sort"
	"sync"
	"time"

	"strata/fs"
	"strata/fs/union"
	"strata/tiers/call"
	"strata/tiers/repo"
	"strata/tiers/wasm"
)

// Peer names the other end of a connection: the authenticated name on an
// encrypted link, "local" on a plain port.
func Peer(c net.Conn) string {
	if p, ok := c.(interface{ Peer() string }); ok {
		return p.Peer()
	}
	return "local"
}

// session is what one attach remembers: the latest reply per app, for
// its out, err and where files.
type session struct {
	peer string
	mu   sync.Mutex
	last map[string]*call.Reply
}

func (s *session) set(app string, r *call.Reply) {
	s.mu.Lock()
	s.last[app] = r
	s.mu.Unlock()
}

func (s *session) get(app string) *call.Reply {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last[app]
}

// Root returns the namespace that a new session of peer sees:
// /store (at an edge), /apps and /status.
func (t *Tier) Root(ctx context.Context, peer string) (fs.Dir, error) {
	s := &session{peer: peer, last: map[string]*call.Reply{}}
	r := &rootDir{t: t, s: s}
	if t.cfg.Role == Client {
		r.store = t.cfg.Parent.Dir("store")
	}
	if t.cfg.Role == Edge {
		st, err := t.cfg.Store(ctx, peer)
		if err != nil {
			return nil, err
		}
		r.store = st
	}
	return r, nil
}

// Attach is the function a ninep.Server calls for a new connection.
func (t *Tier) Attach(ctx context.Context, c net.Conn) (fs.Dir, error) {
	return t.Root(ctx, Peer(c))
}

func dirInfo(name string) fs.Info {
	return fs.Info{Name: name, Mode: iofs.ModeDir | 0o555, ModTime: time.Now()}
}

type rootDir struct {
	fs.DirDefaults
	t     *Tier
	s     *session
	store fs.Dir
}

func (r *rootDir) Stat(context.Context) (fs.Info, error) { return dirInfo(""), nil }

func (r *rootDir) Lookup(ctx context.Context, name string) (fs.Node, error) {
	switch name {
	case "store":
		if r.store != nil {
			return r.store, nil
		}
	case "apps":
		return &appsDir{t: r.t, s: r.s}, nil
	case "status":
		return &queryFile{name: "status", gen: r.t.statusText}, nil
	case "trace":
		return &traceDir{t: r.t}, nil
	case "probe":
		return probeFile{}, nil
	}
	if err := fs.CheckName("lookup", name); err != nil {
		return nil, err
	}
	return nil, &fs.Error{Op: "lookup", Path: name, Kind: fs.NotExist}
}

func (r *rootDir) ReadDir(ctx context.Context) ([]fs.Info, error) {
	pi, _ := probeFile{}.Stat(ctx)
	infos := []fs.Info{dirInfo("apps"), textInfo("status"), dirInfo("trace"), pi}
	if r.store != nil {
		si, err := r.store.Stat(ctx)
		if err != nil {
			return nil, err
		}
		si.Name = "store"
		infos = append(infos, si)
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].Name < infos[j].Name })
	return infos, nil
}

// appsDir is /apps: the union of the apps held here and the parent's.
type appsDir struct {
	t *Tier
	s *session
}

func (d *appsDir) Stat(context.Context) (fs.Info, error) { return dirInfo("apps"), nil }

func (d *appsDir) SetAttr(context.Context, fs.Attr) error {
	return &fs.Error{Op: "setattr", Path: "apps", Kind: fs.Permission}
}

func (d *appsDir) held(id string) bool {
	if d.t.cfg.Apps == nil {
		return false
	}
	_, err := d.t.cfg.Apps.Stat(id)
	return err == nil
}

func (d *appsDir) Lookup(ctx context.Context, name string) (fs.Node, error) {
	if err := fs.CheckName("lookup", name); err != nil {
		return nil, err
	}
	if err := repo.ValidID(name); err != nil {
		return nil, &fs.Error{Op: "lookup", Path: "apps/" + name, Kind: fs.NotExist, Err: err}
	}
	if d.held(name) {
		return &appDir{t: d.t, s: d.s, id: name}, nil
	}
	if d.t.cfg.Role == Cloud {
		if d.t.pending(name) {
			return &appDir{t: d.t, s: d.s, id: name}, nil
		}
		return nil, &fs.Error{Op: "lookup", Path: "apps/" + name, Kind: fs.NotExist, Err: fmt.Errorf("app %s is not deployed", name)}
	}
	if d.t.seenUp(name) {
		return &appDir{t: d.t, s: d.s, id: name}, nil
	}
	// Only an existence check: it waits for the parent a short while.
	lctx, cancel := context.WithTimeout(ctx, lookupWait)
	_, err := d.t.cfg.Parent.Dir("apps").Lookup(lctx, name)
	cancel()
	if fs.KindOf(err) == fs.NotExist {
		return nil, d.t.parentErr("lookup", "apps/"+name, err)
	}
	if err != nil {
		// The parent cannot say now. Show the app anyway: an invocation
		// then fails with a reply that says which tier is unreachable
		// and why, which an errno alone could not carry.
		d.t.log.Debug("parent unreachable at lookup", "app", name, "err", err)
	}
	d.t.markSeenUp(name)
	return &appDir{t: d.t, s: d.s, id: name}, nil
}

// lookupTTL is how long a tier trusts that its parent has an app: a walk
// to an app within it costs no round trip to the parent. lookupWait is
// how long a walk waits for the parent to say whether it has an app
// before it goes on as if it had.
const (
	lookupTTL  = time.Second
	lookupWait = 300 * time.Millisecond
)

func (t *Tier) seenUp(name string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	at, ok := t.upSeen[name]
	return ok && time.Since(at) < lookupTTL
}

func (t *Tier) markSeenUp(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.upSeen) > 4096 {
		clear(t.upSeen)
	}
	t.upSeen[name] = time.Now()
}

// parentErr names the parent in an error from its tree.
func (t *Tier) parentErr(op, path string, err error) error {
	return &fs.Error{Op: op, Path: path, Kind: fs.KindOf(err), Err: fmt.Errorf("%s: %w", t.cfg.ParentName, err)}
}

// upListTTL is how long a tier shows its parent's last listing of /apps
// while the parent cannot answer.
const upListTTL = 10 * time.Minute

// remembered is the parent's /apps for listings: what it answers, which
// is remembered, or while it cannot answer, what it last answered within
// upListTTL, so that an unreachable parent does not make its apps vanish
// from `ls` (a call to one then fails and says why).
type remembered struct {
	fs.Dir
	t *Tier
}

func (r remembered) ReadDir(ctx context.Context) ([]fs.Info, error) {
	infos, err := r.Dir.ReadDir(ctx)
	r.t.mu.Lock()
	defer r.t.mu.Unlock()
	if err == nil {
		r.t.upList, r.t.upListAt = slices.Clone(infos), time.Now()
		return infos, nil
	}
	if r.t.upList != nil && time.Since(r.t.upListAt) < upListTTL && fs.KindOf(err) != fs.NotExist {
		r.t.log.Warn("listing apps: the parent did not answer; its listing of "+r.t.upListAt.Format(time.RFC3339)+" stands in", "err", err)
		return slices.Clone(r.t.upList), nil
	}
	return nil, err
}

func (d *appsDir) ReadDir(ctx context.Context) ([]fs.Info, error) {
	members := []fs.Dir{&localApps{t: d.t}}
	if d.t.cfg.Parent != nil {
		members = append(members, remembered{d.t.cfg.Parent.Dir("apps"), d.t})
	}
	infos, err := union.NewWithOptions("apps", union.Options{Log: d.t.log}, members...).ReadDir(ctx)
	if err != nil {
		return nil, d.t.parentErr("readdir", "apps", err)
	}
	out := infos[:0]
	for _, in := range infos {
		if in.IsDir() {
			out = append(out, dirInfo(in.Name))
		}
	}
	return out, nil
}

func (d *appsDir) Create(_ context.Context, name string, _ fs.Flag, _ iofs.FileMode) (fs.File, fs.Handle, error) {
	return nil, nil, &fs.Error{Op: "create", Path: "apps/" + name, Kind: fs.Permission, Err: errors.New("only app directories live here: mkdir apps/ID at the cloud, then write its module.wasm")}
}

func (d *appsDir) Mkdir(ctx context.Context, name string, _ iofs.FileMode) (fs.Dir, error) {
	if d.t.cfg.Role != Cloud {
		return nil, &fs.Error{Op: "mkdir", Path: "apps/" + name, Kind: fs.Permission, Err: fmt.Errorf("apps are deployed at the cloud, not at %s", d.t.cfg.Name)}
	}
	if err := repo.ValidID(name); err != nil {
		return nil, &fs.Error{Op: "mkdir", Path: "apps/" + name, Kind: fs.Invalid, Err: err}
	}
	if d.held(name) {
		return nil, &fs.Error{Op: "mkdir", Path: "apps/" + name, Kind: fs.Exist}
	}
	d.t.setPending(name)
	return &appDir{t: d.t, s: d.s, id: name}, nil
}

func (d *appsDir) Remove(ctx context.Context, name string) error {
	if d.t.cfg.Role != Cloud {
		return &fs.Error{Op: "remove", Path: "apps/" + name, Kind: fs.Permission, Err: fmt.Errorf("apps are removed at the cloud, not at %s", d.t.cfg.Name)}
	}
	if d.t.clearPending(name) && !d.held(name) {
		return nil
	}
	if err := d.t.cfg.Apps.Remove(ctx, name); err != nil {
		return err
	}
	d.t.log.Info("app removed", "app", name)
	return nil
}

func (d *appsDir) Rename(_ context.Context, old string, _ fs.Dir, _ string) error {
	return &fs.Error{Op: "rename", Path: "apps/" + old, Kind: fs.Permission}
}

// localApps lists the apps held here, for the union.
type localApps struct {
	fs.DirDefaults
	t *Tier
}

func (l *localApps) Stat(context.Context) (fs.Info, error) { return dirInfo("apps"), nil }

func (l *localApps) Lookup(_ context.Context, name string) (fs.Node, error) {
	if l.t.cfg.Apps != nil {
		if _, err := l.t.cfg.Apps.Stat(name); err == nil {
			return l, nil
		}
	}
	if l.t.pending(name) {
		return l, nil
	}
	return nil, &fs.Error{Op: "lookup", Path: name, Kind: fs.NotExist}
}

func (l *localApps) ReadDir(context.Context) ([]fs.Info, error) {
	var infos []fs.Info
	if l.t.cfg.Apps != nil {
		for _, a := range l.t.cfg.Apps.List() {
			infos = append(infos, dirInfo(a.ID))
		}
	}
	for _, id := range l.t.pendingList() {
		infos = append(infos, dirInfo(id))
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].Name < infos[j].Name })
	return slices.CompactFunc(infos, func(a, b fs.Info) bool { return a.Name == b.Name }), nil
}

// appDir is /apps/<id>.
type appDir struct {
	fs.DirDefaults
	t  *Tier
	s  *session
	id string
}

var appFiles = []string{"calls", "ctl", "err", "info", "limits", "module.wasm", "out", "where"}

func (a *appDir) Stat(context.Context) (fs.Info, error) { return dirInfo(a.id), nil }

func (a *appDir) Lookup(ctx context.Context, name string) (fs.Node, error) {
	p := "apps/" + a.id + "/" + name
	switch name {
	case "ctl":
		return &ctlFile{a: a}, nil
	case "out":
		return &textFile{name: name, gen: func(context.Context) ([]byte, error) { return a.lastOut(), nil }}, nil
	case "err":
		return &textFile{name: name, gen: func(context.Context) ([]byte, error) { return a.lastErr(), nil }}, nil
	case "where":
		return &textFile{name: name, gen: a.where}, nil
	case "info":
		return &textFile{name: name, gen: func(ctx context.Context) ([]byte, error) { return a.t.info(ctx, a.id) }}, nil
	case "module.wasm":
		return &moduleFile{a: a}, nil
	case "calls":
		return &callsDir{a: a}, nil
	case "limits":
		return &limitsFile{a: a}, nil
	}
	if err := fs.CheckName("lookup", name); err != nil {
		return nil, err
	}
	return nil, &fs.Error{Op: "lookup", Path: p, Kind: fs.NotExist}
}

func (a *appDir) ReadDir(ctx context.Context) ([]fs.Info, error) {
	var infos []fs.Info
	for _, n := range appFiles {
		switch n {
		case "calls":
			infos = append(infos, dirInfo(n))
		case "ctl":
			infos = append(infos, fs.Info{Name: n, Mode: 0o666, ModTime: time.Now(), Stream: true})
		case "limits":
			in, _ := (&limitsFile{a: a}).Stat(ctx)
			infos = append(infos, in)
		case "module.wasm":
			mode := iofs.FileMode(0o444)
			if a.t.cfg.Role == Cloud {
				mode = 0o644
			}
			size := int64(0)
			if a.t.cfg.Apps != nil {
				if app, err := a.t.cfg.Apps.Stat(a.id); err == nil {
					size = app.Size
				}
			}
			infos = append(infos, fs.Info{Name: n, Mode: mode, Size: size, ModTime: time.Now(), Stream: size == 0})
		default:
			infos = append(infos, textInfo(n))
		}
	}
	return infos, nil
}

func (a *appDir) lastOut() []byte {
	if r := a.s.get(a.id); r != nil {
		return r.Out
	}
	return nil
}

func (a *appDir) lastErr() []byte {
	r := a.s.get(a.id)
	if r == nil {
		return nil
	}
	if r.OK {
		return r.Err
	}
	var b bytes.Buffer
	b.Write(r.Err)
	if len(r.Err) > 0 && r.Err[len(r.Err)-1] != '\n' {
		b.WriteByte('\n')
	}
	fmt.Fprintf(&b, "error: %s\n", r.Reason)
	return b.Bytes()
}

func (a *appDir) where(ctx context.Context) ([]byte, error) {
	if r := a.s.get(a.id); r != nil {
		return whereText(r), nil
	}
	return a.t.wouldRun(ctx, a.id)
}

func whereText(r *call.Reply) []byte {
	var b bytes.Buffer
	status := "ran"
	if !r.OK {
		status = "failed"
	}
	fmt.Fprintf(&b, "%s\n%s %s: %s\nroute %s\nid %s\n", r.Where, status, r.Where, r.Why, r.Route, r.ID)
	return b.Bytes()
}

// wouldRun says where an invocation of id made now would run, and why.
func (t *Tier) wouldRun(ctx context.Context, id string) ([]byte, error) {
	switch t.cfg.Role {
	case Cloud:
		return fmt.Appendf(nil, "%s\nwould run at %s: it holds every app\n", t.cfg.Name, t.cfg.Name), nil
	case AppEdge:
		if app, err := t.cfg.Apps.Stat(id); err == nil {
			return fmt.Appendf(nil, "%s\nwould run at %s: replica hit (version %d)\n", t.cfg.Name, t.cfg.Name, app.Version), nil
		}
	case Client:
		bps, _, known := t.speed.estimate()
		if app, err := t.cfg.Apps.Stat(id); err == nil && known && bps < float64(t.cfg.SlowBelow) {
			return fmt.Appendf(nil, "%s\nwould run at %s: link at %s, a copy held (version %d)\n", t.cfg.Name, t.cfg.Name, rate(bps), app.Version), nil
		}
	}
	up, err := fs.ReadAll(ctx, t.cfg.Parent.File("apps/"+id+"/where"), 64<<10)
	if err != nil {
		return nil, t.parentErr("read", "apps/"+id+"/where", err)
	}
	return up, nil
}

// invoke runs one invocation for a session and remembers its reply.
func (a *appDir) invoke(ctx context.Context, input []byte) *call.Reply {
	req := &call.Request{ID: call.NewID(call.KindApp, a.id), App: a.id, Input: input}
	r := a.t.Invoke(ctx, req)
	a.s.set(a.id, r)
	return r
}

// ctlFile is /apps/<id>/ctl: write the request, read the answer.
type ctlFile struct {
	fs.FileDefaults
	a *appDir
}

func (c *ctlFile) Stat(context.Context) (fs.Info, error) {
	return fs.Info{Name: "ctl", Mode: 0o666, ModTime: time.Now(), Stream: true}, nil
}

func (c *ctlFile) SetAttr(_ context.Context, at fs.Attr) error {
	if at.Mode == nil {
		return nil // truncation (O_TRUNC from a shell) and times mean nothing here
	}
	return &fs.Error{Op: "setattr", Path: "apps/" + c.a.id + "/ctl", Kind: fs.Permission}
}

func (c *ctlFile) Open(_ context.Context, flag fs.Flag) (fs.Handle, error) {
	// A descriptor open for writing holds a request from the start, so
	// that an empty one (": > ctl") runs too.
	return &ctlHandle{a: c.a, max: c.a.t.cfg.MaxInput, pending: flag.Writable()}, nil
}

// ctlHandle holds one descriptor's request and answer. Writes gather the
// request at their offsets; the first read after a write (or after an
// open for writing) runs it and the answer is read from offset 0; a write
// after that starts a new request. A request not read runs at close.
type ctlHandle struct {
	a   *appDir
	max int

	mu      sync.Mutex
	req     []byte
	pending bool // written, not run
	answer  []byte
	failed  error
}

func (h *ctlHandle) path() string { return "apps/" + h.a.id + "/ctl" }

func (h *ctlHandle) WriteAt(_ context.Context, p []byte, off int64) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.pending {
		h.req, h.answer, h.failed = h.req[:0], nil, nil
		h.pending = true
	}
	return writeAt(&h.req, p, off, h.max, h.path())
}

// writeAt places p at off in *buf, growing it, up to max bytes.
func writeAt(buf *[]byte, p []byte, off int64, max int, path string) (int, error) {
	if off < 0 {
		return 0, &fs.Error{Op: "write", Path: path, Kind: fs.Invalid, Err: errors.New("negative offset")}
	}
	end := off + int64(len(p))
	if end > int64(max) {
		return 0, &fs.Error{Op: "write", Path: path, Kind: fs.TooLarge, Err: fmt.Errorf("a request is at most %d bytes", max)}
	}
	if int(end) > len(*buf) {
		*buf = append(*buf, make([]byte, int(end)-len(*buf))...)
	}
	copy((*buf)[off:], p)
	return len(p), nil
}

func (h *ctlHandle) run(ctx context.Context) {
	r := h.a.invoke(ctx, h.req)
	h.pending = false
	h.answer, h.failed = r.Out, r.Error()
}

func (h *ctlHandle) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.pending {
		h.run(ctx)
	}
	if h.failed != nil {
		return 0, h.failed
	}
	return readAt(h.answer, p, off)
}

func readAt(b, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, &fs.Error{Op: "read", Kind: fs.Invalid, Err: errors.New("negative offset")}
	}
	if off >= int64(len(b)) {
		return 0, io.EOF
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Sync runs a pending request, as Flush does: a 9P client's fsync (the
// way a FUSE flush crosses 9P) finishes an `echo data > ctl`.
func (h *ctlHandle) Sync(ctx context.Context) error { return h.Flush(ctx) }

// Flush runs a request written and not yet read, and says whether it
// failed: a FUSE mount calls it at close(2), so that `echo data > ctl`
// has finished (and `cat out` sees its answer) when the shell goes on, and
// a failure reaches the shell.
func (h *ctlHandle) Flush(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.pending {
		h.run(ctx)
		return h.failed
	}
	return nil
}

func (h *ctlHandle) Close(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.pending {
		h.run(ctx)
		return h.failed
	}
	return nil
}

// callsDir is /apps/<id>/calls: one file per request ID, the way tiers
// (and careful clients) invoke: the caller picks the ID, so a retry can
// name it again.
type callsDir struct {
	fs.DirDefaults
	a *appDir
}

func (c *callsDir) Stat(context.Context) (fs.Info, error) { return dirInfo("calls"), nil }

func (c *callsDir) Lookup(_ context.Context, name string) (fs.Node, error) {
	p := "apps/" + c.a.id + "/calls/" + name
	kind, app, err := call.ParseID(name)
	if err != nil {
		return nil, &fs.Error{Op: "lookup", Path: p, Kind: fs.NotExist, Err: err}
	}
	if kind != call.KindApp || app != c.a.id {
		return nil, &fs.Error{Op: "lookup", Path: p, Kind: fs.NotExist, Err: fmt.Errorf("request %s is not an invocation of %s", name, c.a.id)}
	}
	return &callFile{a: c.a, id: name}, nil
}

func (c *callsDir) ReadDir(context.Context) ([]fs.Info, error) { return nil, nil }

type callFile struct {
	fs.FileDefaults
	a  *appDir
	id string
}

func (c *callFile) Stat(context.Context) (fs.Info, error) {
	return fs.Info{Name: c.id, Mode: 0o666, ModTime: time.Now(), Stream: true}, nil
}

func (c *callFile) SetAttr(context.Context, fs.Attr) error { return nil }

func (c *callFile) Open(context.Context, fs.Flag) (fs.Handle, error) {
	return &callHandle{f: c, max: c.a.t.cfg.MaxInput + call.MaxHeader}, nil
}

type callHandle struct {
	fs.HandleDefaults
	f   *callFile
	max int

	mu    sync.Mutex
	req   []byte
	reply []byte
}

func (h *callHandle) path() string { return "apps/" + h.f.a.id + "/calls/" + h.f.id }

func (h *callHandle) WriteAt(_ context.Context, p []byte, off int64) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.reply != nil {
		return 0, &fs.Error{Op: "write", Path: h.path(), Kind: fs.Invalid, Err: errors.New("the call has run: open the file again for another")}
	}
	return writeAt(&h.req, p, off, h.max, h.path())
}

func (h *callHandle) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.reply == nil {
		req, err := call.DecodeRequest(h.f.id, h.req)
		if err != nil {
			return 0, err
		}
		h.reply = call.EncodeReply(h.f.a.t.Invoke(ctx, req))
		h.req = nil
	}
	return readAt(h.reply, p, off)
}

// moduleFile is /apps/<id>/module.wasm: reading it downloads the app; at
// the cloud, writing it deploys a new version at close.
type moduleFile struct {
	fs.FileDefaults
	a *appDir
}

func (m *moduleFile) path() string { return "apps/" + m.a.id + "/module.wasm" }

func (m *moduleFile) Stat(context.Context) (fs.Info, error) {
	in := fs.Info{Name: "module.wasm", Mode: 0o444, ModTime: time.Now(), Stream: true}
	if m.a.t.cfg.Role == Cloud {
		in.Mode = 0o644
	}
	if m.a.t.cfg.Apps != nil {
		if app, err := m.a.t.cfg.Apps.Stat(m.a.id); err == nil {
			in.Size, in.ModTime, in.Stream, in.Version = app.Size, app.Deployed, false, uint32(app.Version)
		}
	}
	return in, nil
}

func (m *moduleFile) SetAttr(_ context.Context, at fs.Attr) error {
	if m.a.t.cfg.Role == Cloud && at.Mode == nil {
		return nil // O_TRUNC before a deploy
	}
	return &fs.Error{Op: "setattr", Path: m.path(), Kind: fs.Permission}
}

func (m *moduleFile) Open(ctx context.Context, flag fs.Flag) (fs.Handle, error) {
	if flag.Writable() {
		if m.a.t.cfg.Role != Cloud {
			return nil, &fs.Error{Op: "open", Path: m.path(), Kind: fs.Permission, Err: fmt.Errorf("apps are deployed at the cloud, not at %s", m.a.t.cfg.Name)}
		}
		return &deployHandle{m: m}, nil
	}
	mod, err := m.a.t.module(ctx, m.a.id)
	if err != nil {
		return nil, err
	}
	return &bytesHandle{b: mod}, nil
}

// module returns the app's code: the copy held here, or the parent's.
func (t *Tier) module(ctx context.Context, id string) ([]byte, error) {
	if t.cfg.Apps != nil {
		app, err := t.cfg.Apps.Get(ctx, id)
		if err == nil {
			return app.Module, nil
		}
		if t.cfg.Parent == nil || fs.KindOf(err) != fs.NotExist {
			return nil, err
		}
	}
	mod, err := fs.ReadAll(ctx, t.cfg.Parent.File("apps/"+id+"/module.wasm"), MaxModule)
	if err != nil {
		return nil, t.parentErr("read", "apps/"+id+"/module.wasm", err)
	}
	return mod, nil
}

type deployHandle struct {
	fs.HandleDefaults
	m   *moduleFile
	mu  sync.Mutex
	buf []byte
}

func (d *deployHandle) WriteAt(_ context.Context, p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return writeAt(&d.buf, p, off, MaxModule, d.m.path())
}

func (d *deployHandle) Close(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.buf == nil {
		return nil // opened for writing, nothing written: no deploy
	}
	_, err := d.m.a.t.Deploy(ctx, d.m.a.id, d.buf)
	return err
}

// Deploy validates module and stores it as the new version of id (cloud
// only). An invocation runs the old version or the new one, never a mix.
func (t *Tier) Deploy(ctx context.Context, id string, module []byte) (repo.App, error) {
	if t.cfg.Role != Cloud {
		return repo.App{}, &fs.Error{Op: "deploy", Path: id, Kind: fs.Permission, Err: fmt.Errorf("apps are deployed at the cloud, not at %s", t.cfg.Name)}
	}
	if err := wasm.Validate(ctx, module); err != nil {
		return repo.App{}, &fs.Error{Op: "deploy", Path: id, Kind: fs.Invalid, Err: err}
	}
	app, err := t.cfg.Apps.Put(ctx, id, module)
	if err != nil {
		return repo.App{}, err
	}
	t.clearPending(id)
	t.warm(id)
	t.log.Info("app deployed", "app", id, "version", app.Version, "hash", app.Hash, "bytes", app.Size)
	return app, nil
}

// Pending app directories: made by mkdir at the cloud, not deployed yet.
// They live in memory until a module is written.

func (t *Tier) pending(id string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.pendingApps[id]
}

func (t *Tier) setPending(id string) {
	t.mu.Lock()
	t.pendingApps[id] = true
	t.mu.Unlock()
}

func (t *Tier) clearPending(id string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	ok := t.pendingApps[id]
	delete(t.pendingApps, id)
	return ok
}

func (t *Tier) pendingList() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var ids []string
	for id := range t.pendingApps {
		ids = append(ids, id)
	}
	return ids
}

// textFile is a file whose content is made when it is opened.
type textFile struct {
	fs.FileDefaults
	name string
	gen  func(context.Context) ([]byte, error)
}

func textInfo(name string) fs.Info {
	return fs.Info{Name: name, Mode: 0o444, ModTime: time.Now(), Stream: true}
}

func (f *textFile) Stat(context.Context) (fs.Info, error) { return textInfo(f.name), nil }

func (f *textFile) Open(ctx context.Context, flag fs.Flag) (fs.Handle, error) {
	if flag.Writable() {
		return nil, &fs.Error{Op: "open", Path: f.name, Kind: fs.Permission, Err: errors.New("read-only file")}
	}
	b, err := f.gen(ctx)
	if err != nil {
		return nil, err
	}
	return &bytesHandle{b: b}, nil
}

type bytesHandle struct {
	fs.HandleDefaults
	b []byte
}

func (h *bytesHandle) ReadAt(_ context.Context, p []byte, off int64) (int, error) {
	return readAt(h.b, p, off)
}
