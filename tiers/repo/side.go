package repo

import (
	"context"
	"errors"
	"time"
)

// A side holds one copy of the repo: the modules and the manifest. The
// primary and the backup are each a side of one kind: a local directory
// (dirSide, disk.go) or a prefix of an object store bucket (objSide,
// objects.go). Its methods are safe for concurrent use; the Repo orders
// them (see Commit order in the package documentation).
type side interface {
	// role is "primary" or "backup"; where names the place (a directory,
	// or s3://BUCKET/PREFIX), for logs and errors.
	role() string
	where() string
	// shared reports whether other Repos may use the side at the same
	// time (an object store). The manifest of a shared side is then
	// written only over the version last read (see writeManifest), and
	// module names are unique per upload (objectName).
	shared() bool

	// moduleName is the name of the module of rec in the side.
	moduleName(rec record) string
	// modules lists the module names the side holds, with the time each
	// was last written (zero where the side keeps none).
	modules(ctx context.Context) ([]stored, error)
	// stage writes data, to become the module called name, and returns
	// what puts it in place. In a directory it is a temporary file that
	// install renames over name; on an object store the upload is the
	// object name itself, atomic, which no reader looks for until a
	// committed manifest names it.
	stage(ctx context.Context, name string, data []byte) (staged, error)
	// remove removes the module called name, if present.
	remove(ctx context.Context, name string) error
	// read reads the module of rec and checks its size and hash against
	// the record: errMissing if it is absent, an error saying "corrupt"
	// if it does not match. The key identifies what was read (see
	// statKey), or is zero if the module changed while it was read.
	read(ctx context.Context, rec record) ([]byte, statKey, error)
	// statKey identifies the content of the module called name cheaply.
	statKey(ctx context.Context, name string) (statKey, error)

	// readManifest reads the manifest: errNoManifest if there is none, an
	// error wrapping errBadManifest (with raw and tag) if it does not
	// decode. tag names the version read ("" in a directory).
	readManifest(ctx context.Context) (m manifest, raw []byte, tag string, err error)
	// manifestTag is the tag of the manifest as it is now, without
	// reading it: errNoManifest if there is none.
	manifestTag(ctx context.Context) (string, error)
	// writeManifest replaces the manifest with m and returns the new tag.
	// On a shared side the write is conditional: it succeeds only if the
	// manifest is still the version prev names ("": that there is none),
	// and fails with errConflict otherwise. A directory (one Repo at a
	// time) ignores prev.
	writeManifest(ctx context.Context, m manifest, prev string) (string, error)

	close() error
}

// staged is a module written by side.stage.
type staged interface {
	// install puts the module in place under its name (a rename in a
	// directory; nothing to do on an object store).
	install(ctx context.Context) error
	// discard removes what stage wrote, unless install put it in place
	// in a directory. On an object store it deletes the upload: it is
	// called only for an upload that no committed manifest names.
	discard()
}

// stored is a module a side holds.
type stored struct {
	name     string
	modified time.Time
}

// statKey identifies a version of a module's content cheaply. In a
// directory it is the file's identity, size and times: a file written or
// replaced has another key (within timestamp granularity). On an object
// store it is the ETag and size.
type statKey struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64
	tag          string
}

var (
	// errMissing says a module is absent.
	errMissing = errors.New("missing")
	// errNoManifest says the manifest is absent.
	errNoManifest = errors.New("no manifest")
	// errBadManifest says the manifest does not decode.
	errBadManifest = errors.New("unreadable manifest")
	// errConflict says a conditional write of the manifest found it
	// changed since it was read.
	errConflict = errors.New("the manifest changed since it was read")
)
