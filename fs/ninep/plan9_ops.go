package ninep

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/knusbaum/go9p/proto"

	"strata/fs"
)

// The 9P2000 requests, one method each. A method either answers through
// cn.respond and returns nil, or returns the error that becomes Rerror.

// 9P2000 open modes.
const (
	plan9OREAD   = 0
	plan9OWRITE  = 1
	plan9ORDWR   = 2
	plan9OEXEC   = 3
	plan9OTRUNC  = 0x10
	plan9ORCLOSE = 0x40
)

// handle runs a request. f is the fid that prepare reserved (Tattach,
// Twalk) or took out of the table (Tclunk, Tremove).
func (cn *plan9Conn) handle(req *plan9Req, fc proto.FCall, f *plan9Fid) error {
	switch m := fc.(type) {
	case *proto.TAuth:
		return errPlan9AuthNotRequired
	case *proto.TAttach:
		return cn.attach(req, m, f)
	case *proto.TWalk:
		return cn.walk(req, m, f)
	case *proto.TOpen:
		return cn.open(req, m)
	case *proto.TCreate:
		return cn.create(req, m)
	case *proto.TRead:
		return cn.read(req, m)
	case *proto.TWrite:
		return cn.write(req, m)
	case *proto.TClunk:
		return cn.clunk(req, f)
	case *proto.TRemove:
		return cn.remove(req, f)
	case *proto.TStat:
		return cn.stat(req, m)
	case *proto.TWstat:
		return cn.wstat(req, m)
	}
	return fmt.Errorf("unexpected %s", plan9FcallName(fc))
}

func plan9Header(t uint8, tag uint16) proto.Header { return proto.Header{Type: t, Tag: tag} }

func (cn *plan9Conn) iounit() uint32 { return cn.msize - plan9IOHdrSize }

func (cn *plan9Conn) attach(req *plan9Req, m *proto.TAttach, nf *plan9Fid) error {
	attached := false
	defer func() {
		if !attached {
			cn.drop(nf)
		}
	}()
	if m.Afid != plan9NoFid {
		return errPlan9AuthNotRequired
	}
	user := m.Uname
	if user == "" {
		user = plan9DefaultUser
	}
	if len(user) > plan9MaxUname || strings.ContainsRune(user, 0) {
		return &fs.Error{Op: "attach", Kind: fs.Invalid, Err: errors.New("user name too long or with NUL")}
	}
	var names []string
	for _, n := range strings.Split(m.Aname, "/") {
		if n == "" || n == "." {
			continue
		}
		if err := fs.CheckName("attach", n); err != nil {
			return err
		}
		names = append(names, n)
	}
	root, err := cn.srv.attach(req.ctx, cn.nc)
	if err != nil {
		return err
	}
	prefix := strings.Join(names, "/")
	if prefix != "" {
		n, err := fs.Walk(req.ctx, root, prefix)
		if err != nil {
			return err
		}
		d, ok := n.(fs.Dir)
		if !ok {
			return &fs.Error{Op: "attach", Path: prefix, Kind: fs.NotDir}
		}
		root = d
	}
	info, err := root.Stat(req.ctx)
	if err != nil {
		return fs.WithPath(err, "attach", prefix)
	}
	att := &plan9Attach{root: root, prefix: prefix, user: user}
	frame := (&proto.RAttach{Header: plan9Header(proto.Rattach, req.tag), Qid: att.qid(nil, info)}).Compose()
	attached = cn.respond(req, frame, func() {
		nf.att, nf.node = att, root
		cn.publish(nf)
	})
	return nil
}

func (cn *plan9Conn) walk(req *plan9Req, m *proto.TWalk, nf *plan9Fid) error {
	same := m.Newfid == m.Fid
	published := false
	defer func() {
		if nf != nil && !published {
			cn.drop(nf)
		}
	}()
	f, unlock, err := cn.fid("walk", m.Fid, same)
	if err != nil {
		return err
	}
	defer unlock()
	if f.open {
		return &fs.Error{Op: "walk", Path: f.pathString(), Kind: fs.Invalid, Err: errors.New("fid is open")}
	}
	node, path, up := f.node, slices.Clone(f.path), slices.Clone(f.up)
	qids := make([]proto.Qid, 0, len(m.Wname))
	var werr error
	for _, name := range m.Wname {
		dir, ok := node.(fs.Dir)
		if !ok {
			werr = &fs.Error{Op: "walk", Path: plan9Join(f.att.prefix, path...), Kind: fs.NotDir}
			break
		}
		if name == ".." {
			if len(path) > 0 { // never above the root
				node, path, up = up[len(up)-1], path[:len(path)-1], up[:len(up)-1]
			}
		} else {
			if werr = fs.CheckName("walk", name); werr != nil {
				break
			}
			child, err := dir.Lookup(req.ctx, name)
			if err != nil {
				werr = fs.WithPath(err, "walk", plan9Join(f.att.prefix, append(path, name)...))
				break
			}
			node, path, up = child, append(path, name), append(up, dir)
		}
		info, err := node.Stat(req.ctx)
		if err != nil {
			werr = fs.WithPath(err, "walk", plan9Join(f.att.prefix, path...))
			break
		}
		qids = append(qids, f.att.qid(path, info))
	}
	if werr != nil && len(qids) == 0 {
		return werr
	}
	frame := (&proto.RWalk{Header: plan9Header(proto.Rwalk, req.tag), Nwqid: uint16(len(qids)), Wqid: qids}).Compose()
	if werr != nil {
		// A partial walk: the qids walked, and newfid is not affected;
		// its number is free again before the client hears of it.
		cn.respond(req, frame, func() {
			if nf != nil {
				cn.drop(nf)
			}
		})
		return nil
	}
	published = cn.respond(req, frame, func() {
		if same {
			f.node, f.path, f.up = node, path, up
			return
		}
		nf.att, nf.node, nf.path, nf.up = f.att, node, path, up
		cn.publish(nf)
	})
	return nil
}

// plan9Flag turns a 9P open mode into fs flags.
func plan9Flag(op, path string, mode uint8) (fs.Flag, error) {
	var flag fs.Flag
	switch mode & 3 {
	case plan9OREAD, plan9OEXEC:
		flag = fs.ReadOnly
	case plan9OWRITE:
		flag = fs.WriteOnly
	case plan9ORDWR:
		flag = fs.ReadWrite
	}
	if mode&plan9OTRUNC != 0 {
		if !flag.Writable() {
			return 0, &fs.Error{Op: op, Path: path, Kind: fs.Invalid, Err: errors.New("OTRUNC needs OWRITE or ORDWR")}
		}
		flag |= fs.Truncate
	}
	return flag, nil
}

func (cn *plan9Conn) open(req *plan9Req, m *proto.TOpen) error {
	f, unlock, err := cn.fid("open", m.Fid, true)
	if err != nil {
		return err
	}
	defer unlock()
	p := f.pathString()
	if f.open {
		return &fs.Error{Op: "open", Path: p, Kind: fs.Invalid, Err: errors.New("fid is already open")}
	}
	mode := uint8(m.Mode)
	flag, err := plan9Flag("open", p, mode)
	if err != nil {
		return err
	}
	rclose := mode&plan9ORCLOSE != 0
	if rclose && len(f.path) == 0 {
		return &fs.Error{Op: "open", Path: p, Kind: fs.Permission, Err: errors.New("ORCLOSE of the root")}
	}
	info, err := f.node.Stat(req.ctx)
	if err != nil {
		return fs.WithPath(err, "open", p)
	}
	var h fs.Handle
	isDir := false
	switch n := f.node.(type) {
	case fs.Dir:
		if flag != fs.ReadOnly {
			return &fs.Error{Op: "open", Path: p, Kind: fs.IsDir}
		}
		isDir = true
	case fs.File:
		if info.Mode&iofs.ModeAppend != 0 {
			flag |= fs.Append
		}
		if err := cn.openFiles.acquire("open", p); err != nil {
			return err
		}
		if h, err = n.Open(req.ctx, flag); err != nil {
			cn.openFiles.release()
			return fs.WithPath(err, "open", p)
		}
		h = cn.openFiles.hold(h)
		if flag.Has(fs.Truncate) {
			if after, err := n.Stat(req.ctx); err == nil {
				info = after
			}
		}
	default:
		return &fs.Error{Op: "open", Path: p, Kind: fs.Unsupported, Err: fmt.Errorf("node %T is neither a file nor a directory", n)}
	}
	frame := (&proto.ROpen{Header: plan9Header(proto.Ropen, req.tag), Qid: f.att.qid(f.path, info), Iounit: cn.iounit()}).Compose()
	sent := cn.respond(req, frame, func() {
		f.open, f.isDir, f.flag, f.h, f.rclose = true, isDir, flag, h, rclose
		f.dirents, f.dirNext, f.dirOff = nil, 0, 0
	})
	if !sent && h != nil {
		h.Close(context.WithoutCancel(req.ctx))
	}
	return nil
}

func (cn *plan9Conn) create(req *plan9Req, m *proto.TCreate) error {
	f, unlock, err := cn.fid("create", m.Fid, true)
	if err != nil {
		return err
	}
	defer unlock()
	p := f.childPath(m.Name)
	if f.open {
		return &fs.Error{Op: "create", Path: p, Kind: fs.Invalid, Err: errors.New("fid is already open")}
	}
	dir, ok := f.node.(fs.Dir)
	if !ok {
		return &fs.Error{Op: "create", Path: f.pathString(), Kind: fs.NotDir}
	}
	if err := fs.CheckName("create", m.Name); err != nil {
		return err
	}
	mode := uint8(m.Mode)
	flag, err := plan9Flag("create", p, mode)
	if err != nil {
		return err
	}
	flag &^= fs.Truncate // a new file is empty
	pinfo, err := dir.Stat(req.ctx)
	if err != nil {
		return fs.WithPath(err, "create", f.pathString())
	}
	parentPerm := uint32(pinfo.Mode.Perm())
	var node fs.Node
	var h fs.Handle
	isDir := m.Perm&proto.DMDIR != 0
	if isDir {
		if flag != fs.ReadOnly {
			return &fs.Error{Op: "create", Path: p, Kind: fs.IsDir, Err: errors.New("a directory is created open for reading only")}
		}
		perm := m.Perm & (^uint32(0o777) | parentPerm&0o777) & 0o777
		d, err := dir.Mkdir(req.ctx, m.Name, iofs.FileMode(perm))
		if err != nil {
			return fs.WithPath(err, "create", p)
		}
		node = d
	} else {
		perm := m.Perm & (^uint32(0o666) | parentPerm&0o666) & 0o777
		flag |= fs.CreateNew | fs.Excl
		if m.Perm&proto.DMAPPEND != 0 {
			flag |= fs.Append
		}
		if err := cn.openFiles.acquire("create", p); err != nil {
			return err
		}
		file, fh, err := dir.Create(req.ctx, m.Name, flag, iofs.FileMode(perm))
		if err != nil {
			cn.openFiles.release()
			return fs.WithPath(err, "create", p)
		}
		node, h = file, cn.openFiles.hold(fh)
	}
	newPath := append(slices.Clone(f.path), m.Name)
	info, err := node.Stat(req.ctx)
	if err != nil {
		if h != nil {
			h.Close(context.WithoutCancel(req.ctx))
		}
		return fs.WithPath(err, "create", p)
	}
	frame := (&proto.RCreate{Header: plan9Header(proto.Rcreate, req.tag), Qid: f.att.qid(newPath, info), Iounit: cn.iounit()}).Compose()
	sent := cn.respond(req, frame, func() {
		f.node, f.path, f.up = node, newPath, append(slices.Clone(f.up), dir)
		f.open, f.isDir, f.flag, f.h, f.rclose = true, isDir, flag, h, mode&plan9ORCLOSE != 0
		f.dirents, f.dirNext, f.dirOff = nil, 0, 0
	})
	if !sent && h != nil {
		h.Close(context.WithoutCancel(req.ctx))
	}
	return nil
}

// Buffers for Rread, each big enough for the largest 9P2000 message.
var plan9Bufs = sync.Pool{New: func() any { b := make([]byte, MaxMsize9P); return &b }}

func plan9RreadFrame(buf []byte, tag uint16, n int) []byte {
	size := plan9RreadHdr + n
	binary.LittleEndian.PutUint32(buf[0:], uint32(size))
	buf[4] = proto.Rread
	binary.LittleEndian.PutUint16(buf[5:], tag)
	binary.LittleEndian.PutUint32(buf[7:], uint32(n))
	return buf[:size]
}

func (cn *plan9Conn) read(req *plan9Req, m *proto.TRead) error {
	f, unlock, err := cn.fid("read", m.Fid, false)
	if err != nil {
		return err
	}
	defer unlock()
	if !f.open || !f.flag.Readable() {
		return &fs.Error{Op: "read", Path: f.pathString(), Kind: fs.BadHandle, Err: errors.New("fid is not open for reading")}
	}
	count := int(min(m.Count, cn.msize-plan9RreadHdr))
	bp := plan9Bufs.Get().(*[]byte)
	defer plan9Bufs.Put(bp)
	buf := *bp
	if f.isDir {
		return cn.readDir(req, f, m.Offset, buf, count)
	}
	if m.Offset > math.MaxInt64 {
		return &fs.Error{Op: "read", Path: f.pathString(), Kind: fs.Invalid, Err: fmt.Errorf("offset %d", m.Offset)}
	}
	n, err := f.h.ReadAt(req.ctx, buf[plan9RreadHdr:plan9RreadHdr+count], int64(m.Offset))
	if err != nil && err != io.EOF && n == 0 {
		return fs.WithPath(err, "read", f.pathString())
	}
	n = max(0, min(n, count))
	cn.respond(req, plan9RreadFrame(buf, req.tag, n), nil)
	return nil
}

// readDir answers a read of a directory: whole stat entries, as many as
// fit in count bytes, packed after the Rread header in buf. Offset 0 lists
// the directory afresh; any other offset must be where the previous read
// ended. The position moves only if the reply is sent.
func (cn *plan9Conn) readDir(req *plan9Req, f *plan9Fid, off uint64, buf []byte, count int) error {
	f.dmu.Lock()
	defer f.dmu.Unlock()
	entries, next := f.dirents, f.dirNext
	switch {
	case off == 0:
		list, err := f.node.(fs.Dir).ReadDir(req.ctx)
		if err != nil {
			return fs.WithPath(err, "read", f.pathString())
		}
		entries, next = list, 0
	case off != f.dirOff:
		return &fs.Error{Op: "read", Path: f.pathString(), Kind: fs.Invalid,
			Err: fmt.Errorf("directory read at offset %d; the next offset is %d (or 0 to start again)", off, f.dirOff)}
	}
	out := buf[plan9RreadHdr : plan9RreadHdr+count]
	n := 0
	for next < len(entries) {
		e := entries[next]
		st := f.att.stat(append(slices.Clip(f.path), e.Name), e)
		b := st.Compose()
		if n+len(b) > len(out) {
			if n == 0 {
				return &fs.Error{Op: "read", Path: f.pathString(), Kind: fs.Invalid,
					Err: fmt.Errorf("count %d is too small for the next directory entry (%d bytes)", count, len(b))}
			}
			break
		}
		n += copy(out[n:], b)
		next++
	}
	cn.respond(req, plan9RreadFrame(buf, req.tag, n), func() {
		f.dirents, f.dirNext, f.dirOff = entries, next, off+uint64(n)
	})
	return nil
}

func (cn *plan9Conn) write(req *plan9Req, m *proto.TWrite) error {
	f, unlock, err := cn.fid("write", m.Fid, false)
	if err != nil {
		return err
	}
	defer unlock()
	p := f.pathString()
	switch {
	case !f.open || !f.flag.Writable():
		return &fs.Error{Op: "write", Path: p, Kind: fs.BadHandle, Err: errors.New("fid is not open for writing")}
	case f.isDir:
		return &fs.Error{Op: "write", Path: p, Kind: fs.IsDir}
	case m.Offset > math.MaxInt64:
		return &fs.Error{Op: "write", Path: p, Kind: fs.Invalid, Err: fmt.Errorf("offset %d", m.Offset)}
	}
	n, err := f.h.WriteAt(req.ctx, m.Data, int64(m.Offset))
	if err != nil && n <= 0 {
		return fs.WithPath(err, "write", p)
	}
	n = max(0, min(n, len(m.Data)))
	cn.respond(req, (&proto.RWrite{Header: plan9Header(proto.Rwrite, req.tag), Count: uint32(n)}).Compose(), nil)
	return nil
}

func (cn *plan9Conn) clunk(req *plan9Req, f *plan9Fid) error {
	f.mu.Lock()
	err := f.release(context.WithoutCancel(req.ctx), false)
	f.mu.Unlock()
	if err != nil {
		return err
	}
	cn.respond(req, (&proto.RClunk{Header: plan9Header(proto.Rclunk, req.tag)}).Compose(), nil)
	return nil
}

// remove removes the file and clunks the fid, even when the removal fails.
func (cn *plan9Conn) remove(req *plan9Req, f *plan9Fid) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rclose = false
	p := f.pathString()
	// Close first: a tree need not support removing an open file.
	cerr := f.release(context.WithoutCancel(req.ctx), false)
	if len(f.path) == 0 {
		return &fs.Error{Op: "remove", Path: p, Kind: fs.Permission, Err: errors.New("the root cannot be removed")}
	}
	if err := f.up[len(f.up)-1].Remove(req.ctx, f.path[len(f.path)-1]); err != nil {
		return fs.WithPath(err, "remove", p)
	}
	if cerr != nil {
		cn.log.Debug("9P2000 close before remove failed", "path", p, "err", cerr)
	}
	cn.respond(req, (&proto.RRemove{Header: plan9Header(proto.Rremove, req.tag)}).Compose(), nil)
	return nil
}

func (cn *plan9Conn) stat(req *plan9Req, m *proto.TStat) error {
	f, unlock, err := cn.fid("stat", m.Fid, false)
	if err != nil {
		return err
	}
	defer unlock()
	info, err := f.node.Stat(req.ctx)
	if err != nil {
		return fs.WithPath(err, "stat", f.pathString())
	}
	frame := (&proto.RStat{Header: plan9Header(proto.Rstat, req.tag), Stat: f.att.stat(f.path, info)}).Compose()
	cn.respond(req, frame, nil)
	return nil
}

// "Don't touch" values of a Twstat.
const (
	plan9NoChange16 = ^uint16(0)
	plan9NoChange32 = ^uint32(0)
	plan9NoChange64 = ^uint64(0)
)

func plan9NoChanges(st *proto.Stat) bool {
	return st.Type == plan9NoChange16 && st.Dev == plan9NoChange32 &&
		st.Qid == (proto.Qid{Qtype: 0xff, Vers: plan9NoChange32, Uid: plan9NoChange64}) &&
		st.Mode == plan9NoChange32 && st.Atime == plan9NoChange32 && st.Mtime == plan9NoChange32 &&
		st.Length == plan9NoChange64 && st.Name == "" && st.Uid == "" && st.Gid == "" && st.Muid == ""
}

// wstat applies a Twstat. Everything is checked before anything changes;
// the attribute changes go to the tree in one SetAttr, and a rename (within
// the directory, which is all 9P2000 can say) comes last. Type, dev, qid,
// atime and muid are ignored. A wstat that changes nothing syncs the file.
func (cn *plan9Conn) wstat(req *plan9Req, m *proto.TWstat) error {
	f, unlock, err := cn.fid("wstat", m.Fid, true)
	if err != nil {
		return err
	}
	defer unlock()
	p := f.pathString()
	st := &m.Stat
	if plan9NoChanges(st) {
		if f.h != nil {
			if err := f.h.Sync(req.ctx); err != nil {
				return fs.WithPath(err, "sync", p)
			}
		}
		cn.respond(req, (&proto.RWstat{Header: plan9Header(proto.Rwstat, req.tag)}).Compose(), nil)
		return nil
	}
	info, err := f.node.Stat(req.ctx)
	if err != nil {
		return fs.WithPath(err, "wstat", p)
	}
	bad := func(kind fs.Kind, why string) error {
		return &fs.Error{Op: "wstat", Path: p, Kind: kind, Err: errors.New(why)}
	}
	if st.Uid != "" && st.Uid != f.att.user {
		return bad(fs.Permission, "the owner cannot be changed")
	}
	if st.Gid != "" && st.Gid != f.att.user {
		return bad(fs.Permission, "the group cannot be changed")
	}
	var a fs.Attr
	changes := false
	if st.Mode != plan9NoChange32 {
		cur := plan9Mode(info.Mode)
		if (st.Mode^cur)&proto.DMDIR != 0 {
			return bad(fs.Invalid, "the directory bit cannot be changed")
		}
		if (st.Mode^cur)&(proto.DMAPPEND|proto.DMEXCL|proto.DMTMP) != 0 {
			return bad(fs.Unsupported, "the append, exclusive and temporary bits cannot be changed")
		}
		if perm := iofs.FileMode(st.Mode & 0o777); perm != info.Mode.Perm() {
			a.Mode, changes = &perm, true
		}
	}
	if st.Length != plan9NoChange64 {
		switch {
		case info.IsDir():
			if st.Length != 0 {
				return bad(fs.IsDir, "a directory's length cannot be changed")
			}
		case st.Length > math.MaxInt64:
			return bad(fs.Invalid, fmt.Sprintf("length %d", st.Length))
		case int64(st.Length) != info.Size || info.Stream:
			size := int64(st.Length)
			a.Size, changes = &size, true
		}
	}
	if st.Mtime != plan9NoChange32 && (info.ModTime.IsZero() || int64(st.Mtime) != info.ModTime.Unix()) {
		t := time.Unix(int64(st.Mtime), 0)
		a.ModTime, changes = &t, true
	}
	var parent fs.Dir
	oldName, newName := "", ""
	if len(f.path) > 0 {
		oldName = f.path[len(f.path)-1]
	}
	if st.Name != "" && st.Name != oldName && !(len(f.path) == 0 && st.Name == "/") {
		if len(f.path) == 0 {
			return bad(fs.Permission, "the root cannot be renamed")
		}
		if err := fs.CheckName("wstat", st.Name); err != nil {
			return err
		}
		parent, newName = f.up[len(f.up)-1], st.Name
		switch _, err := parent.Lookup(req.ctx, newName); {
		case err == nil:
			return &fs.Error{Op: "wstat", Path: f.childPathOfParent(newName), Kind: fs.Exist}
		case fs.KindOf(err) != fs.NotExist:
			return fs.WithPath(err, "wstat", f.childPathOfParent(newName))
		}
	}
	if changes {
		if err := f.node.SetAttr(req.ctx, a); err != nil {
			return fs.WithPath(err, "wstat", p)
		}
	}
	if parent != nil {
		if err := parent.Rename(req.ctx, oldName, parent, newName); err != nil {
			return fs.WithPath(err, "wstat", p)
		}
		path := slices.Clone(f.path)
		path[len(path)-1] = newName
		f.path = path
	}
	cn.respond(req, (&proto.RWstat{Header: plan9Header(proto.Rwstat, req.tag)}).Compose(), nil)
	return nil
}

// childPathOfParent is the path of name beside f.
func (f *plan9Fid) childPathOfParent(name string) string {
	return plan9Join(f.att.prefix, append(slices.Clone(f.path[:len(f.path)-1]), name)...)
}
