package objstore

import (
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"

	"strata/fs"
	"strata/fs/nodetab"
)

// dir is a directory of the store: the prefix PREFIX/P/, made by its
// marker object PREFIX/P/ or by any object under it.
type dir struct{ *node }

// child checks name and returns the path of name in d.
func (d *dir) child(ctx context.Context, op, name string) (string, error) {
	p, gone := d.path()
	if err := fs.CheckName(op, name); err != nil {
		var fe *fs.Error
		if errors.As(err, &fe) {
			c := *fe
			c.Path = fs.Join(p, fe.Path)
			return "", &c
		}
		return "", err
	}
	q := fs.Join(p, name)
	if err := d.s.check(ctx, op, q); err != nil {
		return "", err
	}
	if gone {
		return "", &fs.Error{Op: op, Path: p, Kind: fs.NotExist}
	}
	return q, nil
}

// Stat describes the directory: from its marker, if it has one.
func (d *dir) Stat(ctx context.Context) (fs.Info, error) {
	const op = "stat"
	s := d.s
	p, err := d.ready(ctx, op)
	if err != nil {
		return fs.Info{}, err
	}
	if p == "" {
		return s.dirInfo("", nil), nil
	}
	marker, err := s.statDir(ctx, p)
	if err != nil {
		return fs.Info{}, s.fail(op, p, err)
	}
	_, name := fs.Split(p)
	return s.dirInfo(name, marker), nil
}

// SetAttr changes the permission bits or the modification time, kept on
// the directory's marker, which it makes if there is none. A size is an
// IsDir error; the root keeps no attributes (Unsupported).
func (d *dir) SetAttr(ctx context.Context, a fs.Attr) error {
	const op = "setattr"
	s := d.s
	p, err := d.ready(ctx, op)
	if err != nil {
		return err
	}
	switch {
	case a.Size != nil:
		return &fs.Error{Op: op, Path: p, Kind: fs.IsDir}
	case a.Mode == nil && a.ModTime == nil:
		return nil
	case p == "":
		return &fs.Error{Op: op, Kind: fs.Unsupported, Err: errRootAttr}
	}
	marker, err := s.statDir(ctx, p)
	if err != nil {
		return s.fail(op, p, err)
	}
	mode, mtime := dirMode, time.Time{}
	if marker != nil {
		mode = modeOf(*marker, dirMode)
		if _, ok := userMeta(*marker, metaMtime); ok {
			mtime = mtimeOf(*marker)
		}
	}
	if a.Mode != nil {
		mode = a.Mode.Perm()
	}
	if a.ModTime != nil {
		mtime = *a.ModTime
	}
	if _, err := s.put(ctx, s.dirKey(p), emptyReader, 0, metadata(mode, mtime), false); err != nil {
		return s.fail(op, p, err)
	}
	return nil
}

// Lookup returns the file or directory called name: a file if its object
// exists (a HEAD), else a directory if anything is under its prefix (a
// listing). Where both exist, made by some other client, the file wins,
// as it does in listings.
func (d *dir) Lookup(ctx context.Context, name string) (fs.Node, error) {
	const op = "lookup"
	s := d.s
	p, err := d.child(ctx, op, name)
	if err != nil {
		return nil, err
	}
	_, err = s.headRecent(ctx, s.key(p))
	if err == nil {
		return &file{s.node(p)}, nil
	}
	if !isNotExist(err) {
		return nil, s.fail(op, p, err)
	}
	found, err := s.isDir(ctx, p)
	if err != nil {
		return nil, s.fail(op, p, err)
	}
	if !found {
		return nil, &fs.Error{Op: op, Path: p, Kind: fs.NotExist}
	}
	return &dir{s.node(p)}, nil
}

// ReadDir lists the files and directories in d, sorted by name, each
// once. Keys under d that are no valid name (an empty element, "..") are
// not part of the tree and not listed. A listing has no metadata, so each
// file is described by a HEAD (listHeads at a time), which Lookup and Stat
// then use for AttrTTL; directories get the default permission bits and
// the store's start time here, and Stat gives what they keep.
func (d *dir) ReadDir(ctx context.Context) ([]fs.Info, error) {
	const op = "readdir"
	s := d.s
	p, err := d.ready(ctx, op)
	if err != nil {
		return nil, err
	}
	prefix := s.dirKey(p)
	ents := map[string]fs.Info{}
	exists := p == ""
	err = s.list(ctx, prefix, false, 0, func(oi minio.ObjectInfo) bool {
		if !strings.HasPrefix(oi.Key, prefix) {
			return true
		}
		exists = true
		rest := oi.Key[len(prefix):]
		if rest == "" {
			return true // the marker
		}
		name, isDir := strings.CutSuffix(rest, "/")
		if fs.CheckName(op, name) != nil {
			return true
		}
		if !isDir {
			ents[name] = fileInfo(name, oi)
		} else if _, ok := ents[name]; !ok {
			ents[name] = s.dirInfo(name, nil)
		}
		return true
	})
	if err != nil {
		return nil, s.fail(op, p, err)
	}
	if !exists {
		return nil, &fs.Error{Op: op, Path: p, Kind: fs.NotExist}
	}
	// A listing has no metadata: a HEAD of each file gives its mode and
	// time, and stands in for Lookup's and Stat's for a while.
	var keys []string
	for name, e := range ents {
		if !e.IsDir() {
			keys = append(keys, prefix+name)
		}
	}
	full := s.headAll(ctx, keys)
	list := make([]fs.Info, 0, len(ents))
	for name, e := range ents {
		if oi, ok := full[prefix+name]; ok {
			e = fileInfo(name, oi)
		}
		list = append(list, e)
	}
	slices.SortFunc(list, func(a, b fs.Info) int { return strings.Compare(a.Name, b.Name) })
	return list, nil
}

// Create makes the file name, as an empty object, at once, and opens it.
// An existing file is opened as it is (with fs.Excl, an Exist error). The
// check that the name is free is a HEAD, and the upload of the empty
// object is conditional (If-None-Match), where the server honours that;
// on a server that does not, two edges creating one name at once may
// both succeed.
func (d *dir) Create(ctx context.Context, name string, flag fs.Flag, perm iofs.FileMode) (fs.File, fs.Handle, error) {
	const op = "create"
	s := d.s
	p, err := d.child(ctx, op, name)
	if err != nil {
		return nil, nil, err
	}
	excl := flag.Has(fs.Excl)
	flag &^= fs.CreateNew | fs.Excl
	for range 2 {
		oi, err := s.head(ctx, s.key(p))
		switch {
		case err == nil && excl:
			return nil, nil, &fs.Error{Op: op, Path: p, Kind: fs.Exist}
		case err == nil:
			f := &file{s.node(p)}
			h, err := f.open(ctx, op, p, flag, oi)
			if err != nil {
				return nil, nil, err
			}
			return f, h, nil
		case !isNotExist(err):
			return nil, nil, s.fail(op, p, err)
		}
		if found, err := s.isDir(ctx, p); err != nil {
			return nil, nil, s.fail(op, p, err)
		} else if found && excl {
			return nil, nil, &fs.Error{Op: op, Path: p, Kind: fs.Exist, Err: errDirExists}
		} else if found {
			return nil, nil, &fs.Error{Op: op, Path: p, Kind: fs.IsDir}
		}
		mode := perm.Perm()
		info, err := s.put(ctx, s.key(p), emptyReader, 0, metadata(mode, time.Time{}), true)
		if code(err) == "PreconditionFailed" {
			continue // made meanwhile: open it
		}
		if err != nil {
			return nil, nil, s.fail(op, p, err)
		}
		f := &file{s.node(p)}
		oi = minio.ObjectInfo{Key: s.key(p), ETag: info.ETag, Size: 0, LastModified: info.LastModified}
		h, err := s.newHandle(op, f, flag, oi, mode, true)
		if err != nil {
			return nil, nil, err
		}
		return f, h, nil
	}
	return nil, nil, &fs.Error{Op: op, Path: p, Kind: fs.Busy, Err: errors.New("created and removed by others meanwhile")}
}

// Mkdir makes the directory name: its marker object. It fails with Exist
// if a file or directory of that name exists; the check is a HEAD and a
// listing, and the marker's upload is conditional where the server
// honours that.
func (d *dir) Mkdir(ctx context.Context, name string, perm iofs.FileMode) (fs.Dir, error) {
	const op = "mkdir"
	s := d.s
	p, err := d.child(ctx, op, name)
	if err != nil {
		return nil, err
	}
	if _, err := s.head(ctx, s.key(p)); err == nil {
		return nil, &fs.Error{Op: op, Path: p, Kind: fs.Exist, Err: errFileExists}
	} else if !isNotExist(err) {
		return nil, s.fail(op, p, err)
	}
	if found, err := s.isDir(ctx, p); err != nil {
		return nil, s.fail(op, p, err)
	} else if found {
		return nil, &fs.Error{Op: op, Path: p, Kind: fs.Exist, Err: errDirExists}
	}
	_, err = s.put(ctx, s.dirKey(p), emptyReader, 0, metadata(perm.Perm(), time.Time{}), true)
	if code(err) == "PreconditionFailed" {
		return nil, &fs.Error{Op: op, Path: p, Kind: fs.Exist, Err: errMadeMeanwhile}
	}
	if err != nil {
		return nil, s.fail(op, p, err)
	}
	return &dir{s.node(p)}, nil
}

// Remove removes the file name (its object), or the directory name (its
// marker) if nothing else is under it, else NotEmpty. The check and the
// delete are two requests: an object another edge puts in the directory
// in between keeps the directory in being.
func (d *dir) Remove(ctx context.Context, name string) error {
	const op = "remove"
	s := d.s
	p, err := d.child(ctx, op, name)
	if err != nil {
		return err
	}
	if _, err := s.head(ctx, s.key(p)); err == nil {
		if err := s.remove(ctx, s.key(p)); err != nil {
			return s.fail(op, p, err)
		}
		s.removed(p)
		return nil
	} else if !isNotExist(err) {
		return s.fail(op, p, err)
	}
	marker := s.dirKey(p)
	var keys []string
	err = s.list(ctx, marker, true, 2, func(oi minio.ObjectInfo) bool {
		keys = append(keys, oi.Key)
		return true
	})
	switch {
	case err != nil:
		return s.fail(op, p, err)
	case len(keys) == 0:
		return &fs.Error{Op: op, Path: p, Kind: fs.NotExist}
	case len(keys) > 1 || keys[0] != marker:
		return &fs.Error{Op: op, Path: p, Kind: fs.NotEmpty}
	}
	if err := s.remove(ctx, marker); err != nil {
		return s.fail(op, p, err)
	}
	s.removed(p)
	return nil
}

// maxRenameObjects bounds the objects a directory rename copies.
const maxRenameObjects = 10000

// Rename moves oldName to newDir/newName. A file is copied on the server
// to its new key and then deleted: a failure or crash in between leaves
// both names, never neither; an existing file at the new name is replaced
// by the copy, atomically. A directory is moved object by object, every
// copy before any delete, so a failure leaves the old directory whole
// (with some copies under the new name, which it tries to remove); it is
// not atomic, and others see the move in progress. A directory may not
// replace anything (Exist), and a file may not replace a directory (IsDir).
func (d *dir) Rename(ctx context.Context, oldName string, newDir fs.Dir, newName string) error {
	const op = "rename"
	s := d.s
	nd, ok := newDir.(*dir)
	if !ok || nd.s != s {
		p, _ := d.path()
		return &fs.Error{Op: op, Path: fs.Join(p, oldName), Kind: fs.CrossDevice}
	}
	from, err := d.child(ctx, op, oldName)
	if err != nil {
		return err
	}
	to, err := nd.child(ctx, op, newName)
	if err != nil {
		return err
	}
	oi, err := s.head(ctx, s.key(from))
	if err != nil && !isNotExist(err) {
		return s.fail(op, from, err)
	}
	if err == nil {
		return s.renameFile(ctx, op, from, to, oi)
	}
	if found, err := s.isDir(ctx, from); err != nil {
		return s.fail(op, from, err)
	} else if !found {
		return &fs.Error{Op: op, Path: from, Kind: fs.NotExist}
	}
	return s.renameDir(ctx, op, from, to)
}

// renameFile moves the file from, whose object oi describes, to to.
func (s *Store) renameFile(ctx context.Context, op, from, to string, oi minio.ObjectInfo) error {
	if from == to {
		return nil
	}
	if found, err := s.isDir(ctx, to); err != nil {
		return s.fail(op, to, err)
	} else if found {
		return &fs.Error{Op: op, Path: to, Kind: fs.IsDir}
	}
	// The copy keeps the permission bits and the modification time.
	meta := metadata(modeOf(oi, fileMode), mtimeOf(oi))
	if err := s.copy(ctx, s.key(from), oi.ETag, oi.Size, s.key(to), meta); err != nil {
		return s.fail(op, from, err)
	}
	s.cache.forget(s.key(to))
	if s.afterCopy != nil {
		s.afterCopy(from, to)
	}
	if err := s.remove(ctx, s.key(from)); err != nil {
		return s.fail(op, from, fmt.Errorf("copied to %s, but the old name stays: %w", to, err))
	}
	s.moved(from, to)
	s.log.Debug("objstore: renamed", "from", from, "to", to, "size", oi.Size)
	return nil
}

// renameDir moves the directory from to to, object by object.
func (s *Store) renameDir(ctx context.Context, op, from, to string) error {
	if from == to {
		return nil
	}
	if nodetab.Within(to, from) {
		return &fs.Error{Op: op, Path: from, Kind: fs.Invalid, Err: errIntoItself}
	}
	if _, err := s.head(ctx, s.key(to)); err == nil {
		return &fs.Error{Op: op, Path: to, Kind: fs.NotDir, Err: errFileExists}
	} else if !isNotExist(err) {
		return s.fail(op, to, err)
	}
	if found, err := s.isDir(ctx, to); err != nil {
		return s.fail(op, to, err)
	} else if found {
		return &fs.Error{Op: op, Path: to, Kind: fs.Exist, Err: errDirExists}
	}
	src, dst := s.dirKey(from), s.dirKey(to)
	var objs []minio.ObjectInfo
	err := s.list(ctx, src, true, 0, func(oi minio.ObjectInfo) bool {
		objs = append(objs, oi)
		return len(objs) <= maxRenameObjects
	})
	if err != nil {
		return s.fail(op, from, err)
	}
	if len(objs) > maxRenameObjects {
		return &fs.Error{Op: op, Path: from, Kind: fs.TooLarge, Err: fmt.Errorf("a directory of more than %d objects is not renamed", maxRenameObjects)}
	}
	// Copy everything, keeping each object's metadata (a listing has none,
	// so each copy asks for it first).
	var (
		mu     sync.Mutex
		copied []string
	)
	err = s.each(ctx, objs, func(ctx context.Context, oi minio.ObjectInfo) error {
		full, err := s.head(ctx, oi.Key)
		if err != nil {
			return err
		}
		target := dst + oi.Key[len(src):]
		meta := metadata(modeOf(full, fileMode), mtimeOf(full))
		if strings.HasSuffix(oi.Key, "/") {
			// A marker is made anew: some servers refuse to copy onto a
			// key that names a directory.
			meta = metadata(modeOf(full, dirMode), mtimeOf(full))
			_, err = s.put(ctx, target, emptyReader, 0, meta, false)
		} else {
			err = s.copy(ctx, oi.Key, full.ETag, full.Size, target, meta)
		}
		if err != nil {
			return err
		}
		mu.Lock()
		copied = append(copied, target)
		mu.Unlock()
		return nil
	})
	if err != nil {
		for _, k := range copied {
			if rerr := s.remove(context.WithoutCancel(ctx), k); rerr != nil {
				s.log.Warn("objstore: removing a copy of a failed directory rename", "key", k, "err", rerr)
			}
		}
		return s.fail(op, from, err)
	}
	// Delete the originals, deepest first, the marker last, so that the
	// old directory stands until its last object goes.
	slices.SortFunc(objs, func(a, b minio.ObjectInfo) int { return strings.Compare(b.Key, a.Key) })
	var marker []minio.ObjectInfo
	if len(objs) > 0 && objs[len(objs)-1].Key == src {
		marker, objs = objs[len(objs)-1:], objs[:len(objs)-1]
	}
	for _, batch := range [][]minio.ObjectInfo{objs, marker} {
		err = s.each(ctx, batch, func(ctx context.Context, oi minio.ObjectInfo) error {
			return s.remove(ctx, oi.Key)
		})
		if err != nil {
			return s.fail(op, from, fmt.Errorf("copied to %s, but some old objects stay: %w", to, err))
		}
	}
	s.moved(from, to)
	s.log.Info("objstore: renamed a directory", "from", from, "to", to, "objects", len(copied))
	return nil
}

// each runs fn on every object, a few at a time, and returns the first
// error; after one, it starts no more.
func (s *Store) each(ctx context.Context, objs []minio.ObjectInfo, fn func(context.Context, minio.ObjectInfo) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
		sem   = make(chan struct{}, 4)
	)
	for _, oi := range objs {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := fn(ctx, oi); err != nil {
				once.Do(func() { first = err; cancel() })
			}
		}()
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		first = ctx.Err()
	}
	return first
}
