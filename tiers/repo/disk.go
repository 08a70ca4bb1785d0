package repo

import (
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"strata/fs/flock"
)

// dirSide is a side in a local directory: dir/<id>.wasm and
// dir/manifest.json, each written as a temporary file, fsynced and renamed
// into place, the directory fsynced after. The directory is flocked while
// the side is open: one Repo at a time.
type dirSide struct {
	name string // "primary" or "backup"
	dir  string
	root *os.Root
	dirf *os.File // the directory itself: flocked, and fsynced after a rename
	log  *slog.Logger
}

// openDirSide opens dir, creating it if missing, locks it and removes the
// temporary files left in it.
func openDirSide(name, dir string, log *slog.Logger) (*dirSide, error) {
	if err := makeDir(dir); err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	dirf, err := root.OpenFile(".", os.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err == nil {
		if err = flock.Exclusive(dirf, "another repo"); err != nil {
			dirf.Close()
		}
	}
	if err != nil {
		root.Close()
		return nil, err
	}
	s := &dirSide{name: name, dir: dir, root: root, dirf: dirf, log: log}
	s.sweep()
	return s, nil
}

func (s *dirSide) role() string                 { return s.name }
func (s *dirSide) where() string                { return s.dir }
func (s *dirSide) shared() bool                 { return false }
func (s *dirSide) moduleName(rec record) string { return moduleName(rec.ID) }

func (s *dirSide) close() error {
	err := s.dirf.Close()
	if rerr := s.root.Close(); err == nil {
		err = rerr
	}
	return err
}

// makeDir creates dir if it is missing and makes its entry durable.
func makeDir(dir string) error {
	if _, err := os.Stat(dir); !errors.Is(err, iofs.ErrNotExist) {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for p := filepath.Clean(dir); filepath.Dir(p) != p; p = filepath.Dir(p) {
		f, err := os.Open(filepath.Dir(p))
		if err != nil {
			return err
		}
		err = f.Sync()
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// names lists the regular files of the directory.
func (s *dirSide) names() ([]string, error) {
	ents, err := iofs.ReadDir(s.root.FS(), ".")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if e.Type().IsRegular() {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// modules lists the module files: <id>.wasm for a valid ID.
func (s *dirSide) modules(context.Context) ([]stored, error) {
	names, err := s.names()
	if err != nil {
		return nil, err
	}
	var out []stored
	for _, n := range names {
		if id, ok := strings.CutSuffix(n, ".wasm"); ok && okID(id) {
			out = append(out, stored{name: n})
		}
	}
	return out, nil
}

// sweep removes the temporary files that a crash left.
func (s *dirSide) sweep() {
	names, err := s.names()
	if err != nil {
		s.log.Warn("repo: sweep", "side", s.name, "dir", s.dir, "err", err)
		return
	}
	n := 0
	for _, name := range names {
		if !strings.HasPrefix(name, TempPrefix) {
			continue
		}
		if err := s.root.Remove(name); err != nil {
			s.log.Warn("repo: removing a temporary file", "side", s.name, "file", name, "err", err)
			continue
		}
		n++
	}
	if n > 0 {
		if err := s.dirf.Sync(); err != nil {
			s.log.Warn("repo: sweep", "side", s.name, "dir", s.dir, "err", err)
		}
		s.log.Info("repo: removed temporary files", "side", s.name, "dir", s.dir, "count", n)
	}
}

// writeTemp writes data to a new temporary file, fsynced, and returns its
// name.
func (s *dirSide) writeTemp(data []byte) (string, error) {
	var (
		name string
		f    *os.File
		err  error
	)
	for range 8 {
		name = TempPrefix + strconv.FormatUint(rand.Uint64(), 36)
		f, err = s.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if !errors.Is(err, iofs.ErrExist) {
			break
		}
	}
	if err != nil {
		return "", err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		s.root.Remove(name)
		return "", err
	}
	return name, nil
}

// dropTemp removes the temporary file *tmp names, if any.
func (s *dirSide) dropTemp(tmp *string) {
	if *tmp == "" {
		return
	}
	if err := s.root.Remove(*tmp); err != nil && !errors.Is(err, iofs.ErrNotExist) {
		s.log.Warn("repo: removing a temporary file", "side", s.name, "file", *tmp, "err", err)
	}
	*tmp = ""
}

// install renames the temporary file tmp over name and fsyncs the
// directory.
func (s *dirSide) install(tmp, name string) error {
	if err := s.root.Rename(tmp, name); err != nil {
		return err
	}
	return s.dirf.Sync()
}

// dirStaged is a module written to a temporary file.
type dirStaged struct {
	s         *dirSide
	tmp, name string // tmp is "" once installed or discarded
}

func (s *dirSide) stage(_ context.Context, name string, data []byte) (staged, error) {
	tmp, err := s.writeTemp(data)
	if err != nil {
		return nil, err
	}
	return &dirStaged{s: s, tmp: tmp, name: name}, nil
}

func (d *dirStaged) install(context.Context) error {
	if err := d.s.install(d.tmp, d.name); err != nil {
		return err
	}
	d.tmp = ""
	return nil
}

func (d *dirStaged) discard() { d.s.dropTemp(&d.tmp) }

// remove removes name, if present, and fsyncs the directory.
func (s *dirSide) remove(_ context.Context, name string) error {
	err := s.root.Remove(name)
	if errors.Is(err, iofs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return s.dirf.Sync()
}

// writeManifest replaces the manifest with m.
func (s *dirSide) writeManifest(_ context.Context, m manifest, _ string) (string, error) {
	tmp, err := s.writeTemp(m.encode())
	if err != nil {
		return "", err
	}
	if err := s.install(tmp, ManifestName); err != nil {
		s.dropTemp(&tmp)
		return "", err
	}
	return "", nil
}

// readManifest reads the manifest and its bytes.
func (s *dirSide) readManifest(context.Context) (manifest, []byte, string, error) {
	b, err := s.root.ReadFile(ManifestName)
	if errors.Is(err, iofs.ErrNotExist) {
		return manifest{}, nil, "", errNoManifest
	}
	if err != nil {
		return manifest{}, nil, "", err
	}
	m, err := decodeManifest(b)
	if err != nil {
		return manifest{}, b, "", fmt.Errorf("%s: %w: %w", ManifestName, errBadManifest, err)
	}
	return m, b, "", nil
}

func (s *dirSide) manifestTag(context.Context) (string, error) {
	if _, err := s.root.Stat(ManifestName); err != nil {
		if errors.Is(err, iofs.ErrNotExist) {
			return "", errNoManifest
		}
		return "", err
	}
	return "", nil
}

func (s *dirSide) statKey(_ context.Context, name string) (statKey, error) {
	fi, err := s.root.Stat(name)
	if err != nil {
		return statKey{}, err
	}
	return keyOf(fi), nil
}

// read reads the module of rec and checks its size and hash. The key
// identifies the file read, or is zero if the file changed while it was
// read.
func (s *dirSide) read(_ context.Context, rec record) ([]byte, statKey, error) {
	f, err := s.root.OpenFile(moduleName(rec.ID), os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if errors.Is(err, iofs.ErrNotExist) {
		return nil, statKey{}, errMissing
	}
	if err != nil {
		return nil, statKey{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, statKey{}, err
	}
	if !fi.Mode().IsRegular() {
		return nil, statKey{}, fmt.Errorf("not a regular file (%v)", fi.Mode().Type())
	}
	if fi.Size() != rec.Size {
		return nil, statKey{}, fmt.Errorf("corrupt: size %d, recorded %d", fi.Size(), rec.Size)
	}
	mod := make([]byte, rec.Size)
	if _, err := io.ReadFull(f, mod); err != nil {
		return nil, statKey{}, fmt.Errorf("corrupt: %w", err)
	}
	if h := hashOf(mod); h != rec.Hash {
		return nil, statKey{}, fmt.Errorf("corrupt: hash %s, recorded %s", h, rec.Hash)
	}
	key := keyOf(fi)
	if fi2, err := f.Stat(); err != nil || keyOf(fi2) != key {
		key = statKey{}
	}
	return mod, key, nil
}
