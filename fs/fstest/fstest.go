// Package fstest checks that a tree behaves as the fs interfaces promise, in
// the spirit of testing/fstest.TestFS: Check walks a tree, reads everything
// in it in several ways, and, where the tree accepts a new directory, runs a
// suite of writes in a scratch directory that it removes again. It returns
// one error listing every problem found, or nil.
//
// Run it against every tree, and again through every front end and client
// view, so that a tree seen through 9P keeps the promises of the tree itself.
package fstest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"strata/fs"
)

// Check checks the tree at root. Each expected path (slash-separated) must
// exist. Where root accepts Mkdir, Check also creates, writes, renames and
// removes files in a scratch directory and removes it at the end.
func Check(ctx context.Context, root fs.Dir, expected ...string) error {
	c := &checker{ctx: ctx, root: root, ids: map[uint64]string{}}
	c.walk("", root, 0)
	for _, p := range expected {
		if _, err := fs.Walk(ctx, root, p); err != nil {
			c.errorf("expected %s: %v", p, err)
		}
	}
	c.names(root, "")
	c.writes()
	if len(c.errs) == 0 {
		return nil
	}
	return fmt.Errorf("fstest: %d problem(s):\n  %s", len(c.errs), strings.Join(c.errs, "\n  "))
}

// Limits that keep a check of a large tree bounded.
const (
	maxDepth   = 16
	maxEntries = 2000
	maxRead    = 1 << 20 // bytes of a file read in full
)

type checker struct {
	ctx  context.Context
	root fs.Dir
	ids  map[uint64]string
	seen int
	mu   sync.Mutex
	errs []string
}

func (c *checker) errorf(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.errs = append(c.errs, fmt.Sprintf(format, args...))
}

func show(p string) string {
	if p == "" {
		return "/"
	}
	return p
}

// walk checks the directory d at path p and everything below it.
func (c *checker) walk(p string, d fs.Dir, depth int) {
	info, err := d.Stat(c.ctx)
	if err != nil {
		c.errorf("stat %s: %v", show(p), err)
		return
	}
	if !info.IsDir() {
		c.errorf("stat %s: a Dir says its mode is %v, not a directory", show(p), info.Mode)
	}
	c.id(p, info)
	if depth > maxDepth || c.seen > maxEntries {
		return
	}
	list, err := d.ReadDir(c.ctx)
	if err != nil {
		c.errorf("readdir %s: %v", show(p), err)
		return
	}
	if !slices.IsSortedFunc(list, func(a, b fs.Info) int { return strings.Compare(a.Name, b.Name) }) {
		c.errorf("readdir %s: entries are not sorted by name", show(p))
	}
	again, err := d.ReadDir(c.ctx)
	if err != nil {
		c.errorf("readdir %s (second time): %v", show(p), err)
	} else if !sameNames(list, again) {
		c.errorf("readdir %s: two listings differ: %v then %v", show(p), names(list), names(again))
	}
	prev := ""
	for i, e := range list {
		c.seen++
		cp := fs.Join(p, e.Name)
		if err := fs.CheckName("readdir", e.Name); err != nil {
			c.errorf("readdir %s: entry %d has a bad name %q", show(p), i, e.Name)
			continue
		}
		if i > 0 && e.Name == prev {
			c.errorf("readdir %s: %q listed twice", show(p), e.Name)
		}
		prev = e.Name
		n, err := d.Lookup(c.ctx, e.Name)
		if err != nil {
			c.errorf("lookup %s: listed but not found: %v", cp, err)
			continue
		}
		ni, err := n.Stat(c.ctx)
		if err != nil {
			c.errorf("stat %s: %v", cp, err)
			continue
		}
		c.same(cp, e, ni)
		switch n := n.(type) {
		case fs.Dir:
			if !ni.IsDir() {
				c.errorf("%s: a Dir whose mode is %v", cp, ni.Mode)
			}
			c.walk(cp, n, depth+1)
		case fs.File:
			if ni.IsDir() {
				c.errorf("%s: a File whose mode says directory", cp)
			}
			c.id(cp, ni)
			c.read(cp, n, ni)
		default:
			c.errorf("%s: node %T is neither a Dir nor a File", cp, n)
		}
	}
}

func (c *checker) id(p string, info fs.Info) {
	if info.ID == 0 {
		return
	}
	if q, ok := c.ids[info.ID]; ok && q != p {
		c.errorf("%s and %s have the same ID %d", show(q), show(p), info.ID)
	}
	c.ids[info.ID] = p
}

// same checks that a listing entry agrees with the node's own Stat.
func (c *checker) same(p string, e, n fs.Info) {
	if e.Name != n.Name {
		c.errorf("%s: listed as %q, stats as %q", p, e.Name, n.Name)
	}
	if e.IsDir() != n.IsDir() || e.Mode.Type() != n.Mode.Type() {
		c.errorf("%s: listed with mode %v, stats with %v", p, e.Mode, n.Mode)
	}
	if !e.IsDir() && !e.Stream && !n.Stream && e.Size != n.Size {
		c.errorf("%s: listed with size %d, stats with %d", p, e.Size, n.Size)
	}
	if e.ID != 0 && n.ID != 0 && e.ID != n.ID {
		c.errorf("%s: listed with ID %d, stats with %d", p, e.ID, n.ID)
	}
}

// read checks that a file reads the same whole, in pieces and at offsets.
func (c *checker) read(p string, f fs.File, info fs.Info) {
	if info.Mode.Perm()&0o444 == 0 {
		return
	}
	h, err := f.Open(c.ctx, fs.ReadOnly)
	if err != nil {
		if k := fs.KindOf(err); k != fs.Permission && k != fs.Unsupported {
			c.errorf("open %s: %v", p, err)
		}
		return
	}
	defer func() {
		if err := h.Close(c.ctx); err != nil {
			c.errorf("close %s: %v", p, err)
		}
	}()
	whole, err := readAll(c.ctx, h, 64<<10)
	if err != nil {
		c.errorf("read %s: %v", p, err)
		return
	}
	if info.Stream {
		return // a stream's content may change from read to read
	}
	if int64(len(whole)) != info.Size && info.Size <= maxRead {
		c.errorf("read %s: read %d bytes, stat says %d", p, len(whole), info.Size)
	}
	small, err := readAll(c.ctx, h, 7)
	if err != nil {
		c.errorf("read %s in 7-byte pieces: %v", p, err)
	} else if !bytes.Equal(small, whole) {
		c.errorf("read %s: 7-byte pieces give other bytes than one read", p)
	}
	r := rand.New(rand.NewPCG(uint64(len(whole)), 1))
	for range 8 {
		if len(whole) == 0 {
			break
		}
		off := r.IntN(len(whole))
		n := 1 + r.IntN(len(whole)-off)
		buf := make([]byte, n)
		got, err := readFull(c.ctx, h, buf, int64(off))
		if err != nil {
			c.errorf("read %s at %d: %v", p, off, err)
			break
		}
		if !bytes.Equal(buf[:got], whole[off:off+got]) || got != n {
			c.errorf("read %s at %d: %d bytes that differ from the whole read", p, off, got)
			break
		}
	}
	if n, err := h.ReadAt(c.ctx, make([]byte, 8), int64(len(whole))+100); n != 0 || (err != nil && err != io.EOF) {
		c.errorf("read %s past the end: got %d bytes, error %v; want 0 and nil or io.EOF", p, n, err)
	}
}

// readAll reads h from 0 to the end in reads of size n, up to maxRead bytes.
func readAll(ctx context.Context, h fs.Handle, n int) ([]byte, error) {
	var out []byte
	buf := make([]byte, n)
	for len(out) < maxRead {
		got, err := h.ReadAt(ctx, buf, int64(len(out)))
		out = append(out, buf[:got]...)
		if err == io.EOF || (err == nil && got == 0) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// readFull reads len(p) bytes at off, in as many reads as it takes.
func readFull(ctx context.Context, h fs.Handle, p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		n, err := h.ReadAt(ctx, p[done:], off+int64(done))
		done += n
		if err == io.EOF || (err == nil && n == 0) {
			return done, nil
		}
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// names checks that bad and missing names fail the right way.
func (c *checker) names(d fs.Dir, p string) {
	for _, bad := range []string{"", ".", "..", "a/b", "/", "a\x00b", strings.Repeat("x", fs.MaxNameLen+1)} {
		if n, err := d.Lookup(c.ctx, bad); err == nil {
			c.errorf("lookup %q in %s: found %T, want an error", bad, show(p), n)
		} else if k := fs.KindOf(err); k != fs.Invalid && k != fs.NameTooLong && k != fs.NotExist {
			c.errorf("lookup %q in %s: error of kind %q (%v), want invalid argument", bad, show(p), k, err)
		}
	}
	missing := fmt.Sprintf("fstest-missing-%d", rand.Uint64())
	_, err := d.Lookup(c.ctx, missing)
	if !errors.Is(err, iofs.ErrNotExist) {
		c.errorf("lookup %s/%s: got %v, want an error that is fs.ErrNotExist", show(p), missing, err)
	}
	c.isFsError("lookup "+missing, err)
}

// isFsError checks that err is an *fs.Error that says what failed.
func (c *checker) isFsError(what string, err error) {
	var fe *fs.Error
	if err != nil && (!errors.As(err, &fe) || fe.Op == "") {
		c.errorf("%s: error %q (%T) is not an *fs.Error with an op", what, err, err)
	}
}

// wantKind checks that err is an error of kind k.
func (c *checker) wantKind(what string, err error, k fs.Kind) {
	if err == nil {
		c.errorf("%s: succeeded, want an error of kind %q", what, k)
		return
	}
	if got := fs.KindOf(err); got != k {
		c.errorf("%s: error %q of kind %q, want kind %q", what, err, got, k)
	}
	c.isFsError(what, err)
}

// writes runs the write suite in a scratch directory, if root takes one.
func (c *checker) writes() {
	ctx := c.ctx
	name := fmt.Sprintf("fstest-%d-%d", time.Now().UnixNano()%1e6, rand.Uint32())
	before, err := c.root.ReadDir(ctx)
	if err != nil {
		return
	}
	d, err := c.root.Mkdir(ctx, name, 0o755)
	if err != nil {
		switch fs.KindOf(err) {
		case fs.Permission, fs.Unsupported:
			return // a read-only tree
		}
		c.errorf("mkdir %s: %v", name, err)
		return
	}
	w := &writer{checker: c, d: d, p: name}
	w.run()
	if err := removeAll(ctx, c.root, name); err != nil {
		c.errorf("removing the scratch directory %s: %v", name, err)
	}
	after, err := c.root.ReadDir(ctx)
	if err != nil {
		c.errorf("readdir / after the write suite: %v", err)
	} else if !sameNames(before, after) {
		c.errorf("readdir /: before the write suite %v, after %v", names(before), names(after))
	}
}

func removeAll(ctx context.Context, d fs.Dir, name string) error {
	n, err := d.Lookup(ctx, name)
	if err != nil {
		return err
	}
	if sub, ok := n.(fs.Dir); ok {
		list, err := sub.ReadDir(ctx)
		if err != nil {
			return err
		}
		for _, e := range list {
			if err := removeAll(ctx, sub, e.Name); err != nil {
				return err
			}
		}
	}
	return d.Remove(ctx, name)
}

func names(list []fs.Info) []string {
	var s []string
	for _, e := range list {
		s = append(s, e.Name)
	}
	return s
}

func sameNames(a, b []fs.Info) bool { return slices.Equal(names(a), names(b)) }
