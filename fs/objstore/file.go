package objstore

import (
	"context"
	"io"
	iofs "io/fs"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minio/minio-go/v7"

	"strata/fs"
)

// file is a regular file of the store: the object PREFIX/P.
type file struct{ *node }

// Stat describes the file, from a HEAD of its object (or one at most
// AttrTTL old).
func (f *file) Stat(ctx context.Context) (fs.Info, error) {
	const op = "stat"
	s := f.s
	p, err := f.ready(ctx, op)
	if err != nil {
		return fs.Info{}, err
	}
	oi, err := s.headRecent(ctx, s.key(p))
	if err != nil {
		return fs.Info{}, s.fail(op, p, err)
	}
	_, name := fs.Split(p)
	return fileInfo(name, oi), nil
}

// maxSize is the largest object S3 takes.
const maxSize = 5 << 40

// SetAttr changes the size, the permission bits or the modification time.
// A new size downloads what stays of the object, truncates or extends it
// with zeros, and uploads it again: a read-modify-write that a concurrent
// write from another edge may undo, or be undone by. The permission bits
// and the modification time are user metadata, changed by copying the
// object onto itself (or with the new size's upload). Handles open for
// writing on the file through this store see the new size too, and keep
// the new bits and time when they upload.
func (f *file) SetAttr(ctx context.Context, a fs.Attr) error {
	const op = "setattr"
	s := f.s
	p, err := f.ready(ctx, op)
	if err != nil {
		return err
	}
	if a.Size == nil && a.Mode == nil && a.ModTime == nil {
		return nil
	}
	if a.Size != nil && (*a.Size < 0 || *a.Size > maxSize) {
		return &fs.Error{Op: op, Path: p, Kind: fs.Invalid, Err: errNegative}
	}
	key := s.key(p)
	oi, err := s.head(ctx, key)
	if err != nil {
		return s.fail(op, p, err)
	}
	mode := modeOf(oi, fileMode)
	if a.Mode != nil {
		mode = a.Mode.Perm()
	}
	var mtime time.Time
	switch {
	case a.ModTime != nil:
		mtime = *a.ModTime
	case a.Size == nil || *a.Size == oi.Size:
		mtime = mtimeOf(oi) // a change of mode alone keeps the time
	}
	if a.Size != nil && *a.Size != oi.Size {
		err = s.resize(ctx, key, oi, *a.Size, metadata(mode, mtime))
	} else {
		err = s.copy(ctx, key, oi.ETag, oi.Size, key, metadata(mode, mtime))
	}
	if err != nil {
		return s.fail(op, p, err)
	}
	s.cache.forget(key)
	s.mu.Lock()
	if a.Mode != nil {
		f.at.Data.mode, f.at.Data.modeAt = mode, s.seq.Add(1)
	}
	if a.ModTime != nil {
		f.at.Data.mtime, f.at.Data.mtimeAt = mtime, s.seq.Add(1)
	}
	var writers []*handle
	if a.Size != nil {
		for h := range s.handles {
			if h.f.at == f.at && h.flag.Writable() {
				writers = append(writers, h)
			}
		}
	}
	s.mu.Unlock()
	for _, h := range writers {
		if err := h.resize(ctx, *a.Size); err != nil {
			return s.fail(op, p, err)
		}
	}
	return nil
}

// resize uploads the object key, which oi describes, cut or extended to
// size, with the metadata meta.
func (s *Store) resize(ctx context.Context, key string, oi minio.ObjectInfo, size int64, meta map[string]string) error {
	t, err := os.CreateTemp(s.stage, "t-*")
	if err != nil {
		return err
	}
	defer func() {
		t.Close()
		os.Remove(t.Name())
	}()
	if keep := min(size, oi.Size); keep > 0 {
		if err := s.downloadRange(ctx, key, oi.ETag, keep, t); err != nil {
			return err
		}
	}
	if err := t.Truncate(size); err != nil {
		return err
	}
	_, err = s.put(ctx, key, t, size, meta, false)
	return err
}

// downloadRange copies the first n bytes of the version etag of the
// object key into w.
func (s *Store) downloadRange(ctx context.Context, key, etag string, n int64, w io.Writer) error {
	ctx, cancel := s.deadline(ctx, n)
	defer cancel()
	var opts minio.GetObjectOptions
	if err := opts.SetRange(0, n-1); err != nil {
		return err
	}
	opts.SetMatchETag(etag)
	body, _, _, err := s.core.GetObject(ctx, s.cfg.Bucket, key, opts)
	if err != nil {
		return cause(ctx, err)
	}
	defer body.Close()
	got, err := io.Copy(w, io.LimitReader(body, n))
	if err == nil && got != n {
		err = io.ErrUnexpectedEOF
	}
	return cause(ctx, err)
}

// Open opens the file. A Handle that reads reads the version of the object
// that Open found (close-to-open consistency), in ranged GETs through the
// store's block cache. A Handle that writes stages the file on the local
// disk (with fs.Truncate it starts empty; otherwise it downloads the
// object at its first write) and uploads it whole on Sync and Close.
func (f *file) Open(ctx context.Context, flag fs.Flag) (fs.Handle, error) {
	const op = "open"
	s := f.s
	p, err := f.ready(ctx, op)
	if err != nil {
		return nil, err
	}
	if flag.Has(fs.CreateNew | fs.Excl) {
		return nil, &fs.Error{Op: op, Path: p, Kind: fs.Exist}
	}
	oi, err := s.head(ctx, s.key(p))
	if err != nil {
		return nil, s.fail(op, p, err)
	}
	return f.open(ctx, op, p, flag&^(fs.CreateNew|fs.Excl), oi)
}

// open opens f, whose object oi describes.
func (f *file) open(ctx context.Context, op, p string, flag fs.Flag, oi minio.ObjectInfo) (*handle, error) {
	trunc := flag.Has(fs.Truncate)
	if trunc && !flag.Writable() {
		return nil, &fs.Error{Op: op, Path: p, Kind: fs.Invalid, Err: errTruncRO}
	}
	h, err := f.s.newHandle(op, f, flag, oi, modeOf(oi, fileMode), trunc)
	if err != nil {
		return nil, err
	}
	if trunc && oi.Size > 0 {
		h.dirty.Store(true) // empty, even if nothing is written
		h.wrote.Store(f.s.seq.Add(1))
	}
	return h, nil
}

// handle is an open file. mu is held for reading by ReadAt, WriteAt and
// Stat, and for writing by Sync, Close and Abort, which upload or drop
// the staged file.
type handle struct {
	s    *Store
	f    *file
	flag fs.Flag

	mu     sync.RWMutex
	closed bool
	// The version of the object that reads without staged data read:
	// the one Open found, then the one each upload made.
	etag  string
	size  int64
	mtime time.Time
	mode  iofs.FileMode

	fillMu   sync.Mutex              // held while the staged file is made
	staged   atomic.Pointer[os.File] // nil until the first write (or Truncate)
	dirty    atomic.Bool             // written since the last upload
	opened   uint64                  // s.seq when h opened
	wrote    atomic.Uint64           // s.seq at the last write
	appendMu sync.Mutex              // orders appending writes
	ahead    readAhead               // of the object, while h has not staged it
}

// newHandle returns a handle on f, reading the version that oi describes,
// and staging from an empty file if empty is set and it may write.
func (s *Store) newHandle(op string, f *file, flag fs.Flag, oi minio.ObjectInfo, mode iofs.FileMode, empty bool) (*handle, error) {
	h := &handle{s: s, f: f, flag: flag, etag: oi.ETag, size: oi.Size, mtime: mtimeOf(oi), mode: mode, opened: s.seq.Add(1)}
	if empty && flag.Writable() {
		t, err := os.CreateTemp(s.stage, "w-*")
		if err != nil {
			p, _ := f.path()
			return nil, s.fail(op, p, err)
		}
		h.staged.Store(t)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		h.release()
		p := f.at.Path
		return nil, &fs.Error{Op: op, Path: p, Kind: fs.BadHandle, Err: errClosed}
	}
	s.handles[h] = struct{}{}
	return h, nil
}

// usable reports why h cannot be used, and returns its file's path.
// h.mu is held.
func (h *handle) usable(ctx context.Context, op string) (string, error) {
	p, _ := h.f.path()
	if h.closed {
		return p, &fs.Error{Op: op, Path: p, Kind: fs.BadHandle, Err: errHandle}
	}
	if err := ctx.Err(); err != nil {
		return p, h.s.fail(op, p, err)
	}
	return p, nil
}

// ReadAt reads from the file at off: from the staged file if h has
// written, else from the version of the object that h opened. If that
// version is gone from the store (rewritten or removed since), a read of
// a block not in the cache fails. At the end of the file it returns
// io.EOF, as io.ReaderAt does.
func (h *handle) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	const op = "read"
	h.mu.RLock()
	defer h.mu.RUnlock()
	path, err := h.usable(ctx, op)
	if err != nil {
		return 0, err
	}
	if !h.flag.Readable() {
		return 0, &fs.Error{Op: op, Path: path, Kind: fs.BadHandle, Err: errNoRead}
	}
	if off < 0 {
		return 0, &fs.Error{Op: op, Path: path, Kind: fs.Invalid, Err: errNegative}
	}
	if f := h.staged.Load(); f != nil {
		n, err := f.ReadAt(p, off)
		if err != nil && err != io.EOF {
			err = h.s.fail(op, path, err)
		}
		return n, err
	}
	return h.readRemote(ctx, op, path, p, off)
}

// readRemote reads from the version of the object h has open, a block at
// a time through the cache, and keeps the blocks after it loading if h
// reads sequentially (ahead.go). h.mu is held.
func (h *handle) readRemote(ctx context.Context, op, path string, p []byte, off int64) (int, error) {
	s := h.s
	key, etag, size, bs := s.key(path), h.etag, h.size, s.cfg.BlockSize
	if off < size && len(p) > 0 {
		h.ahead.observe(s, blockKey{key, etag, size, 0}, off, min(int64(len(p)), size-off))
	}
	n := 0
	for n < len(p) && off+int64(n) < size {
		pos := off + int64(n)
		idx := pos / bs
		start := idx * bs
		length := min(bs, size-start)
		b, err := s.cache.get(ctx, blockKey{key, etag, size, idx}, func(ctx context.Context) ([]byte, error) {
			return s.get(ctx, key, etag, start, length)
		})
		if err != nil {
			switch k, _ := classify(err); {
			case code(err) == "PreconditionFailed":
				err = &fs.Error{Op: op, Path: path, Kind: fs.IO, Err: errChanged}
			case k == fs.NotExist:
				err = &fs.Error{Op: op, Path: path, Kind: fs.NotExist, Err: errVanished}
			}
			return n, s.fail(op, path, err)
		}
		n += copy(p[n:], b[pos-start:])
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt writes to the staged file at off, or at its end if h was opened
// with fs.Append. The first write of a handle opened without fs.Truncate
// downloads the object as it is then.
func (h *handle) WriteAt(ctx context.Context, p []byte, off int64) (int, error) {
	const op = "write"
	h.mu.RLock()
	defer h.mu.RUnlock()
	path, err := h.usable(ctx, op)
	if err != nil {
		return 0, err
	}
	if !h.flag.Writable() {
		return 0, &fs.Error{Op: op, Path: path, Kind: fs.BadHandle, Err: errNoWrite}
	}
	if off < 0 {
		return 0, &fs.Error{Op: op, Path: path, Kind: fs.Invalid, Err: errNegative}
	}
	if off+int64(len(p)) > maxSize {
		return 0, &fs.Error{Op: op, Path: path, Kind: fs.TooLarge}
	}
	f, err := h.fill(ctx, op, path)
	if err != nil {
		return 0, err
	}
	h.dirty.Store(true)
	h.wrote.Store(h.s.seq.Add(1))
	var n int
	if h.flag.Has(fs.Append) {
		h.appendMu.Lock()
		var fi os.FileInfo
		if fi, err = f.Stat(); err == nil {
			n, err = f.WriteAt(p, fi.Size())
		}
		h.appendMu.Unlock()
	} else {
		n, err = f.WriteAt(p, off)
	}
	if err != nil {
		err = h.s.fail(op, path, err)
	}
	return n, err
}

// fill returns the staged file, making it from the object if there is
// none yet. h.mu is held.
func (h *handle) fill(ctx context.Context, op, path string) (*os.File, error) {
	if f := h.staged.Load(); f != nil {
		return f, nil
	}
	h.fillMu.Lock()
	defer h.fillMu.Unlock()
	if f := h.staged.Load(); f != nil {
		return f, nil
	}
	s := h.s
	t, err := os.CreateTemp(s.stage, "w-*")
	if err != nil {
		return nil, s.fail(op, path, err)
	}
	if err := s.download(ctx, s.key(path), "", h.size, t); err != nil {
		t.Close()
		os.Remove(t.Name())
		if isNotExist(err) {
			return nil, &fs.Error{Op: op, Path: path, Kind: fs.NotExist, Err: errVanished}
		}
		return nil, s.fail(op, path, err)
	}
	h.staged.Store(t)
	h.ahead.stop(s.cache, false) // h reads t from now on
	return t, nil
}

// resize cuts or extends what a writing handle has staged to size, after
// the file was resized: it stages the object, as resized, if it had not.
func (h *handle) resize(ctx context.Context, size int64) error {
	const op = "setattr"
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil // closed meanwhile: nothing to resize
	}
	path, err := h.usable(ctx, op)
	if err != nil {
		return err
	}
	if f := h.staged.Load(); f != nil {
		return f.Truncate(size)
	}
	_, err = h.fill(ctx, op, path)
	return err
}

// Sync uploads what was written, and returns nil once the object is in
// the store. The Handle goes on writing to its staged file, and each Sync
// or Close uploads it whole again.
func (h *handle) Sync(ctx context.Context) error {
	const op = "sync"
	h.mu.Lock()
	defer h.mu.Unlock()
	path, err := h.usable(ctx, op)
	if err != nil {
		return err
	}
	return h.commit(ctx, op, path)
}

// Close uploads what was written, as Sync does, and closes the Handle. It
// does so even if ctx is done (but within the store's deadlines): a Close
// is never half done. If the upload fails, the staged data is discarded
// and the object stays as it was. A second Close fails with BadHandle.
func (h *handle) Close(ctx context.Context) error {
	const op = "close"
	h.mu.Lock()
	defer h.mu.Unlock()
	ctx = context.WithoutCancel(ctx)
	path, err := h.usable(ctx, op)
	if err != nil {
		return err
	}
	err = h.commit(ctx, op, path)
	h.release()
	h.s.unregister(h)
	return err
}

// Abort implements fs.Aborter: it closes h and discards what it staged;
// the object stays as it was. A second Close or Abort fails with
// BadHandle.
func (h *handle) Abort(ctx context.Context) error {
	const op = "abort"
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, err := h.usable(context.WithoutCancel(ctx), op); err != nil {
		return err
	}
	h.release()
	h.s.unregister(h)
	return nil
}

// Stat implements fs.HandleStater: it describes the version of the file h
// reads, or, once h has written, what it staged.
func (h *handle) Stat(ctx context.Context) (fs.Info, error) {
	const op = "stat"
	h.mu.RLock()
	defer h.mu.RUnlock()
	path, err := h.usable(ctx, op)
	if err != nil {
		return fs.Info{}, err
	}
	_, name := fs.Split(path)
	i := fs.Info{Name: name, Size: h.size, Mode: h.mode, ModTime: h.mtime, Version: version(h.etag, h.size)}
	if f := h.staged.Load(); f != nil {
		fi, err := f.Stat()
		if err != nil {
			return fs.Info{}, h.s.fail(op, path, err)
		}
		i.Size = fi.Size()
		if h.dirty.Load() {
			i.ModTime = fi.ModTime()
			i.Version = version(h.etag+"+", int64(h.wrote.Load()))
		}
	}
	return i, nil
}

// commit uploads the staged file if h wrote since the last upload. If
// the file was removed or replaced through this store since h opened it,
// the data is dropped: it lost to that later change. h.mu is held for
// writing.
func (h *handle) commit(ctx context.Context, op, path string) error {
	if !h.dirty.Load() {
		return nil
	}
	s := h.s
	f := h.staged.Load()
	fi, err := f.Stat()
	if err != nil {
		return s.fail(op, path, err)
	}
	size := fi.Size()
	s.mu.Lock()
	sl := h.f.at
	path, gone := sl.Path, sl.Gone
	mode := h.mode
	if sl.Data.modeAt > h.opened {
		mode = sl.Data.mode
	}
	var mtime time.Time
	if sl.Data.mtimeAt > h.wrote.Load() {
		mtime = sl.Data.mtime
	}
	s.mu.Unlock()
	if gone {
		h.dirty.Store(false)
		s.log.Debug("objstore: dropped the writes to a file removed meanwhile", "path", path)
		return nil
	}
	key := s.key(path)
	start := time.Now()
	info, err := s.put(ctx, key, f, size, metadata(mode, mtime), false)
	if err != nil {
		return s.fail(op, path, err)
	}
	s.cache.forget(key)
	h.dirty.Store(false)
	h.etag, h.size, h.mode = info.ETag, size, mode
	h.mtime = info.LastModified
	if h.mtime.IsZero() {
		h.mtime = time.Now()
	}
	if !mtime.IsZero() {
		h.mtime = mtime
	}
	s.log.Debug("objstore: uploaded", "path", path, "size", size, "etag", info.ETag, "took", time.Since(start))
	return nil
}

// release ends the read-ahead, drops the staged file and marks h closed.
// h.mu is held for writing, or no one else has h yet.
func (h *handle) release() {
	h.ahead.stop(h.s.cache, true)
	if f := h.staged.Swap(nil); f != nil {
		f.Close()
		if err := os.Remove(f.Name()); err != nil {
			h.s.log.Warn("objstore: removing a staged file", "file", f.Name(), "err", err)
		}
	}
	h.closed = true
}

// abandon closes h without uploading anything.
func (h *handle) abandon() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.closed {
		h.release()
	}
}

// unregister forgets the open handle h.
func (s *Store) unregister(h *handle) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.handles, h)
}
