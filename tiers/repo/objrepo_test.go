package repo

import (
	"bytes"
	"errors"
	"fmt"
	iofs "io/fs"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"strata/fs"
)

// Tests of several repos on one object store: each is a cloud node.

// openShared opens the repo of p once more, as another node would.
func openShared(t *testing.T, p *place, opts Options) *Repo {
	t.Helper()
	r, err := OpenURL(ctx, p.primary(), p.backup(opts))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// Two repos deploy at once, to apps of their own and to one app they
// share: no deploy is lost, the shared app's versions are handed out
// once each, and the backup ends equal to the primary.
func TestSharedConcurrentDeploys(t *testing.T) {
	k := startS3(t)
	p := k.place(t)
	var logA, logB logBuf
	a := openShared(t, p, Options{Log: logA.logger()})
	b := openShared(t, p, Options{Log: logB.logger()})
	const n = 12
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		versions = map[uint64][]byte{} // of "same"
		errs     []error
	)
	deploy := func(r *Repo, who string, seed byte) {
		defer wg.Done()
		for i := range n {
			own := fmt.Sprintf("%s%d", who, i)
			if _, err := r.Put(ctx, own, module(500+i, seed+byte(i))); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
				return
			}
			mod := module(700, seed+byte(i)+100)
			app, err := r.Put(ctx, "same", mod)
			mu.Lock()
			if err != nil {
				errs = append(errs, err)
			} else if _, dup := versions[app.Version]; dup {
				errs = append(errs, fmt.Errorf("version %d of same handed out twice", app.Version))
			} else {
				versions[app.Version] = mod
			}
			mu.Unlock()
		}
	}
	start := time.Now()
	wg.Add(2)
	go deploy(a, "a", 0)
	go deploy(b, "b", 50)
	wg.Wait()
	t.Logf("%d deploys at each of two repos in %v; commits retried after a conflict: %d at a, %d at b",
		2*n, time.Since(start).Round(time.Millisecond),
		len(logA.lines("changed elsewhere")), len(logB.lines("changed elsewhere")))
	for _, err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	for v := uint64(1); v <= 2*n; v++ {
		if versions[v] == nil {
			t.Fatalf("version %d of same missing: versions %v", v, slices.Sorted(maps.Keys(versions)))
		}
	}

	// Every repo, and a new one, holds every app.
	c := openShared(t, p, Options{CacheBytes: -1})
	for _, r := range []*Repo{a, b, c} {
		for i := range n {
			for j, who := range []string{"a", "b"} {
				id := fmt.Sprintf("%s%d", who, i)
				g, err := r.Get(ctx, id)
				if err != nil || !bytes.Equal(g.Module, module(500+i, byte(50*j+i))) || g.Version != 1 {
					t.Fatalf("%s: version %d, %v", id, g.Version, err)
				}
			}
		}
		g := get(t, r, "same")
		if g.Version != 2*n || !bytes.Equal(g.Module, versions[2*n]) {
			t.Fatalf("same: version %d, want %d with its module", g.Version, 2*n)
		}
	}
	if l := c.List(); len(l) != 2*n+1 {
		t.Fatalf("a new repo lists %d apps, want %d", len(l), 2*n+1)
	}
	pm, err := decodeManifest(p.read(priSide, ManifestName))
	if err != nil {
		t.Fatal(err)
	}
	bm, err := decodeManifest(p.read(bakSide, ManifestName))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pm.encode(), bm.encode()) {
		t.Fatalf("the backup manifest (seq %d) is not the primary's (seq %d)", bm.Seq, pm.Seq)
	}
	for _, s := range []int{priSide, bakSide} {
		if l := p.leftovers(s); len(l) != 0 {
			t.Errorf("left over in %s: %v", p.root(s), l)
		}
	}
}

// A deploy at one repo is served by another at once when it is asked for
// an app it does not hold, and a change to an app it holds (a new
// version, a removal) is seen within its Refresh period, plus a request.
func TestSharedDeployVisible(t *testing.T) {
	k := startS3(t)
	p := k.place(t)
	const refresh = 300 * time.Millisecond
	a := openShared(t, p, Options{})
	b := openShared(t, p, Options{Refresh: refresh})

	put(t, a, "x", module(1000, 1))
	if s, err := b.Stat("x"); err != nil || s.Version != 1 {
		t.Fatalf("Stat at b right after the deploy at a: %+v, %v", s, err)
	}
	put(t, a, "y", module(1000, 2))
	if g := get(t, b, "y"); !bytes.Equal(g.Module, module(1000, 2)) {
		t.Fatal("Get at b right after the deploy at a: wrong module")
	}

	// The bound: a change is seen within refresh, plus the check itself
	// (a second here, for a busy machine).
	bound := refresh + time.Second
	seen := func(what string, ok func() bool) {
		t.Helper()
		start := time.Now()
		for !ok() {
			if time.Since(start) > 10*time.Second {
				t.Fatalf("%s: not seen at b after %v", what, time.Since(start))
			}
			time.Sleep(10 * time.Millisecond)
		}
		took := time.Since(start)
		t.Logf("%s seen at b after %v (bound %v)", what, took.Round(time.Millisecond), bound)
		if took > bound {
			t.Errorf("%s: seen at b after %v, beyond the bound %v", what, took, bound)
		}
	}
	put(t, a, "x", module(1200, 3))
	seen("version 2 of x", func() bool {
		s, err := b.Stat("x")
		return err == nil && s.Version == 2
	})
	if g := get(t, b, "x"); g.Version != 2 || !bytes.Equal(g.Module, module(1200, 3)) {
		t.Fatalf("Get at b: version %d", g.Version)
	}
	if err := a.Remove(ctx, "y"); err != nil {
		t.Fatal(err)
	}
	seen("the removal of y", func() bool {
		_, err := b.Stat("y")
		return errors.Is(err, iofs.ErrNotExist)
	})
	lim := Limits{TimeoutMS: 2500, MemoryMiB: 16}
	if err := a.SetLimits("x", lim); err != nil {
		t.Fatal(err)
	}
	seen("the limits of x", func() bool {
		s, err := b.Stat("x")
		return err == nil && s.Limits == lim
	})
	put(t, a, "z", module(100, 4))
	seen("z in the listing", func() bool {
		for _, app := range b.List() {
			if app.ID == "z" {
				return true
			}
		}
		return false
	})
}

// A repo that does not watch the manifest, holding a version that
// another replaced (and whose module it removed), reads the new version
// when it finds the old module gone: no error, and no repair taken for
// corruption.
func TestSharedStaleRecord(t *testing.T) {
	k := startS3(t)
	p := k.place(t)
	a := openShared(t, p, Options{})
	var log logBuf
	c := openShared(t, p, Options{Refresh: -1, CacheBytes: -1, Log: log.logger()})
	put(t, a, "app", module(800, 1))
	if g := get(t, c, "app"); g.Version != 1 {
		t.Fatalf("version %d", g.Version)
	}
	put(t, a, "app", module(900, 2))
	if s, _ := c.Stat("app"); s.Version != 1 {
		t.Fatalf("c saw version %d without checking the manifest", s.Version)
	}
	g := get(t, c, "app")
	if g.Version != 2 || !bytes.Equal(g.Module, module(900, 2)) {
		t.Fatalf("Get at c of a replaced version: version %d", g.Version)
	}
	if l := log.lines("level=WARN", "backup"); len(l) != 0 {
		t.Fatalf("a replaced version taken for corruption:\n%s", log.String())
	}
	// And a deploy at c, from its old state, is a new version.
	if v := put(t, c, "app", module(900, 3)); v.Version != 3 {
		t.Fatalf("deploy at c: version %d, want 3", v.Version)
	}
	if s, err := a.Stat("app"); err != nil || s.Version != 2 {
		// a watches every 2 s: it may already have seen version 3.
		if err != nil || s.Version != 3 {
			t.Fatalf("a: %+v, %v", s, err)
		}
	}
}

// The primary manifest deleted while repos serve: the next change
// restores it, from the newer of the backup's and the repo's own state,
// and loses no app.
func TestSharedManifestLostWhileServing(t *testing.T) {
	k := startS3(t)
	p := k.place(t)
	var log logBuf
	a := openShared(t, p, Options{Refresh: -1, Log: log.logger()})
	b := openShared(t, p, Options{Refresh: -1})
	put(t, a, "one", module(100, 1))
	put(t, a, "two", module(100, 2))
	p.remove(priSide, ManifestName)
	put(t, a, "three", module(100, 3))
	if len(log.lines("level=WARN", "manifest lost", "restored")) != 1 {
		t.Fatalf("restore not logged:\n%s", log.String())
	}
	for _, id := range []string{"one", "two", "three"} {
		if g := get(t, b, id); g.Version != 1 {
			t.Fatalf("%s at b: version %d", id, g.Version)
		}
	}
}

// Orphaned modules (uploads whose deploy never committed) are removed by
// Open once they are OrphanGrace old, not before: a young one may be a
// deploy in progress elsewhere.
func TestSharedOrphans(t *testing.T) {
	k := startS3(t)
	p := k.place(t)
	opts := p.backup(Options{})
	r := p.open(opts)
	put(t, r, "app", module(300, 1))
	orphan := objectName(sum(module(300, 2)))
	p.write(priSide, orphan, module(300, 2))
	p.write(bakSide, orphan, module(300, 2))
	r = p.reopen(r, opts)
	if !p.exists(priSide, orphan) || !p.exists(bakSide, orphan) {
		t.Fatal("a young orphan was removed")
	}
	old := orphanGrace
	orphanGrace = 0
	t.Cleanup(func() { orphanGrace = old })
	p.reopen(r, opts)
	if p.exists(priSide, orphan) || p.exists(bakSide, orphan) {
		t.Fatal("an orphan older than the grace was kept")
	}
	if !p.exists(priSide, p.name("app")) {
		t.Fatal("the app's module was removed")
	}
}

func TestOpenURLRefusals(t *testing.T) {
	k := startS3(t)
	p := k.place(t)
	url := p.primary()
	_, err := OpenURL(ctx, url, Options{Backup: url})
	wantKind(t, err, fs.Invalid, "OpenURL with the backup at the primary")

	_, err = OpenURL(ctx, k.gw.URL("no-such-bucket", "apps"), Options{})
	wantKind(t, err, fs.NotExist, "OpenURL of a missing bucket")
	if !strings.Contains(err.Error(), `bucket "no-such-bucket" does not exist`) {
		t.Fatalf("error does not say the bucket is missing: %v", err)
	}

	_, err = OpenURL(ctx, "s3://bucket/p?endpoint=127.0.0.1:1&bogus=1", Options{})
	wantKind(t, err, fs.Invalid, "OpenURL of a bad URL")

	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong")
	_, err = OpenURL(ctx, url, Options{})
	wantKind(t, err, fs.Permission, "OpenURL with a wrong secret")
	if !strings.Contains(err.Error(), "refused the credentials from AWS_ACCESS_KEY_ID") {
		t.Fatalf("error does not say the credentials were refused: %v", err)
	}

	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	_, err = OpenURL(ctx, url, Options{})
	wantKind(t, err, fs.Permission, "OpenURL without credentials")
	if !strings.Contains(err.Error(), "no credentials") {
		t.Fatalf("error does not say there are no credentials: %v", err)
	}
	if _, serr := os.Stat(filepath.Join(t.TempDir(), "none")); serr == nil {
		t.Fatal("a credentials file was made")
	}
}

func TestDefaultBackupURL(t *testing.T) {
	for in, want := range map[string]string{
		"s3://bkt/apps?endpoint=h:9000&secure=false": "s3://bkt/apps-backup?endpoint=h:9000&secure=false",
		"s3://bkt/x/apps": "s3://bkt/x/apps-backup",
		"s3://bkt":        "s3://bkt/backup",
		"s3://bkt/":       "s3://bkt/backup",
	} {
		got, err := DefaultBackupURL(in)
		if err != nil || got != want {
			t.Errorf("DefaultBackupURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := DefaultBackupURL("http://bkt/x"); err == nil {
		t.Error("DefaultBackupURL of an http URL: no error")
	}
}

// loseAnswers is a transport that, while armed, sends each request whose
// method and path match to the server and then reports the answer lost.
type loseAnswers struct {
	method, suffix string
	armed          atomic.Int32 // answers still to lose
	lost           atomic.Int32
}

func (l *loseAnswers) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err == nil && req.Method == l.method && strings.HasSuffix(req.URL.Path, l.suffix) && l.armed.Add(-1) >= 0 {
		resp.Body.Close()
		l.lost.Add(1)
		return nil, errors.New("connection reset (answer lost on purpose)")
	}
	return resp, err
}

// A commit whose answer is lost is sent again by the client library and
// refused (the ETag moved): the repo finds its own record in the manifest
// and the deploy, or the removal, is done, once.
func TestSharedLostCommitAnswer(t *testing.T) {
	k := startS3(t)
	p := k.place(t)
	lose := &loseAnswers{method: http.MethodPut, suffix: "/apps/" + ManifestName}
	objTransport = lose
	t.Cleanup(func() { objTransport = nil })
	var log logBuf
	r := p.open(p.backup(Options{Refresh: -1, Log: log.logger()}))
	put(t, r, "app", module(400, 1))

	lose.armed.Store(1)
	a, err := r.Put(ctx, "app", module(400, 2))
	if err != nil || a.Version != 2 {
		t.Fatalf("Put with its commit's answer lost: %+v, %v\n%s", a, err, log.String())
	}
	if lose.lost.Load() != 1 {
		t.Fatalf("%d answers lost, want 1", lose.lost.Load())
	}
	other := openShared(t, p, Options{})
	if g := get(t, other, "app"); g.Version != 2 || !bytes.Equal(g.Module, module(400, 2)) {
		t.Fatalf("another repo: version %d", g.Version)
	}

	lose.armed.Store(1)
	if err := r.Remove(ctx, "app"); err != nil {
		t.Fatalf("Remove with its commit's answer lost: %v", err)
	}
	if _, err := r.Stat("app"); !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("Stat after Remove: %v", err)
	}
	if v := put(t, r, "app", module(400, 3)); v.Version != 3 {
		t.Fatalf("version after the removal: %d, want 3", v.Version)
	}
}
