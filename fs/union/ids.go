package union

import (
	"context"
	iofs "io/fs"

	"strata/fs"
)

// mixID maps a node ID of member i into the union's: unchanged for the
// first member, else a bijective mix (splitmix64's finalizer) of the ID
// with i, so that no two nodes of one member share an ID and nodes of two
// members collide only by chance (2^-64). Zero stays zero: the front end
// then derives an ID from the path.
func mixID(id uint64, i int) uint64 {
	if id == 0 || i == 0 {
		return id
	}
	z := id + uint64(i)*0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	z ^= z >> 31
	if z == 0 {
		z = 1
	}
	return z
}

// wrapNode returns n as member i's node in the union.
func wrapNode(n fs.Node, i int) fs.Node {
	if i == 0 {
		return n
	}
	switch n := n.(type) {
	case fs.Dir:
		return &idDir{n, i}
	case fs.File:
		return &idFile{n, i}
	}
	return n
}

func wrapDir(d fs.Dir, i int) fs.Dir {
	if i == 0 || d == nil {
		return d
	}
	return &idDir{d, i}
}

// idDir is a directory of a later member, whose IDs are mixed.
type idDir struct {
	d fs.Dir
	i int
}

func (d *idDir) Stat(ctx context.Context) (fs.Info, error) {
	info, err := d.d.Stat(ctx)
	info.ID = mixID(info.ID, d.i)
	return info, err
}

func (d *idDir) SetAttr(ctx context.Context, a fs.Attr) error { return d.d.SetAttr(ctx, a) }

func (d *idDir) Lookup(ctx context.Context, name string) (fs.Node, error) {
	n, err := d.d.Lookup(ctx, name)
	if err != nil {
		return nil, err
	}
	return wrapNode(n, d.i), nil
}

func (d *idDir) ReadDir(ctx context.Context) ([]fs.Info, error) {
	list, err := d.d.ReadDir(ctx)
	for k := range list {
		list[k].ID = mixID(list[k].ID, d.i)
	}
	return list, err
}

func (d *idDir) Create(ctx context.Context, name string, flag fs.Flag, perm iofs.FileMode) (fs.File, fs.Handle, error) {
	f, h, err := d.d.Create(ctx, name, flag, perm)
	if err != nil {
		return nil, nil, err
	}
	return &idFile{f, d.i}, h, nil
}

func (d *idDir) Mkdir(ctx context.Context, name string, perm iofs.FileMode) (fs.Dir, error) {
	c, err := d.d.Mkdir(ctx, name, perm)
	if err != nil {
		return nil, err
	}
	return &idDir{c, d.i}, nil
}

func (d *idDir) Remove(ctx context.Context, name string) error { return d.d.Remove(ctx, name) }

func (d *idDir) Rename(ctx context.Context, oldName string, newDir fs.Dir, newName string) error {
	if nd, ok := newDir.(*idDir); ok {
		newDir = nd.d
	}
	return d.d.Rename(ctx, oldName, newDir, newName)
}

// idFile is a file of a later member, whose ID is mixed.
type idFile struct {
	f fs.File
	i int
}

func (f *idFile) Stat(ctx context.Context) (fs.Info, error) {
	info, err := f.f.Stat(ctx)
	info.ID = mixID(info.ID, f.i)
	return info, err
}

func (f *idFile) SetAttr(ctx context.Context, a fs.Attr) error { return f.f.SetAttr(ctx, a) }

func (f *idFile) Open(ctx context.Context, flag fs.Flag) (fs.Handle, error) {
	return f.f.Open(ctx, flag)
}
