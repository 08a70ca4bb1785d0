package objstore

import (
	"context"
	"hash/fnv"
	iofs "io/fs"
	"strconv"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"

	"strata/fs"
	"strata/fs/nodetab"
)

// A node is a directory or file of the store, known by its path. The store
// keeps one node per live path, so that a rename or remove through the
// store can move or retire every node it affects, and the open handles of
// a file follow it.
type node struct {
	s  *Store
	at *slot
}

// A slot says where a node is (see nodetab), with what was set on it
// through this store. Its fields are guarded by s.mu.
type slot = nodetab.Slot[node, setAttrs]

// setAttrs are the permission bits and modification time last set through
// this store, which an upload of staged data keeps if they were set after
// its handle opened (the bits) or last wrote (the time); modeAt and
// mtimeAt order them (s.seq), zero if never set.
type setAttrs struct {
	mode    iofs.FileMode
	modeAt  uint64
	mtime   time.Time
	mtimeAt uint64
}

// node returns the node for path p, making it if there is none.
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

// removed retires the nodes at p and below it.
func (s *Store) removed(p string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nodes.Drop(p)
}

// moved moves the nodes at from and below it to to, and retires those that
// were at to.
func (s *Store) moved(from, to string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nodes.Move(from, to)
}

// path is n's path now, and whether n is gone.
func (n *node) path() (string, bool) {
	n.s.mu.Lock()
	defer n.s.mu.Unlock()
	return n.at.Path, n.at.Gone
}

// ready reports why n cannot be used now: a canceled context, a closed
// store, or a node that is gone. It returns n's path.
func (n *node) ready(ctx context.Context, op string) (string, error) {
	p, gone := n.path()
	if err := n.s.check(ctx, op, p); err != nil {
		return p, err
	}
	if gone {
		return p, &fs.Error{Op: op, Path: p, Kind: fs.NotExist}
	}
	return p, nil
}

// User metadata that the store keeps on objects: the permission bits, in
// octal, and a modification time set by SetAttr, in Unix nanoseconds.
// The token of a conditional upload names the request that made the
// object, so that a request sent again, after its answer was lost, knows
// the object for its own.
const (
	metaMode  = "Mode"
	metaMtime = "Mtime"
	metaToken = "Token"
)

// metadata is the user metadata to store for mode and, if not zero, mtime.
func metadata(mode iofs.FileMode, mtime time.Time) map[string]string {
	m := map[string]string{metaMode: strconv.FormatUint(uint64(mode.Perm()), 8)}
	if !mtime.IsZero() {
		m[metaMtime] = strconv.FormatInt(mtime.UnixNano(), 10)
	}
	return m
}

// userMeta is the user metadata name of oi, if it has it.
func userMeta(oi minio.ObjectInfo, name string) (string, bool) {
	for k, v := range oi.UserMetadata {
		if strings.EqualFold(k, name) {
			return v, true
		}
	}
	if v := oi.Metadata.Get("X-Amz-Meta-" + name); v != "" {
		return v, true
	}
	return "", false
}

// modeOf is the permission bits kept on oi, or def.
func modeOf(oi minio.ObjectInfo, def iofs.FileMode) iofs.FileMode {
	if v, ok := userMeta(oi, metaMode); ok {
		if m, err := strconv.ParseUint(v, 8, 32); err == nil && m <= 0o777 {
			return iofs.FileMode(m)
		}
	}
	return def
}

// mtimeOf is the modification time of oi: the one set by SetAttr if any,
// else when the object was written.
func mtimeOf(oi minio.ObjectInfo) time.Time {
	if v, ok := userMeta(oi, metaMtime); ok {
		if ns, err := strconv.ParseInt(v, 10, 64); err == nil {
			return time.Unix(0, ns)
		}
	}
	return oi.LastModified
}

// Default permission bits of objects that keep none.
const (
	fileMode iofs.FileMode = 0o644
	dirMode  iofs.FileMode = 0o755
)

// fileInfo describes the file name whose object oi describes (from a HEAD
// or a listing, which has no metadata).
func fileInfo(name string, oi minio.ObjectInfo) fs.Info {
	return fs.Info{
		Name:    name,
		Size:    oi.Size,
		Mode:    modeOf(oi, fileMode),
		ModTime: mtimeOf(oi),
		Version: version(oi.ETag, oi.Size),
	}
}

// dirInfo describes the directory name, from its marker if it has one.
func (s *Store) dirInfo(name string, marker *minio.ObjectInfo) fs.Info {
	i := fs.Info{Name: name, Mode: iofs.ModeDir | dirMode, ModTime: s.start}
	if marker != nil {
		i.Mode = iofs.ModeDir | modeOf(*marker, dirMode)
		i.ModTime = mtimeOf(*marker)
	}
	return i
}

// version is a hash of an object's ETag and size, which change when its
// content does.
func version(etag string, size int64) uint32 {
	h := fnv.New32a()
	h.Write([]byte(etag))
	h.Write([]byte(strconv.FormatInt(size, 10)))
	return h.Sum32()
}

// statDir finds the directory at p: its marker's description, or nil for
// a directory that only its objects make. It fails with NotExist if there
// is no directory at p.
func (s *Store) statDir(ctx context.Context, p string) (*minio.ObjectInfo, error) {
	oi, err := s.head(ctx, s.dirKey(p))
	if err == nil {
		return &oi, nil
	}
	if !isNotExist(err) {
		return nil, err
	}
	found, err := s.isDir(ctx, p)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, &fs.Error{Kind: fs.NotExist}
	}
	return nil, nil
}

// isDir reports whether there is a directory at p: its marker, or any
// object under it. One listing answers.
func (s *Store) isDir(ctx context.Context, p string) (bool, error) {
	return s.any(ctx, s.dirKey(p), "")
}
