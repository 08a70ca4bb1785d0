package repo

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"strata/fs"
	"strata/fs/flock"
)

// manifestFormat is the version of the manifest's layout.
const manifestFormat = 1

// record is an app as the manifest holds it.
type record struct {
	ID       string    `json:"id"`
	Hash     string    `json:"hash"`
	Size     int64     `json:"size"`
	Version  uint64    `json:"version"`
	Deployed time.Time `json:"deployed"`
	Pinned   bool      `json:"pinned"`
}

func (rec record) app() App {
	return App{ID: rec.ID, Hash: rec.Hash, Size: rec.Size, Version: rec.Version, Deployed: rec.Deployed, Pinned: rec.Pinned}
}

func (rec record) withModule(mod []byte) App {
	a := rec.app()
	a.Module = mod
	return a
}

// manifest is the content of manifest.json.
type manifest struct {
	Format  int               `json:"format"`
	Apps    []record          `json:"apps"`
	Removed map[string]uint64 `json:"removed,omitempty"`
}

func (m manifest) encode() []byte {
	if m.Apps == nil {
		m.Apps = []record{}
	}
	if len(m.Removed) == 0 {
		m.Removed = nil
	}
	b, err := json.MarshalIndent(m, "", "\t")
	if err != nil {
		panic(err) // no field can fail to encode
	}
	return append(b, '\n')
}

func decodeManifest(b []byte) (manifest, error) {
	var m manifest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return manifest{}, err
	}
	if m.Format != manifestFormat {
		return manifest{}, fmt.Errorf("format %d, want %d", m.Format, manifestFormat)
	}
	seen := map[string]bool{}
	for _, rec := range m.Apps {
		switch {
		case !okID(rec.ID):
			return manifest{}, fmt.Errorf("bad app ID %.72q", rec.ID)
		case seen[rec.ID]:
			return manifest{}, fmt.Errorf("app %s twice", rec.ID)
		case !validHash(rec.Hash) || strings.ToLower(rec.Hash) != rec.Hash:
			return manifest{}, fmt.Errorf("app %s: bad hash %.80q", rec.ID, rec.Hash)
		case rec.Size <= 0:
			return manifest{}, fmt.Errorf("app %s: bad size %d", rec.ID, rec.Size)
		case rec.Version == 0:
			return manifest{}, fmt.Errorf("app %s: version 0", rec.ID)
		}
		seen[rec.ID] = true
	}
	for id := range m.Removed {
		if !okID(id) {
			return manifest{}, fmt.Errorf("bad removed app ID %.72q", id)
		}
	}
	if m.Removed == nil {
		m.Removed = map[string]uint64{}
	}
	return m, nil
}

// side is one directory of the repo: the primary or the backup.
type side struct {
	name string // "primary" or "backup"
	dir  string
	root *os.Root
	dirf *os.File // the directory itself: flocked, and fsynced after a rename
	log  *slog.Logger
}

// openSide opens dir, creating it if missing, locks it and removes the
// temporary files left in it.
func openSide(name, dir string, log *slog.Logger) (*side, error) {
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
	s := &side{name: name, dir: dir, root: root, dirf: dirf, log: log}
	s.sweep()
	return s, nil
}

func (s *side) close() error {
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
func (s *side) names() ([]string, error) {
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

// modules lists the IDs that have a module file.
func (s *side) modules() ([]string, error) {
	names, err := s.names()
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, n := range names {
		if id, ok := strings.CutSuffix(n, ".wasm"); ok && okID(id) {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// sweep removes the temporary files that a crash left.
func (s *side) sweep() {
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
func (s *side) writeTemp(data []byte) (string, error) {
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
func (s *side) dropTemp(tmp *string) {
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
func (s *side) install(tmp, name string) error {
	if err := s.root.Rename(tmp, name); err != nil {
		return err
	}
	return s.dirf.Sync()
}

// remove removes name, if present, and fsyncs the directory.
func (s *side) remove(name string) error {
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
func (s *side) writeManifest(m manifest) error {
	tmp, err := s.writeTemp(m.encode())
	if err != nil {
		return err
	}
	if err := s.install(tmp, ManifestName); err != nil {
		s.dropTemp(&tmp)
		return err
	}
	return nil
}

// errNoManifest says the manifest file is absent.
var errNoManifest = errors.New("no manifest")

// readManifest reads the manifest and its bytes. A missing one is
// errNoManifest.
func (s *side) readManifest() (manifest, []byte, error) {
	b, err := s.root.ReadFile(ManifestName)
	if errors.Is(err, iofs.ErrNotExist) {
		return manifest{}, nil, errNoManifest
	}
	if err != nil {
		return manifest{}, nil, err
	}
	m, err := decodeManifest(b)
	if err != nil {
		return manifest{}, b, fmt.Errorf("%s: %w", ManifestName, err)
	}
	return m, b, nil
}

// statKey identifies a version of a file's content cheaply: a file written
// or replaced has another key (within timestamp granularity).
type statKey struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64
}

func (s *side) statKey(name string) (statKey, error) {
	fi, err := s.root.Stat(name)
	if err != nil {
		return statKey{}, err
	}
	return keyOf(fi), nil
}

var errMissing = errors.New("missing")

// read reads the module of rec from s and checks its size and hash. The
// key identifies the file read, or is zero if the file changed while it
// was read.
func (s *side) read(rec record) ([]byte, statKey, error) {
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

// load reads the manifests, restores a lost primary manifest from the
// backup's, removes module files no record names, and brings the backup up
// to date. It runs in Open, before anyone else has r.
func (r *Repo) load() error {
	m, _, perr := r.pri.readManifest()
	var (
		bm    manifest
		braw  []byte
		berr  = errNoManifest
		fresh bool
	)
	if r.bak != nil {
		bm, braw, berr = r.bak.readManifest()
	}
	switch {
	case perr == nil:
	case berr == nil:
		r.log.Warn("repo: primary manifest lost; restored from the backup", "dir", r.pri.dir, "err", perr, "apps", len(bm.Apps))
		m = bm
		if err := r.pri.writeManifest(m); err != nil {
			return err
		}
	case errors.Is(perr, errNoManifest):
		// The manifest is written when the directory is first opened, so
		// module files without one mean it was lost: refuse rather than
		// guess versions, or remove what may be the last copy.
		for _, s := range []*side{r.pri, r.bak} {
			if s == nil {
				continue
			}
			ids, err := s.modules()
			if err != nil {
				return err
			}
			if len(ids) > 0 {
				return &fs.Error{Kind: fs.IO, Err: fmt.Errorf("no usable %s, but the %s directory %s holds %d module files; restore the manifest or remove the module files", ManifestName, s.name, s.dir, len(ids))}
			}
		}
		m = manifest{Format: manifestFormat, Removed: map[string]uint64{}}
		fresh = true
		if err := r.pri.writeManifest(m); err != nil {
			return err
		}
	default:
		return &fs.Error{Kind: fs.IO, Err: fmt.Errorf("%w; no backup manifest to restore it from", perr)}
	}

	// State in memory; recency follows deploy order.
	recs := slices.Clone(m.Apps)
	slices.SortFunc(recs, func(a, b record) int { return a.Deployed.Compare(b.Deployed) })
	for _, rec := range recs {
		r.tick++
		r.apps[rec.ID] = &entry{rec: rec, used: r.tick}
	}
	r.removed = m.Removed

	if !fresh {
		r.removeOrphans(r.pri)
	}
	if r.bak != nil {
		if berr != nil && !errors.Is(berr, errNoManifest) {
			r.log.Warn("repo: backup manifest unreadable; rewriting it", "dir", r.bak.dir, "err", berr)
		}
		r.syncBackup(m, bm, braw, berr == nil)
	}
	return nil
}

// removeOrphans removes the module files in s that no record names.
func (r *Repo) removeOrphans(s *side) int {
	ids, err := s.modules()
	if err != nil {
		r.log.Warn("repo: listing modules", "side", s.name, "dir", s.dir, "err", err)
		return 0
	}
	n := 0
	for _, id := range ids {
		if _, ok := r.apps[id]; ok {
			continue
		}
		if err := s.remove(moduleName(id)); err != nil {
			r.log.Warn("repo: removing an orphaned module", "side", s.name, "app", id, "err", err)
			continue
		}
		r.log.Info("repo: removed an orphaned module", "side", s.name, "app", id)
		n++
	}
	return n
}

// syncBackup brings the backup up to date with the primary manifest m:
// every module whose backup record differs or whose file is missing or of
// the wrong size is copied from the (verified) primary, and the backup
// manifest is rewritten if it differs. bm is the backup manifest, if ok.
func (r *Repo) syncBackup(m, bm manifest, braw []byte, ok bool) {
	have := map[string]record{}
	if ok {
		for _, rec := range bm.Apps {
			have[rec.ID] = rec
		}
	}
	copied := 0
	for _, rec := range m.Apps {
		if b, found := have[rec.ID]; found && b.Hash == rec.Hash {
			if key, err := r.bak.statKey(moduleName(rec.ID)); err == nil && key.size == rec.Size {
				continue
			}
		}
		if _, _, err := r.bak.read(rec); err == nil {
			continue // renamed into place before a crash
		}
		mod, _, err := r.pri.read(rec)
		if err != nil {
			r.log.Error("repo: backup copy out of date and the primary unreadable", "app", rec.ID, "version", rec.Version, "err", err)
			continue
		}
		if err := r.restore(r.bak, rec, mod); err != nil {
			r.log.Error("repo: refreshing the backup copy", "app", rec.ID, "err", err)
			continue
		}
		copied++
	}
	removed := r.removeOrphans(r.bak)
	want := m.encode()
	if copied > 0 || removed > 0 || !bytes.Equal(want, braw) {
		if err := r.bak.writeManifest(m); err != nil {
			r.log.Error("repo: writing the backup manifest", "dir", r.bak.dir, "err", err)
			return
		}
		if copied > 0 || removed > 0 || ok {
			r.log.Info("repo: backup brought up to date", "dir", r.bak.dir, "copied", copied, "removed", removed)
		}
	}
}
