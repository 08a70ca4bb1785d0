package fuse

import (
	"context"
	"errors"
	"io"
	iofs "io/fs"
	"os"
	"path/filepath"
	"syscall"

	"strata/fs"
)

// osDir and osFile show a directory of the host (the mount point) as an
// fs tree, so that fstest.Check can run through the mount.
type osNode struct {
	root string // the host directory of the tree's root
	rel  string // slash-separated path from root
}

type osDir struct{ osNode }

type osFile struct{ osNode }

func (n osNode) abs() string { return filepath.Join(n.root, filepath.FromSlash(n.rel)) }

func (n osNode) child(name string) osNode { return osNode{n.root, fs.Join(n.rel, name)} }

func infoOf(fi os.FileInfo) fs.Info {
	info := fs.Info{Name: fi.Name(), Size: fi.Size(), Mode: fi.Mode(), ModTime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		info.ID = st.Ino
	}
	return info
}

func (n osNode) Stat(context.Context) (fs.Info, error) {
	fi, err := os.Stat(n.abs())
	if err != nil {
		return fs.Info{}, fs.E("stat", n.rel, fs.Other, err)
	}
	return infoOf(fi), nil
}

func (n osNode) SetAttr(_ context.Context, a fs.Attr) error {
	if a.Size != nil {
		if err := os.Truncate(n.abs(), *a.Size); err != nil {
			return fs.E("setattr", n.rel, fs.Other, err)
		}
	}
	if a.Mode != nil {
		if err := os.Chmod(n.abs(), a.Mode.Perm()); err != nil {
			return fs.E("setattr", n.rel, fs.Other, err)
		}
	}
	if a.ModTime != nil {
		if err := os.Chtimes(n.abs(), *a.ModTime, *a.ModTime); err != nil {
			return fs.E("setattr", n.rel, fs.Other, err)
		}
	}
	return nil
}

func (d osDir) Lookup(_ context.Context, name string) (fs.Node, error) {
	if err := fs.CheckName("lookup", name); err != nil {
		return nil, err
	}
	c := d.child(name)
	fi, err := os.Lstat(c.abs())
	if err != nil {
		return nil, fs.E("lookup", c.rel, fs.Other, err)
	}
	if fi.IsDir() {
		return osDir{c}, nil
	}
	return osFile{c}, nil
}

func (d osDir) ReadDir(context.Context) ([]fs.Info, error) {
	list, err := os.ReadDir(d.abs())
	if err != nil {
		return nil, fs.E("readdir", d.rel, fs.Other, err)
	}
	infos := make([]fs.Info, 0, len(list))
	for _, e := range list {
		fi, err := e.Info()
		if err != nil {
			return nil, fs.E("readdir", d.child(e.Name()).rel, fs.Other, err)
		}
		infos = append(infos, infoOf(fi))
	}
	return infos, nil
}

func (d osDir) Create(_ context.Context, name string, flag fs.Flag, perm iofs.FileMode) (fs.File, fs.Handle, error) {
	if err := fs.CheckName("create", name); err != nil {
		return nil, nil, err
	}
	c := d.child(name)
	f, err := os.OpenFile(c.abs(), int(flag)|os.O_CREATE, perm)
	if err != nil {
		return nil, nil, fs.E("create", c.rel, fs.Other, err)
	}
	return osFile{c}, &osHandle{f: f, flag: flag, rel: c.rel}, nil
}

func (d osDir) Mkdir(_ context.Context, name string, perm iofs.FileMode) (fs.Dir, error) {
	if err := fs.CheckName("mkdir", name); err != nil {
		return nil, err
	}
	c := d.child(name)
	if err := os.Mkdir(c.abs(), perm); err != nil {
		return nil, fs.E("mkdir", c.rel, fs.Other, err)
	}
	return osDir{c}, nil
}

func (d osDir) Remove(_ context.Context, name string) error {
	if err := fs.CheckName("remove", name); err != nil {
		return err
	}
	c := d.child(name)
	if err := os.Remove(c.abs()); err != nil {
		return fs.E("remove", c.rel, fs.Other, err)
	}
	return nil
}

func (d osDir) Rename(_ context.Context, oldName string, newDir fs.Dir, newName string) error {
	for _, n := range []string{oldName, newName} {
		if err := fs.CheckName("rename", n); err != nil {
			return err
		}
	}
	nd, ok := newDir.(osDir)
	if !ok || nd.root != d.root {
		return &fs.Error{Op: "rename", Path: d.child(oldName).rel, Kind: fs.CrossDevice}
	}
	if err := os.Rename(d.child(oldName).abs(), nd.child(newName).abs()); err != nil {
		return fs.E("rename", d.child(oldName).rel, fs.Other, err)
	}
	return nil
}

func (f osFile) Open(_ context.Context, flag fs.Flag) (fs.Handle, error) {
	of, err := os.OpenFile(f.abs(), int(flag), 0)
	if err != nil {
		return nil, fs.E("open", f.rel, fs.Other, err)
	}
	return &osHandle{f: of, flag: flag, rel: f.rel}, nil
}

type osHandle struct {
	f    *os.File
	flag fs.Flag
	rel  string
}

func (h *osHandle) ReadAt(_ context.Context, p []byte, off int64) (int, error) {
	n, err := h.f.ReadAt(p, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return n, fs.E("read", h.rel, fs.Other, err)
	}
	return n, err
}

func (h *osHandle) WriteAt(_ context.Context, p []byte, off int64) (int, error) {
	var (
		n   int
		err error
	)
	if h.flag.Has(fs.Append) {
		n, err = h.f.Write(p) // os refuses WriteAt with O_APPEND
	} else {
		n, err = h.f.WriteAt(p, off)
	}
	if err != nil {
		return n, fs.E("write", h.rel, fs.Other, err)
	}
	return n, nil
}

func (h *osHandle) Sync(context.Context) error {
	if err := h.f.Sync(); err != nil {
		return fs.E("sync", h.rel, fs.Other, err)
	}
	return nil
}

func (h *osHandle) Close(context.Context) error {
	if err := h.f.Close(); err != nil {
		return fs.E("close", h.rel, fs.Other, err)
	}
	return nil
}
