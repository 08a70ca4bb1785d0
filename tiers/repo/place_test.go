package repo

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/minio/minio-go/v7"

	"strata/fs/objstore/s3test"
)

// The two copies of a repo, as tests name them.
const (
	priSide = iota
	bakSide
)

// testBucket is the bucket of the object store tests.
const testBucket = "strata-repo"

// kind makes places of one kind for a test: directories, or prefixes of
// a bucket of one S3 server (Versity Gateway).
type kind struct {
	gw *s3test.Gateway // nil for directories
	cl *minio.Client
	n  *atomic.Int64
}

// bothKinds runs fn as a subtest on directories ("dir") and on an object
// store ("s3").
func bothKinds(t *testing.T, fn func(t *testing.T, k kind)) {
	t.Run("dir", func(t *testing.T) { fn(t, kind{}) })
	t.Run("s3", func(t *testing.T) { fn(t, startS3(t)) })
}

// startS3 starts an S3 server for the test and sets the credentials.
func startS3(t *testing.T) kind {
	g := s3test.Start(t, testBucket)
	g.Env(t)
	cl, err := g.Client()
	if err != nil {
		t.Fatal(err)
	}
	return kind{gw: g, cl: cl, n: new(atomic.Int64)}
}

// place is where one repo lives: its primary and backup directories, or
// its primary and backup prefixes.
type place struct {
	t        *testing.T
	dir, bak string // directories, or prefixes
	k        kind
}

func (k kind) place(t *testing.T) *place {
	if k.gw == nil {
		dir, bak := dirs(t)
		return &place{t: t, dir: dir, bak: bak, k: k}
	}
	n := k.n.Add(1)
	return &place{t: t, dir: fmt.Sprintf("r%d/apps", n), bak: fmt.Sprintf("r%d/apps-backup", n), k: k}
}

func (p *place) s3() bool { return p.k.gw != nil }

// primary is what Open or OpenURL takes: the directory or the URL.
func (p *place) primary() string {
	if p.s3() {
		return p.k.gw.URL(testBucket, p.dir)
	}
	return p.dir
}

// backup returns opts with the backup set.
func (p *place) backup(opts Options) Options {
	opts.Backup = p.dir2()
	return opts
}

func (p *place) dir2() string {
	if p.s3() {
		return p.k.gw.URL(testBucket, p.bak)
	}
	return p.bak
}

// tryOpen opens the repo of the place.
func (p *place) tryOpen(opts Options) (*Repo, error) {
	if p.s3() {
		return OpenURL(ctx, p.primary(), opts)
	}
	return Open(p.dir, opts)
}

func (p *place) open(opts Options) *Repo {
	p.t.Helper()
	r, err := p.tryOpen(opts)
	if err != nil {
		p.t.Fatal(err)
	}
	p.t.Cleanup(func() { r.Close() })
	return r
}

func (p *place) reopen(r *Repo, opts Options) *Repo {
	p.t.Helper()
	if err := r.Close(); err != nil {
		p.t.Fatal(err)
	}
	return p.open(opts)
}

func (p *place) root(s int) string {
	if s == bakSide {
		return p.bak
	}
	return p.dir
}

// name is the name of the module of app id, by the primary manifest.
func (p *place) name(id string) string {
	p.t.Helper()
	if !p.s3() {
		return moduleName(id)
	}
	m, err := decodeManifest(p.read(priSide, ManifestName))
	if err != nil {
		p.t.Fatal(err)
	}
	for _, rec := range m.Apps {
		if rec.ID == id {
			return rec.Object
		}
	}
	p.t.Fatalf("no app %s in the manifest", id)
	return ""
}

// tryRead reads name from a side; a missing one is iofs.ErrNotExist.
func (p *place) tryRead(s int, name string) ([]byte, error) {
	if !p.s3() {
		return os.ReadFile(filepath.Join(p.root(s), name))
	}
	body, _, _, err := minio.Core{Client: p.k.cl}.GetObject(ctx, testBucket, p.root(s)+"/"+name, minio.GetObjectOptions{})
	if err != nil {
		if minio.ToErrorResponse(err).Code == "NoSuchKey" {
			return nil, iofs.ErrNotExist
		}
		return nil, err
	}
	defer body.Close()
	return io.ReadAll(body)
}

func (p *place) read(s int, name string) []byte {
	p.t.Helper()
	b, err := p.tryRead(s, name)
	if err != nil {
		p.t.Fatal(err)
	}
	return b
}

func (p *place) exists(s int, name string) bool {
	p.t.Helper()
	_, err := p.tryRead(s, name)
	if err != nil && !errors.Is(err, iofs.ErrNotExist) {
		p.t.Fatal(err)
	}
	return err == nil
}

func (p *place) write(s int, name string, b []byte) {
	p.t.Helper()
	var err error
	if p.s3() {
		_, err = p.k.cl.PutObject(ctx, testBucket, p.root(s)+"/"+name, bytes.NewReader(b), int64(len(b)), minio.PutObjectOptions{})
	} else {
		err = os.WriteFile(filepath.Join(p.root(s), name), b, 0o644)
	}
	if err != nil {
		p.t.Fatal(err)
	}
}

func (p *place) remove(s int, name string) {
	p.t.Helper()
	var err error
	if p.s3() {
		err = p.k.cl.RemoveObject(ctx, testBucket, p.root(s)+"/"+name, minio.RemoveObjectOptions{})
	} else {
		err = os.Remove(filepath.Join(p.root(s), name))
	}
	if err != nil {
		p.t.Fatal(err)
	}
}

// flip inverts one byte of name, in place.
func (p *place) flip(s int, name string) {
	p.t.Helper()
	b := p.read(s, name)
	b[len(b)/2] ^= 0xff
	p.write(s, name, b)
}

// all lists every file or object of a side.
func (p *place) all(s int) []string {
	p.t.Helper()
	var out []string
	if !p.s3() {
		ents, err := os.ReadDir(p.root(s))
		if err != nil {
			p.t.Fatal(err)
		}
		for _, e := range ents {
			out = append(out, e.Name())
		}
		return out
	}
	for oi := range p.k.cl.ListObjectsIter(ctx, testBucket, minio.ListObjectsOptions{Prefix: p.root(s) + "/", Recursive: true}) {
		if oi.Err != nil {
			p.t.Fatal(oi.Err)
		}
		out = append(out, strings.TrimPrefix(oi.Key, p.root(s)+"/"))
	}
	return out
}

// modules lists the modules of a side.
func (p *place) modules(s int) []string {
	p.t.Helper()
	var out []string
	for _, n := range p.all(s) {
		if strings.HasSuffix(n, ".wasm") && !strings.HasPrefix(n, TempPrefix) {
			out = append(out, n)
		}
	}
	return out
}

// leftovers lists what a side holds beyond the manifest and the modules
// the primary manifest names: temporary files, orphaned modules.
func (p *place) leftovers(s int) []string {
	p.t.Helper()
	want := map[string]bool{ManifestName: true}
	if b, err := p.tryRead(priSide, ManifestName); err == nil {
		if m, err := decodeManifest(b); err == nil {
			for _, rec := range m.Apps {
				if p.s3() {
					want[rec.Object] = true
				} else {
					want[moduleName(rec.ID)] = true
				}
			}
		}
	}
	var out []string
	for _, n := range p.all(s) {
		if !want[n] {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}
