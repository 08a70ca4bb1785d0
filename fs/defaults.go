package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"strings"
)

// DirDefaults is embedded by directories that cannot be changed: every
// mutation fails with Permission.
type DirDefaults struct{}

func (DirDefaults) SetAttr(context.Context, Attr) error {
	return &Error{Op: "setattr", Kind: Permission}
}
func (DirDefaults) Create(_ context.Context, name string, _ Flag, _ iofs.FileMode) (File, Handle, error) {
	return nil, nil, &Error{Op: "create", Path: name, Kind: Permission}
}
func (DirDefaults) Mkdir(_ context.Context, name string, _ iofs.FileMode) (Dir, error) {
	return nil, &Error{Op: "mkdir", Path: name, Kind: Permission}
}
func (DirDefaults) Remove(_ context.Context, name string) error {
	return &Error{Op: "remove", Path: name, Kind: Permission}
}
func (DirDefaults) Rename(_ context.Context, oldName string, _ Dir, _ string) error {
	return &Error{Op: "rename", Path: oldName, Kind: Permission}
}

// FileDefaults is embedded by files whose attributes cannot be changed.
type FileDefaults struct{}

func (FileDefaults) SetAttr(context.Context, Attr) error {
	return &Error{Op: "setattr", Kind: Permission}
}

// HandleDefaults is embedded by handles that support only some operations:
// reads and writes are unsupported, Sync and Close do nothing.
type HandleDefaults struct{}

func (HandleDefaults) ReadAt(context.Context, []byte, int64) (int, error) {
	return 0, &Error{Op: "read", Kind: Unsupported}
}
func (HandleDefaults) WriteAt(context.Context, []byte, int64) (int, error) {
	return 0, &Error{Op: "write", Kind: Permission}
}
func (HandleDefaults) Sync(context.Context) error  { return nil }
func (HandleDefaults) Close(context.Context) error { return nil }

// MaxNameLen is the longest name a tree accepts, in bytes.
const MaxNameLen = 255

// CheckName reports whether name is one valid path element: not empty, not
// "." or "..", no slash, no NUL, at most MaxNameLen bytes. Every tree and
// front end checks names with it before touching anything.
func CheckName(op, name string) error {
	switch {
	case name == "" || name == "." || name == "..":
		return &Error{Op: op, Path: name, Kind: Invalid, Err: errInvalidName}
	case strings.ContainsAny(name, "/\x00"):
		return &Error{Op: op, Path: strings.ToValidUTF8(strings.ReplaceAll(name, "\x00", `\0`), "?"), Kind: Invalid, Err: errInvalidName}
	case len(name) > MaxNameLen:
		return &Error{Op: op, Path: name[:32] + "...", Kind: NameTooLong}
	}
	return nil
}

type constError string

func (e constError) Error() string { return string(e) }

const errInvalidName = constError("invalid name: must be one non-empty path element without '/' or NUL, not '.' or '..'")

// Walk follows the slash-separated path p from d. An empty path or "." is d.
func Walk(ctx context.Context, d Dir, p string) (Node, error) {
	var n Node = d
	walked := ""
	for _, name := range strings.Split(p, "/") {
		if name == "" || name == "." {
			continue
		}
		if err := CheckName("walk", name); err != nil {
			return nil, err
		}
		dir, ok := n.(Dir)
		if !ok {
			return nil, &Error{Op: "walk", Path: walked, Kind: NotDir}
		}
		walked = Join(walked, name)
		c, err := dir.Lookup(ctx, name)
		if err != nil {
			return nil, WithPath(err, "walk", walked)
		}
		n = c
	}
	return n, nil
}

// ReadAll opens f for reading and reads it to EOF, failing with TooLarge
// past max bytes. It suits files with no size in advance (ctl answers,
// status files), which it reads until a read returns nothing.
func ReadAll(ctx context.Context, f File, max int) ([]byte, error) {
	h, err := f.Open(ctx, ReadOnly)
	if err != nil {
		return nil, err
	}
	defer h.Close(context.WithoutCancel(ctx))
	return ReadHandle(ctx, h, max)
}

// ReadHandle reads the open handle h from offset 0 to its end (a read that
// returns io.EOF, or nothing), and fails with TooLarge past max bytes.
func ReadHandle(ctx context.Context, h Handle, max int) ([]byte, error) {
	var out []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := h.ReadAt(ctx, buf, int64(len(out)))
		out = append(out, buf[:n]...)
		if len(out) > max {
			return nil, &Error{Op: "read", Kind: TooLarge, Err: fmt.Errorf("more than %d bytes", max)}
		}
		if errors.Is(err, io.EOF) || (err == nil && n == 0) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
	}
}
