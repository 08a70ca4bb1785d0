package remote

import (
	"bytes"
	"context"
	"io"
	iofs "io/fs"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hugelgupf/p9/p9"

	"strata/fs"
)

// node is a place in the remote tree.
type node struct {
	t    *Tree
	path string // slash-separated from the root; "" is the root
}

func (n node) names(more ...string) []string {
	var names []string
	if n.path != "" {
		names = strings.Split(n.path, "/")
	}
	return append(names, more...)
}

func (n node) child(name string) string { return fs.Join(n.path, name) }

func baseName(p string) string { return p[strings.LastIndexByte(p, '/')+1:] }

// walked is a fid that a step walked, with the attributes of its file.
type walked struct {
	f     *fid
	qid   p9.QID
	valid p9.AttrMask
	attr  p9.Attr
}

// walkFrom walks names from from, as one step. The caller clunks the
// fid; if the caller stopped waiting, the step clunks it.
func walkFrom(ctx context.Context, s *link, from p9.File, op, path string, names []string, on ...*fid) (walked, error) {
	return exec(ctx, s, s.plan(ctx), op, path, func() (walked, error) {
		qids, f, valid, attr, err := from.WalkGetAttr(names)
		if err != nil {
			return walked{}, err
		}
		w := walked{f: newFid(f), valid: valid, attr: attr}
		if len(qids) > 0 {
			w.qid = qids[len(qids)-1]
		}
		return w, nil
	}, func(w walked) { clunk(context.Background(), s, w.f) }, on...)
}

// walk returns a new fid for n's path (and more), with its attributes.
// The caller clunks it.
func (n node) walk(ctx context.Context, s *link, op string, more ...string) (walked, error) {
	names := n.names(more...)
	return walkFrom(ctx, s, s.root, op, strings.Join(names, "/"), names)
}

// do runs fn on a fresh fid for n (walked and clunked around it). path
// names what op is about, in errors.
func (n node) do(ctx context.Context, op, path string, fn func(s *link, f *fid) error) error {
	s, err := n.t.use(ctx, op, path)
	if err != nil {
		return err
	}
	w, err := n.walk(ctx, s, op)
	if err != nil {
		return err
	}
	defer clunk(ctx, s, w.f)
	return fn(s, w.f)
}

func infoOf(name string, qid p9.QID, valid p9.AttrMask, a p9.Attr) fs.Info {
	info := fs.Info{
		Name:    name,
		Mode:    a.Mode.OSMode(),
		ModTime: time.Unix(int64(a.MTimeSeconds), int64(a.MTimeNanoSeconds)),
		ID:      qid.Path,
		Version: qid.Version,
	}
	switch {
	case valid.Size:
		info.Size = int64(a.Size)
	case !info.IsDir():
		// The server does not know the size: a ctl or answer file.
		info.Stream = true
	}
	return info
}

// Stat implements fs.Node.
func (n node) Stat(ctx context.Context) (fs.Info, error) {
	s, err := n.t.use(ctx, "stat", n.path)
	if err != nil {
		return fs.Info{}, err
	}
	if n.path == "" {
		return exec(ctx, s, s.plan(ctx), "stat", "", func() (fs.Info, error) {
			qid, valid, attr, err := s.root.GetAttr(p9.AttrMaskAll)
			return infoOf("", qid, valid, attr), err
		}, nil)
	}
	w, err := n.walk(ctx, s, "stat")
	if err != nil {
		return fs.Info{}, err
	}
	clunk(ctx, s, w.f)
	return infoOf(baseName(n.path), w.qid, w.valid, w.attr), nil
}

// SetAttr implements fs.Node.
func (n node) SetAttr(ctx context.Context, a fs.Attr) error {
	var mask p9.SetAttrMask
	var attr p9.SetAttr
	if a.Size != nil {
		if *a.Size < 0 {
			return n.t.err("setattr", n.path, fs.Invalid, nil)
		}
		mask.Size, attr.Size = true, uint64(*a.Size)
	}
	if a.Mode != nil {
		mask.Permissions, attr.Permissions = true, p9.FileMode(a.Mode.Perm())
	}
	if a.ModTime != nil {
		mask.MTime, mask.MTimeNotSystemTime = true, true
		attr.MTimeSeconds, attr.MTimeNanoSeconds = uint64(a.ModTime.Unix()), uint64(a.ModTime.Nanosecond())
	}
	if mask.Empty() {
		return nil
	}
	return n.do(ctx, "setattr", n.path, func(s *link, f *fid) error {
		return s.step(ctx, "setattr", n.path, func() error { return f.SetAttr(mask, attr) }, f)
	})
}

type dir struct{ node }

type file struct{ node }

var (
	_ fs.Dir  = (*dir)(nil)
	_ fs.File = (*file)(nil)
)

// Lookup implements fs.Dir.
func (d *dir) Lookup(ctx context.Context, name string) (fs.Node, error) {
	if err := fs.CheckName("lookup", name); err != nil {
		return nil, d.t.relabel(err)
	}
	s, err := d.t.use(ctx, "lookup", d.child(name))
	if err != nil {
		return nil, err
	}
	w, err := d.walk(ctx, s, "lookup", name)
	if err != nil {
		return nil, err
	}
	clunk(ctx, s, w.f)
	c := node{t: d.t, path: d.child(name)}
	if w.attr.Mode.IsDir() {
		return &dir{c}, nil
	}
	return &file{c}, nil
}

// statParallel bounds the attribute requests ReadDir has in flight.
const statParallel = 16

// ReadDir implements fs.Dir: it reads the names, then asks for each
// entry's attributes (several at a time). An entry removed in between is
// left out.
func (d *dir) ReadDir(ctx context.Context) ([]fs.Info, error) {
	var infos []fs.Info
	err := d.do(ctx, "readdir", d.path, func(s *link, f *fid) error {
		if err := s.step(ctx, "readdir", d.path, func() error {
			_, _, err := f.Open(p9.ReadOnly)
			return err
		}, f); err != nil {
			return err
		}
		var names []string
		for off := uint64(0); ; {
			at := off
			ents, err := exec(ctx, s, s.plan(ctx), "readdir", d.path, func() (p9.Dirents, error) {
				return f.Readdir(at, uint32(s.payload))
			}, nil, f)
			if err != nil {
				return err
			}
			if len(ents) == 0 {
				break
			}
			for _, e := range ents {
				if e.Name != "." && e.Name != ".." {
					names = append(names, e.Name)
				}
				off = e.Offset
			}
		}

		infos = make([]fs.Info, len(names))
		found := make([]bool, len(names))
		var (
			wg       sync.WaitGroup
			mu       sync.Mutex
			firstErr error
			next     atomic.Int64
		)
		for range min(statParallel, len(names)) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := int(next.Add(1) - 1); i < len(names); i = int(next.Add(1) - 1) {
					w, err := walkFrom(ctx, s, f.File, "readdir", d.child(names[i]), names[i:i+1], f)
					if fs.KindOf(err) == fs.NotExist {
						continue
					}
					if err != nil {
						mu.Lock()
						firstErr = cmpOr(firstErr, err)
						mu.Unlock()
						return
					}
					clunk(ctx, s, w.f)
					infos[i] = infoOf(names[i], w.qid, w.valid, w.attr)
					found[i] = true
				}
			}()
		}
		wg.Wait()
		if firstErr != nil {
			return firstErr
		}
		kept := infos[:0]
		for i, info := range infos {
			if found[i] {
				kept = append(kept, info)
			}
		}
		infos = kept
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(infos, func(a, b fs.Info) int { return strings.Compare(a.Name, b.Name) })
	return infos, nil
}

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// Linux open(2) and unlinkat(2) flags, as 9P2000.L carries them.
const (
	lOWRONLY     = 0o1
	lORDWR       = 0o2
	lOCREAT      = 0o100
	lOEXCL       = 0o200
	lOTRUNC      = 0o1000
	lOAPPEND     = 0o2000
	lATREMOVEDIR = 0x200
)

func openFlags(fl fs.Flag) p9.OpenFlags {
	var o p9.OpenFlags
	switch fl.Access() {
	case fs.WriteOnly:
		o = lOWRONLY
	case fs.ReadWrite:
		o = lORDWR
	}
	if fl.Has(fs.Truncate) {
		o |= lOTRUNC
	}
	if fl.Has(fs.Append) {
		o |= lOAPPEND
	}
	if fl.Has(fs.Excl) {
		o |= lOEXCL
	}
	return o
}

// Create implements fs.Dir.
func (d *dir) Create(ctx context.Context, name string, flag fs.Flag, perm iofs.FileMode) (fs.File, fs.Handle, error) {
	if err := fs.CheckName("create", name); err != nil {
		return nil, nil, d.t.relabel(err)
	}
	s, err := d.t.use(ctx, "create", d.child(name))
	if err != nil {
		return nil, nil, err
	}
	w, err := d.walk(ctx, s, "create")
	if err != nil {
		return nil, nil, err
	}
	p := d.child(name)
	err = s.step(ctx, "create", p, func() error {
		// On success the fid becomes the new, open file.
		_, _, _, err := w.f.Create(name, openFlags(flag)|lOCREAT, p9.FileMode(perm.Perm()), p9.NoUID, p9.NoGID)
		return err
	}, w.f)
	if err != nil {
		clunk(ctx, s, w.f)
		return nil, nil, err
	}
	return &file{node{t: d.t, path: p}}, &handle{s: s, f: w.f, path: p}, nil
}

// Mkdir implements fs.Dir.
func (d *dir) Mkdir(ctx context.Context, name string, perm iofs.FileMode) (fs.Dir, error) {
	if err := fs.CheckName("mkdir", name); err != nil {
		return nil, d.t.relabel(err)
	}
	p := d.child(name)
	err := d.do(ctx, "mkdir", p, func(s *link, f *fid) error {
		return s.step(ctx, "mkdir", p, func() error {
			_, err := f.Mkdir(name, p9.FileMode(perm.Perm()), p9.NoUID, p9.NoGID)
			return err
		}, f)
	})
	if err != nil {
		return nil, err
	}
	return &dir{node{t: d.t, path: p}}, nil
}

// Remove implements fs.Dir. 9P2000.L says whether a directory is meant;
// a file is tried first, a directory if the server says it is one.
func (d *dir) Remove(ctx context.Context, name string) error {
	if err := fs.CheckName("remove", name); err != nil {
		return d.t.relabel(err)
	}
	p := d.child(name)
	return d.do(ctx, "remove", p, func(s *link, f *fid) error {
		err := s.step(ctx, "remove", p, func() error { return f.UnlinkAt(name, 0) }, f)
		if fs.KindOf(err) == fs.IsDir {
			err = s.step(ctx, "remove", p, func() error { return f.UnlinkAt(name, lATREMOVEDIR) }, f)
		}
		return err
	})
}

// Rename implements fs.Dir.
func (d *dir) Rename(ctx context.Context, oldName string, newDir fs.Dir, newName string) error {
	p := d.child(oldName)
	for _, name := range []string{oldName, newName} {
		if err := fs.CheckName("rename", name); err != nil {
			return d.t.relabel(err)
		}
	}
	nd, ok := newDir.(*dir)
	if !ok || nd.t != d.t {
		return d.t.err("rename", p, fs.CrossDevice, nil)
	}
	return d.do(ctx, "rename", p, func(s *link, f *fid) error {
		g, err := nd.walk(ctx, s, "rename")
		if err != nil {
			return err
		}
		defer clunk(ctx, s, g.f)
		// p9's client wants its own File for the new directory.
		return s.step(ctx, "rename", p, func() error { return f.RenameAt(oldName, g.f.File, newName) }, f, g.f)
	})
}

// Open implements fs.File.
func (fl *file) Open(ctx context.Context, flag fs.Flag) (fs.Handle, error) {
	s, err := fl.t.use(ctx, "open", fl.path)
	if err != nil {
		return nil, err
	}
	w, err := fl.walk(ctx, s, "open")
	if err != nil {
		return nil, err
	}
	err = s.step(ctx, "open", fl.path, func() error {
		_, _, err := w.f.Open(openFlags(flag))
		return err
	}, w.f)
	if err != nil {
		clunk(ctx, s, w.f)
		return nil, err
	}
	return &handle{s: s, f: w.f, path: fl.path}, nil
}

// handle is an open fid. It belongs to the link that opened it: after a
// reconnection its calls fail and the file must be opened again.
type handle struct {
	s      *link
	f      *fid
	path   string
	closed atomic.Bool
}

var (
	_ fs.Handle       = (*handle)(nil)
	_ fs.HandleStater = (*handle)(nil)
)

func (h *handle) check(op string) error {
	if h.closed.Load() {
		return h.s.t.err(op, h.path, fs.BadHandle, iofs.ErrClosed)
	}
	return nil
}

// ReadAt implements fs.Handle: one Tread per step, each with its deadline.
// A step that may outlive the caller's wait reads into a buffer of its own.
func (h *handle) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if err := h.check("read"); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, h.s.t.err("read", h.path, fs.Invalid, nil)
	}
	done := 0
	for done < len(p) {
		chunk := p[done:min(len(p), done+h.s.payload)]
		pl := h.s.planFor(ctx, len(chunk))
		buf := chunk
		if pl.detached() {
			buf = make([]byte, len(chunk))
		}
		at := off + int64(done)
		n, err := exec(ctx, h.s, pl, "read", h.path, func() (int, error) {
			n, err := h.f.ReadAt(buf, at)
			if err == io.EOF {
				return 0, nil // an answer: nothing more
			}
			return n, err
		}, nil, h.f)
		if err != nil {
			return done, err
		}
		if pl.detached() {
			copy(chunk, buf[:n])
		}
		done += n
		if n == 0 {
			return done, io.EOF
		}
		// A short read is not the end: a Stream file may give more.
	}
	return done, nil
}

// WriteAt implements fs.Handle: one Twrite per step, each with its
// deadline. A step that may outlive the caller's wait writes a copy.
func (h *handle) WriteAt(ctx context.Context, p []byte, off int64) (int, error) {
	if err := h.check("write"); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, h.s.t.err("write", h.path, fs.Invalid, nil)
	}
	done := 0
	for done < len(p) {
		chunk := p[done:min(len(p), done+h.s.payload)]
		pl := h.s.planFor(ctx, len(chunk))
		if pl.detached() {
			chunk = bytes.Clone(chunk)
		}
		at := off + int64(done)
		n, err := exec(ctx, h.s, pl, "write", h.path, func() (int, error) {
			return h.f.WriteAt(chunk, at)
		}, nil, h.f)
		done += n
		if err != nil {
			return done, err
		}
		if n == 0 {
			return done, h.s.t.err("write", h.path, fs.IO, io.ErrShortWrite)
		}
	}
	return done, nil
}

// Stat implements fs.HandleStater with a getattr of the open fid: it
// describes the file the handle has open, which after an unlink, or a
// rename or rewrite over its name, is not the one at its path.
func (h *handle) Stat(ctx context.Context) (fs.Info, error) {
	if err := h.check("stat"); err != nil {
		return fs.Info{}, err
	}
	type got struct {
		qid   p9.QID
		valid p9.AttrMask
		attr  p9.Attr
	}
	g, err := exec(ctx, h.s, h.s.plan(ctx), "stat", h.path, func() (got, error) {
		qid, valid, attr, err := h.f.GetAttr(p9.AttrMaskAll)
		return got{qid, valid, attr}, err
	}, nil, h.f)
	if err != nil {
		return fs.Info{}, err
	}
	return infoOf(baseName(h.path), g.qid, g.valid, g.attr), nil
}

// Sync implements fs.Handle.
func (h *handle) Sync(ctx context.Context) error {
	if err := h.check("sync"); err != nil {
		return err
	}
	return h.s.step(ctx, "sync", h.path, h.f.FSync, h.f)
}

// Close implements fs.Handle. The server's answer to the clunk says
// whether what was written is acknowledged. Steps on the handle whose
// callers stopped waiting are waited for first, within ctx's deadline.
func (h *handle) Close(ctx context.Context) error {
	if !h.closed.CompareAndSwap(false, true) {
		return h.s.t.err("close", h.path, fs.BadHandle, iofs.ErrClosed)
	}
	if ch := h.f.quiet(); ch != nil {
		var expired <-chan time.Time
		if dl, ok := ctx.Deadline(); ok {
			t := time.NewTimer(time.Until(dl))
			defer t.Stop()
			expired = t.C
		}
		select {
		case <-ch:
		case <-expired:
			clunk(ctx, h.s, h.f) // once they end
			return h.s.t.err("close", h.path, fs.Timeout, errorString("earlier requests on the file still unanswered at the caller's deadline"))
		}
	}
	return h.s.step(ctx, "close", h.path, h.f.Close)
}

type errorString string

func (e errorString) Error() string { return string(e) }
