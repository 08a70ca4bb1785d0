package fs

import (
	"context"
	"errors"
	iofs "io/fs"
	"os"
	"syscall"
)

// Kind classifies an error the way a user needs to act on it. Each Kind has
// one errno, which the 9P2000.L front end and the FUSE mount send.
type Kind uint8

const (
	Other       Kind = iota // an error with no better class (EIO)
	NotExist                // no such file or directory
	Exist                   // the name is taken
	Permission              // not allowed
	Invalid                 // a bad argument: name, offset, flag
	NotDir                  // a directory was needed
	IsDir                   // a file was needed
	NotEmpty                // a directory still has children
	Unsupported             // this node cannot do that
	CrossDevice             // a rename between trees
	TooLarge                // a size or count beyond a limit
	NameTooLong             // a name beyond 255 bytes
	NoSpace                 // the disk or a quota is full
	Timeout                 // a deadline passed
	Canceled                // the caller gave up
	Unavailable             // a remote part cannot be reached
	Busy                    // a limit on concurrent use was reached
	BadHandle               // a closed or unknown handle
	IO                      // the storage below failed
)

var kinds = [...]struct {
	errno syscall.Errno
	text  string
}{
	Other:       {syscall.EIO, "error"},
	NotExist:    {syscall.ENOENT, "file does not exist"},
	Exist:       {syscall.EEXIST, "file already exists"},
	Permission:  {syscall.EACCES, "permission denied"},
	Invalid:     {syscall.EINVAL, "invalid argument"},
	NotDir:      {syscall.ENOTDIR, "not a directory"},
	IsDir:       {syscall.EISDIR, "is a directory"},
	NotEmpty:    {syscall.ENOTEMPTY, "directory not empty"},
	Unsupported: {syscall.ENOTSUP, "operation not supported"},
	CrossDevice: {syscall.EXDEV, "cross-tree rename"},
	TooLarge:    {syscall.EFBIG, "too large"},
	NameTooLong: {syscall.ENAMETOOLONG, "name too long"},
	NoSpace:     {syscall.ENOSPC, "no space left"},
	Timeout:     {syscall.ETIMEDOUT, "timed out"},
	Canceled:    {syscall.EINTR, "canceled"},
	Unavailable: {syscall.EHOSTUNREACH, "unavailable"},
	Busy:        {syscall.EBUSY, "busy"},
	BadHandle:   {syscall.EBADF, "bad file handle"},
	IO:          {syscall.EIO, "i/o error"},
}

// Errno is the kind's errno.
func (k Kind) Errno() syscall.Errno {
	if int(k) < len(kinds) {
		return kinds[k].errno
	}
	return syscall.EIO
}

func (k Kind) String() string {
	if int(k) < len(kinds) {
		return kinds[k].text
	}
	return "error"
}

// Error is the error every tree returns: what was done (Op), to what
// (Path, slash-separated from the tree's root), what kind of failure it was,
// and the cause. errors.Is matches it against the kind's io/fs error and errno.
type Error struct {
	Op   string
	Path string
	Kind Kind
	Err  error // the cause; may be nil
}

func (e *Error) Error() string {
	s := e.Op
	if e.Path != "" {
		s += " " + e.Path
	}
	s += ": "
	if e.Err != nil {
		cause := e.Err.Error()
		if e.Kind != Other && !startsWithKind(cause, e.Kind) {
			s += e.Kind.String() + ": "
		}
		return s + cause
	}
	return s + e.Kind.String()
}

func startsWithKind(cause string, k Kind) bool {
	t := k.String()
	return len(cause) >= len(t) && cause[:len(t)] == t
}

func (e *Error) Unwrap() error { return e.Err }

// Is reports whether target is the errno of e's kind or the io/fs error
// that errno stands for (fs.ErrNotExist for NotExist, and so on).
func (e *Error) Is(target error) bool {
	if e.Kind == Other {
		return false
	}
	errno := e.Kind.Errno()
	if t, ok := target.(syscall.Errno); ok {
		return t == errno
	}
	switch e.Kind {
	case Timeout:
		return target == os.ErrDeadlineExceeded || target == context.DeadlineExceeded
	case Canceled:
		return target == context.Canceled
	case Unsupported:
		return target == errors.ErrUnsupported
	}
	return errno.Is(target)
}

// Timeout reports whether e is a timeout, as net.Error does.
func (e *Error) Timeout() bool { return e.Kind == Timeout }

// E builds an *Error. If err is already an *Error with the same path, its
// kind is kept where kind is Other and it is not wrapped twice.
func E(op, path string, kind Kind, err error) error {
	if kind == Other && err != nil {
		kind = KindOf(err)
	}
	var fe *Error
	if errors.As(err, &fe) && fe.Path == path && fe.Kind == kind && fe.Op == op {
		return fe
	}
	return &Error{Op: op, Path: path, Kind: kind, Err: stripPathError(err, fe)}
}

// stripPathError drops the os.PathError or *Error layer that would repeat
// the op and path, keeping its cause.
func stripPathError(err error, fe *Error) error {
	var pe *iofs.PathError
	if errors.As(err, &pe) && pe.Err != nil {
		return pe.Err
	}
	var le *os.LinkError
	if errors.As(err, &le) && le.Err != nil {
		return le.Err
	}
	if fe != nil && err == error(fe) && fe.Err != nil {
		return fe.Err
	}
	return err
}

// KindOf classifies any error: an *Error by its kind, a context error, an
// errno, or an io/fs sentinel. A nil error is Other.
func KindOf(err error) Kind {
	if err == nil {
		return Other
	}
	var fe *Error
	if errors.As(err, &fe) && fe.Kind != Other {
		return fe.Kind
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return Timeout
	case errors.Is(err, context.Canceled):
		return Canceled
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		for k := range kinds {
			if Kind(k) != Other && Kind(k) != IO && kinds[k].errno == errno {
				return Kind(k)
			}
		}
		switch errno {
		case syscall.EPERM, syscall.EROFS:
			return Permission
		case syscall.ENOSYS, syscall.EOPNOTSUPP:
			return Unsupported
		case syscall.ELOOP:
			return Invalid
		case syscall.EDQUOT:
			return NoSpace
		case syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.EPIPE, syscall.ENOTCONN, syscall.EHOSTDOWN, syscall.ENETUNREACH:
			return Unavailable
		case syscall.EMSGSIZE, syscall.E2BIG:
			return TooLarge
		}
		return IO
	}
	switch {
	case errors.Is(err, iofs.ErrNotExist):
		return NotExist
	case errors.Is(err, iofs.ErrExist):
		return Exist
	case errors.Is(err, iofs.ErrPermission):
		return Permission
	case errors.Is(err, iofs.ErrInvalid):
		return Invalid
	case errors.Is(err, iofs.ErrClosed):
		return BadHandle
	case errors.Is(err, errors.ErrUnsupported):
		return Unsupported
	}
	return Other
}

// ErrnoOf is the errno to report for err: syscall.EIO only when nothing better fits.
func ErrnoOf(err error) syscall.Errno { return KindOf(err).Errno() }

// WithPath returns err with its path set to path where it has none, so a
// front end that knows where an error happened can say so.
func WithPath(err error, op, path string) error {
	if err == nil {
		return nil
	}
	var fe *Error
	if errors.As(err, &fe) {
		if fe.Path != "" {
			return err
		}
		c := *fe
		c.Path = path
		if c.Op == "" {
			c.Op = op
		}
		return &c
	}
	return E(op, path, KindOf(err), err)
}
