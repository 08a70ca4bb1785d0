package ninep

import (
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"slices"
	"strings"
	"sync"

	"github.com/knusbaum/go9p/proto"

	"strata/fs"
)

// plan9Attach is what every fid descended from one Tattach shares.
type plan9Attach struct {
	root   fs.Dir
	prefix string // the root's path in the tree (the aname, cleaned)
	user   string // uid, gid and muid of every stat
}

// plan9Fid is one fid of a connection.
//
// Locking: the connection's fmu guards the table and reserved. mu guards
// the rest: requests that use the fid as it is (read, write, stat, walk to
// another fid) hold it shared; requests that change it (open, create,
// walk onto itself, wstat, clunk, remove) hold it exclusively, so a clunk
// closes the handle only after every read and write on it has returned.
type plan9Fid struct {
	num      uint32
	reserved bool // a number taken by a request that has not answered yet

	mu      sync.RWMutex
	clunked bool
	att     *plan9Attach
	node    fs.Node
	path    []string // names from att.root to node
	up      []fs.Dir // up[i] is the directory that holds path[i]

	open   bool
	isDir  bool
	flag   fs.Flag
	h      fs.Handle
	rclose bool

	dmu     sync.Mutex // directory reading state
	dirents []fs.Info
	dirNext int    // index of the next entry to send
	dirOff  uint64 // the offset the next read must ask for
}

func (f *plan9Fid) pathString() string {
	if f.att == nil {
		return ""
	}
	return plan9Join(f.att.prefix, f.path...)
}

func (f *plan9Fid) childPath(name string) string {
	return plan9Join(f.att.prefix, append(slices.Clip(f.path), name)...)
}

func plan9Join(prefix string, names ...string) string {
	if len(names) == 0 {
		return prefix
	}
	return fs.Join(prefix, strings.Join(names, "/"))
}

// release ends the fid: the handle is closed (its error is the client's
// only news that written data was not acknowledged) and an ORCLOSE file is
// removed. A fid abandoned by its client (the connection ended, or a new
// Tversion reset it) has its handle aborted instead: nothing written
// through it was acknowledged. f.mu must be held exclusively.
func (f *plan9Fid) release(ctx context.Context, abandoned bool) error {
	f.clunked = true
	var err error
	if f.h != nil {
		var cerr error
		if abandoned {
			cerr = abandon(ctx, f.h)
		} else {
			cerr = f.h.Close(ctx)
		}
		if cerr != nil {
			err = fs.WithPath(cerr, "close", f.pathString())
		}
		f.h = nil
	}
	if f.rclose && len(f.path) > 0 {
		f.rclose = false
		if rerr := f.up[len(f.up)-1].Remove(ctx, f.path[len(f.path)-1]); rerr != nil && err == nil {
			err = fs.WithPath(rerr, "remove", f.pathString())
		}
	}
	f.open = false
	return err
}

func plan9UnknownFid(op string, num uint32) error {
	return &fs.Error{Op: op, Kind: fs.BadHandle, Err: fmt.Errorf("unknown fid %d", num)}
}

// fid finds fid num and locks it, shared or exclusive; unlock undoes that.
func (cn *plan9Conn) fid(op string, num uint32, exclusive bool) (f *plan9Fid, unlock func(), err error) {
	cn.fmu.Lock()
	f = cn.fids[num]
	if f != nil && f.reserved {
		f = nil
	}
	cn.fmu.Unlock()
	if f == nil {
		return nil, nil, plan9UnknownFid(op, num)
	}
	if exclusive {
		f.mu.Lock()
		unlock = f.mu.Unlock
	} else {
		f.mu.RLock()
		unlock = f.mu.RUnlock
	}
	if f.clunked {
		unlock()
		return nil, nil, plan9UnknownFid(op, num)
	}
	return f, unlock, nil
}

// reserve takes the number num for a fid that a request will create. The
// fid stays invisible until publish; drop gives the number back.
func (cn *plan9Conn) reserve(op string, num uint32) (*plan9Fid, error) {
	cn.fmu.Lock()
	defer cn.fmu.Unlock()
	if num == plan9NoFid {
		return nil, &fs.Error{Op: op, Kind: fs.Invalid, Err: errors.New("NOFID cannot name a fid")}
	}
	if _, used := cn.fids[num]; used {
		return nil, &fs.Error{Op: op, Kind: fs.Invalid, Err: fmt.Errorf("fid %d is in use", num)}
	}
	if len(cn.fids) >= MaxFids9P {
		return nil, &fs.Error{Op: op, Kind: fs.Busy, Err: fmt.Errorf("too many fids: a connection may hold %d; clunk some", MaxFids9P)}
	}
	f := &plan9Fid{num: num, reserved: true}
	cn.fids[num] = f
	return f, nil
}

func (cn *plan9Conn) publish(f *plan9Fid) {
	cn.fmu.Lock()
	f.reserved = false
	cn.fmu.Unlock()
}

func (cn *plan9Conn) drop(f *plan9Fid) {
	cn.fmu.Lock()
	if cn.fids[f.num] == f {
		delete(cn.fids, f.num)
	}
	cn.fmu.Unlock()
}

// take removes fid num from the table for a clunk or remove.
func (cn *plan9Conn) take(op string, num uint32) (*plan9Fid, error) {
	cn.fmu.Lock()
	defer cn.fmu.Unlock()
	f := cn.fids[num]
	if f == nil || f.reserved {
		return nil, plan9UnknownFid(op, num)
	}
	delete(cn.fids, num)
	return f, nil
}

// Qids and stats.

func plan9Mode(m iofs.FileMode) uint32 {
	p := uint32(m.Perm())
	if m.IsDir() {
		p |= proto.DMDIR
	}
	if m&iofs.ModeAppend != 0 {
		p |= proto.DMAPPEND
	}
	if m&iofs.ModeExclusive != 0 {
		p |= proto.DMEXCL
	}
	if m&iofs.ModeTemporary != 0 {
		p |= proto.DMTMP
	}
	return p
}

// qid is the qid of the node at path (below a's root) described by info:
// its path is info.ID, or a hash of the node's path when the tree gives
// no ID.
func (a *plan9Attach) qid(path []string, info fs.Info) proto.Qid {
	id := info.ID
	if id == 0 {
		id = fs.PathID(plan9Join(a.prefix, path...))
	}
	return proto.Qid{Qtype: uint8(plan9Mode(info.Mode) >> 24), Vers: info.Version, Uid: id}
}

func (a *plan9Attach) stat(path []string, info fs.Info) proto.Stat {
	name := info.Name
	switch {
	case len(path) == 0:
		name = "/"
	case name == "":
		name = path[len(path)-1]
	}
	if len(name) > fs.MaxNameLen {
		name = strings.ToValidUTF8(name[:fs.MaxNameLen], "")
	}
	var length uint64
	if !info.IsDir() && !info.Stream && info.Size > 0 {
		length = uint64(info.Size)
	}
	var mtime uint32
	if t := info.ModTime; !t.IsZero() && t.Unix() > 0 {
		mtime = uint32(min(t.Unix(), int64(^uint32(0)-1)))
	}
	return proto.Stat{
		Qid:    a.qid(path, info),
		Mode:   plan9Mode(info.Mode),
		Atime:  mtime,
		Mtime:  mtime,
		Length: length,
		Name:   name,
		Uid:    a.user,
		Gid:    a.user,
		Muid:   a.user,
	}
}
