// Package fs is Strata's namespace model: a tree of nodes that the 9P front
// ends serve, the mounts attach and the tiers compose.
//
// Every interface lives in this file. A tree is reached through its root Dir;
// a Dir looks up children by name; a File opens into a Handle that reads and
// writes at offsets. Every method that may block takes a context first.
// Implementations embed DirDefaults, FileDefaults or HandleDefaults for what
// they do not support, and return *Error values (see errors.go) that unwrap
// to io/fs and syscall errors.
//
// Concurrency: unless an implementation says otherwise, every method of a
// Node may be called from many goroutines at once, and a Handle's ReadAt and
// WriteAt may run concurrently with each other (as for os.File). Close is
// called once, after every other call on the Handle has returned.
package fs

import (
	"context"
	iofs "io/fs"
	"os"
	"time"
)

// Info describes a node. It is a value: changing it changes nothing.
type Info struct {
	Name    string
	Size    int64
	Mode    iofs.FileMode // type bits and permissions; iofs.ModeDir for directories
	ModTime time.Time
	// ID identifies the node within its tree for as long as it exists
	// (the 9P qid path). Zero means the front end derives one from the path.
	ID uint64
	// Version changes when the content changes (the 9P qid version).
	Version uint32
	// Stream marks a file whose size is not known in advance (a ctl or an
	// answer file): readers must read until EOF, not trust Size.
	Stream bool
}

// IsDir reports whether the node is a directory.
func (i Info) IsDir() bool { return i.Mode.IsDir() }

// Node is anything in a tree.
type Node interface {
	// Stat describes the node.
	Stat(ctx context.Context) (Info, error)
	// SetAttr changes the attributes that a has set.
	SetAttr(ctx context.Context, a Attr) error
}

// Attr is a change of attributes: nil fields stay as they are.
type Attr struct {
	Size    *int64         // truncate or extend to this size
	Mode    *iofs.FileMode // permission bits only
	ModTime *time.Time
}

// Dir is a directory.
type Dir interface {
	Node
	// Lookup returns the child called name (one path element).
	Lookup(ctx context.Context, name string) (Node, error)
	// ReadDir lists the children, sorted by name.
	ReadDir(ctx context.Context) ([]Info, error)
	// Create makes a new file and opens it with flag (O_CREATE is implied;
	// with O_EXCL an existing file is an Exist error).
	Create(ctx context.Context, name string, flag Flag, perm iofs.FileMode) (File, Handle, error)
	// Mkdir makes a new directory.
	Mkdir(ctx context.Context, name string, perm iofs.FileMode) (Dir, error)
	// Remove removes the child called name; a directory must be empty.
	Remove(ctx context.Context, name string) error
	// Rename moves the child oldName to newDir/newName, replacing a file
	// there. newDir must belong to the same tree (else CrossDevice).
	Rename(ctx context.Context, oldName string, newDir Dir, newName string) error
}

// File is a file: regular, or synthetic like a ctl file.
type File interface {
	Node
	// Open opens the file. Data written through the Handle is acknowledged
	// when Sync or Close returns nil.
	Open(ctx context.Context, flag Flag) (Handle, error)
}

// Handle is an open file.
type Handle interface {
	ReadAt(ctx context.Context, p []byte, off int64) (int, error)
	WriteAt(ctx context.Context, p []byte, off int64) (int, error)
	// Sync makes what was written durable (or, for a synthetic file, done).
	Sync(ctx context.Context) error
	// Close ends the Handle. For a durable file it acknowledges the data:
	// a nil error means what was written survives a crash.
	Close(ctx context.Context) error
}

// Aborter is a Handle that can be closed without acknowledging what was
// written through it: a pending atomic rewrite is discarded, and the file
// keeps the content it had (writes already made in place stay). An upload
// that fails half way uses it.
type Aborter interface {
	Abort(ctx context.Context) error
}

// HandleStater is a Handle that describes the file it has open, which
// after an atomic rewrite may no longer be the file at its name: a reader
// takes its size from here, not from the node, to read one version whole.
type HandleStater interface {
	Stat(ctx context.Context) (Info, error)
}

// Flag is how a file is opened: the os.O_* flags.
type Flag int

const (
	ReadOnly  Flag = Flag(os.O_RDONLY)
	WriteOnly Flag = Flag(os.O_WRONLY)
	ReadWrite Flag = Flag(os.O_RDWR)
	Append    Flag = Flag(os.O_APPEND)
	CreateNew Flag = Flag(os.O_CREATE)
	Excl      Flag = Flag(os.O_EXCL)
	Truncate  Flag = Flag(os.O_TRUNC)

	accessMask Flag = Flag(os.O_RDONLY | os.O_WRONLY | os.O_RDWR)
)

// Access returns the access part of f: ReadOnly, WriteOnly or ReadWrite.
func (f Flag) Access() Flag { return f & accessMask }

// Readable reports whether f allows reading.
func (f Flag) Readable() bool { return f.Access() != WriteOnly }

// Writable reports whether f allows writing.
func (f Flag) Writable() bool { return f.Access() != ReadOnly }

// Has reports whether every bit of g is set in f.
func (f Flag) Has(g Flag) bool { return f&g == g }
