package fstest

import (
	"bytes"
	"errors"
	"fmt"
	iofs "io/fs"
	"strings"
	"sync"

	"strata/fs"
)

// writer runs the write suite in the scratch directory d (path p).
type writer struct {
	*checker
	d fs.Dir
	p string
}

func (w *writer) run() {
	w.createAndRead()
	w.offsets()
	w.truncate()
	w.rewrite()
	w.appends()
	w.dirs()
	w.renames()
	w.removes()
	w.handles()
	w.badNames()
	w.concurrent()
}

// put creates name in d with data and closes it.
func (w *writer) put(d fs.Dir, dp, name string, data []byte) bool {
	_, h, err := d.Create(w.ctx, name, fs.ReadWrite|fs.Truncate, 0o644)
	if err != nil {
		w.errorf("create %s: %v", fs.Join(dp, name), err)
		return false
	}
	if len(data) > 0 {
		if n, err := writeFull(w, h, data, 0); err != nil || n != len(data) {
			w.errorf("write %s: wrote %d of %d bytes: %v", fs.Join(dp, name), n, len(data), err)
			h.Close(w.ctx)
			return false
		}
	}
	if err := h.Close(w.ctx); err != nil {
		w.errorf("close %s: %v", fs.Join(dp, name), err)
		return false
	}
	return true
}

func writeFull(w *writer, h fs.Handle, data []byte, off int64) (int, error) {
	done := 0
	for done < len(data) {
		n, err := h.WriteAt(w.ctx, data[done:], off+int64(done))
		done += n
		if err != nil {
			return done, err
		}
		if n == 0 {
			return done, errors.New("wrote 0 bytes")
		}
	}
	return done, nil
}

// get reads name in d whole, through a fresh lookup and open.
func (w *writer) get(d fs.Dir, dp, name string) ([]byte, bool) {
	n, err := d.Lookup(w.ctx, name)
	if err != nil {
		w.errorf("lookup %s: %v", fs.Join(dp, name), err)
		return nil, false
	}
	f, ok := n.(fs.File)
	if !ok {
		w.errorf("lookup %s: got %T, want a File", fs.Join(dp, name), n)
		return nil, false
	}
	h, err := f.Open(w.ctx, fs.ReadOnly)
	if err != nil {
		w.errorf("open %s: %v", fs.Join(dp, name), err)
		return nil, false
	}
	defer h.Close(w.ctx)
	b, err := readAll(w.ctx, h, 32<<10)
	if err != nil {
		w.errorf("read %s: %v", fs.Join(dp, name), err)
		return nil, false
	}
	return b, true
}

// expect checks that name in d holds want and that Stat agrees.
func (w *writer) expect(what string, d fs.Dir, dp, name string, want []byte) {
	got, ok := w.get(d, dp, name)
	if !ok {
		return
	}
	if !bytes.Equal(got, want) {
		w.errorf("%s: %s holds %s, want %s", what, fs.Join(dp, name), brief(got), brief(want))
	}
	if n, err := d.Lookup(w.ctx, name); err == nil {
		if info, err := n.Stat(w.ctx); err != nil {
			w.errorf("stat %s: %v", fs.Join(dp, name), err)
		} else if info.Size != int64(len(want)) {
			w.errorf("%s: stat %s says size %d, want %d", what, fs.Join(dp, name), info.Size, len(want))
		}
	}
}

func brief(b []byte) string {
	if len(b) <= 40 {
		return fmt.Sprintf("%q", b)
	}
	return fmt.Sprintf("%q... (%d bytes)", b[:40], len(b))
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7+i/251)
	}
	return b
}

func (w *writer) createAndRead() {
	data := pattern(200_003, 'a')
	if !w.put(w.d, w.p, "big", data) {
		return
	}
	w.expect("create and write", w.d, w.p, "big", data)
	if w.put(w.d, w.p, "empty", nil) {
		w.expect("create empty", w.d, w.p, "empty", nil)
	}
	_, _, err := w.d.Create(w.ctx, "big", fs.ReadWrite|fs.Excl, 0o644)
	w.wantKind("create "+w.p+"/big with O_EXCL over an existing file", err, fs.Exist)
	n, err := w.d.Lookup(w.ctx, "big")
	if err == nil {
		if _, isDir := n.(fs.Dir); isDir {
			w.errorf("lookup %s/big: a file looks up as a Dir", w.p)
		}
		if info, err := n.Stat(w.ctx); err == nil && info.Name != "big" {
			w.errorf("stat %s/big: name %q", w.p, info.Name)
		}
	}
	list, err := w.d.ReadDir(w.ctx)
	if err != nil {
		w.errorf("readdir %s: %v", w.p, err)
	} else if got := strings.Join(names(list), ","); got != "big,empty" {
		w.errorf("readdir %s: got %s, want big,empty", w.p, got)
	}
	w.remove(w.d, w.p, "big")
	w.remove(w.d, w.p, "empty")
}

func (w *writer) remove(d fs.Dir, dp, name string) {
	if err := d.Remove(w.ctx, name); err != nil {
		w.errorf("remove %s: %v", fs.Join(dp, name), err)
	}
}

func (w *writer) offsets() {
	_, h, err := w.d.Create(w.ctx, "sparse", fs.ReadWrite, 0o644)
	if err != nil {
		w.errorf("create %s/sparse: %v", w.p, err)
		return
	}
	writeFull(w, h, []byte("tail"), 10_000)
	writeFull(w, h, []byte("head"), 0)
	writeFull(w, h, []byte("MID"), 5_000)
	back := make([]byte, 4)
	if n, err := readFull(w.ctx, h, back, 10_000); err != nil || string(back[:n]) != "tail" {
		w.errorf("read %s/sparse through the writing handle: got %q, %v; want \"tail\"", w.p, back[:n], err)
	}
	if err := h.Close(w.ctx); err != nil {
		w.errorf("close %s/sparse: %v", w.p, err)
	}
	want := make([]byte, 10_004)
	copy(want, "head")
	copy(want[5_000:], "MID")
	copy(want[10_000:], "tail")
	w.expect("writes at offsets", w.d, w.p, "sparse", want)
	w.remove(w.d, w.p, "sparse")
}

func (w *writer) setSize(name string, size int64) {
	n, err := w.d.Lookup(w.ctx, name)
	if err != nil {
		w.errorf("lookup %s/%s: %v", w.p, name, err)
		return
	}
	if err := n.SetAttr(w.ctx, fs.Attr{Size: &size}); err != nil {
		w.errorf("truncate %s/%s to %d: %v", w.p, name, size, err)
	}
}

func (w *writer) truncate() {
	data := pattern(10_000, 'k')
	if !w.put(w.d, w.p, "trunc", data) {
		return
	}
	w.setSize("trunc", 3_000)
	w.expect("truncate to 3000", w.d, w.p, "trunc", data[:3_000])
	w.setSize("trunc", 5_000)
	w.expect("extend to 5000", w.d, w.p, "trunc", append(append([]byte{}, data[:3_000]...), make([]byte, 2_000)...))
	w.setSize("trunc", 0)
	w.expect("truncate to 0", w.d, w.p, "trunc", nil)
	neg := int64(-1)
	if n, err := w.d.Lookup(w.ctx, "trunc"); err == nil {
		w.wantKind("truncate "+w.p+"/trunc to -1", n.SetAttr(w.ctx, fs.Attr{Size: &neg}), fs.Invalid)
	}
	w.remove(w.d, w.p, "trunc")
}

// rewrite opens an existing file with Truncate and writes less than was there.
func (w *writer) rewrite() {
	old := pattern(50_000, 'o')
	if !w.put(w.d, w.p, "rewrite", old) {
		return
	}
	n, err := w.d.Lookup(w.ctx, "rewrite")
	if err != nil {
		w.errorf("lookup %s/rewrite: %v", w.p, err)
		return
	}
	h, err := n.(fs.File).Open(w.ctx, fs.WriteOnly|fs.Truncate)
	if err != nil {
		w.errorf("open %s/rewrite with O_TRUNC: %v", w.p, err)
		return
	}
	writeFull(w, h, []byte("new content"), 0)
	if err := h.Close(w.ctx); err != nil {
		w.errorf("close %s/rewrite: %v", w.p, err)
	}
	w.expect("rewrite with O_TRUNC", w.d, w.p, "rewrite", []byte("new content"))
	w.remove(w.d, w.p, "rewrite")
}

func (w *writer) appends() {
	if !w.put(w.d, w.p, "log", []byte("one\n")) {
		return
	}
	n, err := w.d.Lookup(w.ctx, "log")
	if err != nil {
		w.errorf("lookup %s/log: %v", w.p, err)
		return
	}
	h, err := n.(fs.File).Open(w.ctx, fs.WriteOnly|fs.Append)
	if err != nil {
		w.errorf("open %s/log with O_APPEND: %v", w.p, err)
		return
	}
	writeFull(w, h, []byte("two\n"), 0)
	writeFull(w, h, []byte("three\n"), 1)
	if err := h.Close(w.ctx); err != nil {
		w.errorf("close %s/log: %v", w.p, err)
	}
	w.expect("append", w.d, w.p, "log", []byte("one\ntwo\nthree\n"))
	w.remove(w.d, w.p, "log")
}

func (w *writer) dirs() {
	sub, err := w.d.Mkdir(w.ctx, "sub", 0o755)
	if err != nil {
		w.errorf("mkdir %s/sub: %v", w.p, err)
		return
	}
	_, err = w.d.Mkdir(w.ctx, "sub", 0o755)
	w.wantKind("mkdir "+w.p+"/sub again", err, fs.Exist)
	sp := w.p + "/sub"
	for _, n := range []string{"c", "a", "b"} {
		w.put(sub, sp, n, []byte(n))
	}
	deeper, err := sub.Mkdir(w.ctx, "deeper", 0o700)
	if err != nil {
		w.errorf("mkdir %s/deeper: %v", sp, err)
	} else {
		w.put(deeper, sp+"/deeper", "leaf", []byte("leaf"))
		if info, err := deeper.Stat(w.ctx); err != nil || !info.IsDir() || info.Name != "deeper" {
			w.errorf("stat %s/deeper: %+v, %v", sp, info, err)
		}
	}
	list, err := sub.ReadDir(w.ctx)
	if err != nil {
		w.errorf("readdir %s: %v", sp, err)
	} else if got := strings.Join(names(list), ","); got != "a,b,c,deeper" {
		w.errorf("readdir %s: got %s, want a,b,c,deeper", sp, got)
	}
	n, err := fs.Walk(w.ctx, w.root, sp+"/deeper/leaf")
	if err != nil {
		w.errorf("walk %s/deeper/leaf from the root: %v", sp, err)
	} else if _, ok := n.(fs.File); !ok {
		w.errorf("walk %s/deeper/leaf: got %T", sp, n)
	}
	w.wantKind("remove the non-empty "+w.p+"/sub", w.d.Remove(w.ctx, "sub"), fs.NotEmpty)
	// Create in a file, as if it were a directory, is refused.
	if _, err := fs.Walk(w.ctx, w.root, sp+"/a/x"); err == nil {
		w.errorf("walk %s/a/x through the file a: succeeded", sp)
	}
}

func (w *writer) renames() {
	sp := w.p + "/sub"
	n, err := w.d.Lookup(w.ctx, "sub")
	if err != nil {
		return
	}
	sub, ok := n.(fs.Dir)
	if !ok {
		w.errorf("lookup %s: got %T, want a Dir", sp, n)
		return
	}
	// Within a directory.
	if err := sub.Rename(w.ctx, "a", sub, "a2"); err != nil {
		w.errorf("rename %s/a to a2: %v", sp, err)
	} else {
		w.expect("rename within a directory", sub, sp, "a2", []byte("a"))
		_, err := sub.Lookup(w.ctx, "a")
		w.wantKind("lookup "+sp+"/a after its rename", err, fs.NotExist)
	}
	// Across directories.
	if err := sub.Rename(w.ctx, "b", w.d, "b-moved"); err != nil {
		w.errorf("rename %s/b to %s/b-moved: %v", sp, w.p, err)
	} else {
		w.expect("rename across directories", w.d, w.p, "b-moved", []byte("b"))
	}
	// Over an existing file, which it replaces.
	if err := sub.Rename(w.ctx, "c", sub, "a2"); err != nil {
		w.errorf("rename %s/c over a2: %v", sp, err)
	} else {
		w.expect("rename over an existing file", sub, sp, "a2", []byte("c"))
	}
	// A directory, with what is in it.
	if err := sub.Rename(w.ctx, "deeper", w.d, "deeper-moved"); err != nil {
		w.errorf("rename the directory %s/deeper: %v", sp, err)
	} else if _, err := fs.Walk(w.ctx, w.root, w.p+"/deeper-moved/leaf"); err != nil {
		w.errorf("walk to a file in a renamed directory: %v", err)
	}
	w.wantKind("rename the missing "+sp+"/nothing", sub.Rename(w.ctx, "nothing", sub, "x"), fs.NotExist)
	list, err := sub.ReadDir(w.ctx)
	if err != nil {
		w.errorf("readdir %s: %v", sp, err)
	} else if got := strings.Join(names(list), ","); got != "a2" {
		w.errorf("readdir %s after renames: got %s, want a2", sp, got)
	}
}

func (w *writer) removes() {
	w.wantKind("remove the missing "+w.p+"/nothing", w.d.Remove(w.ctx, "nothing"), fs.NotExist)
	if n, err := w.d.Lookup(w.ctx, "sub"); err == nil {
		if sub, ok := n.(fs.Dir); ok {
			w.remove(sub, w.p+"/sub", "a2")
		}
	}
	w.remove(w.d, w.p, "sub")
	_, err := w.d.Lookup(w.ctx, "sub")
	w.wantKind("lookup "+w.p+"/sub after its removal", err, fs.NotExist)
	if removeAll(w.ctx, w.d, "deeper-moved") != nil {
		w.errorf("remove %s/deeper-moved and its file failed", w.p)
	}
	w.remove(w.d, w.p, "b-moved")
	if list, err := w.d.ReadDir(w.ctx); err != nil || len(list) != 0 {
		w.errorf("readdir %s at the end: %v, %v; want it empty", w.p, names(list), err)
	}
}

func (w *writer) handles() {
	if !w.put(w.d, w.p, "h", []byte("handle")) {
		return
	}
	n, err := w.d.Lookup(w.ctx, "h")
	if err != nil {
		return
	}
	f := n.(fs.File)
	ro, err := f.Open(w.ctx, fs.ReadOnly)
	if err != nil {
		w.errorf("open %s/h read-only: %v", w.p, err)
	} else {
		_, err := ro.WriteAt(w.ctx, []byte("x"), 0)
		if err == nil {
			w.errorf("write through a read-only handle of %s/h: succeeded", w.p)
		}
		w.isFsError("write through a read-only handle", err)
		ro.Close(w.ctx)
		_, err = ro.ReadAt(w.ctx, make([]byte, 1), 0)
		if err == nil {
			w.errorf("read through a closed handle of %s/h: succeeded", w.p)
		}
	}
	wo, err := f.Open(w.ctx, fs.WriteOnly)
	if err != nil {
		w.errorf("open %s/h write-only: %v", w.p, err)
	} else {
		if _, err := wo.ReadAt(w.ctx, make([]byte, 1), 0); err == nil {
			w.errorf("read through a write-only handle of %s/h: succeeded", w.p)
		}
		if _, err := wo.WriteAt(w.ctx, []byte("H"), 0); err != nil {
			w.errorf("write through a write-only handle of %s/h: %v", w.p, err)
		}
		if err := wo.Sync(w.ctx); err != nil {
			w.errorf("sync %s/h: %v", w.p, err)
		}
		if err := wo.Close(w.ctx); err != nil {
			w.errorf("close %s/h: %v", w.p, err)
		}
		w.expect("write in place", w.d, w.p, "h", []byte("Handle"))
	}
	mode := iofs.FileMode(0o600)
	if err := n.SetAttr(w.ctx, fs.Attr{Mode: &mode}); err != nil {
		w.errorf("chmod %s/h: %v", w.p, err)
	} else if info, err := n.Stat(w.ctx); err == nil && info.Mode.Perm() != 0o600 {
		w.errorf("chmod %s/h to 0600: stat says %v", w.p, info.Mode)
	}
	w.remove(w.d, w.p, "h")
}

func (w *writer) badNames() {
	for _, bad := range []string{"", ".", "..", "a/b", "x\x00y", strings.Repeat("n", fs.MaxNameLen+1)} {
		if _, _, err := w.d.Create(w.ctx, bad, fs.ReadWrite, 0o644); err == nil {
			w.errorf("create %q: succeeded, want an error", bad)
		} else if k := fs.KindOf(err); k != fs.Invalid && k != fs.NameTooLong && k != fs.Exist && k != fs.IsDir {
			w.errorf("create %q: error of kind %q (%v), want invalid argument", bad, k, err)
		}
		if _, err := w.d.Mkdir(w.ctx, bad, 0o755); err == nil {
			w.errorf("mkdir %q: succeeded, want an error", bad)
		}
		if err := w.d.Remove(w.ctx, bad); err == nil {
			w.errorf("remove %q: succeeded, want an error", bad)
		}
	}
	if list, err := w.d.ReadDir(w.ctx); err != nil || len(list) != 0 {
		w.errorf("readdir %s after bad names: %v, %v; want it empty", w.p, names(list), err)
	}
}

// concurrent writes eight files at once and reads them back.
func (w *writer) concurrent() {
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.put(w.d, w.p, fmt.Sprintf("c%d", i), pattern(30_000+i, byte(i)))
		}()
	}
	wg.Wait()
	for i := range 8 {
		name := fmt.Sprintf("c%d", i)
		w.expect("concurrent writes", w.d, w.p, name, pattern(30_000+i, byte(i)))
		w.remove(w.d, w.p, name)
	}
}
