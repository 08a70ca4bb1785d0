package repo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	iofs "io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"strata/fs"
)

// The tests that apply to both kinds of side run on each (bothKinds):
// in directories and on an object store. The rest are about directories.

var ctx = context.Background()

// logBuf collects a repo's log; slog handlers may write from many
// goroutines.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuf) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// lines returns the log lines that contain every one of words.
func (l *logBuf) lines(words ...string) []string {
	var out []string
	for _, line := range strings.Split(l.String(), "\n") {
		ok := line != ""
		for _, w := range words {
			ok = ok && strings.Contains(line, w)
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}

// module is n bytes of content that differs with seed, beginning with the
// wasm magic.
func module(n int, seed byte) []byte {
	b := make([]byte, n)
	copy(b, "\x00asm\x01\x00\x00\x00")
	for i := 8; i < n; i++ {
		b[i] = byte(i*31) ^ seed
	}
	return b
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// dirs returns a primary and a backup directory.
func dirs(t *testing.T) (string, string) {
	d := t.TempDir()
	return filepath.Join(d, "apps"), filepath.Join(d, "backup")
}

func open(t *testing.T, dir string, opts Options) *Repo {
	t.Helper()
	r, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func reopen(t *testing.T, r *Repo, dir string, opts Options) *Repo {
	t.Helper()
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	return open(t, dir, opts)
}

func put(t *testing.T, r *Repo, id string, mod []byte) App {
	t.Helper()
	a, err := r.Put(ctx, id, mod)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func get(t *testing.T, r *Repo, id string) App {
	t.Helper()
	a, err := r.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// flip inverts one byte of the file at p, in place.
func flip(t *testing.T, p string) {
	t.Helper()
	b := readFile(t, p)
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func wantKind(t *testing.T, err error, k fs.Kind, what string) {
	t.Helper()
	var fe *fs.Error
	if !errors.As(err, &fe) {
		t.Fatalf("%s: got %v (%T), want an *fs.Error of kind %v", what, err, err, k)
	}
	if fe.Kind != k {
		t.Fatalf("%s: got kind %v (%v), want %v", what, fe.Kind, err, k)
	}
}

func temps(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, TempPrefix+"*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestPutGetRoundTrip(t *testing.T) { bothKinds(t, testPutGetRoundTrip) }

func testPutGetRoundTrip(t *testing.T, k kind) {
	p := k.place(t)
	r := p.open(p.backup(Options{}))
	mod := module(5000, 1)
	a := put(t, r, "hello", mod)
	if a.ID != "hello" || a.Hash != sum(mod) || a.Size != 5000 || a.Version != 1 || a.Module != nil || a.Pinned {
		t.Fatalf("Put returned %+v", a)
	}
	if time.Since(a.Deployed) > time.Minute || a.Deployed.After(time.Now()) {
		t.Errorf("Deployed = %v", a.Deployed)
	}
	for i := range 2 { // from disk, then from the cache
		g := get(t, r, "hello")
		if !bytes.Equal(g.Module, mod) || g.Hash != a.Hash || g.Version != 1 || g.Size != a.Size {
			t.Fatalf("Get %d: %+v", i, App{ID: g.ID, Hash: g.Hash, Size: g.Size, Version: g.Version})
		}
	}
	s, err := r.Stat("hello")
	if err != nil || s.Module != nil || s.Hash != a.Hash || s.Version != 1 || !s.Deployed.Equal(a.Deployed) {
		t.Fatalf("Stat = %+v, %v", s, err)
	}
	put(t, r, "another", module(10, 2))
	l := r.List()
	if len(l) != 2 || l[0].ID != "another" || l[1].ID != "hello" || l[0].Module != nil {
		t.Fatalf("List = %+v", l)
	}
	for _, s := range []int{priSide, bakSide} {
		if !bytes.Equal(p.read(s, p.name("hello")), mod) {
			t.Errorf("%s/%s is not the module", p.root(s), p.name("hello"))
		}
		if m := p.read(s, ManifestName); !bytes.Contains(m, []byte(a.Hash)) {
			t.Errorf("%s/%s does not record the hash:\n%s", p.root(s), ManifestName, m)
		}
		if l := p.leftovers(s); len(l) != 0 {
			t.Errorf("files left over in %s: %v", p.root(s), l)
		}
	}
}

func TestVersionsSurviveReopen(t *testing.T) { bothKinds(t, testVersionsSurviveReopen) }

func testVersionsSurviveReopen(t *testing.T, k kind) {
	p := k.place(t)
	opts := p.backup(Options{})
	r := p.open(opts)
	v1 := put(t, r, "app", module(100, 1))
	v2 := put(t, r, "app", module(100, 2))
	if v1.Version != 1 || v2.Version != 2 {
		t.Fatalf("versions %d, %d; want 1, 2", v1.Version, v2.Version)
	}
	// The same bytes again: idempotent, version and deploy time kept.
	again := put(t, r, "app", module(100, 2))
	if again.Version != 2 || !again.Deployed.Equal(v2.Deployed) {
		t.Fatalf("re-put of the same module: version %d deployed %v; want 2, %v", again.Version, again.Deployed, v2.Deployed)
	}
	r = p.reopen(r, opts)
	s, err := r.Stat("app")
	if err != nil || s.Version != 2 || s.Hash != sum(module(100, 2)) || !s.Deployed.Equal(v2.Deployed) {
		t.Fatalf("after reopen: %+v, %v", s, err)
	}
	if g := get(t, r, "app"); !bytes.Equal(g.Module, module(100, 2)) {
		t.Fatal("after reopen: wrong module")
	}
	if v3 := put(t, r, "app", module(100, 3)); v3.Version != 3 {
		t.Fatalf("version after reopen = %d, want 3", v3.Version)
	}
	// A removed ID deployed again continues its count.
	if err := r.Remove(ctx, "app"); err != nil {
		t.Fatal(err)
	}
	r = p.reopen(r, opts)
	if v := put(t, r, "app", module(100, 1)); v.Version != 4 {
		t.Fatalf("version after remove and reopen = %d, want 4", v.Version)
	}
}

func TestConcurrentGetDuringPut(t *testing.T) { bothKinds(t, testConcurrentGetDuringPut) }

func testConcurrentGetDuringPut(t *testing.T, k kind) {
	for _, cacheBytes := range []int64{0, -1} {
		t.Run(fmt.Sprintf("cache=%d", cacheBytes), func(t *testing.T) {
			p := k.place(t)
			var log logBuf
			r := p.open(p.backup(Options{CacheBytes: cacheBytes, Log: log.logger()}))
			mods := [][]byte{module(16<<10, 1), module(24<<10, 2), module(8<<10, 3)}
			puts := 60
			if p.s3() {
				puts = 20 // each a few requests, with the readers' requests between
			}
			put(t, r, "app", mods[0])
			var (
				wg   sync.WaitGroup
				done = make(chan struct{})
				errc = make(chan error, 8)
				gets sync.WaitGroup
			)
			for range 4 {
				gets.Add(1)
				go func() {
					defer gets.Done()
					for n := 0; ; n++ {
						select {
						case <-done:
							if n > 0 {
								return
							}
						default:
						}
						a, err := r.Get(ctx, "app")
						if err != nil {
							errc <- err
							return
						}
						if sum(a.Module) != a.Hash || int64(len(a.Module)) != a.Size {
							errc <- fmt.Errorf("inconsistent Get: version %d, hash %s, module hash %s, size %d, len %d",
								a.Version, a.Hash, sum(a.Module), a.Size, len(a.Module))
							return
						}
						if want := mods[(a.Version-1)%3]; !bytes.Equal(a.Module, want) {
							errc <- fmt.Errorf("version %d has the module of another version", a.Version)
							return
						}
					}
				}()
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer close(done)
				for i := 1; i <= puts; i++ {
					a, err := r.Put(ctx, "app", mods[i%3])
					if err != nil {
						errc <- err
						return
					}
					if a.Version != uint64(i+1) {
						errc <- fmt.Errorf("Put %d: version %d", i, a.Version)
						return
					}
				}
			}()
			wg.Wait()
			gets.Wait()
			close(errc)
			for err := range errc {
				t.Error(err)
			}
			if l := log.lines("served from the backup"); len(l) != 0 {
				t.Errorf("a deploy was taken for corruption:\n%s", strings.Join(l, "\n"))
			}
		})
	}
}

func TestCorruptPrimaryServedFromBackup(t *testing.T) {
	bothKinds(t, testCorruptPrimaryServedFromBackup)
}

func testCorruptPrimaryServedFromBackup(t *testing.T, k kind) {
	p := k.place(t)
	var log logBuf
	r := p.open(p.backup(Options{Log: log.logger()}))
	mod := module(4096, 7)
	put(t, r, "calc", mod)
	name := p.name("calc")
	p.flip(priSide, name)
	g := get(t, r, "calc")
	if !bytes.Equal(g.Module, mod) || g.Version != 1 {
		t.Fatal("Get did not return the good module")
	}
	if !bytes.Equal(p.read(priSide, name), mod) {
		t.Fatal("the primary copy was not repaired")
	}
	if l := log.lines("level=WARN", "repaired", "app=calc"); len(l) != 1 {
		t.Fatalf("want one warning that calc was repaired; log:\n%s", log.String())
	}
	if l := p.leftovers(priSide); len(l) != 0 {
		t.Errorf("files left over: %v", l)
	}
}

// A module read once is cached; a later change on disk must still be
// noticed. The test sets the modification time, as a later write would,
// since two writes within the file system's timestamp granularity can
// leave it unchanged.
func TestCorruptionNoticedAfterCaching(t *testing.T) {
	dir, bak := dirs(t)
	var log logBuf
	r := open(t, dir, Options{Backup: bak, Log: log.logger()})
	mod := module(4096, 8)
	put(t, r, "calc", mod)
	get(t, r, "calc")
	p := filepath.Join(dir, "calc.wasm")
	flip(t, p)
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(p, later, later); err != nil {
		t.Fatal(err)
	}
	if g := get(t, r, "calc"); !bytes.Equal(g.Module, mod) {
		t.Fatal("Get did not return the good module")
	}
	if !bytes.Equal(readFile(t, p), mod) {
		t.Fatal("the corruption was not noticed: primary not repaired")
	}
	if l := log.lines("level=WARN", "repaired", "app=calc"); len(l) != 1 {
		t.Fatalf("want one repair warning; log:\n%s", log.String())
	}
}

func TestMissingPrimaryRepaired(t *testing.T) { bothKinds(t, testMissingPrimaryRepaired) }

func testMissingPrimaryRepaired(t *testing.T, k kind) {
	p := k.place(t)
	var log logBuf
	r := p.open(p.backup(Options{Log: log.logger()}))
	mod := module(3000, 9)
	put(t, r, "gone", mod)
	name := p.name("gone")
	p.remove(priSide, name)
	if g := get(t, r, "gone"); !bytes.Equal(g.Module, mod) {
		t.Fatal("Get did not return the module")
	}
	if !bytes.Equal(p.read(priSide, name), mod) {
		t.Fatal("the primary copy was not restored")
	}
	if l := log.lines("level=WARN", "repaired", "app=gone", "missing"); len(l) != 1 {
		t.Fatalf("want one warning that gone was missing and repaired; log:\n%s", log.String())
	}
}

// A crash after the primary was renamed into place but before the manifest
// was written leaves the new bytes under the old record: the deploy was
// never acknowledged, and the old version comes back from the backup.
func TestUncommittedPrimaryRolledBack(t *testing.T) {
	dir, bak := dirs(t)
	opts := Options{Backup: bak}
	r := open(t, dir, opts)
	old := module(2000, 1)
	put(t, r, "app", old)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "app.wasm"), module(2500, 2), 0o644); err != nil {
		t.Fatal(err)
	}
	r = open(t, dir, opts)
	g := get(t, r, "app")
	if g.Version != 1 || !bytes.Equal(g.Module, old) {
		t.Fatalf("got version %d, want the old version 1", g.Version)
	}
	if !bytes.Equal(readFile(t, filepath.Join(dir, "app.wasm")), old) {
		t.Fatal("primary not rolled back")
	}
}

func TestBothCopiesBad(t *testing.T) { bothKinds(t, testBothCopiesBad) }

func testBothCopiesBad(t *testing.T, k kind) {
	for _, how := range []string{"corrupt", "missing"} {
		t.Run(how, func(t *testing.T) {
			p := k.place(t)
			var log logBuf
			r := p.open(p.backup(Options{Log: log.logger()}))
			put(t, r, "app", module(1000, 1))
			name := p.name("app")
			for _, s := range []int{priSide, bakSide} {
				if how == "corrupt" {
					p.flip(s, name)
				} else {
					p.remove(s, name)
				}
			}
			_, err := r.Get(ctx, "app")
			wantKind(t, err, fs.IO, "Get with both copies bad")
			if !strings.Contains(err.Error(), "both copies") || !strings.Contains(err.Error(), how) {
				t.Fatalf("error does not say both copies are %s: %v", how, err)
			}
			if len(log.lines("level=ERROR", "both copies", "app=app")) != 1 {
				t.Fatalf("no error logged; log:\n%s", log.String())
			}
		})
	}
}

func TestCorruptWithoutBackup(t *testing.T) { bothKinds(t, testCorruptWithoutBackup) }

func testCorruptWithoutBackup(t *testing.T, k kind) {
	p := k.place(t)
	r := p.open(Options{})
	put(t, r, "app", module(1000, 1))
	p.flip(priSide, p.name("app"))
	_, err := r.Get(ctx, "app")
	wantKind(t, err, fs.IO, "Get of a corrupt module without backup")
	if !strings.Contains(err.Error(), "no backup") {
		t.Fatalf("error does not say there is no backup: %v", err)
	}
	// A fresh copy mends it.
	if _, err := r.PutVersion(ctx, "app", module(1000, 1), 1, sum(module(1000, 1))); err != nil {
		t.Fatal(err)
	}
	get(t, r, "app")
}

func TestEviction(t *testing.T) { bothKinds(t, testEviction) }

func testEviction(t *testing.T, k kind) {
	p := k.place(t)
	var log logBuf
	r := p.open(Options{CapBytes: 3000, Log: log.logger()})
	put(t, r, "pinned", module(2000, 0))
	if err := r.Pin("pinned", true); err != nil {
		t.Fatal(err)
	}
	put(t, r, "a", module(1000, 1))
	put(t, r, "b", module(1000, 2))
	put(t, r, "c", module(1000, 3))
	get(t, r, "a") // b is now the least recently used
	have := func(want ...string) {
		t.Helper()
		var got []string
		for _, a := range r.List() {
			got = append(got, a.ID)
		}
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Fatalf("apps %v, want %v", got, want)
		}
		for _, id := range want {
			if !p.exists(priSide, p.name(id)) {
				t.Fatalf("no module of %s, want apps %v", id, want)
			}
		}
		if mods := p.modules(priSide); len(mods) != len(want) {
			t.Fatalf("modules %v, want those of apps %v", mods, want)
		}
	}
	have("a", "b", "c", "pinned")
	put(t, r, "d", module(1000, 4))
	have("a", "c", "d", "pinned")
	if _, err := r.Stat("b"); !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("Stat of the evicted app: %v", err)
	}
	if len(log.lines("evicted", "app=b")) != 1 {
		t.Fatalf("eviction of b not logged:\n%s", log.String())
	}
	put(t, r, "e", module(2500, 5)) // c, a and d must go
	have("e", "pinned")
	put(t, r, "f", module(4000, 6)) // larger than the cap alone: kept
	have("f", "pinned")
	if g := get(t, r, "pinned"); !bytes.Equal(g.Module, module(2000, 0)) {
		t.Fatal("pinned app damaged")
	}
	// Eviction is durable.
	r = p.reopen(r, Options{CapBytes: 3000})
	have("f", "pinned")
}

func TestPinSurvivesReopen(t *testing.T) { bothKinds(t, testPinSurvivesReopen) }

func testPinSurvivesReopen(t *testing.T, k kind) {
	p := k.place(t)
	opts := p.backup(Options{CapBytes: 1500})
	r := p.open(opts)
	put(t, r, "keep", module(1000, 1))
	if err := r.Pin("keep", true); err != nil {
		t.Fatal(err)
	}
	r = p.reopen(r, opts)
	if s, err := r.Stat("keep"); err != nil || !s.Pinned {
		t.Fatalf("after reopen: %+v, %v; want pinned", s, err)
	}
	put(t, r, "x", module(1000, 2))
	put(t, r, "y", module(1000, 3)) // evicts x, not the pinned keep
	if _, err := r.Stat("keep"); err != nil {
		t.Fatalf("pinned app evicted after reopen: %v", err)
	}
	if a := put(t, r, "keep", module(1000, 4)); !a.Pinned || a.Version != 2 {
		t.Fatalf("a new version lost the pin: %+v", a)
	}
	if err := r.Pin("keep", false); err != nil {
		t.Fatal(err)
	}
	r = p.reopen(r, opts)
	if s, _ := r.Stat("keep"); s.Pinned {
		t.Fatal("unpin did not survive reopen")
	}
	wantKind(t, r.Pin("nope", true), fs.NotExist, "Pin of an unknown app")
}

func TestLimitsKeptWithRecord(t *testing.T) { bothKinds(t, testLimitsKeptWithRecord) }

func testLimitsKeptWithRecord(t *testing.T, k kind) {
	p := k.place(t)
	opts := p.backup(Options{})
	r := p.open(opts)
	put(t, r, "app", module(1000, 1))
	if s, _ := r.Stat("app"); !s.Limits.IsZero() {
		t.Fatalf("a new app has limits %+v, want none", s.Limits)
	}
	want := Limits{TimeoutMS: 1500, MemoryMiB: 32}
	if err := r.SetLimits("app", want); err != nil {
		t.Fatal(err)
	}
	r = p.reopen(r, opts)
	if s, err := r.Stat("app"); err != nil || s.Limits != want {
		t.Fatalf("after reopen: %+v, %v; want limits %+v", s, err, want)
	}
	if a := put(t, r, "app", module(1000, 2)); a.Version != 2 || a.Limits != want {
		t.Fatalf("a new version: %+v; want version 2 with limits %+v", a, want)
	}
	if err := r.SetLimits("app", Limits{}); err != nil {
		t.Fatal(err)
	}
	r = p.reopen(r, opts)
	if s, _ := r.Stat("app"); !s.Limits.IsZero() {
		t.Fatalf("limits cleared, then after reopen: %+v", s.Limits)
	}
	if err := r.SetLimits("app", want); err != nil {
		t.Fatal(err)
	}
	if err := r.Remove(ctx, "app"); err != nil {
		t.Fatal(err)
	}
	if a := put(t, r, "app", module(1000, 3)); !a.Limits.IsZero() {
		t.Fatalf("deployed again after its removal, the app kept limits %+v", a.Limits)
	}
	wantKind(t, r.SetLimits("nope", want), fs.NotExist, "SetLimits of an unknown app")
	wantKind(t, r.SetLimits("../x", want), fs.Invalid, "SetLimits of a bad ID")
}

func TestInvalidIDs(t *testing.T) { bothKinds(t, testInvalidIDs) }

func testInvalidIDs(t *testing.T, k kind) {
	p := k.place(t)
	r := p.open(p.backup(Options{}))
	bad := []string{"", "../x", "..", ".", "a/b", "/a", "A", "appX", "-a", "_a", ".hidden", "a.wasm",
		"a b", "a\x00", "é", "manifest.json", strings.Repeat("a", 65)}
	mod := module(100, 1)
	for _, id := range bad {
		err := ValidID(id)
		wantKind(t, err, fs.Invalid, fmt.Sprintf("ValidID(%q)", id))
		if !strings.Contains(err.Error(), "1 to 64 characters of a-z, 0-9") {
			t.Errorf("ValidID(%q) does not state the rule: %v", id, err)
		}
		_, err = r.Put(ctx, id, mod)
		wantKind(t, err, fs.Invalid, fmt.Sprintf("Put(%q)", id))
		_, err = r.PutVersion(ctx, id, mod, 1, sum(mod))
		wantKind(t, err, fs.Invalid, fmt.Sprintf("PutVersion(%q)", id))
		_, err = r.Get(ctx, id)
		wantKind(t, err, fs.Invalid, fmt.Sprintf("Get(%q)", id))
		_, err = r.Stat(id)
		wantKind(t, err, fs.Invalid, fmt.Sprintf("Stat(%q)", id))
		wantKind(t, r.Remove(ctx, id), fs.Invalid, fmt.Sprintf("Remove(%q)", id))
		wantKind(t, r.Pin(id, true), fs.Invalid, fmt.Sprintf("Pin(%q)", id))
	}
	for _, id := range []string{"a", "0", "a-b_c", "9lives", strings.Repeat("z", 64)} {
		if err := ValidID(id); err != nil {
			t.Errorf("ValidID(%q) = %v", id, err)
		}
	}
	if l := r.List(); len(l) != 0 {
		t.Fatalf("apps after invalid puts: %+v", l)
	}
	for _, s := range []int{priSide, bakSide} {
		if all := p.all(s); len(all) != 1 || all[0] != ManifestName {
			t.Fatalf("files in %s besides the manifest: %v", p.root(s), all)
		}
	}
	if !p.s3() {
		ents, _ := os.ReadDir(filepath.Dir(p.dir))
		if len(ents) != 2 {
			t.Fatalf("files appeared beside the repo: %v", ents)
		}
	}
}

func TestTempAndOrphanFilesSwept(t *testing.T) {
	dir, bak := dirs(t)
	opts := Options{Backup: bak}
	r := open(t, dir, opts)
	mod := module(500, 1)
	put(t, r, "app", mod)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{
		filepath.Join(dir, TempPrefix+"crashed"),
		filepath.Join(bak, TempPrefix+"crashed"),
		filepath.Join(dir, "orphan.wasm"), // a first deploy that crashed before its commit
		filepath.Join(bak, "orphan.wasm"),
	} {
		if err := os.WriteFile(p, []byte("left over"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	keep := filepath.Join(dir, "notes.txt") // not the repo's: left alone
	if err := os.WriteFile(keep, []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	r = open(t, dir, opts)
	for _, d := range []string{dir, bak} {
		if tt := temps(t, d); len(tt) != 0 {
			t.Errorf("temporary files not swept: %v", tt)
		}
		if _, err := os.Stat(filepath.Join(d, "orphan.wasm")); !errors.Is(err, iofs.ErrNotExist) {
			t.Errorf("orphaned module in %s not removed: %v", d, err)
		}
	}
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("a file that is not the repo's was removed: %v", err)
	}
	if g := get(t, r, "app"); !bytes.Equal(g.Module, mod) {
		t.Fatal("module damaged by the sweep")
	}
}

func TestPutVersion(t *testing.T) { bothKinds(t, testPutVersion) }

func testPutVersion(t *testing.T, k kind) {
	p := k.place(t)
	r := p.open(Options{})
	mod := module(700, 1)
	a, err := r.PutVersion(ctx, "app", mod, 7, strings.ToUpper(sum(mod)))
	if err != nil {
		t.Fatal(err)
	}
	if a.Version != 7 || a.Hash != sum(mod) {
		t.Fatalf("PutVersion returned %+v", a)
	}
	other := module(700, 2)
	_, err = r.PutVersion(ctx, "app", other, 8, sum(mod))
	wantKind(t, err, fs.Invalid, "PutVersion with a hash mismatch")
	if !strings.Contains(err.Error(), "hash mismatch") {
		t.Fatalf("error does not say hash mismatch: %v", err)
	}
	_, err = r.PutVersion(ctx, "new", other, 1, sum(mod))
	wantKind(t, err, fs.Invalid, "PutVersion of a new app with a hash mismatch")
	_, err = r.PutVersion(ctx, "app", other, 8, "abc")
	wantKind(t, err, fs.Invalid, "PutVersion with a malformed hash")
	_, err = r.PutVersion(ctx, "app", other, 0, sum(other))
	wantKind(t, err, fs.Invalid, "PutVersion of version 0")
	if g := get(t, r, "app"); g.Version != 7 || !bytes.Equal(g.Module, mod) {
		t.Fatalf("a rejected PutVersion changed the app: version %d", g.Version)
	}
	if _, err := r.Stat("new"); !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("a rejected PutVersion created the app: %v", err)
	}
	if mods := p.modules(priSide); len(mods) != 1 {
		t.Fatalf("a rejected PutVersion left a file: %v", mods)
	}
	if l := p.leftovers(priSide); len(l) != 0 {
		t.Errorf("files left over: %v", l)
	}
	if a, err := r.PutVersion(ctx, "app", other, 9, sum(other)); err != nil || a.Version != 9 {
		t.Fatalf("PutVersion 9: %+v, %v", a, err)
	}
	if _, err := r.Put(ctx, "app", nil); fs.KindOf(err) != fs.Invalid {
		t.Fatalf("Put of an empty module: %v", err)
	}
}

func TestNotDeployed(t *testing.T) { bothKinds(t, testNotDeployed) }

func testNotDeployed(t *testing.T, k kind) {
	p := k.place(t)
	r := p.open(Options{})
	_, err := r.Get(ctx, "nope")
	if !errors.Is(err, iofs.ErrNotExist) || !strings.Contains(err.Error(), "app nope is not deployed here") {
		t.Fatalf("Get of an unknown app: %v", err)
	}
	_, err = r.Stat("nope")
	wantKind(t, err, fs.NotExist, "Stat")
	wantKind(t, r.Remove(ctx, "nope"), fs.NotExist, "Remove")
	put(t, r, "yes", module(10, 1))
	name := p.name("yes")
	if err := r.Remove(ctx, "yes"); err != nil {
		t.Fatal(err)
	}
	_, err = r.Get(ctx, "yes")
	wantKind(t, err, fs.NotExist, "Get after Remove")
	if p.exists(priSide, name) {
		t.Fatalf("module %s left after Remove", name)
	}
}

func TestManifestRestoredFromBackup(t *testing.T) { bothKinds(t, testManifestRestoredFromBackup) }

func testManifestRestoredFromBackup(t *testing.T, k kind) {
	for _, how := range []string{"missing", "garbage"} {
		t.Run(how, func(t *testing.T) {
			p := k.place(t)
			var log logBuf
			opts := p.backup(Options{Log: log.logger()})
			r := p.open(opts)
			put(t, r, "a", module(100, 1))
			put(t, r, "a", module(100, 2))
			put(t, r, "b", module(200, 3))
			if err := r.Pin("b", true); err != nil {
				t.Fatal(err)
			}
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			if how == "missing" {
				p.remove(priSide, ManifestName)
			} else {
				p.write(priSide, ManifestName, []byte("{not json"))
			}
			r = p.open(opts)
			a, err := r.Stat("a")
			if err != nil || a.Version != 2 {
				t.Fatalf("a after restore: %+v, %v", a, err)
			}
			if b, err := r.Stat("b"); err != nil || !b.Pinned {
				t.Fatalf("b after restore: %+v, %v", b, err)
			}
			if len(log.lines("level=WARN", "manifest", "restored")) != 1 {
				t.Fatalf("restore not logged:\n%s", log.String())
			}
			if _, err := decodeManifest(p.read(priSide, ManifestName)); err != nil {
				t.Fatalf("primary manifest not rewritten: %v", err)
			}
		})
	}
}

func TestManifestLostWithoutBackup(t *testing.T) { bothKinds(t, testManifestLostWithoutBackup) }

func testManifestLostWithoutBackup(t *testing.T, k kind) {
	p := k.place(t)
	r := p.open(Options{})
	put(t, r, "a", module(100, 1))
	name := p.name("a")
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	p.remove(priSide, ManifestName)
	_, err := p.tryOpen(Options{})
	wantKind(t, err, fs.IO, "Open with the manifest lost")
	if !p.exists(priSide, name) {
		t.Fatal("the module was removed")
	}
}

// A crash after the commit leaves the backup behind; Open brings it up to
// date from the primary.
func TestBackupBroughtUpToDate(t *testing.T) { bothKinds(t, testBackupBroughtUpToDate) }

func testBackupBroughtUpToDate(t *testing.T, k kind) {
	p := k.place(t)
	opts := p.backup(Options{})
	r := p.open(opts)
	put(t, r, "a", module(100, 1))
	oldManifest := p.read(bakSide, ManifestName)
	oldName := p.name("a")
	oldA := p.read(bakSide, oldName)
	put(t, r, "a", module(150, 2))
	put(t, r, "b", module(100, 3))
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	// The backup as it was before: a at version 1, no b.
	p.write(bakSide, ManifestName, oldManifest)
	p.write(bakSide, oldName, oldA)
	p.remove(bakSide, p.name("b"))
	r = p.open(opts)
	if !bytes.Equal(p.read(bakSide, p.name("a")), module(150, 2)) ||
		!bytes.Equal(p.read(bakSide, p.name("b")), module(100, 3)) {
		t.Fatal("backup modules not brought up to date")
	}
	if !bytes.Equal(p.read(bakSide, ManifestName), p.read(priSide, ManifestName)) {
		t.Fatal("backup manifest differs from the primary")
	}
	// And it serves.
	p.flip(priSide, p.name("a"))
	if g := get(t, r, "a"); g.Version != 2 || !bytes.Equal(g.Module, module(150, 2)) {
		t.Fatal("the refreshed backup did not serve")
	}
}

func TestScrub(t *testing.T) { bothKinds(t, testScrub) }

func testScrub(t *testing.T, k kind) {
	p := k.place(t)
	var log logBuf
	r := p.open(p.backup(Options{Log: log.logger()}))
	for i, id := range []string{"a", "b", "c"} {
		put(t, r, id, module(300, byte(i)))
	}
	p.flip(bakSide, p.name("a"))
	p.flip(priSide, p.name("b"))
	if err := r.Scrub(ctx); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p.read(bakSide, p.name("a")), module(300, 0)) {
		t.Error("backup of a not repaired")
	}
	if !bytes.Equal(p.read(priSide, p.name("b")), module(300, 1)) {
		t.Error("primary of b not repaired")
	}
	if len(log.lines("level=WARN", "scrub", "repaired")) != 2 {
		t.Errorf("want two repairs logged:\n%s", log.String())
	}
	p.flip(priSide, p.name("c"))
	p.flip(bakSide, p.name("c"))
	err := r.Scrub(ctx)
	wantKind(t, err, fs.IO, "Scrub with c lost")
	if !strings.Contains(err.Error(), "[c]") {
		t.Fatalf("Scrub error does not name c: %v", err)
	}
}

func TestOpenRefusals(t *testing.T) {
	dir, bak := dirs(t)
	open(t, dir, Options{Backup: bak})
	_, err := Open(dir, Options{})
	wantKind(t, err, fs.Busy, "second Open of a directory in use")
	other := filepath.Join(t.TempDir(), "other")
	_, err = Open(other, Options{Backup: bak})
	wantKind(t, err, fs.Busy, "Open with a backup directory in use")
	_, err = Open(other, Options{Backup: other + "/."})
	wantKind(t, err, fs.Invalid, "Open with the backup in the primary directory")
}

func TestClosedAndCanceled(t *testing.T) { bothKinds(t, testClosedAndCanceled) }

func testClosedAndCanceled(t *testing.T, k kind) {
	p := k.place(t)
	r := p.open(p.backup(Options{}))
	put(t, r, "a", module(100, 1))

	canceled, cancel := context.WithCancel(ctx)
	cancel()
	_, err := r.Put(canceled, "a", module(100, 2))
	wantKind(t, err, fs.Canceled, "Put with a canceled context")
	if s, _ := r.Stat("a"); s.Version != 1 {
		t.Fatalf("a canceled Put deployed version %d", s.Version)
	}
	_, err = r.Get(canceled, "a")
	wantKind(t, err, fs.Canceled, "Get with a canceled context")

	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	wantKind(t, r.Close(), fs.BadHandle, "second Close")
	_, err = r.Get(ctx, "a")
	wantKind(t, err, fs.BadHandle, "Get after Close")
	_, err = r.Put(ctx, "a", module(100, 2))
	wantKind(t, err, fs.BadHandle, "Put after Close")
	_, err = r.Stat("a")
	wantKind(t, err, fs.BadHandle, "Stat after Close")
	if l := r.List(); l != nil {
		t.Fatalf("List after Close: %v", l)
	}
}
