// Package repo is the durable, content-hashed store of app modules (the
// WebAssembly bytes of each app). The cloud keeps every app in one (the
// application unit) with a backup copy in a second directory or object
// store prefix (the first replica unit); the app edge keeps a capped
// replica set in one, without a backup (the second replica unit).
//
// Each copy, primary or backup, is a side (side.go): a local directory
// ([Open]) or a prefix of an S3 bucket ([OpenURL]). The Repo does the same
// things on both, in the same order; what differs is said below.
//
// # On disk
//
//	dir/<id>.wasm           the module of each app (the primary copy)
//	dir/manifest.json       the record of every app: id, hash (hex SHA-256),
//	                        size, version, deploy time, pinned, its own
//	                        limits; and the last version of each removed ID
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
//
// # On an object store
//
//	PREFIX/manifest.json                   the manifest, as on disk, with Seq
//	                                       (one more at each commit) and each
//	                                       app's module object name
//	PREFIX/modules/HASH-UPLOAD.wasm        a module: its SHA-256 and a random
//	                                       name of its upload
//	BACKUP/...                             the backup, under the same names
//
// Any number of Repos, in one process or on many machines (cloud nodes),
// may open one URL and serve the same apps. A module object is named per
// upload and never written with other bytes (a repair rewrites the same
// ones), and uploads are atomic (PutObject), so nothing is staged.
//
// [Repo.Put] uploads the module to both prefixes under a new name (before
// the writer lock), takes the lock, checks the manifest's ETag and reads
// it again if another repo changed it, computes the new record (version:
// one more than the latest), and writes the manifest with If-Match on the
// ETag it read (If-None-Match: * for the first): the commit point. If
// another repo committed meanwhile, the server refuses the write
// (412); Put reads the manifest again, computes the record again (so the
// version follows the other deploy's) and retries, up to 16 times. So
// concurrent deploys at several repos are all kept, each with a version
// of its own. Then it deletes the replaced version's module objects in
// both prefixes and writes the backup manifest, also conditionally, and
// only forward: a backup manifest with a larger Seq is left as it is.
// Remove and Pin commit the same way. Deploying the same bytes again keeps
// the version and deploy time and moves the record to the new upload,
// which rewrites both copies. This needs a server that honours If-Match
// and If-None-Match on PutObject (AWS S3 does, and Versity Gateway, which
// the tests run); one that ignores them would let one of two concurrent
// deploys be lost.
//
// Each Repo holds the manifest in memory and reads it again when its
// ETag changed: every [Options.Refresh] ([DefaultRefresh], 2 s), at a
// request (Get, Stat) for an app it does not hold (concurrent requests
// share one check), before each change, and when a module it reads is
// missing. So a deploy acknowledged at one repo is served by every other
// at its next request for an app it did not hold; a new version of an app
// it holds, a removal, and the listing follow within Refresh plus one
// check (a HEAD, and a GET if changed). Until then a repo serves the
// version it last read; if the other repo has already deleted that
// version's module, the read finds it missing, reads the manifest again
// and serves the new version (not taken for corruption). A corrupt or
// missing module of the current version is served from the backup and
// repaired, as on disk. Cached modules are served without a request to
// the store (their name is their content); corruption in the bucket after
// a module was cached is noticed as on disk: out of the cache, on reopen,
// or by Scrub. [Options.Arrived] is told of the apps deployed elsewhere,
// when they are read (the cloud compiles them).
//
// What is not atomic, and what a crash at each step leaves:
//   - Put, before the commit: the uploads are objects no record names. The
//     deploy was not acknowledged; the old version serves. Open (of any
//     repo) removes module objects that no record names once they are
//     [OrphanGrace] (1 h) old, by the store's LastModified against the
//     local clock: younger ones may be the uploads of a deploy in progress
//     elsewhere. A Put that takes more than 10 minutes from its upload to
//     its commit fails, so no commit names an object that old.
//   - Put or Remove, after the commit and before the deletes: the replaced
//     or removed version's objects stay, unnamed, until such an Open.
//   - Put, Remove or Pin, after the commit and before the backup manifest:
//     the backup manifest is behind (its modules are there: they were
//     uploaded before the commit). The next commit at any repo, or the
//     next Open, brings it forward; a primary manifest lost meanwhile is
//     restored from the newer (by Seq) of the backup's and a repo's state
//     in memory.
//   - A commit whose answer is lost: the client library sends it again,
//     the server refuses that (the ETag moved), and the manifest read
//     again holds the Put's own record, so the Put is done. If no answer
//     comes at all, the Put fails but keeps its uploads (the commit may
//     have happened); the next check of the manifest finds out.
//   - The primary and the backup are separate writes, never one atomic
//     change; each object written is whole or absent.
//   - Restoring a lost or unreadable primary manifest is conditional too
//     (If-None-Match, or If-Match on the unreadable one): of repos doing
//     it at once, one writes and the others read what it wrote.
package repo

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"strata/fs"
)

// TempPrefix begins the name of every temporary file of the repo.
const TempPrefix = ".tmp-"

// ManifestName is the name of the manifest in the primary and backup
// directories (and prefixes).
const ManifestName = "manifest.json"

// MaxIDLen is the longest app ID.
const MaxIDLen = 64

// DefaultCacheBytes is the memory budget for verified modules when
// Options.CacheBytes is zero.
const DefaultCacheBytes = 64 << 20

// DefaultRefresh is how often a repo on an object store checks whether
// the manifest changed, when Options.Refresh is zero.
const DefaultRefresh = 2 * time.Second

// Bounds of a repo on an object store (see the package documentation).
const (
	// OrphanGrace is how old a module object that no record names must
	// be before Open removes it: younger, it may be the upload of a
	// deploy in progress elsewhere.
	OrphanGrace = time.Hour
	// maxStaged is the longest a deploy may take from its upload to its
	// commit; past it the deploy fails (so that no commit ever names an
	// object older than OrphanGrace).
	maxStaged = 10 * time.Minute
	// missTimeout bounds the manifest check that a request for an app not
	// held makes when it has no deadline of its own (Stat).
	missTimeout = 3 * time.Second
	// maxCommitTries bounds the commits in a row that find the manifest
	// changed by another repo.
	maxCommitTries = 16
)

// Options configure a Repo.
type Options struct {
	// Backup is the backup replica: a directory for Open, a store URL
	// for OpenURL; "" means no backup. It must differ from the primary.
	Backup string
	// CapBytes caps the total size of the unpinned apps; 0 means no cap.
	CapBytes int64
	// CacheBytes is the memory budget for the verified modules of
	// recently used apps. 0 means DefaultCacheBytes, or CapBytes when that
	// is set and smaller; a negative value turns the cache off.
	CacheBytes int64
	// Refresh is how often a repo on an object store checks (by its ETag)
	// whether another repo changed the manifest: DefaultRefresh if zero;
	// negative, never on a timer (only on a request for an app it does
	// not hold, and before each change). A directory ignores it.
	Refresh time.Duration
	// Arrived, if not nil, is told of the apps that reading the manifest
	// again brought in new or changed: deployed by another repo on the
	// same object store. It is called with the writer lock held: it must
	// not block or call the Repo (hand the apps to a goroutine).
	Arrived func([]App)
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
	Limits   Limits    // the app's own limits; zero for the runner's defaults
	// Module is the module; nil from Stat, List and Put. It may be shared
	// with the repository's cache and with other callers: read it only.
	Module []byte
}

// Limits are an app's own limits, as [Repo.SetLimits] records them; a
// zero field leaves that limit to whoever runs the app.
type Limits struct {
	TimeoutMS int64  `json:"timeout_ms,omitempty"` // run time, in milliseconds
	MemoryMiB uint32 `json:"memory_mib,omitempty"` // memory cap, in MiB
}

// IsZero reports whether l sets no limit.
func (l Limits) IsZero() bool { return l == Limits{} }

// Repo is a store of app modules. Its methods are safe for concurrent use.
type Repo struct {
	log      *slog.Logger
	capBytes int64
	arrived  func([]App)
	pri      side
	bak      side // nil without a backup
	shared   bool // on an object store, which other repos may share

	// wmu is the writer lock, a channel so that a context can end the
	// wait. It is held while modules are installed or removed and
	// manifests written or read again, and by a read that found a module
	// not matching its record (so that it never mistakes a deploy in
	// progress for corruption).
	wmu chan struct{}

	// Guarded by the writer lock (on an object store):
	tag       string // the primary manifest's ETag that the state in memory is
	btag      string // the backup manifest's ETag as last read or written ("": none)
	bseq      uint64 // and its Seq
	refreshed uint64 // the number of the latest refresh completed

	refreshes atomic.Uint64 // refreshes started
	bg        context.Context
	stopBg    context.CancelFunc
	polling   sync.WaitGroup

	mu      sync.Mutex // guards the fields below
	apps    map[string]*entry
	removed map[string]uint64 // last version of each removed ID
	seq     uint64            // the Seq of the manifest the state is
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
	errSameURLs = errors.New("the backup is the primary: give it another bucket or prefix")
)

// Open opens the repo in dir, and the backup in opts.Backup if set,
// creating the directories if they are missing. It loads the manifest
// (restoring it from the backup's if it is lost), removes temporary and
// orphaned files, and brings the backup up to date with the primary.
func Open(dir string, opts Options) (*Repo, error) {
	const op = "open repo"
	if opts.Backup != "" {
		a, aerr := filepath.Abs(dir)
		b, berr := filepath.Abs(opts.Backup)
		if aerr == nil && berr == nil && a == b {
			return nil, &fs.Error{Op: op, Path: dir, Kind: fs.Invalid, Err: errSameDirs}
		}
	}
	r, err := newRepo(op, dir, opts)
	if err != nil {
		return nil, err
	}
	pri, err := openDirSide("primary", dir, r.log)
	if err != nil {
		r.stopBg()
		return nil, fail(op, dir, err)
	}
	var bak side
	if opts.Backup != "" {
		b, err := openDirSide("backup", opts.Backup, r.log)
		if err != nil {
			pri.close()
			r.stopBg()
			return nil, fail(op, opts.Backup, err)
		}
		bak = b
	}
	return r.start(context.Background(), op, pri, bak, opts)
}

// OpenURL opens the repo kept in an object store at the store URL
// s3://BUCKET/PREFIX?endpoint=HOST:PORT&region=R&secure=false, with the
// backup at opts.Backup (another URL of that form) if set. Credentials
// come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the AWS
// credentials file, as for package objstore. Any number of Repos, in
// this process or others, may open the same URLs at once: each serves
// what the others deploy (see the package documentation). ctx bounds the
// opening only.
func OpenURL(ctx context.Context, rawURL string, opts Options) (*Repo, error) {
	const op = "open repo"
	_, ploc, err := parseObjURL(rawURL)
	if err != nil {
		return nil, err
	}
	if opts.Backup != "" {
		_, bloc, err := parseObjURL(opts.Backup)
		if err != nil {
			return nil, err
		}
		if bloc == ploc {
			return nil, &fs.Error{Op: op, Path: opts.Backup, Kind: fs.Invalid, Err: errSameURLs}
		}
	}
	r, err := newRepo(op, rawURL, opts)
	if err != nil {
		return nil, err
	}
	pri, err := openObjSide(ctx, "primary", rawURL, r.log)
	if err != nil {
		r.stopBg()
		return nil, err
	}
	var bak side
	if opts.Backup != "" {
		if bak, err = openObjSide(ctx, "backup", opts.Backup, r.log); err != nil {
			r.stopBg()
			return nil, err
		}
	}
	return r.start(ctx, op, pri, bak, opts)
}

// DefaultBackupURL is the backup of the repo at the store URL raw when
// none is given: the same bucket and endpoint, the prefix with "-backup"
// added (or "backup" for a whole bucket).
func DefaultBackupURL(raw string) (string, error) {
	_, loc, err := parseObjURL(raw)
	if err != nil {
		return "", err
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", err
	}
	p := "backup"
	if loc.prefix != "" {
		p = loc.prefix + "-backup"
	}
	u.Path, u.RawPath = "/"+p, ""
	b := u.String()
	if _, _, err := parseObjURL(b); err != nil {
		return "", err
	}
	return b, nil
}

func newRepo(op, where string, opts Options) (*Repo, error) {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.CapBytes < 0 {
		return nil, &fs.Error{Op: op, Path: where, Kind: fs.Invalid, Err: errors.New("negative CapBytes")}
	}
	r := &Repo{
		log:      log,
		capBytes: opts.CapBytes,
		arrived:  opts.Arrived,
		wmu:      make(chan struct{}, 1),
		apps:     map[string]*entry{},
		removed:  map[string]uint64{},
	}
	r.cache.init(cacheBudget(opts))
	r.bg, r.stopBg = context.WithCancel(context.Background())
	return r, nil
}

// start loads the repo from its sides and, on an object store, starts
// watching the manifest.
func (r *Repo) start(ctx context.Context, op string, pri, bak side, opts Options) (*Repo, error) {
	r.pri, r.bak, r.shared = pri, bak, pri.shared()
	if err := r.load(ctx); err != nil {
		r.closeSides()
		r.stopBg()
		return nil, fail(op, pri.where(), err)
	}
	backup := ""
	if bak != nil {
		backup = bak.where()
	}
	if r.shared {
		every := opts.Refresh
		if every == 0 {
			every = DefaultRefresh
		}
		if every > 0 {
			r.polling.Add(1)
			go r.poll(every)
		}
		r.log.Info("repo: open", "store", pri.where(), "backup", backup, "apps", len(r.apps), "refresh", every)
	} else {
		r.log.Info("repo: open", "dir", pri.where(), "backup", backup, "apps", len(r.apps))
	}
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
	r.stopBg()
	r.polling.Wait()
	r.lock(context.Background())
	defer r.unlock()
	if err := r.closeSides(); err != nil {
		return fail(op, "", err)
	}
	r.log.Info("repo: closed", "where", r.pri.where())
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

// opContext is the context of a change that the caller gave none: on an
// object store, bounded.
func (r *Repo) opContext() (context.Context, context.CancelFunc) {
	if r.shared {
		return context.WithTimeout(context.Background(), 2*objTimeout)
	}
	return context.Background(), func() {}
}

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
// follows it so that a crash never leaves both copies ahead of the
// record). If the backup fails after the commit, the new version is
// deployed all the same: Put returns the App and an IO error saying the
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
	// What is staged and not put in place is discarded before the lock
	// is released, so that Close, which waits for the lock, cannot close
	// the sides under it.
	var obj string
	if r.shared {
		obj = objectName(sum)
	}
	target := record{ID: id, Hash: sum, Size: int64(len(module)), Object: obj}
	var pst, bst staged
	locked := false
	defer func() {
		if pst != nil {
			pst.discard()
		}
		if bst != nil {
			bst.discard()
		}
		if locked {
			r.unlock()
		}
	}()
	var err error
	if pst, err = r.pri.stage(ctx, r.pri.moduleName(target), module); err != nil {
		return App{}, fail(op, id, err)
	}
	if r.bak != nil {
		if bst, err = r.bak.stage(ctx, r.bak.moduleName(target), module); err != nil {
			return App{}, fail(op, id, err)
		}
	}
	stagedAt := time.Now()

	if err := r.lock(ctx); err != nil {
		return App{}, fail(op, id, err)
	}
	locked = true
	if err := r.begin(ctx, op, id); err != nil {
		return App{}, err
	}
	if r.shared && time.Since(stagedAt) > maxStaged {
		return App{}, &fs.Error{Op: op, Path: id, Kind: fs.Timeout,
			Err: fmt.Errorf("more than %v passed between the upload and the commit; deploy again", maxStaged)}
	}

	var (
		rec, prev record
		had       bool
		victims   []record
	)
	m, _, err := r.commit(ctx, func() (manifest, bool, error) {
		r.mu.Lock()
		old, ok := r.apps[id]
		prev, had = record{}, ok
		if ok {
			prev = old.rec
		}
		gone := r.removed[id]
		r.mu.Unlock()

		rec = target
		rec.Deployed, rec.Pinned, rec.Limits = now(), prev.Pinned, prev.Limits
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
		if !r.shared && pst != nil {
			// In a directory the module goes in place before the commit;
			// a crash between leaves it under the old record, which a
			// read finds out (see Commit order).
			if err := pst.install(ctx); err != nil {
				return manifest{}, false, err
			}
			pst = nil
		}
		victims = r.victims(rec)
		return r.manifestWith(&rec, victims), !had || rec != prev || len(victims) > 0, nil
	})
	if r.shared {
		// Named by the committed manifest: kept. After a failed commit
		// too, since a write whose answer was lost may have committed;
		// if not, Open removes them once OrphanGrace old.
		pst, bst = nil, nil
	}
	if err != nil {
		return App{}, fail(op, id, err)
	}
	// Committed: what follows is done even if ctx ends now (each request
	// to a store has a deadline of its own).
	ctx = context.WithoutCancel(ctx)
	r.apply(m, id)
	for _, v := range victims {
		r.log.Info("repo: evicted app", "app", v.ID, "version", v.Version, "size", v.Size, "cap", r.capBytes, "for", id)
		r.removeModule(ctx, r.pri, v)
	}
	replaced := r.shared && had && prev.Object != "" && prev.Object != rec.Object
	if replaced {
		r.removeModule(ctx, r.pri, prev)
	}
	if had && (prev.Hash != rec.Hash || prev.Version != rec.Version || prev.Pinned != rec.Pinned) {
		r.log.Info("repo: deployed", "app", id, "version", rec.Version, "hash", rec.Hash, "size", rec.Size, "was", prev.Version)
	} else if !had {
		r.log.Info("repo: deployed", "app", id, "version", rec.Version, "hash", rec.Hash, "size", rec.Size)
	}

	a := rec.app()
	if r.bak != nil {
		var err error
		if bst != nil {
			err = bst.install(ctx)
		}
		if err == nil {
			bst = nil
			for _, v := range victims {
				r.removeModule(ctx, r.bak, v)
			}
			if replaced {
				r.removeModule(ctx, r.bak, prev)
			}
			err = r.writeBackup(ctx, m)
		}
		if err != nil {
			r.log.Error("repo: backup behind the primary", "app", id, "version", rec.Version, "err", err)
			return a, &fs.Error{Op: op, Path: id, Kind: fs.IO,
				Err: fmt.Errorf("version %d deployed, but the backup copy was not updated: %w", rec.Version, err)}
		}
	}
	return a, nil
}

// commit makes the manifest that edit returns, computed from the state in
// memory, the primary manifest: the commit point. edit also says whether
// there is anything to write. On an object store a conflict (another repo
// committed since the state was read) reads the manifest again and calls
// edit again, up to maxCommitTries times. commit returns the manifest and
// whether it wrote it. The writer lock is held.
func (r *Repo) commit(ctx context.Context, edit func() (manifest, bool, error)) (manifest, bool, error) {
	for try := 1; ; try++ {
		m, write, err := edit()
		if err != nil || !write {
			return m, false, err
		}
		tag, err := r.pri.writeManifest(ctx, m, r.tag)
		if err == nil {
			r.tag = tag
			return m, true, nil
		}
		if !errors.Is(err, errConflict) {
			return m, false, err
		}
		if try == maxCommitTries {
			return m, false, &fs.Error{Kind: fs.Busy, Err: fmt.Errorf("the manifest changed under %d attempts in a row to commit", try)}
		}
		r.log.Info("repo: the manifest changed elsewhere; reading it again", "try", try)
		if err := r.reload(ctx); err != nil {
			return m, false, err
		}
	}
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
// no backup) Get fails with IO. An unknown app is NotExist (on an object
// store, after the manifest was checked for it). The Module is the
// caller's own.
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
	if !ok && r.shared {
		r.mu.Unlock()
		if err := r.catchUp(ctx); err != nil {
			r.log.Warn("repo: checking the manifest for an app not held", "app", id, "err", err)
		}
		r.mu.Lock()
		e, ok = r.apps[id]
	}
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
		// On an object store a module's name is never written with other
		// bytes, so the cached module stands without asking the store.
		if r.shared {
			return rec.withModule(c.mod), nil
		}
		if key, err := r.pri.statKey(ctx, moduleName(id)); err == nil && key == c.key {
			return rec.withModule(c.mod), nil
		}
	}
	if mod, key, err := r.pri.read(ctx, rec); err == nil {
		return rec.withModule(r.remember(rec, key, mod)), nil
	}
	return r.getSlow(ctx, op, id)
}

// getSlow reads app id under the writer lock, after a read found its
// primary copy missing or not matching the record: either a writer was
// replacing it (here, or in another repo on the same object store, which
// then removed the old module), or it is bad and is restored from the
// backup.
func (r *Repo) getSlow(ctx context.Context, op, id string) (App, error) {
	if err := r.lock(ctx); err != nil {
		return App{}, fail(op, id, err)
	}
	defer r.unlock()
	if err := r.ready(ctx, op, id); err != nil {
		return App{}, err
	}
	for try := 0; ; try++ {
		if r.shared {
			if err := r.refresh(ctx); err != nil {
				r.log.Warn("repo: checking the manifest", "app", id, "err", err)
			}
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
		mod, key, perr := r.pri.read(ctx, rec)
		if perr == nil {
			return rec.withModule(r.remember(rec, key, mod)), nil
		}
		if ctx.Err() != nil {
			return App{}, fail(op, id, ctx.Err())
		}
		if r.bak == nil {
			r.log.Error("repo: module bad and no backup", "app", id, "version", rec.Version, "err", perr)
			return App{}, &fs.Error{Op: op, Path: id, Kind: fs.IO,
				Err: fmt.Errorf("app %s version %d: module %w, and there is no backup copy", id, rec.Version, perr)}
		}
		mod, _, berr := r.bak.read(ctx, rec)
		if berr != nil {
			if r.shared && try == 0 && r.changedSince(ctx, rec) {
				continue // replaced elsewhere meanwhile: read the new version
			}
			if r.shared && unreachable(perr) && unreachable(berr) {
				return App{}, &fs.Error{Op: op, Path: id, Kind: fs.KindOf(perr),
					Err: fmt.Errorf("app %s version %d: no copy could be read (primary: %v; backup: %v)", id, rec.Version, perr, berr)}
			}
			r.log.Error("repo: both copies bad", "app", id, "version", rec.Version, "primary", perr, "backup", berr)
			return App{}, &fs.Error{Op: op, Path: id, Kind: fs.IO,
				Err: fmt.Errorf("both copies of app %s version %d are corrupt or missing (primary: %v; backup: %v)", id, rec.Version, perr, berr)}
		}
		if err := r.restore(ctx, r.pri, rec, mod); err != nil {
			r.log.Error("repo: primary bad; served from the backup, repair failed", "app", id, "version", rec.Version, "was", perr, "err", err)
		} else {
			r.log.Warn("repo: primary bad; served from the backup and repaired", "app", id, "version", rec.Version, "was", perr)
		}
		return rec.withModule(mod), nil
	}
}

// unreachable reports whether err says a store did not answer (rather
// than that a module is missing or corrupt).
func unreachable(err error) bool {
	switch fs.KindOf(err) {
	case fs.Unavailable, fs.Timeout, fs.Busy, fs.Permission, fs.Canceled:
		return true
	}
	return false
}

// changedSince reports whether the manifest, read again, no longer has
// rec as it is. The writer lock is held.
func (r *Repo) changedSince(ctx context.Context, rec record) bool {
	if err := r.refresh(ctx); err != nil {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.apps[rec.ID]
	return !ok || e.rec != rec
}

// remember offers a verified module to the cache and returns mod.
func (r *Repo) remember(rec record, key statKey, mod []byte) []byte {
	if key == (statKey{}) {
		return mod
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.apps[rec.ID]; !ok || e.rec.Hash != rec.Hash || r.closed {
		return mod
	}
	r.cache.put(rec.ID, &cached{hash: rec.Hash, key: key, mod: mod, used: r.tick})
	return mod
}

// restore rewrites the copy of rec in s from mod, which matches rec. The
// writer lock is held.
func (r *Repo) restore(ctx context.Context, s side, rec record, mod []byte) error {
	st, err := s.stage(ctx, s.moduleName(rec), mod)
	if err != nil {
		return err
	}
	if err := st.install(ctx); err != nil {
		st.discard()
		return err
	}
	return nil
}

// Stat returns app id without its module. It reads nothing from disk; on
// an object store, an app not held makes it check the manifest (bounded
// by a few seconds).
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
	if !ok && r.shared {
		r.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), missTimeout)
		if err := r.catchUp(ctx); err != nil {
			r.log.Warn("repo: checking the manifest for an app not held", "app", id, "err", err)
		}
		cancel()
		r.mu.Lock()
		e, ok = r.apps[id]
	}
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
	if err := checkID(op, id); err != nil {
		return err
	}
	if err := r.lock(ctx); err != nil {
		return fail(op, id, err)
	}
	defer r.unlock()
	if err := r.begin(ctx, op, id); err != nil {
		return err
	}
	var (
		rec   record
		first = true
		gone  bool
	)
	m, _, err := r.commit(ctx, func() (manifest, bool, error) {
		cur, ok := r.lookup(id)
		if !ok {
			if first {
				return manifest{}, false, notDeployed(op, id)
			}
			// Removed meanwhile, elsewhere, or by this very commit
			// whose answer was lost: removed all the same.
			gone = true
			return manifest{}, false, nil
		}
		first, rec = false, cur
		return r.manifestWith(nil, []record{rec}), true, nil
	})
	if err != nil {
		return fail(op, id, err)
	}
	ctx = context.WithoutCancel(ctx) // committed: finish
	if gone {
		if r.shared {
			r.removeModule(ctx, r.pri, rec)
			if r.bak != nil {
				r.removeModule(ctx, r.bak, rec)
			}
		}
		return nil
	}
	r.apply(m, "")
	r.removeModule(ctx, r.pri, rec)
	r.log.Info("repo: removed", "app", id, "version", rec.Version)
	if r.bak != nil {
		r.removeModule(ctx, r.bak, rec)
		if err := r.writeBackup(ctx, m); err != nil {
			return &fs.Error{Op: op, Path: id, Kind: fs.IO,
				Err: fmt.Errorf("removed, but the backup manifest was not updated: %w", err)}
		}
	}
	return nil
}

// lookup returns the record of id in memory.
func (r *Repo) lookup(id string) (record, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.apps[id]
	if !ok {
		return record{}, false
	}
	return e.rec, true
}

// begin checks that the repo is open and, on an object store, brings the
// state up to date with the manifest, before a change. The writer lock is
// held.
func (r *Repo) begin(ctx context.Context, op, id string) error {
	if err := r.ready(ctx, op, id); err != nil {
		return err
	}
	if r.shared {
		if err := r.refresh(ctx); err != nil {
			return fail(op, id, err)
		}
	}
	return nil
}

// Pin sets whether app id is pinned. A pinned app is never evicted; the
// pin state is durable. Unpinning evicts nothing at once: the next Put
// does, if the cap is exceeded.
func (r *Repo) Pin(id string, pinned bool) error {
	return r.editRecord("pin app", id, func(rec *record) bool {
		if rec.Pinned == pinned {
			return false
		}
		rec.Pinned = pinned
		return true
	}, "pinned", pinned)
}

// editRecord changes app id's record with edit, which reports whether it
// changed anything, and commits the manifest (and the backup's) if it did.
// what and v name the change in the log.
func (r *Repo) editRecord(op, id string, edit func(*record) bool, what string, v any) error {
	if err := checkID(op, id); err != nil {
		return err
	}
	ctx, cancel := r.opContext()
	defer cancel()
	if err := r.lock(ctx); err != nil {
		return fail(op, id, err)
	}
	defer r.unlock()
	if err := r.begin(ctx, op, id); err != nil {
		return err
	}
	m, wrote, err := r.commit(ctx, func() (manifest, bool, error) {
		rec, ok := r.lookup(id)
		if !ok {
			return manifest{}, false, notDeployed(op, id)
		}
		if !edit(&rec) {
			return manifest{}, false, nil
		}
		return r.manifestWith(&rec, nil), true, nil
	})
	if err != nil {
		return fail(op, id, err)
	}
	if !wrote {
		return nil
	}
	r.apply(m, "")
	r.log.Info("repo: "+op, "app", id, what, v)
	if r.bak != nil {
		if err := r.writeBackup(ctx, m); err != nil {
			return &fs.Error{Op: op, Path: id, Kind: fs.IO,
				Err: fmt.Errorf("the record changed, but the backup manifest was not updated: %w", err)}
		}
	}
	return nil
}

// SetLimits records app id's own limits (zero: none), durably and, on an
// object store, for every repo that shares the manifest. They stay with
// the app across deploys of new versions and go with its removal.
func (r *Repo) SetLimits(id string, l Limits) error {
	const op = "set app limits"
	return r.editRecord(op, id, func(rec *record) bool {
		if rec.Limits == l {
			return false
		}
		rec.Limits = l
		return true
	}, "limits", l)
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
	if err := r.begin(ctx, op, id); err != nil {
		return err
	}
	rec, ok := r.lookup(id)
	if !ok {
		return nil // removed meanwhile
	}
	pmod, _, perr := r.pri.read(ctx, rec)
	if r.bak == nil {
		if perr != nil {
			r.log.Error("repo: scrub: module bad and no backup", "app", id, "err", perr)
			return &fs.Error{Op: op, Path: id, Kind: fs.IO, Err: perr}
		}
		return nil
	}
	bmod, _, berr := r.bak.read(ctx, rec)
	switch {
	case perr == nil && berr == nil:
		return nil
	case perr != nil && berr != nil:
		r.log.Error("repo: scrub: both copies bad", "app", id, "primary", perr, "backup", berr)
		return &fs.Error{Op: op, Path: id, Kind: fs.IO, Err: fmt.Errorf("primary: %v; backup: %v", perr, berr)}
	case perr != nil:
		if err := r.restore(ctx, r.pri, rec, bmod); err != nil {
			r.log.Error("repo: scrub: repairing the primary failed", "app", id, "err", err)
			return nil // the backup still serves it
		}
		r.log.Warn("repo: scrub: primary bad; repaired from the backup", "app", id, "version", rec.Version, "was", perr)
	default:
		if err := r.restore(ctx, r.bak, rec, pmod); err != nil {
			r.log.Error("repo: scrub: repairing the backup failed", "app", id, "err", err)
			return nil
		}
		r.log.Warn("repo: scrub: backup bad; repaired from the primary", "app", id, "version", rec.Version, "was", berr)
	}
	return nil
}

// manifestWith is the manifest of the current apps with set put in place
// and drop removed (their versions remembered). On an object store its
// Seq is one more than the state's. The writer lock is held.
func (r *Repo) manifestWith(set *record, drop []record) manifest {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := manifest{Format: manifestFormat, Removed: map[string]uint64{}}
	if r.shared {
		m.Seq = r.seq + 1
	}
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

// apply makes m, just written or read, the state in memory, keeping
// recency, and marks used as just used. The writer lock is held.
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
	r.seq = m.Seq
}

// removeModule removes the module of rec from s, logging a failure: a
// module left behind is removed by the next Open (on an object store,
// once it is OrphanGrace old).
func (r *Repo) removeModule(ctx context.Context, s side, rec record) {
	name := s.moduleName(rec)
	if name == "" {
		return
	}
	if err := s.remove(ctx, name); err != nil {
		r.log.Warn("repo: removing a module", "side", s.role(), "app", rec.ID, "module", name, "err", err)
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
