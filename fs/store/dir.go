package store

import (
	"context"
	"errors"
	iofs "io/fs"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"strata/fs"
)

// dir is a directory of the store.
type dir struct{ *node }

// child checks name and returns the path of name in d. s.ns is held.
func (d *dir) child(ctx context.Context, op, name string) (string, error) {
	if err := fs.CheckName(op, name); err != nil {
		var fe *fs.Error
		if errors.As(err, &fe) {
			c := *fe
			c.Path = fs.Join(d.at.Path, fe.Path)
			return "", &c
		}
		return "", err
	}
	p := fs.Join(d.at.Path, name)
	if strings.HasPrefix(name, TempPrefix) {
		return "", &fs.Error{Op: op, Path: p, Kind: fs.Invalid, Err: errReserved}
	}
	if err := d.s.check(ctx, op, p); err != nil {
		return "", err
	}
	if d.at.Gone {
		return "", &fs.Error{Op: op, Path: d.at.Path, Kind: fs.NotExist}
	}
	return p, nil
}

// wrap returns the node for the entry at p that Lstat described as fi.
// s.ns is held.
func (s *Store) wrap(op, p string, fi os.FileInfo) (fs.Node, error) {
	switch {
	case fi.IsDir():
		return &dir{s.node(p)}, nil
	case fi.Mode().IsRegular():
		return &file{s.node(p)}, nil
	}
	return nil, notFile(op, p, fi)
}

// notFile is the error for an entry at p that is not a regular file.
func notFile(op, p string, fi os.FileInfo) error {
	switch {
	case fi.IsDir():
		return &fs.Error{Op: op, Path: p, Kind: fs.IsDir}
	case fi.Mode()&iofs.ModeSymlink != 0:
		return &fs.Error{Op: op, Path: p, Kind: fs.Permission, Err: errSymlink}
	}
	return &fs.Error{Op: op, Path: p, Kind: fs.Permission, Err: errSpecial}
}

// Lookup returns the file or directory called name.
func (d *dir) Lookup(ctx context.Context, name string) (fs.Node, error) {
	const op = "lookup"
	s := d.s
	s.ns.RLock()
	defer s.ns.RUnlock()
	p, err := d.child(ctx, op, name)
	if err != nil {
		return nil, err
	}
	fi, err := s.disk.Lstat(p)
	if err != nil {
		return nil, fail(op, p, err)
	}
	return s.wrap(op, p, fi)
}

// ReadDir lists the files and directories in d, sorted by name.
func (d *dir) ReadDir(ctx context.Context) ([]fs.Info, error) {
	const op = "readdir"
	s := d.s
	s.ns.RLock()
	defer s.ns.RUnlock()
	if err := d.ready(ctx, op); err != nil {
		return nil, err
	}
	p := d.at.Path
	sub, err := s.disk.OpenRoot(osPath(p))
	if err != nil {
		return nil, fail(op, p, err)
	}
	defer sub.Close()
	names, err := readNames(sub)
	if err != nil {
		return nil, fail(op, p, err)
	}
	list := make([]fs.Info, 0, len(names))
	for _, name := range names {
		if strings.HasPrefix(name, TempPrefix) {
			continue
		}
		fi, err := sub.Lstat(name)
		if errors.Is(err, iofs.ErrNotExist) {
			continue // removed since it was listed
		}
		if err != nil {
			return nil, fail(op, fs.Join(p, name), err)
		}
		if fi.IsDir() || fi.Mode().IsRegular() {
			list = append(list, info(name, fi))
		}
	}
	slices.SortFunc(list, func(a, b fs.Info) int { return strings.Compare(a.Name, b.Name) })
	return list, nil
}

// readNames lists the names in the top directory of d.
func readNames(d disk) ([]string, error) {
	f, err := d.OpenFile(".", os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	list, err := f.ReadDir(-1)
	f.Close()
	if err != nil {
		return nil, err
	}
	names := make([]string, len(list))
	for i, e := range list {
		names[i] = e.Name()
	}
	return names, nil
}

// Create makes the file name and opens it with flag. A new file is empty
// and durable when Create returns; what the Handle writes replaces it
// atomically at Sync or Close. Without fs.Excl, an existing file is opened
// as File.Open would.
func (d *dir) Create(ctx context.Context, name string, flag fs.Flag, perm iofs.FileMode) (fs.File, fs.Handle, error) {
	const op = "create"
	s := d.s
	s.ns.RLock()
	f, h, df, err := d.create(ctx, op, name, flag, perm)
	s.ns.RUnlock()
	if err != nil {
		return nil, nil, err
	}
	if df != nil {
		if err := syncClose(df); err != nil {
			h.abandon()
			return nil, nil, fail(op, f.where(), err)
		}
	}
	return f, h, nil
}

// create does the work of Create and returns the directory to fsync, if
// the file is new. s.ns is held for reading.
func (d *dir) create(ctx context.Context, op, name string, flag fs.Flag, perm iofs.FileMode) (*file, *handle, diskFile, error) {
	s := d.s
	p, err := d.child(ctx, op, name)
	if err != nil {
		return nil, nil, nil, err
	}
	excl := flag.Has(fs.Excl)
	flag &^= fs.CreateNew | fs.Excl
	t, err := s.disk.OpenFile(p, os.O_RDONLY|os.O_CREATE|os.O_EXCL, perm.Perm())
	if errors.Is(err, iofs.ErrExist) && !excl {
		f, h, err := d.openExisting(op, p, flag)
		return f, h, nil, err
	}
	if err != nil {
		return nil, nil, nil, fail(op, p, err)
	}
	f := &file{s.node(p)}
	fi, err := t.Stat()
	if err == nil {
		err = t.Sync()
	}
	var df diskFile
	if err == nil {
		df, err = s.openDir(d.at.Path)
	}
	var h *handle
	if err == nil {
		if flag.Writable() {
			t.Close()
			t = nil
			h, err = f.rewrite(op, fi, flag)
		} else {
			h, err = s.newHandle(op, f.node, t, nil, flag)
			t = nil
		}
	}
	if err != nil {
		if t != nil {
			t.Close()
		}
		if df != nil {
			df.Close()
		}
		s.disk.Remove(p)
		return nil, nil, nil, fail(op, p, err)
	}
	return f, h, df, nil
}

// openExisting opens the existing file at p for Create without fs.Excl.
// s.ns is held for reading.
func (d *dir) openExisting(op, p string, flag fs.Flag) (*file, *handle, error) {
	fi, err := d.s.disk.Lstat(p)
	if err != nil {
		return nil, nil, fail(op, p, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, nil, notFile(op, p, fi)
	}
	f := &file{d.s.node(p)}
	h, err := f.open(op, flag)
	if err != nil {
		return nil, nil, err
	}
	return f, h, nil
}

// Mkdir makes the directory name, durably.
func (d *dir) Mkdir(ctx context.Context, name string, perm iofs.FileMode) (fs.Dir, error) {
	const op = "mkdir"
	s := d.s
	s.ns.RLock()
	p, err := d.child(ctx, op, name)
	var df diskFile
	if err == nil {
		err = s.disk.Mkdir(p, perm.Perm())
		if err == nil {
			df, err = s.openDir(d.at.Path)
		}
		if err != nil {
			err = fail(op, p, err)
		}
	}
	var n *node
	if err == nil {
		n = s.node(p)
	}
	s.ns.RUnlock()
	if err != nil {
		return nil, err
	}
	if err := syncClose(df); err != nil {
		return nil, fail(op, p, err)
	}
	return &dir{n}, nil
}

// Remove removes the entry name: a file, an empty directory, or anything
// else found there (a symbolic link is removed, not followed).
func (d *dir) Remove(ctx context.Context, name string) error {
	const op = "remove"
	s := d.s
	s.ns.Lock()
	p, err := d.child(ctx, op, name)
	var df diskFile
	if err == nil {
		err = s.disk.Remove(p)
		if errors.Is(err, syscall.ENOTEMPTY) && s.clearTemps(p) {
			err = s.disk.Remove(p)
		}
		if err == nil {
			s.removed(p)
			df, err = s.openDir(d.at.Path)
		}
		if err != nil {
			err = fail(op, p, err)
		}
	}
	s.ns.Unlock()
	if err != nil {
		return err
	}
	if err := syncClose(df); err != nil {
		return fail(op, p, err)
	}
	return nil
}

// clearTemps removes the directory p's temporary files if they are all it
// holds, so that a directory that looks empty can be removed while a
// rewrite in it is pending (the rewrite is then lost, as if its file had
// been removed). s.ns is held for writing.
func (s *Store) clearTemps(p string) bool {
	sub, err := s.disk.OpenRoot(p)
	if err != nil {
		return false
	}
	defer sub.Close()
	names, err := readNames(sub)
	if err != nil {
		return false
	}
	for _, name := range names {
		if !strings.HasPrefix(name, TempPrefix) {
			return false
		}
	}
	for _, name := range names {
		if err := sub.Remove(name); err != nil {
			return false
		}
	}
	return true
}

// Rename moves the entry oldName to newDir/newName as rename(2) does: a
// file replaces a file there, and a directory an empty directory there
// (one that holds only the temporary files of pending rewrites counts as
// empty, as for Remove, and those rewrites are lost). A directory is not
// moved over a directory that is not empty (an Exist error, as rename(2)
// may say: EEXIST or ENOTEMPTY), nor over a file (NotDir), nor a file over
// a directory (IsDir). The replacement is one rename on the disk: a crash
// leaves the old tree or the new one. newDir must be a directory of the
// same store.
func (d *dir) Rename(ctx context.Context, oldName string, newDir fs.Dir, newName string) error {
	const op = "rename"
	s := d.s
	nd, ok := newDir.(*dir)
	if !ok || nd.s != s {
		return &fs.Error{Op: op, Path: fs.Join(d.where(), oldName), Kind: fs.CrossDevice}
	}
	s.ns.Lock()
	from, dirs, err := d.rename(ctx, op, oldName, nd, newName)
	s.ns.Unlock()
	if serr := syncDirs(dirs); err == nil && serr != nil {
		err = fail(op, from, serr)
	}
	return err
}

// rename does the work of Rename and returns the directories to fsync.
// s.ns is held for writing.
func (d *dir) rename(ctx context.Context, op, oldName string, nd *dir, newName string) (string, []diskFile, error) {
	s := d.s
	from, err := d.child(ctx, op, oldName)
	if err != nil {
		return "", nil, err
	}
	to, err := nd.child(ctx, op, newName)
	if err != nil {
		return from, nil, err
	}
	if from == to {
		if _, err := s.disk.Lstat(from); err != nil {
			return from, nil, fail(op, from, err)
		}
		return from, nil, nil
	}
	if err := s.renameEntry(op, from, to); err != nil {
		return from, nil, fail(op, from, err)
	}
	s.moved(from, to)
	dirs, err := s.openDirs(nd.at.Path, d.at.Path)
	if err != nil {
		return from, nil, fail(op, from, err)
	}
	return from, dirs, nil
}

// Errors of a rename onto a directory.
var (
	errOntoDir  = errors.New("only a directory can replace a directory")
	errDirInUse = errors.New("the target directory is not empty")
)

// renameEntry renames the entry from to to, replacing what is at to as
// rename(2) does. The disk's Rename serves every case but one: os.Root
// refuses any directory at the target (it checks as os.Rename does), so
// a directory goes over a directory through replaceDir. s.ns is held for
// writing.
func (s *Store) renameEntry(op, from, to string) error {
	tfi, err := s.disk.Lstat(to)
	if err != nil || !tfi.IsDir() {
		return s.disk.Rename(from, to) // nothing there, or not a directory
	}
	ffi, err := s.disk.Lstat(from)
	if err != nil {
		return err
	}
	if !ffi.IsDir() {
		return &fs.Error{Kind: fs.IsDir, Err: errOntoDir}
	}
	err = s.replaceDir(from, to)
	if notEmpty(err) && s.clearTemps(to) {
		err = s.replaceDir(from, to)
	}
	if notEmpty(err) {
		return &fs.Error{Kind: fs.Exist, Err: errDirInUse}
	}
	return err
}

// notEmpty reports whether err is rename(2)'s refusal of a directory
// that is not empty (EEXIST where os.Root refuses any directory).
func notEmpty(err error) bool {
	return errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST)
}

// dirReplacer is a disk that can rename a directory over an empty one,
// which its Rename refuses.
type dirReplacer interface {
	replaceDir(oldname, newname string) error
}

// replaceDir renames the directory from over the directory to, if it is
// empty, in one rename on the disk. s.ns is held for writing.
func (s *Store) replaceDir(from, to string) error {
	if r, ok := s.disk.(dirReplacer); ok {
		return r.replaceDir(from, to)
	}
	return s.disk.Rename(from, to)
}

// procFD reports whether this system names open descriptors in
// /proc/self/fd, as Linux does.
var procFD = sync.OnceValue(func() bool {
	fi, err := os.Stat("/proc/self/fd")
	return err == nil && fi.IsDir()
})

// replaceDir implements dirReplacer with rename(2) itself, which
// replaces an empty directory. The directories that hold the two names
// are opened through the root and given to rename(2) as /proc/self/fd/N,
// followed by the last element of each name: the descriptors are inside
// the root, and rename(2) does not follow a last element, so no link
// leads outside. Where /proc is not there, it is Root.Rename, which
// refuses the directory at newname.
func (d *osDisk) replaceDir(oldname, newname string) error {
	if !procFD() {
		return d.root.Rename(oldname, newname)
	}
	fail := func(err error) error { return &os.LinkError{Op: "renameat", Old: oldname, New: newname, Err: err} }
	op, ob := fs.Split(oldname)
	np, nb := fs.Split(newname)
	of, err := d.root.OpenFile(osPath(op), os.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer of.Close()
	nf, err := d.root.OpenFile(osPath(np), os.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer nf.Close()
	if err := syscall.Rename(fdPath(of, ob), fdPath(nf, nb)); err != nil {
		return fail(err)
	}
	return nil
}

// fdPath names the entry name of the open directory f.
func fdPath(f *os.File, name string) string {
	return "/proc/self/fd/" + strconv.FormatUint(uint64(f.Fd()), 10) + "/" + name
}
