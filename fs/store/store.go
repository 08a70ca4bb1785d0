// Package store is the durable read-write tree behind /store: a directory
// on the local disk, reached only through an [os.Root], so that no name,
// rename or symbolic link leads outside it.
//
// # Durability
//
// A call that changes the tree (Create, Mkdir, Remove, Rename, SetAttr) is
// durable when it returns nil: the files and the directories whose entries
// changed have been fsynced. Data written through a Handle is durable when
// its Sync or Close returns nil; a Handle that wrote in place fsyncs the
// file on Close.
//
// # Atomic rewrite
//
// A file created new, or opened with [fs.Truncate], is written to a hidden
// temporary file beside it, whose name begins with [TempPrefix]. Sync or
// Close fsyncs that file, renames it over the target and fsyncs the
// directory. Until then everyone else sees the old content (for a new file,
// the empty file that Create made durable at once), while reads through the
// writing Handle see what it wrote. A crash before the rename leaves the old
// content; the temporary file is removed by the next [Open]. After a Sync
// the Handle writes in place. Every other open for writing writes in place.
// A rewrite replaces the file's inode, so its ID changes; it keeps the
// permission bits (and, where allowed, the owner) but not extended
// attributes or other hard links, and needs a writable directory, as
// creating a file does.
//
// # What the tree holds
//
// Only regular files and directories are part of the tree. Anything else
// found on disk, such as a symbolic link planted from outside, is not
// listed and not looked up (a Permission error); it can be removed, or
// renamed, which touches the entry and never what it points to.
//
// Nodes follow renames made through the store: a Dir or File looked up
// before its name (or a directory above it) moved still refers to it, and
// one that was removed or replaced reports NotExist. Changes made to the
// directory behind the store's back are seen, but nodes do not follow them.
// One Store at a time may use a directory (an exclusive flock on it).
package store

import (
	"context"
	"errors"
	iofs "io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"strata/fs"
)

// TempPrefix begins the name of every temporary file of a rewrite. Such
// names are hidden from ReadDir and refused by every call that takes a name.
const TempPrefix = ".strata-tmp-"

// Store is a durable tree in a directory of the local disk. Its methods,
// and those of its nodes and handles, are safe for concurrent use.
type Store struct {
	root *os.Root
	lock *os.File // the root directory, flocked while the store is open
	log  *slog.Logger
	top  *node // the root directory

	// ns is held for reading while a node's path is used and for writing
	// while names move or go (Rename, Remove), so that a path read under
	// it stays true until it is released.
	ns sync.RWMutex

	mu      sync.Mutex
	nodes   map[string]*slot     // the live nodes, by path
	handles map[*handle]struct{} // the open handles
	closed  atomic.Bool
}

// Open opens the store in dir, creating the directory if it is missing,
// and removes the temporary files that a crash left behind. A nil log
// discards the store's log.
func Open(dir string, log *slog.Logger) (*Store, error) {
	const op = "open store"
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := makeDir(dir); err != nil {
		return nil, fail(op, dir, err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fail(op, dir, err)
	}
	lock, err := root.Open(".")
	if err == nil {
		err = flock(lock)
		if err != nil {
			lock.Close()
		}
	}
	if err != nil {
		root.Close()
		return nil, fail(op, dir, err)
	}
	s := &Store{
		root:    root,
		lock:    lock,
		log:     log,
		nodes:   map[string]*slot{},
		handles: map[*handle]struct{}{},
	}
	s.top = &node{s: s, at: &slot{}}
	s.sweep()
	return s, nil
}

// makeDir creates dir if it is missing and makes its entry durable.
func makeDir(dir string) error {
	if _, err := os.Stat(dir); !errors.Is(err, iofs.ErrNotExist) {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	// MkdirAll may have made several levels: sync every parent.
	for p := filepath.Clean(dir); filepath.Dir(p) != p; p = filepath.Dir(p) {
		if err := syncPath(filepath.Dir(p)); err != nil {
			return err
		}
	}
	return nil
}

func syncPath(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	return syncClose(f)
}

// syncClose fsyncs and closes f.
func syncClose(f *os.File) error {
	err := f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

var errInUse = errors.New("directory in use by another store")

// flock takes an exclusive lock on f, or fails with Busy.
func flock(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var lerr error
	if err := rc.Control(func(fd uintptr) {
		lerr = syscall.Flock(int(fd), syscall.LOCK_EX|syscall.LOCK_NB)
	}); err != nil {
		return err
	}
	if errors.Is(lerr, syscall.EWOULDBLOCK) {
		return &fs.Error{Kind: fs.Busy, Err: errInUse}
	}
	return lerr
}

// sweep removes the temporary files that a crash left anywhere in the tree.
func (s *Store) sweep() {
	start := time.Now()
	removed := 0
	iofs.WalkDir(s.root.FS(), ".", func(p string, d iofs.DirEntry, err error) error {
		if err != nil {
			s.log.Warn("store: sweep", "path", p, "err", err)
			return nil
		}
		if !d.Type().IsRegular() || !strings.HasPrefix(d.Name(), TempPrefix) {
			return nil
		}
		if err := s.root.Remove(p); err != nil {
			s.log.Warn("store: removing a temporary file", "path", p, "err", err)
			return nil
		}
		removed++
		return nil
	})
	s.log.Info("store: open", "dir", s.root.Name(), "swept", removed, "took", time.Since(start))
}

// Root returns the root directory of the store.
func (s *Store) Root() fs.Dir { return &dir{s.top} }

var errClosed = errors.New("store closed")

// Close closes the store. Handles still open are closed without
// acknowledging what was written through them: a pending rewrite is
// discarded. Every later use of the store, its nodes or its handles fails
// with BadHandle.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed.Swap(true) {
		s.mu.Unlock()
		return &fs.Error{Op: "close store", Kind: fs.BadHandle, Err: errClosed}
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
	err := s.lock.Close()
	if rerr := s.root.Close(); err == nil {
		err = rerr
	}
	s.log.Info("store: closed", "dir", s.root.Name(), "abandoned", len(open))
	if err != nil {
		return fail("close store", "", err)
	}
	return nil
}

// register records h as open, unless the store has closed.
func (s *Store) register(h *handle) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return false
	}
	s.handles[h] = struct{}{}
	return true
}

func (s *Store) unregister(h *handle) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.handles, h)
}

// Errors that the store itself finds.
var (
	errReserved = errors.New("name reserved for the store's temporary files")
	errSymlink  = errors.New("symbolic link: the store does not follow links")
	errSpecial  = errors.New("not a regular file or directory")
	errNegative = errors.New("negative offset or size")
	errNoRead   = errors.New("handle not open for reading")
	errNoWrite  = errors.New("handle not open for writing")
	errTruncRO  = errors.New("truncate needs write access")
)

// rootErrors classifies the errors that os.Root makes itself and does not
// export: a path that, through a symbolic link or "..", would leave the
// root, and a root that is not a directory.
var rootErrors = map[string]fs.Kind{
	"path escapes from parent": fs.Permission,
	"not a directory":          fs.NotDir,
}

// fail turns err, from the os package or a context, into an *fs.Error
// for op on p. A cause that only repeats the kind is dropped.
func fail(op, p string, err error) error {
	var fe *fs.Error
	if errors.As(err, &fe) {
		if fe.Op == "" {
			c := *fe
			c.Op, c.Path = op, p
			return &c
		}
		return err
	}
	kind := fs.KindOf(err)
	var (
		pe *iofs.PathError
		le *os.LinkError
		se *os.SyscallError
	)
	cause := err
	switch {
	case errors.As(err, &pe):
		cause = pe.Err
	case errors.As(err, &le):
		cause = le.Err
	case errors.As(err, &se):
		cause = se.Err
	}
	if cause == nil {
		cause = err
	}
	if k, ok := rootErrors[cause.Error()]; ok && kind == fs.Other {
		kind = k
	}
	if errno, ok := cause.(syscall.Errno); ok && errno == kind.Errno() {
		cause = nil
	}
	return &fs.Error{Op: op, Path: p, Kind: kind, Err: cause}
}

// check reports a canceled context or a closed store.
func (s *Store) check(ctx context.Context, op, p string) error {
	if err := ctx.Err(); err != nil {
		return fail(op, p, err)
	}
	if s.closed.Load() {
		return &fs.Error{Op: op, Path: p, Kind: fs.BadHandle, Err: errClosed}
	}
	return nil
}

// openFile opens the file at p. O_NONBLOCK keeps a FIFO put there from
// outside from blocking the store; it changes nothing for a regular file.
func (s *Store) openFile(p string, flag int) (*os.File, error) {
	return s.root.OpenFile(osPath(p), flag|syscall.O_NONBLOCK, 0)
}

// openDir opens the directory at p, to fsync it.
func (s *Store) openDir(p string) (*os.File, error) {
	return s.root.OpenFile(osPath(p), os.O_RDONLY|syscall.O_DIRECTORY, 0)
}

// osPath is p as os.Root takes it: "." for the root.
func osPath(p string) string {
	if p == "" {
		return "."
	}
	return p
}
