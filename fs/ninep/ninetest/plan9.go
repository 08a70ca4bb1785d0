package ninetest

import (
	"bytes"
	"io"
	iofs "io/fs"
	"strings"

	"9fans.net/go/plan9"
	"9fans.net/go/plan9/client"
)

// Plan9Options tunes Plan9Client. Every hook is optional; an error one
// returns is reported and the check goes on.
type Plan9Options struct {
	// Uname is the user to attach as ("glenda" if empty). The server
	// must name it as the uid, gid and muid of every entry it lists.
	Uname string
	// ListsMode says that a directory listing carries each file's mode;
	// otherwise the listing is checked only for each entry's kind, and
	// Stat for the mode.
	ListsMode bool

	// AfterCreate is called when the client has created the file name
	// (slash-separated, from the root), written data to it and clunked
	// it: the write has been acknowledged.
	AfterCreate func(name string, data []byte) error
	// AfterRename is called when the client has renamed oldName, which
	// holds data, to newName.
	AfterRename func(oldName, newName string, data []byte) error
	// AfterChmod is called when the client has set the permission bits
	// of name to perm.
	AfterChmod func(name string, perm iofs.FileMode) error
	// AfterRemove is called when the client has removed each of names.
	AfterRemove func(names []string) error
}

// Plan9Client checks the 9P2000 server at addr (host:port, TCP) with the
// 9fans.net client. The tree served must hold just a 13-byte file
// hello.txt and a directory sub, with no newdir in it. The client
// creates new.txt (320 kB, many Twrites, mode 0640), reads it back, lists
// the root, stats, renames new.txt to renamed.txt and sets its mode to
// 0600, makes sub/newdir/leaf, removes what it made, and checks each
// answer on the way. It leaves the tree as it found it.
func Plan9Client(addr string, opts Plan9Options) error {
	r := &report{check: "Plan9Client"}
	plan9Client(r, addr, opts)
	return r.err()
}

func plan9Client(r *report, addr string, opts Plan9Options) {
	uname := opts.Uname
	if uname == "" {
		uname = "glenda"
	}
	c, err := client.Dial("tcp", addr)
	if err != nil {
		r.errorf("dial %s: %v", addr, err)
		return
	}
	defer c.Close()
	fsys, err := c.Attach(nil, uname, "")
	if err != nil {
		r.errorf("attach as %s: %v", uname, err)
		return
	}

	// Create and write: many Twrites; the clunk acknowledges them.
	const perm = 0o640
	data := bytes.Repeat([]byte("0123456789abcdef"), 20_000)
	fid, err := fsys.Create("new.txt", plan9.ORDWR, perm)
	if err != nil {
		r.errorf("create new.txt: %v", err)
		return
	}
	if n, err := fid.Write(data); err != nil || n != len(data) {
		fid.Close()
		r.errorf("write new.txt: wrote %d of %d bytes: %v", n, len(data), err)
		return
	}
	if err := fid.Close(); err != nil {
		r.errorf("clunk new.txt: %v", err)
		return
	}
	if opts.AfterCreate != nil {
		r.hook("create new.txt", opts.AfterCreate("new.txt", data))
	}

	// Read back.
	fid, err = fsys.Open("new.txt", plan9.OREAD)
	if err != nil {
		r.errorf("open new.txt: %v", err)
		return
	}
	back, err := io.ReadAll(fid)
	fid.Close()
	if err != nil || !bytes.Equal(back, data) {
		r.errorf("read back new.txt: %s (error %v)", differ(back, data), err)
		return
	}

	// List: names, owners, kinds, sizes, and modes where listed.
	d, err := fsys.Open("/", plan9.OREAD)
	if err != nil {
		r.errorf("open /: %v", err)
		return
	}
	dirs, err := d.Dirreadall()
	d.Close()
	if err != nil {
		r.errorf("read /: %v", err)
		return
	}
	var names []string
	for _, e := range dirs {
		names = append(names, e.Name)
		if e.Uid != uname || e.Gid != uname || e.Muid != uname {
			r.errorf("list /: %s: uid/gid/muid %q/%q/%q, want %s", e.Name, e.Uid, e.Gid, e.Muid, uname)
		}
		switch e.Name {
		case "sub":
			if e.Mode&plan9.DMDIR == 0 || e.Qid.Type&plan9.QTDIR == 0 {
				r.errorf("list /: sub: mode %v qid %v, want a directory", e.Mode, e.Qid)
			}
		case "new.txt":
			if e.Length != uint64(len(data)) {
				r.errorf("list /: new.txt: length %d, want %d", e.Length, len(data))
			}
			if opts.ListsMode && e.Mode != perm {
				r.errorf("list /: new.txt: mode %v, want %v", e.Mode, plan9.Perm(perm))
			} else if e.Mode&plan9.DMDIR != 0 || e.Qid.Type&plan9.QTDIR != 0 {
				r.errorf("list /: new.txt: mode %v qid %v, want a file", e.Mode, e.Qid)
			}
		case "hello.txt":
			if e.Length != 13 {
				r.errorf("list /: hello.txt: length %d, want 13", e.Length)
			}
		}
	}
	if got := strings.Join(names, ","); got != "hello.txt,new.txt,sub" {
		r.errorf("list /: got %s, want hello.txt,new.txt,sub", got)
	}

	st, err := fsys.Stat("new.txt")
	if err != nil {
		r.errorf("stat new.txt: %v", err)
		return
	}
	if st.Name != "new.txt" || st.Length != uint64(len(data)) || st.Qid.Type != plan9.QTFILE || st.Mode != perm {
		r.errorf("stat new.txt: got %v, want a file new.txt of %d bytes, mode %v", st, len(data), plan9.Perm(perm))
	}
	if st, err := fsys.Stat("/"); err != nil || st.Name != "/" || st.Qid.Type != plan9.QTDIR {
		r.errorf("stat /: got %v (error %v), want a directory named /", st, err)
	}

	// Rename (Twstat of the name only).
	var nd plan9.Dir
	nd.Null()
	nd.Name = "renamed.txt"
	if err := fsys.Wstat("new.txt", &nd); err != nil {
		r.errorf("rename new.txt to renamed.txt: %v", err)
		return
	}
	if _, err := fsys.Stat("new.txt"); err == nil || !strings.Contains(err.Error(), "does not exist") {
		r.errorf("stat new.txt after the rename: got error %v, want does not exist", err)
	}
	if st, err := fsys.Stat("renamed.txt"); err != nil || st.Length != uint64(len(data)) || st.Mode != perm {
		r.errorf("stat renamed.txt: got %v (error %v), want %d bytes, mode %v", st, err, len(data), plan9.Perm(perm))
	}
	if opts.AfterRename != nil {
		r.hook("rename new.txt to renamed.txt", opts.AfterRename("new.txt", "renamed.txt", data))
	}

	// Mode (Twstat of the mode only).
	nd.Null()
	nd.Mode = 0o600
	if err := fsys.Wstat("renamed.txt", &nd); err != nil {
		r.errorf("chmod renamed.txt: %v", err)
		return
	}
	if st, err := fsys.Stat("renamed.txt"); err != nil || st.Mode != 0o600 {
		r.errorf("stat renamed.txt after chmod: got %v (error %v), want mode %v", st, err, plan9.Perm(0o600))
	}
	if opts.AfterChmod != nil {
		r.hook("chmod renamed.txt", opts.AfterChmod("renamed.txt", 0o600))
	}

	// A directory and a file in it.
	dfid, err := fsys.Create("sub/newdir", plan9.OREAD, plan9.DMDIR|0o755)
	if err != nil {
		r.errorf("create sub/newdir: %v", err)
		return
	}
	if err := dfid.Close(); err != nil {
		r.errorf("clunk sub/newdir: %v", err)
	}
	f, err := fsys.Create("sub/newdir/leaf", plan9.OWRITE, 0o600)
	if err != nil {
		r.errorf("create sub/newdir/leaf: %v", err)
		return
	}
	if _, err := f.Write([]byte("leaf")); err != nil {
		f.Close()
		r.errorf("write sub/newdir/leaf: %v", err)
		return
	}
	if err := f.Close(); err != nil {
		r.errorf("clunk sub/newdir/leaf: %v", err)
		return
	}
	if opts.AfterCreate != nil {
		r.hook("create sub/newdir/leaf", opts.AfterCreate("sub/newdir/leaf", []byte("leaf")))
	}

	// Removes.
	if err := fsys.Remove("sub/newdir"); err == nil || !strings.Contains(err.Error(), "not empty") {
		r.errorf("remove sub/newdir, not empty: got error %v, want not empty", err)
	}
	removed := []string{"sub/newdir/leaf", "sub/newdir", "renamed.txt"}
	for _, p := range removed {
		if err := fsys.Remove(p); err != nil {
			r.errorf("remove %s: %v", p, err)
			return
		}
	}
	if err := fsys.Remove("renamed.txt"); err == nil || !strings.Contains(err.Error(), "does not exist") {
		r.errorf("remove renamed.txt again: got error %v, want does not exist", err)
	}
	if opts.AfterRemove != nil {
		r.hook("remove "+strings.Join(removed, ", "), opts.AfterRemove(removed))
	}
}
