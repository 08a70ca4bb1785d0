package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"

	"strata/fs"
	"strata/fs/nodetab"
)

// Store is a tree kept in a prefix of an S3 bucket. Its methods, and those
// of its nodes and handles, are safe for concurrent use.
type Store struct {
	cfg   Config
	c     *minio.Client
	core  minio.Core
	root  string // the key prefix of the root directory: "" or "PREFIX/"
	where string // s3://BUCKET/PREFIX, for the log and errors
	log   *slog.Logger
	cache *blockCache
	attrs attrs     // recent descriptions of objects (AttrTTL)
	start time.Time // the time of directories that keep none

	stage string   // this store's staging directory
	lock  *os.File // stage, flocked while the store is open

	mu      sync.Mutex
	nodes   *nodetab.Table[node, setAttrs] // the live nodes, by path
	handles map[*handle]struct{}           // the open handles
	closed  atomic.Bool
	seq     atomic.Uint64 // orders writes and attribute changes

	// afterCopy, if not nil, runs between the copy and the delete of a
	// file's rename (tests look at the store there).
	afterCopy func(from, to string)
}

// Open opens the store that cfg describes. It checks that the bucket
// exists and takes the credentials, and prepares the staging directory.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	const op = "open store"
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	where := "s3://" + cfg.Bucket + "/" + cfg.Prefix
	creds, from, err := cfg.LoadCredentials()
	if err != nil {
		return nil, &fs.Error{Op: op, Path: where, Kind: fs.Permission, Err: err}
	}
	c, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:      creds,
		Secure:     cfg.Secure,
		Region:     cfg.Region,
		MaxRetries: 3,
		Transport:  cfg.transport,
	})
	if err != nil {
		return nil, &fs.Error{Op: op, Path: where, Kind: fs.Invalid, Err: err}
	}
	s := &Store{
		cfg:     cfg,
		c:       c,
		core:    minio.Core{Client: c},
		where:   where,
		log:     cfg.Log,
		cache:   newBlockCache(cfg.CacheBytes),
		start:   time.Now(),
		handles: map[*handle]struct{}{},
	}
	s.nodes = nodetab.New(s.forget)
	if cfg.Prefix != "" {
		s.root = cfg.Prefix + "/"
	}
	if err := s.probe(ctx, op, from); err != nil {
		return nil, err
	}
	if err := s.openStaging(); err != nil {
		return nil, &fs.Error{Op: op, Path: cfg.StagingDir, Kind: fs.KindOf(err), Err: fmt.Errorf("staging directory: %w", err)}
	}
	s.log.Info("objstore: open", "store", where, "endpoint", cfg.Endpoint, "staging", s.stage)
	return s, nil
}

// probe lists the prefix once, to report a missing bucket or refused
// credentials at once and clearly.
func (s *Store) probe(ctx context.Context, op, from string) error {
	err := s.list(ctx, s.root, true, 1, func(minio.ObjectInfo) bool { return false })
	if err == nil {
		return nil
	}
	k, cause := classify(err)
	var why error
	switch c := code(err); {
	case c == "NoSuchBucket":
		why = fmt.Errorf("bucket %q does not exist at %s", s.cfg.Bucket, s.cfg.Endpoint)
	case k == fs.Permission:
		why = fmt.Errorf("%s refused the credentials from %s for bucket %q (%v)", s.cfg.Endpoint, from, s.cfg.Bucket, cause)
	case k == fs.Timeout || k == fs.Unavailable:
		why = fmt.Errorf("cannot reach the object store at %s: %v", s.cfg.Endpoint, cause)
	default:
		why = fmt.Errorf("listing bucket %q at %s: %v", s.cfg.Bucket, s.cfg.Endpoint, cause)
	}
	return &fs.Error{Op: op, Path: s.where, Kind: k, Err: why}
}

// openStaging makes this store's staging directory, and removes those of
// stores that ended without closing (their flock is gone). A directory is
// made as new-*, flocked, then renamed store-*, so that no other store's
// sweep takes it for a stale one in between.
func (s *Store) openStaging() error {
	base := s.cfg.StagingDir
	if err := os.MkdirAll(base, 0o700); err != nil {
		return err
	}
	if list, err := os.ReadDir(base); err == nil {
		for _, e := range list {
			switch name := e.Name(); {
			case !e.IsDir():
			case strings.HasPrefix(name, "store-"):
				s.sweep(filepath.Join(base, name))
			case strings.HasPrefix(name, "new-"):
				if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > time.Minute {
					s.sweep(filepath.Join(base, name))
				}
			}
		}
	}
	tmp, err := os.MkdirTemp(base, "new-")
	if err != nil {
		return err
	}
	dir := filepath.Join(base, "store-"+strings.TrimPrefix(filepath.Base(tmp), "new-"))
	f, err := os.Open(tmp)
	if err == nil {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			err = os.Rename(tmp, dir)
		}
		if err != nil {
			f.Close()
		}
	}
	if err != nil {
		os.RemoveAll(tmp)
		return err
	}
	s.stage, s.lock = dir, f
	return nil
}

// sweep removes the staging directory dir if no open store holds it.
func (s *Store) sweep(dir string) {
	f, err := os.Open(dir)
	if err != nil {
		return
	}
	defer f.Close()
	if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		return // in use
	}
	if err := os.RemoveAll(dir); err != nil {
		s.log.Warn("objstore: removing a stale staging directory", "dir", dir, "err", err)
		return
	}
	s.log.Info("objstore: removed a stale staging directory", "dir", dir)
}

// Root returns the root directory of the store.
func (s *Store) Root() fs.Dir { return &dir{&node{s: s, at: &slot{}}} }

// Close closes the store. Handles still open are closed without
// acknowledging what was written through them: their staged data is
// discarded, and their objects stay as they were. Every later use of the
// store, its nodes or its handles fails with BadHandle.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed.Swap(true) {
		s.mu.Unlock()
		return &fs.Error{Op: "close store", Path: s.where, Kind: fs.BadHandle, Err: errClosed}
	}
	open := make([]*handle, 0, len(s.handles))
	for h := range s.handles {
		open = append(open, h)
	}
	s.handles = nil
	s.mu.Unlock()
	for _, h := range open {
		h.abandon()
	}
	err := os.RemoveAll(s.stage)
	s.lock.Close()
	used, hits, misses := s.cache.stats()
	ra := s.cache.aheadStats()
	s.log.Info("objstore: closed", "store", s.where, "abandoned", len(open), "cache_bytes", used, "cache_hits", hits, "cache_misses", misses,
		"read_ahead_loads", ra.runs, "read_ahead_used", ra.used)
	if err != nil {
		return &fs.Error{Op: "close store", Path: s.stage, Kind: fs.KindOf(err), Err: err}
	}
	return nil
}

// check reports a canceled context or a closed store.
func (s *Store) check(ctx context.Context, op, p string) error {
	if err := ctx.Err(); err != nil {
		return s.fail(op, p, err)
	}
	if s.closed.Load() {
		return &fs.Error{Op: op, Path: p, Kind: fs.BadHandle, Err: errClosed}
	}
	return nil
}

// key is the object of the file at p; dirKey the marker of the
// directory at p (for the root, the prefix itself).
func (s *Store) key(p string) string { return s.root + p }

func (s *Store) dirKey(p string) string {
	if p == "" {
		return s.root
	}
	return s.root + p + "/"
}

// deadline bounds one request that moves n bytes.
func (s *Store) deadline(ctx context.Context, n int64) (context.Context, context.CancelFunc) {
	d := s.cfg.Timeout
	if n > 0 && s.cfg.MinRate > 0 {
		d += time.Duration(float64(n) / float64(s.cfg.MinRate) * float64(time.Second))
	}
	return context.WithTimeoutCause(ctx, d, errDeadline)
}

// head describes the object key.
func (s *Store) head(ctx context.Context, key string) (minio.ObjectInfo, error) {
	ctx, cancel := s.deadline(ctx, 0)
	defer cancel()
	oi, err := s.c.StatObject(ctx, s.cfg.Bucket, key, minio.StatObjectOptions{})
	s.attrs.forget(key) // what stood in for this HEAD is older
	return oi, cause(ctx, err)
}

// cause is err, or the cause of ctx's end if ctx ended it.
func cause(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil {
		if c := context.Cause(ctx); c != nil && !errors.Is(err, c) {
			return fmt.Errorf("%w (%v)", c, err)
		}
	}
	return err
}

// list calls fn for the objects and common prefixes under prefix, in
// order, until fn returns false or max entries (if positive) were seen.
// Each page of the listing has its own deadline.
func (s *Store) list(ctx context.Context, prefix string, recursive bool, max int, fn func(minio.ObjectInfo) bool) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	watchdog := time.AfterFunc(s.cfg.Timeout, func() { cancel(errDeadline) })
	defer watchdog.Stop()
	opts := minio.ListObjectsOptions{Prefix: prefix, Recursive: recursive}
	if max > 0 && max < 1000 {
		opts.MaxKeys = max
	}
	n := 0
	for oi := range s.c.ListObjectsIter(ctx, s.cfg.Bucket, opts) {
		watchdog.Reset(s.cfg.Timeout)
		if oi.Err != nil {
			return cause(ctx, oi.Err)
		}
		n++
		if !fn(oi) || (max > 0 && n >= max) {
			return nil
		}
	}
	if ctx.Err() != nil {
		return cause(ctx, ctx.Err())
	}
	return nil
}

// any reports whether there is an object under prefix other than skip.
func (s *Store) any(ctx context.Context, prefix, skip string) (bool, error) {
	found := false
	err := s.list(ctx, prefix, true, 2, func(oi minio.ObjectInfo) bool {
		if oi.Key != skip {
			found = true
			return false
		}
		return true
	})
	return found, err
}

// get reads n bytes at off of the version etag of the object key.
func (s *Store) get(ctx context.Context, key, etag string, off, n int64) ([]byte, error) {
	ctx, cancel := s.deadline(ctx, n)
	defer cancel()
	var opts minio.GetObjectOptions
	if err := opts.SetRange(off, off+n-1); err != nil {
		return nil, err
	}
	if etag != "" {
		opts.SetMatchETag(etag)
	}
	body, _, _, err := s.core.GetObject(ctx, s.cfg.Bucket, key, opts)
	if err != nil {
		return nil, cause(ctx, err)
	}
	defer body.Close()
	b := make([]byte, n)
	got, err := io.ReadFull(body, b)
	if err != nil {
		if err == io.ErrUnexpectedEOF || err == io.EOF {
			err = fmt.Errorf("short read: %d of %d bytes at %d: %w", got, n, off, io.ErrUnexpectedEOF)
		}
		return nil, cause(ctx, err)
	}
	return b, nil
}

// download copies the object key (the version etag, if given) into w,
// and returns its description.
func (s *Store) download(ctx context.Context, key, etag string, size int64, w io.Writer) error {
	ctx, cancel := s.deadline(ctx, size)
	defer cancel()
	var opts minio.GetObjectOptions
	if etag != "" {
		opts.SetMatchETag(etag)
	}
	body, oi, _, err := s.core.GetObject(ctx, s.cfg.Bucket, key, opts)
	if err != nil {
		return cause(ctx, err)
	}
	defer body.Close()
	n, err := io.Copy(w, body)
	if err == nil && n != oi.Size && oi.Size >= 0 {
		err = fmt.Errorf("short read: %d of %d bytes: %w", n, oi.Size, io.ErrUnexpectedEOF)
	}
	return cause(ctx, err)
}

// put uploads size bytes from r as the object key, with the metadata
// meta. It returns only when the object is in the store. With ifNone, it
// fails with the S3 code PreconditionFailed if the object exists.
func (s *Store) put(ctx context.Context, key string, r io.ReaderAt, size int64, meta map[string]string, ifNone bool) (minio.UploadInfo, error) {
	ctx, cancel := s.deadline(ctx, size)
	defer cancel()
	defer s.attrs.forget(key)
	opts := minio.PutObjectOptions{
		UserMetadata: meta,
		ContentType:  "application/octet-stream",
		PartSize:     uint64(s.cfg.PartSize),
	}
	var token string
	if ifNone {
		// A request whose answer is lost is sent again, and then finds
		// the object it made: the token tells that one from another's.
		token = strconv.FormatUint(rand.Uint64(), 36)
		opts.UserMetadata = maps.Clone(meta)
		opts.UserMetadata[metaToken] = token
		opts.SetMatchETagExcept("*")
	}
	info, err := s.c.PutObject(ctx, s.cfg.Bucket, key, io.NewSectionReader(r, 0, size), size, opts)
	if ifNone && code(err) == "PreconditionFailed" {
		if oi, herr := s.c.StatObject(ctx, s.cfg.Bucket, key, minio.StatObjectOptions{}); herr == nil {
			if t, ok := userMeta(oi, metaToken); ok && t == token {
				return minio.UploadInfo{Bucket: s.cfg.Bucket, Key: key, ETag: oi.ETag, Size: oi.Size, LastModified: oi.LastModified}, nil
			}
		}
	}
	return info, cause(ctx, err)
}

// maxCopy is the largest object that one server-side copy takes.
const maxCopy = 5 << 30

// copy copies the object from, in the version etag, to the key to, with
// the metadata meta.
func (s *Store) copy(ctx context.Context, from, etag string, size int64, to string, meta map[string]string) error {
	ctx, cancel := s.deadline(ctx, size)
	defer cancel()
	defer s.attrs.forget(to)
	dst := minio.CopyDestOptions{Bucket: s.cfg.Bucket, Object: to, UserMetadata: meta, ReplaceMetadata: true}
	src := minio.CopySrcOptions{Bucket: s.cfg.Bucket, Object: from, MatchETag: etag}
	var err error
	if size > maxCopy {
		_, err = s.c.ComposeObject(ctx, dst, src)
	} else {
		_, err = s.c.CopyObject(ctx, dst, src)
	}
	return cause(ctx, err)
}

// remove deletes the object key.
func (s *Store) remove(ctx context.Context, key string) error {
	ctx, cancel := s.deadline(ctx, 0)
	defer cancel()
	err := s.c.RemoveObject(ctx, s.cfg.Bucket, key, minio.RemoveObjectOptions{})
	s.cache.forget(key)
	s.attrs.forget(key)
	return cause(ctx, err)
}

var emptyReader = strings.NewReader("")
