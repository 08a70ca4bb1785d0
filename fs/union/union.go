// Package union joins directories into one, Plan 9 style: the members are
// searched in order and the first that has a name wins. A tier shows its
// local apps before its parent's with New("apps", local, parent).
//
// A union is one level deep, as in Plan 9: a child is the node of the
// member that has it, so a directory that several members hold is that of
// the first, not a merge of them all.
//
// Members fail independently (a parent tier may be unreachable while the
// local tree answers), so:
//   - Lookup asks each member in turn. A member that does not have the name
//     (NotExist) is passed over, and so is one that fails otherwise, when a
//     later member has the name. When none has it, the error is NotExist if
//     every member said so, and otherwise the first failure met: "no
//     such app" and "the parent is unreachable" stay apart.
//   - ReadDir lists each name once, with the first member's entry, sorted.
//     A member that fails is left out of the listing (and logged), so that
//     an unreachable parent does not hide the local entries; only when
//     every member fails is the listing an error. A member whose directory
//     does not exist adds nothing and is no failure.
//   - Create, Mkdir, Remove, Rename and SetAttr go to the first member only.
//     A name that only a later member holds is not found by Remove or
//     Rename, and Create or Mkdir of it makes a new entry in the first
//     member, which from then on hides the other.
//
// Each member numbers its nodes (fs.Info.ID) on its own, so the IDs of
// later members could collide with the first's. The first member's nodes
// are shown as they are; those of later members are wrapped, at every
// depth, only to mix the member's position into their IDs.
package union

import (
	"context"
	iofs "io/fs"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"strata/fs"
)

// Options configure a union.
type Options struct {
	// Log receives the failures of members that ReadDir leaves out; nil
	// discards them.
	Log *slog.Logger
}

// New returns a directory showing the members' entries: a name is looked
// up in each member in order, the first that has it wins; ReadDir lists
// each name once (the first member's entry), sorted. name is the union's
// own name, as its Stat reports it.
func New(name string, members ...fs.Dir) fs.Dir {
	return NewWithOptions(name, Options{}, members...)
}

// NewWithOptions is New with options.
func NewWithOptions(name string, opts Options, members ...fs.Dir) fs.Dir {
	u := &dir{name: name, log: opts.Log}
	if u.log == nil {
		u.log = slog.New(slog.DiscardHandler)
	}
	for i, m := range members {
		u.members = append(u.members, wrapDir(m, i))
	}
	return u
}

type dir struct {
	name    string
	members []fs.Dir
	log     *slog.Logger
}

var _ fs.Dir = (*dir)(nil)

// Stat implements fs.Node: a directory called name, with the permissions
// and time of the first member's directory. Its ID is zero: the front end
// derives one from the union's path.
func (u *dir) Stat(ctx context.Context) (fs.Info, error) {
	info := fs.Info{Name: u.name, Mode: iofs.ModeDir | 0o555}
	if len(u.members) > 0 {
		if m, err := u.members[0].Stat(ctx); err == nil {
			info.Mode = iofs.ModeDir | m.Mode.Perm()
			info.ModTime = m.ModTime
			info.Version = m.Version
		}
	}
	return info, nil
}

// first is the member that takes changes.
func (u *dir) first(op, name string) (fs.Dir, error) {
	if len(u.members) == 0 {
		return nil, &fs.Error{Op: op, Path: name, Kind: fs.Permission}
	}
	return u.members[0], nil
}

// SetAttr implements fs.Node: it changes the first member's directory.
func (u *dir) SetAttr(ctx context.Context, a fs.Attr) error {
	m, err := u.first("setattr", "")
	if err != nil {
		return err
	}
	return m.SetAttr(ctx, a)
}

// Lookup implements fs.Dir.
func (u *dir) Lookup(ctx context.Context, name string) (fs.Node, error) {
	if err := fs.CheckName("lookup", name); err != nil {
		return nil, err
	}
	var failed error
	for _, m := range u.members {
		n, err := m.Lookup(ctx, name)
		if err == nil {
			return n, nil
		}
		if fs.KindOf(err) == fs.NotExist {
			continue
		}
		if failed == nil {
			failed = err
		}
		if ctx.Err() != nil {
			break // the caller gave up: asking on is no use
		}
	}
	if failed != nil {
		return nil, failed
	}
	return nil, &fs.Error{Op: "lookup", Path: name, Kind: fs.NotExist}
}

// ReadDir implements fs.Dir. The members are asked at once.
func (u *dir) ReadDir(ctx context.Context) ([]fs.Info, error) {
	lists := make([][]fs.Info, len(u.members))
	errs := make([]error, len(u.members))
	var wg sync.WaitGroup
	for i, m := range u.members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lists[i], errs[i] = m.ReadDir(ctx)
		}()
	}
	wg.Wait()

	var (
		out     []fs.Info
		seen    = map[string]bool{}
		failed  error
		answers int
	)
	for i, list := range lists {
		if err := errs[i]; err != nil {
			if fs.KindOf(err) == fs.NotExist {
				answers++
				continue
			}
			if failed == nil {
				failed = err
			}
			u.log.Warn("union: member left out of the listing", "union", u.name, "member", i, "err", err)
			continue
		}
		answers++
		for _, e := range list {
			if !seen[e.Name] {
				seen[e.Name] = true
				out = append(out, e)
			}
		}
	}
	if answers == 0 && failed != nil {
		return nil, failed
	}
	slices.SortFunc(out, func(a, b fs.Info) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Create implements fs.Dir: it creates in the first member.
func (u *dir) Create(ctx context.Context, name string, flag fs.Flag, perm iofs.FileMode) (fs.File, fs.Handle, error) {
	m, err := u.first("create", name)
	if err != nil {
		return nil, nil, err
	}
	return m.Create(ctx, name, flag, perm)
}

// Mkdir implements fs.Dir: it makes the directory in the first member.
func (u *dir) Mkdir(ctx context.Context, name string, perm iofs.FileMode) (fs.Dir, error) {
	m, err := u.first("mkdir", name)
	if err != nil {
		return nil, err
	}
	return m.Mkdir(ctx, name, perm)
}

// Remove implements fs.Dir: it removes from the first member.
func (u *dir) Remove(ctx context.Context, name string) error {
	m, err := u.first("remove", name)
	if err != nil {
		return err
	}
	return m.Remove(ctx, name)
}

// Rename implements fs.Dir: it renames within the first member. A union
// as newDir stands for its own first member.
func (u *dir) Rename(ctx context.Context, oldName string, newDir fs.Dir, newName string) error {
	m, err := u.first("rename", oldName)
	if err != nil {
		return err
	}
	if nu, ok := newDir.(*dir); ok {
		if len(nu.members) == 0 {
			return &fs.Error{Op: "rename", Path: oldName, Kind: fs.Permission}
		}
		newDir = nu.members[0]
	}
	return m.Rename(ctx, oldName, newDir, newName)
}
