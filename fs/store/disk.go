package store

import (
	"io"
	iofs "io/fs"
	"os"
	"time"

	"strata/fs/flock"
)

// disk is the file system under a store: the calls of [os.Root] and
// [os.File] that the store makes, and nothing more. Names are
// slash-separated and relative to the disk's top directory, "." naming it
// (the store's paths go through osPath). Errors are those of the os
// package: *iofs.PathError and *os.LinkError around a syscall.Errno.
//
// What the store promises about crashes rests on what a disk promises
// about Sync: data and attributes written to a file are durable once the
// file's Sync returns, and a change of a directory's entries (a create,
// mkdir, remove or rename in it) once the directory's Sync returns (both
// directories', for a rename between two). Nothing else is assumed to be
// durable, and a rename is assumed atomic.
//
// osDisk is the local disk; crashdisk_test.go holds one that loses what
// was not synced.
type disk interface {
	OpenFile(name string, flag int, perm iofs.FileMode) (diskFile, error)
	// OpenRoot returns the directory name as a disk of its own, to look
	// up many names in it.
	OpenRoot(name string) (disk, error)
	Lstat(name string) (iofs.FileInfo, error)
	Mkdir(name string, perm iofs.FileMode) error
	Remove(name string) error
	Rename(oldname, newname string) error
	Chmod(name string, mode iofs.FileMode) error
	Chtimes(name string, atime, mtime time.Time) error
	Close() error
}

// diskFile is an open file or directory of a disk. *os.File is one.
type diskFile interface {
	io.ReaderAt
	io.WriterAt
	io.Writer // used only on a file opened with O_APPEND
	ReadDir(n int) ([]iofs.DirEntry, error)
	Stat() (iofs.FileInfo, error)
	Truncate(size int64) error
	Chmod(mode iofs.FileMode) error
	Chown(uid, gid int) error
	Sync() error
	Close() error
}

var (
	_ disk     = (*osDisk)(nil)
	_ diskFile = (*os.File)(nil)
)

// osDisk is a directory of the local disk, reached only through an
// os.Root, so that no name, rename or symbolic link leads outside it.
type osDisk struct {
	root *os.Root
	lock *os.File // the top directory, flocked while the disk is open; nil for a sub-root
}

// lockRoot opens the directory dir as a disk, holding an exclusive flock
// on it until Close; a directory locked already is a Busy error.
func lockRoot(dir string) (*osDisk, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	lock, err := root.Open(".")
	if err == nil {
		err = flock.Exclusive(lock, "another store")
		if err != nil {
			lock.Close()
		}
	}
	if err != nil {
		root.Close()
		return nil, err
	}
	return &osDisk{root: root, lock: lock}, nil
}

func (d *osDisk) OpenFile(name string, flag int, perm iofs.FileMode) (diskFile, error) {
	f, err := d.root.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err // not a nil *os.File in a non-nil diskFile
	}
	return f, nil
}

func (d *osDisk) OpenRoot(name string) (disk, error) {
	sub, err := d.root.OpenRoot(name)
	if err != nil {
		return nil, err
	}
	return &osDisk{root: sub}, nil
}

func (d *osDisk) Lstat(name string) (iofs.FileInfo, error)    { return d.root.Lstat(name) }
func (d *osDisk) Mkdir(name string, perm iofs.FileMode) error { return d.root.Mkdir(name, perm) }
func (d *osDisk) Remove(name string) error                    { return d.root.Remove(name) }
func (d *osDisk) Rename(oldname, newname string) error        { return d.root.Rename(oldname, newname) }
func (d *osDisk) Chmod(name string, mode iofs.FileMode) error { return d.root.Chmod(name, mode) }
func (d *osDisk) Chtimes(name string, atime, mtime time.Time) error {
	return d.root.Chtimes(name, atime, mtime)
}

// Close releases the lock and the root.
func (d *osDisk) Close() error {
	var err error
	if d.lock != nil {
		err = d.lock.Close()
	}
	if rerr := d.root.Close(); err == nil {
		err = rerr
	}
	return err
}
