package web

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"strata/fs"
)

// stepTimeout is how long one read or write of a body may stall before the
// transfer is given up: a slow link is fine, a stopped one is not.
const stepTimeout = 30 * time.Second

// storePath is the store path a request names, checked element by
// element: no element may be empty, "." or "..".
func storePath(r *http.Request) (string, error) {
	p := strings.Trim(r.PathValue("path"), "/")
	if p == "" {
		return "", nil
	}
	for _, name := range strings.Split(p, "/") {
		if err := fs.CheckName("path", name); err != nil {
			return "", &fs.Error{Op: "path", Path: p, Kind: fs.Invalid, Err: fmt.Errorf("bad name %q in the path", name)}
		}
	}
	return p, nil
}

// store is the client's /store.
func (c *client) store(ctx context.Context) (fs.Dir, error) {
	n, err := c.root.Lookup(ctx, "store")
	if err != nil {
		return nil, err
	}
	d, ok := n.(fs.Dir)
	if !ok {
		return nil, &fs.Error{Op: "walk", Path: "store", Kind: fs.NotDir}
	}
	return d, nil
}

// parentDir walks to the directory that holds p and returns it and p's
// last element.
func parentDir(ctx context.Context, st fs.Dir, p string) (fs.Dir, string, error) {
	if p == "" {
		return nil, "", &fs.Error{Op: "path", Path: "/", Kind: fs.Invalid, Err: errors.New("this needs a name, not the store's root")}
	}
	dp, name := fs.Split(p)
	n, err := fs.Walk(ctx, st, dp)
	if err != nil {
		return nil, "", err
	}
	d, ok := n.(fs.Dir)
	if !ok {
		return nil, "", &fs.Error{Op: "walk", Path: dp, Kind: fs.NotDir}
	}
	return d, name, nil
}

// target is the client's /store and the store path r names.
func (c *client) target(r *http.Request) (st fs.Dir, p string, err error) {
	if p, err = storePath(r); err != nil {
		return nil, "", err
	}
	st, err = c.store(r.Context())
	return st, p, err
}

// targetEntry is the store path r names, the directory that holds it and
// its last element, for the calls that change a directory.
func (c *client) targetEntry(r *http.Request) (st, d fs.Dir, name, p string, err error) {
	if st, p, err = c.target(r); err != nil {
		return nil, nil, "", p, err
	}
	d, name, err = parentDir(r.Context(), st, p)
	return st, d, name, p, err
}

type entry struct {
	Name  string    `json:"name"`
	Dir   bool      `json:"dir"`
	Size  int64     `json:"size"`
	MTime time.Time `json:"mtime"`
}

func (s *Server) storeGet(w http.ResponseWriter, r *http.Request, c *client) {
	ctx := r.Context()
	st, p, err := c.target(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	n, err := fs.Walk(ctx, st, p)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	switch n := n.(type) {
	case fs.Dir:
		list, err := n.ReadDir(ctx)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		entries := make([]entry, 0, len(list))
		for _, info := range list {
			if fs.CheckName("list", info.Name) != nil {
				continue
			}
			entries = append(entries, entry{Name: info.Name, Dir: info.IsDir(), Size: info.Size, MTime: info.ModTime.UTC()})
		}
		sort.SliceStable(entries, func(i, j int) bool {
			if entries[i].Dir != entries[j].Dir {
				return entries[i].Dir
			}
			return entries[i].Name < entries[j].Name
		})
		writeJSON(w, http.StatusOK, map[string]any{"path": p, "entries": entries})
	case fs.File:
		s.download(w, r, p, n)
	default:
		s.fail(w, r, &fs.Error{Op: "read", Path: p, Kind: fs.Unsupported})
	}
}

// download serves the file f: one version of it whole, even while it is
// being rewritten, with ranges and a validator.
func (s *Server) download(w http.ResponseWriter, r *http.Request, p string, f fs.File) {
	ctx := r.Context()
	h, err := f.Open(ctx, fs.ReadOnly)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	defer h.Close(context.WithoutCancel(ctx))
	var info fs.Info
	if hs, ok := h.(fs.HandleStater); ok {
		info, err = hs.Stat(ctx)
	} else {
		info, err = f.Stat(ctx)
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	_, name := fs.Split(p)
	hd := w.Header()
	// The file is the client's own data: never run it as part of the page.
	hd.Set("Content-Security-Policy", "sandbox; default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'")
	hd.Set("Cache-Control", "no-cache")
	hd.Set("ETag", fmt.Sprintf(`"%x.%x"`, info.ID, info.Version))
	if r.URL.Query().Get("download") != "" {
		hd.Set("Content-Disposition", "attachment; filename*=UTF-8''"+url.PathEscape(name))
	}
	rc := http.NewResponseController(w)
	out := &deadlineWriter{w: w, rc: rc}
	if info.Stream {
		// A synthetic file of unknown size: read it to EOF.
		hd.Set("Content-Type", "application/octet-stream")
		io.Copy(out, io.NewSectionReader(readerAt{ctx, h}, 0, 1<<62))
		return
	}
	http.ServeContent(&responseOver{ResponseWriter: w, out: out}, r, name, info.ModTime, io.NewSectionReader(readerAt{ctx, h}, 0, info.Size))
}

// readerAt reads a Handle as an io.ReaderAt.
type readerAt struct {
	ctx context.Context
	h   fs.Handle
}

func (r readerAt) ReadAt(p []byte, off int64) (int, error) { return r.h.ReadAt(r.ctx, p, off) }

// deadlineWriter gives every write of a response its own deadline.
type deadlineWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	d.rc.SetWriteDeadline(time.Now().Add(stepTimeout))
	return d.w.Write(p)
}

// responseOver is a ResponseWriter whose body goes through out.
type responseOver struct {
	http.ResponseWriter
	out io.Writer
}

func (r *responseOver) Write(p []byte) (int, error) { return r.out.Write(p) }

// storePut stores the body at the path, replacing a file atomically. The
// body is streamed to the store; an upload larger than the cap, cut short
// or stalled leaves the old content.
func (s *Server) storePut(w http.ResponseWriter, r *http.Request, c *client) {
	ctx := r.Context()
	st, p, err := c.target(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	max := s.cfg.MaxUpload
	if r.ContentLength > max {
		writeError(w, http.StatusRequestEntityTooLarge, "too-large", fmt.Sprintf("upload %s: %d bytes is more than the cap of %d bytes", p, r.ContentLength, max))
		return
	}
	d, name, err := parentDir(ctx, st, p)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var (
		h       fs.Handle
		created bool
	)
	n, err := d.Lookup(ctx, name)
	switch {
	case err == nil:
		f, ok := n.(fs.File)
		if !ok {
			s.fail(w, r, &fs.Error{Op: "upload", Path: p, Kind: fs.IsDir, Err: errors.New("a directory has that name")})
			return
		}
		h, err = f.Open(ctx, fs.WriteOnly|fs.Truncate)
	case fs.KindOf(err) == fs.NotExist:
		_, h, err = d.Create(ctx, name, fs.WriteOnly|fs.Truncate|fs.Excl, 0o644)
		created = err == nil
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	size, err := s.copyBody(ctx, w, r, h, max)
	if err != nil {
		if a, ok := h.(fs.Aborter); ok {
			a.Abort(context.WithoutCancel(ctx))
		} else {
			h.Close(context.WithoutCancel(ctx))
		}
		if created {
			d.Remove(context.WithoutCancel(ctx), name)
		}
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			writeError(w, http.StatusRequestEntityTooLarge, "too-large", fmt.Sprintf("upload %s: more than the cap of %d bytes; nothing was stored", p, max))
			return
		}
		s.fail(w, r, fs.WithPath(err, "upload", p))
		return
	}
	if err := h.Close(ctx); err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("web upload", "client", c.name, "path", p, "bytes", size)
	writeJSON(w, http.StatusCreated, map[string]any{"path": p, "size": size})
}

// copyBody writes the request body through h in chunks, and returns its
// size.
func (s *Server) copyBody(ctx context.Context, w http.ResponseWriter, r *http.Request, h fs.Handle, max int64) (int64, error) {
	body := http.MaxBytesReader(w, r.Body, max)
	rc := http.NewResponseController(w)
	buf := make([]byte, 1<<20)
	var off int64
	for {
		rc.SetReadDeadline(time.Now().Add(stepTimeout))
		n, err := io.ReadFull(body, buf)
		if n > 0 {
			if _, werr := h.WriteAt(ctx, buf[:n], off); werr != nil {
				return off, werr
			}
			off += int64(n)
		}
		switch {
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			return off, nil
		case err != nil:
			var mb *http.MaxBytesError
			if errors.As(err, &mb) {
				return off, err
			}
			return off, &fs.Error{Op: "upload", Kind: fs.Canceled, Err: fmt.Errorf("the upload stopped after %d bytes: %w", off, err)}
		}
	}
}

func (s *Server) storePost(w http.ResponseWriter, r *http.Request, c *client) {
	ctx := r.Context()
	st, d, name, p, err := c.targetEntry(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	q := r.URL.Query()
	switch op := q.Get("op"); op {
	case "mkdir":
		if _, err := d.Mkdir(ctx, name, 0o755); err != nil {
			s.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusCreated, map[string]string{"path": p})
	case "rename":
		to := strings.Trim(q.Get("to"), "/")
		for _, el := range strings.Split(to, "/") {
			if err := fs.CheckName("rename", el); err != nil {
				s.fail(w, r, &fs.Error{Op: "rename", Path: to, Kind: fs.Invalid, Err: fmt.Errorf("bad name %q in the new path", el)})
				return
			}
		}
		nd, newName, err := parentDir(ctx, st, to)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if err := d.Rename(ctx, name, nd, newName); err != nil {
			s.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"path": to})
	default:
		writeError(w, http.StatusBadRequest, "invalid", fmt.Sprintf("unknown store operation %q: use op=mkdir or op=rename&to=PATH", op))
	}
}

func (s *Server) storeDelete(w http.ResponseWriter, r *http.Request, c *client) {
	ctx := r.Context()
	_, d, name, _, err := c.targetEntry(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if err := d.Remove(ctx, name); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
