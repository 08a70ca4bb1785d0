// Package store is the durable read-write tree behind /store: a directory
// on the local disk, reached only through an [os.Root], so that no name,
// rename or symbolic link leads outside it. The store reaches the disk
// through a small interface of its own (disk.go), so that its crash
// consistency can be tested on a disk that loses what was not synced.
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
// directory (both directories, if the file was renamed into another one
// meanwhile). Until then everyone else sees the old content (for a new file,
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
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"strata/fs"
	"strata/fs/nodetab"
)

// TempPrefix begins the name of every temporary file of a rewrite. Such
// names are hidden from ReadDir and refused by every call that takes a name.
const TempPrefix = ".strata-tmp-"

// Store is a durable tree in a directory of the local disk. Its methods,
// and those of its nodes and handles, are safe for concurrent use.
type Store struct {
	disk disk   // the store's directory, flocked while the store is open
	name string // the directory, for the log
	log  *slog.Logger
	top  *node // the root directory

	// ns is held for reading while a node's path is used and for writing
	// while names move or go (Rename, Remove), so that a path read under
	// it stays true until it is released.
	ns sync.RWMutex

	mu      sync.Mutex
	nodes   *nodetab.Table[node, struct{}] // the live nodes, by path
	handles map[*handle]struct{}           // the open handles
	closed  atomic.Bool
}

// Open opens the store in dir, creating the directory if it is missing,
// and removes the temporary files that a crash left behind. A nil log
// discards the store's log.
func Open(dir string, log *slog.Logger) (*Store, error) {
	const op = "open store"
	if err := makeDir(dir); err != nil {
		return nil, fail(op, dir, err)
	}
	d, err := lockRoot(dir)
	if err != nil {
		return nil, fail(op, dir, err)
	}
	return openDisk(d, dir, log), nil
}

// openDisk opens the store on d, called name in the log, and removes the
// temporary files that a crash left behind. The store owns d and closes
// it on Close.
func openDisk(d disk, name string, log *slog.Logger) *Store {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{
		disk:    d,
		name:    name,
		log:     log,
		handles: map[*handle]struct{}{},
	}
	s.nodes = nodetab.New(s.forget)
	s.top = &node{s: s, at: &slot{}}
	s.sweep()
	return s
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
func syncClose(f diskFile) error {
	err := f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// openDirs opens the directories at paths, each once, to fsync them.
func (s *Store) openDirs(paths ...string) ([]diskFile, error) {
	var dirs []diskFile
	for i, p := range paths {
		if slices.Contains(paths[:i], p) {
			continue
		}
		df, err := s.openDir(p)
		if err != nil {
			for _, df := range dirs {
				df.Close()
			}
			return nil, err
		}
		dirs = append(dirs, df)
	}
	return dirs, nil
}

// syncDirs fsyncs and closes every one of dirs, and returns the first error.
func syncDirs(dirs []diskFile) error {
	var err error
	for _, df := range dirs {
		if serr := syncClose(df); err == nil {
			err = serr
		}
	}
	return err
}

// sweep removes the temporary files that a crash left anywhere in the tree.
func (s *Store) sweep() {
	start := time.Now()
	removed := s.sweepDir("")
	s.log.Info("store: open", "dir", s.name, "swept", removed, "took", time.Since(start))
}

// sweepDir removes the temporary files in the directory p and below it,
// and returns how many it removed.
func (s *Store) sweepDir(p string) int {
	removed := 0
	f, err := s.openDir(p)
	if err != nil {
		s.log.Warn("store: sweep", "path", osPath(p), "err", err)
		return 0
	}
	list, err := f.ReadDir(-1)
	f.Close()
	if err != nil {
		s.log.Warn("store: sweep", "path", osPath(p), "err", err) // and sweep what was listed
	}
	for _, e := range list {
		q := fs.Join(p, e.Name())
		switch {
		case e.IsDir():
			removed += s.sweepDir(q)
		case e.Type().IsRegular() && strings.HasPrefix(e.Name(), TempPrefix):
			if err := s.disk.Remove(q); err != nil {
				s.log.Warn("store: removing a temporary file", "path", q, "err", err)
				continue
			}
			removed++
		}
	}
	return removed
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
	err := s.disk.Close()
	s.log.Info("store: closed", "dir", s.name, "abandoned", len(open))
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
func (s *Store) openFile(p string, flag int) (diskFile, error) {
	return s.disk.OpenFile(osPath(p), flag|syscall.O_NONBLOCK, 0)
}

// openDir opens the directory at p, to fsync it.
func (s *Store) openDir(p string) (diskFile, error) {
	return s.disk.OpenFile(osPath(p), os.O_RDONLY|syscall.O_DIRECTORY, 0)
}

// osPath is p as os.Root takes it: "." for the root.
func osPath(p string) string {
	if p == "" {
		return "."
	}
	return p
}
