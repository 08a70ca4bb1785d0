package store

import (
	"context"
	"encoding/binary"
	"errors"
	"hash/fnv"
	iofs "io/fs"
	"os"
	"syscall"
	"time"

	"strata/fs"
	"strata/fs/nodetab"
)

// A node is a directory or file of the store, known by its path. The store
// keeps one node per live path, so that a rename or remove through the
// store can move or retire every node it affects.
type node struct {
	s  *Store
	at *slot
}

// A slot says where a node is (see nodetab). Its Path and Gone are
// written with s.mu held and s.ns held for writing; a temporary file's
// node, which only its handle uses, may also be retired with s.ns held for
// reading. They are read with either lock held.
type slot = nodetab.Slot[node, struct{}]

// node returns the node for path p, making it if there is none. The
// root's node, which never moves, is made by Open and not kept here.
func (s *Store) node(p string) *node {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nodes.Node(p, func(sl *slot) *node { return &node{s: s, at: sl} })
}

// forget drops the entry of a collected node.
func (s *Store) forget(sl *slot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nodes.Forget(sl)
}

// retire marks the node at sl as gone.
func (s *Store) retire(sl *slot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nodes.Retire(sl)
}

// removed retires the nodes at p and below it. s.ns is held for writing.
func (s *Store) removed(p string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nodes.Drop(p)
}

// moved moves the nodes at from and below it to to, and retires those that
// were at to. s.ns is held for writing.
func (s *Store) moved(from, to string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nodes.Move(from, to)
}

// ready reports why n cannot be used now: a canceled context, a closed
// store, or a node that is gone. s.ns is held.
func (n *node) ready(ctx context.Context, op string) error {
	if err := n.s.check(ctx, op, n.at.Path); err != nil {
		return err
	}
	if n.at.Gone {
		return &fs.Error{Op: op, Path: n.at.Path, Kind: fs.NotExist}
	}
	return nil
}

// where is n's path, for an error message.
func (n *node) where() string {
	n.s.mu.Lock()
	defer n.s.mu.Unlock()
	return n.at.Path
}

// Stat describes the node.
func (n *node) Stat(ctx context.Context) (fs.Info, error) {
	const op = "stat"
	n.s.ns.RLock()
	defer n.s.ns.RUnlock()
	if err := n.ready(ctx, op); err != nil {
		return fs.Info{}, err
	}
	p := n.at.Path
	fi, err := n.s.disk.Lstat(osPath(p))
	if err != nil {
		return fs.Info{}, fail(op, p, err)
	}
	_, name := fs.Split(p)
	return info(name, fi), nil
}

// SetAttr changes the size (of a file), the permission bits or the
// modification time, in that order, and makes the change durable.
func (n *node) SetAttr(ctx context.Context, a fs.Attr) error {
	const op = "setattr"
	s := n.s
	s.ns.RLock()
	f, err := n.setAttr(ctx, op, a)
	p := n.at.Path
	s.ns.RUnlock()
	if f != nil {
		if serr := syncClose(f); err == nil && serr != nil {
			err = fail(op, p, serr)
		}
	}
	return err
}

// setAttr makes the changes and returns the open node to fsync. s.ns is
// held for reading.
func (n *node) setAttr(ctx context.Context, op string, a fs.Attr) (diskFile, error) {
	s := n.s
	if err := n.ready(ctx, op); err != nil {
		return nil, err
	}
	p := n.at.Path
	var f diskFile
	if a.Size != nil {
		if *a.Size < 0 {
			return nil, &fs.Error{Op: op, Path: n.at.Path, Kind: fs.Invalid, Err: errNegative}
		}
		var err error
		if f, err = s.openFile(p, os.O_WRONLY); err != nil {
			return nil, fail(op, n.at.Path, err)
		}
		if err := f.Truncate(*a.Size); err != nil {
			f.Close()
			return nil, fail(op, n.at.Path, err)
		}
	}
	if a.Mode != nil {
		if err := s.disk.Chmod(osPath(p), a.Mode.Perm()); err != nil {
			return f, fail(op, n.at.Path, err)
		}
	}
	if a.ModTime != nil {
		if err := s.disk.Chtimes(osPath(p), time.Time{}, *a.ModTime); err != nil {
			return f, fail(op, n.at.Path, err)
		}
	}
	if f == nil && (a.Mode != nil || a.ModTime != nil) {
		// Open it to fsync the change. A node that cannot be read
		// (mode 000 without privilege) is not synced, but still changed;
		// any other failure is an error, for the change may not last.
		of, err := s.openFile(p, os.O_RDONLY)
		if errors.Is(err, iofs.ErrPermission) {
			return nil, nil
		}
		if err != nil {
			return nil, fail(op, n.at.Path, err)
		}
		fi, err := of.Stat()
		if err != nil {
			of.Close()
			return nil, fail(op, n.at.Path, err)
		}
		if !fi.IsDir() && !fi.Mode().IsRegular() {
			of.Close() // put there from outside: not the store's to sync
			return nil, nil
		}
		f = of
	}
	return f, nil
}

// info describes the entry name from what Lstat says of it.
func info(name string, fi os.FileInfo) fs.Info {
	i := fs.Info{
		Name:    name,
		Size:    fi.Size(),
		Mode:    fi.Mode().Type() | fi.Mode().Perm(),
		ModTime: fi.ModTime(),
	}
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	i.ID = ino
	i.Version = version(fi.ModTime(), fi.Size(), ino)
	return i
}

// version is a hash of what changes when a file's content does: its
// modification time and size, and its inode, which a rewrite replaces
// (file times can be coarser than the writes that change them).
func version(mtime time.Time, size int64, ino uint64) uint32 {
	var b [24]byte
	binary.LittleEndian.PutUint64(b[0:], uint64(mtime.UnixNano()))
	binary.LittleEndian.PutUint64(b[8:], uint64(size))
	binary.LittleEndian.PutUint64(b[16:], ino)
	h := fnv.New32a()
	h.Write(b[:])
	return h.Sum32()
}
