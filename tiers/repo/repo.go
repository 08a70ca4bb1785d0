// Package repo is the durable, content-hashed store of app modules (the
// WebAssembly bytes of each app). The cloud keeps every app in one (the
// application unit) with a backup copy in a second directory (the first
// replica unit); the app edge keeps a capped replica set in one, without a
// backup (the second replica unit).
//
// # On disk
//
//	dir/<id>.wasm           the module of each app (the primary copy)
//	dir/manifest.json       the record of every app: id, hash (hex SHA-256),
//	                        size, version, deploy time, pinned; and the last
//	                        version of each removed ID
//	backup/<id>.wasm        the backup copy of each module
//	backup/manifest.json    a copy of the manifest
//
// Every file is written as a temporary file beside its target (its name
// begins with [TempPrefix]), fsynced, renamed over the target, and the
// directory is fsynced. [Open] removes the temporary files a crash left and
// the module files that no record names (a first deploy that crashed before
// its commit, or a removal that crashed after it). A directory is used by
// one Repo at a time (an exclusive flock).
//
// # Commit order
//
// [Repo.Put] writes and fsyncs the new module as a temporary file in both
// directories, renames the primary into place, writes the manifest (the
// commit point: from here on readers get the new version), then renames the
// backup copy into place and writes the backup manifest, and only then
// returns. A crash before the commit leaves the new bytes in the primary
// under the old record: the next read finds the mismatch and, with a
// backup, restores the old version (the deploy was never acknowledged);
// without one it reports the module corrupt and the caller fetches a fresh
// copy. A crash after the commit leaves the backup behind the primary; Open
// compares the two manifests and refreshes the backup from the primary.
// A lost or unreadable primary manifest is restored from the backup's.
//
// # Reads
//
// [Repo.Get] checks the module against its recorded hash on every read
// from disk. A missing or corrupt primary is served from the backup, which
// must match the same recorded hash (the backup manifest is kept equal to
// the primary's), and the primary is rewritten from it (logged as a
// warning). A reader sees the complete old or the complete new version of
// an app being replaced, never a mix. Verified modules of recently used
// apps are kept in memory (see [Options.CacheBytes]); a cached module is
// served only while the file's inode, size, modification and change times
// are the ones it had when it was read, so a change on disk sends the next
// read back to the disk. A change that keeps all of these (possible within
// the file system's timestamp granularity) is noticed once the app drops out
// of the cache, after the repo is reopened, or by [Repo.Scrub].
//
// # Replica sets
//
// With [Options.CapBytes] set, every Put or PutVersion evicts the least
// recently used unpinned apps, never the one just stored, until the unpinned
// apps fit the cap. Pinned apps are never evicted and do not count against
// the cap. Pin state is durable; recency is kept in memory only, and after
// a restart it starts from the order of deploy times.
package repo

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"strata/fs"
)

// TempPrefix begins the name of every temporary file of the repo.
const TempPrefix = ".tmp-"

// ManifestName is the name of the manifest in the primary and backup
// directories.
const ManifestName = "manifest.json"

// MaxIDLen is the longest app ID.
const MaxIDLen = 64

// DefaultCacheBytes is the memory budget for verified modules when
// Options.CacheBytes is zero.
const DefaultCacheBytes = 64 << 20

// Options configure a Repo.
type Options struct {
	// Backup is the directory of the backup replica; "" means no backup.
	// It must differ from the primary directory.
	Backup string
	// CapBytes caps the total size of the unpinned apps; 0 means no cap.
	CapBytes int64
	// CacheBytes is the memory budget for the verified modules of
	// recently used apps. 0 means DefaultCacheBytes, or CapBytes when that
	// is set and smaller; a negative value turns the cache off.
	CacheBytes int64
	// Log receives the repo's log; nil discards it.
	Log *slog.Logger
}

// App describes one app of the repo.
type App struct {
	ID       string
	Hash     string    // hex SHA-256 of the module
	Size     int64     // bytes in the module
	Version  uint64    // 1 at the first deploy of ID, one more at each later one
	Deployed time.Time // when this version was stored here
	Pinned   bool      // never evicted
	// Module is the module; nil from Stat, List and Put. It may be shared
	// with the repository's cache and with other callers: read it only.
	Module []byte
}

// Repo is a store of app modules. Its methods are safe for concurrent use.
type Repo struct {
	log      *slog.Logger
	capBytes int64
	pri      *side
	bak      *side // nil without a backup

	// wmu is the writer lock, a channel so that a context can end the
	// wait. It is held while module files are renamed or removed and
	// manifests written, and by a read that found a module not matching
	// its record (so that it never mistakes a deploy in progress for
	// corruption).
	wmu chan struct{}

	mu      sync.Mutex // guards the fields below
	apps    map[string]*entry
	removed map[string]uint64 // last version of each removed ID
	tick    uint64            // recency clock
	cache   cache
	closed  bool
}

// entry is an app as the Repo holds it in memory.
type entry struct {
	rec  record
	used uint64 // the tick of the latest use
}

var (
	errClosed   = errors.New("repo closed")
	errEmpty    = errors.New("empty module")
	errSameDirs = errors.New("the backup directory is the primary directory")
)

// Open opens the repo in dir, and the backup in opts.Backup if set,
// creating the directories if they are missing. It loads the manifest
// (restoring it from the backup's if it is lost), removes temporary and
// orphaned files, and brings the backup up to date with the primary.
func Open(dir string, opts Options) (*Repo, error) {
	const op = "open repo"
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.CapBytes < 0 {
		return nil, &fs.Error{Op: op, Path: dir, Kind: fs.Invalid, Err: errors.New("negative CapBytes")}
	}
	if opts.Backup != "" {
		a, aerr := filepath.Abs(dir)
		b, berr := filepath.Abs(opts.Backup)
		if aerr == nil && berr == nil && a == b {
			return nil, &fs.Error{Op: op, Path: dir, Kind: fs.Invalid, Err: errSameDirs}
		}
	}
	r := &Repo{
		log:      log,
		capBytes: opts.CapBytes,
		wmu:      make(chan struct{}, 1),
		apps:     map[string]*entry{},
		removed:  map[string]uint64{},
	}
	r.cache.init(cacheBudget(opts))
	var err error
	if r.pri, err = openSide("primary", dir, log); err != nil {
		return nil, fail(op, dir, err)
	}
	if opts.Backup != "" {
		if r.bak, err = openSide("backup", opts.Backup, log); err != nil {
			r.pri.close()
			return nil, fail(op, opts.Backup, err)
		}
	}
	if err := r.load(); err != nil {
		r.closeSides()
		return nil, fail(op, dir, err)
	}
	log.Info("repo: open", "dir", dir, "backup", opts.Backup, "apps", len(r.apps))
	return r, nil
}

func cacheBudget(opts Options) int64 {
	switch {
	case opts.CacheBytes < 0:
		return 0
	case opts.CacheBytes > 0:
		return opts.CacheBytes
	case opts.CapBytes > 0 && opts.CapBytes < DefaultCacheBytes:
		return opts.CapBytes
	}
	return DefaultCacheBytes
}

// Close closes the repo, after waiting for a write in progress. Every later
// call fails with BadHandle.
func (r *Repo) Close() error {
	const op = "close repo"
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return &fs.Error{Op: op, Kind: fs.BadHandle, Err: errClosed}
	}
	r.closed = true
	r.cache.clear()
	r.mu.Unlock()
	r.lock(context.Background())
	defer r.unlock()
	if err := r.closeSides(); err != nil {
		return fail(op, "", err)
	}
	r.log.Info("repo: closed", "dir", r.pri.dir)
	return nil
}

func (r *Repo) closeSides() error {
	err := r.pri.close()
	if r.bak != nil {
		if berr := r.bak.close(); err == nil {
			err = berr
		}
	}
	return err
}

// lock takes the writer lock, unless ctx ends first.
func (r *Repo) lock(ctx context.Context) error {
	select {
	case r.wmu <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *Repo) unlock() { <-r.wmu }

// Put stores module as a new version of app id, creating the app if it is
// new, and returns the new App without its Module. The version is one more
// than the current one (or than the last version of a removed app of that
// ID, so a version number never names two modules); but if module has the
// hash of the current version, Put keeps that version and its deploy time,
// so that deploying the same bytes twice is idempotent, and it rewrites both
// copies, which repairs them. The pin state is kept.
//
// Put returns once the module and its record are durable in the primary
// and in the backup (in the order the package documentation gives under
// Commit order: the primary manifest is the commit point, and the backup
// follows it so that a crash never leaves both copies ahead of the record). If the backup fails after the commit, the new version
// is deployed all the same: Put returns the App and an IO error saying the
// backup is behind (Open brings it up to date).
func (r *Repo) Put(ctx context.Context, id string, module []byte) (App, error) {
	return r.put(ctx, "put app", id, module, 0, "")
}

// PutVersion stores a copy of an app fetched from a parent tier, with the
// parent's version and hash, and returns the App without its Module. The
// hash must be the hex SHA-256 of module (an Invalid error otherwise) and
// the version at least 1. The parent's word is taken as it is: the version
// may be lower than the one held. The pin state is kept; Deployed is the
// time of this call (or unchanged if the same version and hash are held).
func (r *Repo) PutVersion(ctx context.Context, id string, module []byte, version uint64, hash string) (App, error) {
	const op = "put app version"
	if err := checkID(op, id); err != nil {
		return App{}, err
	}
	if version == 0 {
		return App{}, &fs.Error{Op: op, Path: id, Kind: fs.Invalid, Err: errors.New("version 0: versions start at 1")}
	}
	if !validHash(hash) {
		return App{}, &fs.Error{Op: op, Path: id, Kind: fs.Invalid, Err: fmt.Errorf("hash %.80q is not a hex SHA-256", hash)}
	}
	return r.put(ctx, op, id, module, version, strings.ToLower(hash))
}

func (r *Repo) put(ctx context.Context, op, id string, module []byte, version uint64, want string) (App, error) {
	if err := checkID(op, id); err != nil {
		return App{}, err
	}
	if len(module) == 0 {
		return App{}, &fs.Error{Op: op, Path: id, Kind: fs.Invalid, Err: errEmpty}
	}
	sum := hashOf(module)
	if want != "" && sum != want {
		return App{}, &fs.Error{Op: op, Path: id, Kind: fs.Invalid,
			Err: fmt.Errorf("hash mismatch: the module's SHA-256 is %s, the stated hash is %s", sum, want)}
	}
	if err := r.ready(ctx, op, id); err != nil {
		return App{}, err
	}

	// Write both copies before taking the lock: writers wait only for
	// each other's renames and manifests, not for each other's data.
	// Temporary files not installed are removed before the lock is
	// released, so that Close, which waits for the lock, cannot close the
	// directories under them.
	var ptmp, btmp string
	locked := false
	defer func() {
		r.pri.dropTemp(&ptmp)
		if r.bak != nil {
			r.bak.dropTemp(&btmp)
		}
		if locked {
			r.unlock()
		}
	}()
	var err error
	if ptmp, err = r.pri.writeTemp(module); err != nil {
		return App{}, fail(op, id, err)
	}
	if r.bak != nil {
		if btmp, err = r.bak.writeTemp(module); err != nil {
			return App{}, fail(op, id, err)
		}
	}

	if err := r.lock(ctx); err != nil {
		return App{}, fail(op, id, err)
	}
	locked = true
	if err := r.ready(ctx, op, id); err != nil {
		return App{}, err
	}

	r.mu.Lock()
	old, had := r.apps[id]
	var prev record
	if had {
		prev = old.rec
	}
	gone := r.removed[id]
	r.mu.Unlock()

	rec := record{ID: id, Hash: sum, Size: int64(len(module)), Deployed: now(), Pinned: prev.Pinned}
	switch {
	case version != 0:
		rec.Version = version
		if had && prev.Hash == sum && prev.Version == version {
			rec.Deployed = prev.Deployed
		}
	case had && prev.Hash == sum:
		rec.Version, rec.Deployed = prev.Version, prev.Deployed
	case had:
		rec.Version = prev.Version + 1
	default:
		rec.Version = gone + 1
	}

	if err := r.pri.install(ptmp, moduleName(id)); err != nil {
		return App{}, fail(op, id, err)
	}
	ptmp = ""
	victims := r.victims(rec)
	m := r.manifestWith(&rec, victims)
	if !had || rec != prev || len(victims) > 0 {
		if err := r.pri.writeManifest(m); err != nil {
			return App{}, fail(op, id, err)
		}
	}
	r.apply(m, id)
	for _, v := range victims {
		r.log.Info("repo: evicted app", "app", v.ID, "version", v.Version, "size", v.Size, "cap", r.capBytes, "for", id)
		r.removeFiles(r.pri, v.ID)
	}
	if had && prev != rec {
		r.log.Info("repo: deployed", "app", id, "version", rec.Version, "hash", rec.Hash, "size", rec.Size, "was", prev.Version)
	} else if !had {
		r.log.Info("repo: deployed", "app", id, "version", rec.Version, "hash", rec.Hash, "size", rec.Size)
	}

	a := rec.app()
	if r.bak != nil {
		err := r.bak.install(btmp, moduleName(id))
		if err == nil {
			btmp = ""
			for _, v := range victims {
				r.removeFiles(r.bak, v.ID)
			}
			err = r.bak.writeManifest(m)
		}
		if err != nil {
			r.log.Error("repo: backup behind the primary", "app", id, "version", rec.Version, "err", err)
			return a, &fs.Error{Op: op, Path: id, Kind: fs.IO,
				Err: fmt.Errorf("version %d deployed, but the backup copy was not updated: %w", rec.Version, err)}
		}
	}
	return a, nil
}

// victims are the apps to evict so that the unpinned apps, with rec in
// place, fit the cap: the least recently used first, never rec itself.
// The writer lock is held.
func (r *Repo) victims(rec record) []record {
	if r.capBytes <= 0 {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var total int64
	if !rec.Pinned {
		total = rec.Size
	}
	var cands []*entry
	for id, e := range r.apps {
		if id == rec.ID || e.rec.Pinned {
			continue
		}
		total += e.rec.Size
		cands = append(cands, e)
	}
	if total <= r.capBytes {
		return nil
	}
	slices.SortFunc(cands, func(a, b *entry) int {
		return cmp.Or(cmp.Compare(a.used, b.used), cmp.Compare(a.rec.ID, b.rec.ID))
	})
	var out []record
	for _, e := range cands {
		if total <= r.capBytes {
			break
		}
		out = append(out, e.rec)
		total -= e.rec.Size
	}
	if total > r.capBytes {
		r.log.Warn("repo: over the cap after eviction", "app", rec.ID, "unpinned", total, "cap", r.capBytes)
	}
	return out
}

// Get returns app id with its module, checked against the recorded hash,
// and marks the app as recently used. A missing or corrupt primary copy is
// served from the backup and repaired; if both copies are bad (or there is
// no backup) Get fails with IO. An unknown app is NotExist. The Module is
// the caller's own.
func (r *Repo) Get(ctx context.Context, id string) (App, error) {
	const op = "get app"
	if err := checkID(op, id); err != nil {
		return App{}, err
	}
	if err := r.ready(ctx, op, id); err != nil {
		return App{}, err
	}
	r.mu.Lock()
	e, ok := r.apps[id]
	if !ok {
		r.mu.Unlock()
		return App{}, notDeployed(op, id)
	}
	rec := e.rec
	r.tick++
	e.used = r.tick
	c := r.cache.get(id, r.tick)
	r.mu.Unlock()

	if c != nil && c.hash == rec.Hash {
		if key, err := r.pri.statKey(moduleName(id)); err == nil && key == c.key {
			return rec.withModule(c.mod), nil
		}
	}
	if mod, key, err := r.pri.read(rec); err == nil {
		return rec.withModule(r.remember(rec, key, mod)), nil
	}
	return r.getSlow(ctx, op, id)
}

// getSlow reads app id under the writer lock, after a read found its
// primary copy missing or not matching the record: either a writer was
// replacing it, or it is bad and is restored from the backup.
func (r *Repo) getSlow(ctx context.Context, op, id string) (App, error) {
	if err := r.lock(ctx); err != nil {
		return App{}, fail(op, id, err)
	}
	defer r.unlock()
	if err := r.ready(ctx, op, id); err != nil {
		return App{}, err
	}
	r.mu.Lock()
	e, ok := r.apps[id]
	var rec record
	if ok {
		rec = e.rec
	}
	r.mu.Unlock()
	if !ok {
		return App{}, notDeployed(op, id)
	}
	mod, key, perr := r.pri.read(rec)
	if perr == nil {
		return rec.withModule(r.remember(rec, key, mod)), nil
	}
	if r.bak == nil {
		r.log.Error("repo: module bad and no backup", "app", id, "version", rec.Version, "err", perr)
		return App{}, &fs.Error{Op: op, Path: id, Kind: fs.IO,
			Err: fmt.Errorf("app %s version %d: module %w, and there is no backup copy", id, rec.Version, perr)}
	}
	mod, _, berr := r.bak.read(rec)
	if berr != nil {
		r.log.Error("repo: both copies bad", "app", id, "version", rec.Version, "primary", perr, "backup", berr)
		return App{}, &fs.Error{Op: op, Path: id, Kind: fs.IO,
			Err: fmt.Errorf("both copies of app %s version %d are corrupt or missing (primary: %v; backup: %v)", id, rec.Version, perr, berr)}
	}
	if err := r.restore(r.pri, rec, mod); err != nil {
		r.log.Error("repo: primary bad; served from the backup, repair failed", "app", id, "version", rec.Version, "was", perr, "err", err)
	} else {
		r.log.Warn("repo: primary bad; served from the backup and repaired", "app", id, "version", rec.Version, "was", perr)
	}
	return rec.withModule(mod), nil
}

// remember offers a verified module to the cache and returns mod, or a
// copy of it if the cache kept it.
func (r *Repo) remember(rec record, key statKey, mod []byte) []byte {
	if key == (statKey{}) {
		return mod
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.apps[rec.ID]; !ok || e.rec.Hash != rec.Hash || r.closed {
		return mod
	}
	if !r.cache.put(rec.ID, &cached{hash: rec.Hash, key: key, mod: mod, used: r.tick}) {
		return mod
	}
	return mod
}

// restore rewrites the copy of rec in s from mod, which matches rec. The
// writer lock is held.
func (r *Repo) restore(s *side, rec record, mod []byte) error {
	tmp, err := s.writeTemp(mod)
	if err != nil {
		return err
	}
	if err := s.install(tmp, moduleName(rec.ID)); err != nil {
		s.dropTemp(&tmp)
		return err
	}
	return nil
}

// Stat returns app id without its module. It reads nothing from disk.
func (r *Repo) Stat(id string) (App, error) {
	const op = "stat app"
	if err := checkID(op, id); err != nil {
		return App{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return App{}, &fs.Error{Op: op, Path: id, Kind: fs.BadHandle, Err: errClosed}
	}
	e, ok := r.apps[id]
	if !ok {
		return App{}, notDeployed(op, id)
	}
	return e.rec.app(), nil
}

// List returns every app, sorted by ID, without modules; nil once the
// repo is closed.
func (r *Repo) List() []App {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	out := make([]App, 0, len(r.apps))
	for _, e := range r.apps {
		out = append(out, e.rec.app())
	}
	slices.SortFunc(out, func(a, b App) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Remove removes app id: its record, then its files. A later Put of the
// same ID continues from the removed version.
func (r *Repo) Remove(ctx context.Context, id string) error {
	const op = "remove app"
	rec, err := r.begin(ctx, op, id)
	if err != nil {
		return err
	}
	defer r.unlock()
	m := r.manifestWith(nil, []record{rec})
	if err := r.pri.writeManifest(m); err != nil {
		return fail(op, id, err)
	}
	r.apply(m, "")
	r.removeFiles(r.pri, id)
	r.log.Info("repo: removed", "app", id, "version", rec.Version)
	if r.bak != nil {
		r.removeFiles(r.bak, id)
		if err := r.bak.writeManifest(m); err != nil {
			return &fs.Error{Op: op, Path: id, Kind: fs.IO,
				Err: fmt.Errorf("removed, but the backup manifest was not updated: %w", err)}
		}
	}
	return nil
}

// begin checks id, takes the writer lock and returns the record of id.
// On success the caller calls r.unlock.
func (r *Repo) begin(ctx context.Context, op, id string) (record, error) {
	if err := checkID(op, id); err != nil {
		return record{}, err
	}
	if err := r.lock(ctx); err != nil {
		return record{}, fail(op, id, err)
	}
	if err := r.ready(ctx, op, id); err != nil {
		r.unlock()
		return record{}, err
	}
	r.mu.Lock()
	e, ok := r.apps[id]
	var rec record
	if ok {
		rec = e.rec
	}
	r.mu.Unlock()
	if !ok {
		r.unlock()
		return record{}, notDeployed(op, id)
	}
	return rec, nil
}

// Pin sets whether app id is pinned. A pinned app is never evicted; the
// pin state is durable. Unpinning evicts nothing at once: the next Put
// does, if the cap is exceeded.
func (r *Repo) Pin(id string, pinned bool) error {
	const op = "pin app"
	rec, err := r.begin(context.Background(), op, id)
	if err != nil {
		return err
	}
	defer r.unlock()
	if rec.Pinned == pinned {
		return nil
	}
	rec.Pinned = pinned
	m := r.manifestWith(&rec, nil)
	if err := r.pri.writeManifest(m); err != nil {
		return fail(op, id, err)
	}
	r.apply(m, "")
	r.log.Info("repo: pin", "app", id, "pinned", pinned)
	if r.bak != nil {
		if err := r.bak.writeManifest(m); err != nil {
			return &fs.Error{Op: op, Path: id, Kind: fs.IO,
				Err: fmt.Errorf("pin state changed, but the backup manifest was not updated: %w", err)}
		}
	}
	return nil
}

// Scrub reads every app's copies, repairs a bad copy from a good one, and
// returns an IO error naming the apps with no good copy left. It holds the
// writer lock one app at a time.
func (r *Repo) Scrub(ctx context.Context) error {
	const op = "scrub repo"
	var lost []string
	for _, a := range r.List() {
		if err := r.scrubOne(ctx, op, a.ID); err != nil {
			if k := fs.KindOf(err); k == fs.Canceled || k == fs.Timeout || k == fs.BadHandle {
				return err
			}
			lost = append(lost, a.ID)
		}
	}
	if len(lost) > 0 {
		return &fs.Error{Op: op, Kind: fs.IO, Err: fmt.Errorf("no good copy of %d apps: %v", len(lost), lost)}
	}
	return nil
}

func (r *Repo) scrubOne(ctx context.Context, op, id string) error {
	if err := r.lock(ctx); err != nil {
		return fail(op, id, err)
	}
	defer r.unlock()
	if err := r.ready(ctx, op, id); err != nil {
		return err
	}
	r.mu.Lock()
	e, ok := r.apps[id]
	var rec record
	if ok {
		rec = e.rec
	}
	r.mu.Unlock()
	if !ok {
		return nil // removed meanwhile
	}
	pmod, _, perr := r.pri.read(rec)
	if r.bak == nil {
		if perr != nil {
			r.log.Error("repo: scrub: module bad and no backup", "app", id, "err", perr)
			return &fs.Error{Op: op, Path: id, Kind: fs.IO, Err: perr}
		}
		return nil
	}
	bmod, _, berr := r.bak.read(rec)
	switch {
	case perr == nil && berr == nil:
		return nil
	case perr != nil && berr != nil:
		r.log.Error("repo: scrub: both copies bad", "app", id, "primary", perr, "backup", berr)
		return &fs.Error{Op: op, Path: id, Kind: fs.IO, Err: fmt.Errorf("primary: %v; backup: %v", perr, berr)}
	case perr != nil:
		if err := r.restore(r.pri, rec, bmod); err != nil {
			r.log.Error("repo: scrub: repairing the primary failed", "app", id, "err", err)
			return nil // the backup still serves it
		}
		r.log.Warn("repo: scrub: primary bad; repaired from the backup", "app", id, "version", rec.Version, "was", perr)
	default:
		if err := r.restore(r.bak, rec, pmod); err != nil {
			r.log.Error("repo: scrub: repairing the backup failed", "app", id, "err", err)
			return nil
		}
		r.log.Warn("repo: scrub: backup bad; repaired from the primary", "app", id, "version", rec.Version, "was", berr)
	}
	return nil
}

// manifestWith is the manifest of the current apps with set put in place
// and drop removed (their versions remembered). The writer lock is held.
func (r *Repo) manifestWith(set *record, drop []record) manifest {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := manifest{Format: manifestFormat, Removed: map[string]uint64{}}
	for id, v := range r.removed {
		m.Removed[id] = v
	}
	dropped := map[string]bool{}
	for _, d := range drop {
		dropped[d.ID] = true
		m.Removed[d.ID] = max(m.Removed[d.ID], d.Version)
	}
	for id, e := range r.apps {
		if dropped[id] || (set != nil && id == set.ID) {
			continue
		}
		m.Apps = append(m.Apps, e.rec)
	}
	if set != nil {
		m.Apps = append(m.Apps, *set)
		delete(m.Removed, set.ID)
	}
	slices.SortFunc(m.Apps, func(a, b record) int { return cmp.Compare(a.ID, b.ID) })
	return m
}

// apply makes m, just written, the state in memory, keeping recency, and
// marks used as just used. The writer lock is held.
func (r *Repo) apply(m manifest, used string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	keep := make(map[string]bool, len(m.Apps))
	for _, rec := range m.Apps {
		keep[rec.ID] = true
		e, ok := r.apps[rec.ID]
		if !ok {
			e = &entry{}
			r.apps[rec.ID] = e
		}
		if e.rec.Hash != rec.Hash {
			r.cache.drop(rec.ID)
		}
		e.rec = rec
		if rec.ID == used {
			r.tick++
			e.used = r.tick
		}
	}
	for id := range r.apps {
		if !keep[id] {
			delete(r.apps, id)
			r.cache.drop(id)
		}
	}
	r.removed = m.Removed
}

// removeFiles removes the module of id from s, logging a failure: a file
// left behind is removed by the next Open.
func (r *Repo) removeFiles(s *side, id string) {
	if err := s.remove(moduleName(id)); err != nil {
		r.log.Warn("repo: removing a module file", "side", s.name, "app", id, "err", err)
	}
}

// ready reports a canceled context or a closed repo.
func (r *Repo) ready(ctx context.Context, op, id string) error {
	if err := ctx.Err(); err != nil {
		return fail(op, id, err)
	}
	r.mu.Lock()
	closed := r.closed
	r.mu.Unlock()
	if closed {
		return &fs.Error{Op: op, Path: id, Kind: fs.BadHandle, Err: errClosed}
	}
	return nil
}

func notDeployed(op, id string) error {
	return &fs.Error{Op: op, Path: id, Kind: fs.NotExist, Err: fmt.Errorf("app %s is not deployed here", id)}
}

// fail turns err into an *fs.Error for op on id.
func fail(op, id string, err error) error {
	return fs.E(op, id, fs.Other, err)
}

const idRule = "an app ID is 1 to 64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"

// ValidID reports whether id is a valid app ID: 1 to 64 characters of
// a-z, 0-9, '_' and '-', starting with a letter or digit. So an ID is
// always a plain file name, never a path. The error is Invalid.
func ValidID(id string) error { return checkID("check app id", id) }

func checkID(op, id string) error {
	if okID(id) {
		return nil
	}
	return &fs.Error{Op: op, Kind: fs.Invalid, Err: fmt.Errorf("bad app ID %.72q: %s", id, idRule)}
}

func okID(id string) bool {
	if len(id) == 0 || len(id) > MaxIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9':
		case (c == '_' || c == '-') && i > 0:
		default:
			return false
		}
	}
	return true
}

func hashOf(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func validHash(h string) bool {
	if len(h) != 2*sha256.Size {
		return false
	}
	_, err := hex.DecodeString(h)
	return err == nil
}

func moduleName(id string) string { return id + ".wasm" }

// now is the deploy time: UTC, without a monotonic reading.
func now() time.Time { return time.Now().UTC().Round(0) }
