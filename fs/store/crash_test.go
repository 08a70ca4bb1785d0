package store

import (
	"bytes"
	"fmt"
	"hash/fnv"
	iofs "io/fs"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"strata/fs"
	"strata/fs/nodetab"
)

// The crash tests run a workload through the store's public API on a
// crashDisk, cut the power at a chosen call, recover on the image left,
// and check what the recovered store shows.
//
// # What must be there after a crash
//
// The workload is a sequence of steps, each one call of the API (Create,
// Open, WriteAt, Sync, Close, Rename, Remove, Mkdir, SetAttr) or a lookup
// and that call. A step that returned nil is acknowledged. The workload
// stops at the first step that fails, the one in flight when the power
// went. After recovery the tree holds, path by path, exactly the tree as
// it was before that step or exactly the tree as that step leaves it
// (the same tree for every path: a rename is not half done), where:
//
//   - a directory is there or not;
//   - a file holds one whole version that was written to it: the empty
//     file of an acknowledged Create, or the content acknowledged by the
//     latest Sync, Close or SetAttr of its file, with its permission bits.
//     A rewrite (Create, or Open with Truncate) never shows until its
//     Sync or Close: a file written only that way is never torn;
//   - a file written in place (Open without Truncate, or a Handle after
//     Sync) since its last acknowledgement may be torn, but only where it
//     was written: it holds its acknowledged bytes everywhere else, and
//     its size lies between the acknowledged one and the latest one. That
//     is all the store promises of an unacknowledged write in place, and
//     all that a disk can promise;
//   - nothing else is there: no file the workload did not make, no file
//     at a name it removed or renamed away, and no temporary file, through
//     the store or on the disk (Open sweeps them).

// want is what one path must hold.
type want struct {
	dir   bool
	label string // names a file's content in messages
	data  []byte
	perm  iofs.FileMode
	// inPlace marks a file written in place since its last
	// acknowledgement: it may hold anything in the loose ranges and past
	// its acknowledged size, and be any size from acked to len(data).
	inPlace bool
	acked   int
	loose   []span
}

// tree is what the store must hold, by path.
type tree map[string]want

// whandle is a Handle of the workload.
type whandle struct {
	h       fs.Handle
	path    string        // where its file is now; "" once removed
	label   string        // the version it writes now
	data    []byte        // what a pending rewrite wrote
	rewrite bool          // a pending rewrite: what it writes shows at Sync or Close
	perm    iofs.FileMode // a rewrite's permission bits, the file's when it began
	append  bool
	wrote   bool // written in place since the last acknowledgement
}

// workload drives a store. Its steps do nothing once one has failed.
type workload struct {
	root    fs.Dir
	now     tree   // the tree once the step in flight is acknowledged
	before  tree   // the tree before it; nil between steps
	step    string // the step in flight, or the last one
	done    string // the last step acknowledged
	steps   int
	err     error // the failure that stopped the workload
	handles map[string]*whandle
	known   map[string][]byte // every version acknowledged, by label
	bytes   map[string][]byte // the content of each label, as far as drawn
}

func newWorkload(root fs.Dir) *workload {
	return &workload{root: root, now: tree{}, handles: map[string]*whandle{},
		known: map[string][]byte{}, bytes: map[string][]byte{}}
}

// do runs a step: change turns w.now into the tree the step leaves once
// acknowledged, then call makes the step.
func (w *workload) do(step string, change func(), call func() error) {
	if w.err != nil {
		return
	}
	w.steps++
	w.step = fmt.Sprintf("step %d (%s)", w.steps, step)
	w.before = maps.Clone(w.now)
	change()
	if err := call(); err != nil {
		w.err = fmt.Errorf("%s: %w", w.step, err)
		return
	}
	w.before, w.done = nil, w.step
}

// content is bytes [off, off+n) of the version label: letters, so that a
// message can show them, drawn from the label.
func (w *workload) content(label string, off, n int) []byte {
	b := w.bytes[label]
	if len(b) < off+n {
		h := fnv.New64a()
		h.Write([]byte(label))
		r := rand.New(rand.NewPCG(h.Sum64(), 1))
		b = make([]byte, max(off+n, 2*len(b)))
		for i := range b {
			b[i] = byte('a' + r.IntN(26))
		}
		w.bytes[label] = b
	}
	return b[off : off+n]
}

// parent looks up the directory of p, and returns it with p's last name.
func (w *workload) parent(p string) (fs.Dir, string, error) {
	dp, name := fs.Split(p)
	n, err := fs.Walk(ctx, w.root, dp)
	if err != nil {
		return nil, "", err
	}
	d, ok := n.(fs.Dir)
	if !ok {
		return nil, "", fmt.Errorf("%s is not a directory", dp)
	}
	return d, name, nil
}

func (w *workload) mkdir(p string) {
	w.do("mkdir "+p, func() { w.now[p] = want{dir: true} }, func() error {
		d, name, err := w.parent(p)
		if err == nil {
			_, err = d.Mkdir(ctx, name, 0o755)
		}
		return err
	})
}

// create creates p, or opens it if it exists, with flag, as the Handle
// key writing the version label.
func (w *workload) create(key, p string, perm iofs.FileMode, flag fs.Flag, label string) {
	old, exists := w.now[p]
	h := &whandle{path: p, label: label, append: flag.Has(fs.Append), perm: perm.Perm()}
	switch {
	case !exists:
		h.rewrite = flag.Writable()
	case flag.Has(fs.Truncate):
		h.rewrite = true
		perm, h.perm = old.perm, old.perm
	}
	w.do(fmt.Sprintf("create %s %s", p, flagText(flag)), func() {
		if !exists {
			w.now[p] = want{label: "empty", perm: perm.Perm()}
			w.known["empty"] = nil
		}
	}, func() error {
		d, name, err := w.parent(p)
		if err == nil {
			_, h.h, err = d.Create(ctx, name, flag, perm)
		}
		w.handles[key] = h
		return err
	})
}

// open opens the file p with flag, as the Handle key writing the
// version label.
func (w *workload) open(key, p string, flag fs.Flag, label string) {
	h := &whandle{path: p, label: label, rewrite: flag.Has(fs.Truncate), append: flag.Has(fs.Append), perm: w.now[p].perm}
	w.do(fmt.Sprintf("open %s %s", p, flagText(flag)), func() {}, func() error {
		n, err := fs.Walk(ctx, w.root, p)
		if err != nil {
			return err
		}
		h.h, err = n.(fs.File).Open(ctx, flag)
		w.handles[key] = h
		return err
	})
}

// write writes n bytes of the Handle's version at off (at the end of the
// file, for a Handle that appends).
func (w *workload) write(key string, off, n int) {
	if w.err != nil {
		return
	}
	h := w.handles[key]
	var b []byte
	w.do(fmt.Sprintf("write %s %d bytes at %d", h.path, n, off), func() {
		cur, ok := w.now[h.path]
		switch {
		case h.rewrite:
			h.data = writeAt(h.data, w.content(h.label, off, n), off)
			b = h.data[off : off+n]
			return
		case !ok || h.path == "":
			b = w.content(h.label, off, n) // to a file removed
			return
		case h.append:
			off = len(cur.data)
		}
		b = w.content(h.label, off, n)
		if !cur.inPlace {
			cur.inPlace, cur.acked, cur.loose = true, len(cur.data), nil
			cur.label += " with writes in place"
		}
		cur.data = writeAt(slices.Clone(cur.data), b, off)
		cur.loose = append(slices.Clone(cur.loose), span{off, off + n})
		w.now[h.path] = cur
		h.wrote = true
	}, func() error {
		k, err := h.h.WriteAt(ctx, b, int64(off))
		if err == nil && k != len(b) {
			err = fmt.Errorf("wrote %d bytes of %d", k, len(b))
		}
		return err
	})
}

// writeAt writes b at off in data, which it extends as needed.
func writeAt(data, b []byte, off int) []byte {
	if end := off + len(b); end > len(data) {
		data = append(data, make([]byte, end-len(data))...)
	}
	copy(data[off:], b)
	return data
}

// ack is what an acknowledgement through h makes of the tree.
func (w *workload) ack(h *whandle) {
	cur, ok := w.now[h.path]
	if !ok || h.path == "" {
		return // the file was removed: a rewrite is dropped
	}
	switch {
	case h.rewrite:
		cur = want{label: h.label, data: slices.Clone(h.data), perm: h.perm}
	case h.wrote:
		cur = want{label: h.label, data: cur.data, perm: cur.perm}
	default:
		return
	}
	w.now[h.path] = cur
	w.known[cur.label] = cur.data
}

// sync syncs the Handle key, which writes the version next from then on.
func (w *workload) sync(key, next string) {
	if w.err != nil {
		return
	}
	h := w.handles[key]
	w.do("sync "+h.path, func() { w.ack(h) }, func() error { return h.h.Sync(ctx) })
	h.rewrite, h.wrote, h.label = false, false, next
}

func (w *workload) close(key string) {
	if w.err != nil {
		return
	}
	h := w.handles[key]
	w.do("close "+h.path, func() { w.ack(h) }, func() error { return h.h.Close(ctx) })
	delete(w.handles, key)
}

// flagText names the flags of flag that the workload uses.
func flagText(flag fs.Flag) string {
	s := [...]string{"read-only", "write-only", "read-write", "?"}[flag&3]
	for _, f := range []struct {
		f    fs.Flag
		name string
	}{{fs.Truncate, "truncate"}, {fs.Append, "append"}, {fs.Excl, "excl"}} {
		if flag.Has(f.f) {
			s += "|" + f.name
		}
	}
	return s
}

// moved is p after a rename of from to to.
func moved(p, from, to string) string {
	if nodetab.Within(p, from) {
		return to + p[len(from):]
	}
	return p
}

func (w *workload) rename(from, to string) {
	w.do("rename "+from+" to "+to, func() {
		next := tree{}
		for p, v := range w.now {
			if !nodetab.Within(p, to) {
				next[moved(p, from, to)] = v
			}
		}
		w.now = next
		for _, h := range w.handles {
			switch {
			case nodetab.Within(h.path, from):
				h.path = moved(h.path, from, to)
			case nodetab.Within(h.path, to):
				h.path = "" // its file was replaced
			}
		}
	}, func() error {
		fd, fname, err := w.parent(from)
		if err != nil {
			return err
		}
		td, tname, err := w.parent(to)
		if err != nil {
			return err
		}
		return fd.Rename(ctx, fname, td, tname)
	})
}

func (w *workload) remove(p string) {
	w.do("remove "+p, func() {
		delete(w.now, p)
		for _, h := range w.handles {
			if h.path == p {
				h.path = ""
			}
		}
	}, func() error {
		d, name, err := w.parent(p)
		if err == nil {
			err = d.Remove(ctx, name)
		}
		return err
	})
}

// setAttr sets the attributes a of p, which change makes of its want.
func (w *workload) setAttr(p string, a fs.Attr, what string, change func(*want)) {
	w.do(what+" "+p, func() {
		v := w.now[p]
		v.inPlace, v.loose = false, nil // SetAttr syncs the file
		change(&v)
		w.now[p] = v
		w.known[v.label] = v.data
	}, func() error {
		n, err := fs.Walk(ctx, w.root, p)
		if err == nil {
			err = n.SetAttr(ctx, a)
		}
		return err
	})
}

func (w *workload) chmod(p string, perm iofs.FileMode) {
	w.setAttr(p, fs.Attr{Mode: &perm}, fmt.Sprintf("chmod %#o", perm), func(v *want) { v.perm = perm })
}

func (w *workload) truncate(p string, size int) {
	s := int64(size)
	w.setAttr(p, fs.Attr{Size: &s}, fmt.Sprintf("truncate to %d", size), func(v *want) {
		v.data = writeAt(slices.Clone(v.data[:min(size, len(v.data))]), nil, size)
		v.label = fmt.Sprintf("%s cut to %d bytes", v.label, size)
	})
}

// smallWorkload does a little of everything, on a few files of a few
// sectors each.
func smallWorkload(w *workload) {
	w.mkdir("docs")

	// A new file, written in two parts, acknowledged by Close.
	w.create("h1", "a", 0o640, fs.WriteOnly, "a1")
	w.write("h1", 0, 1000)
	w.write("h1", 1000, 500)
	w.close("h1")

	// A new file published by Sync, then extended in place.
	w.create("h2", "docs/b", 0o644, fs.ReadWrite, "b1")
	w.write("h2", 0, 700)
	w.sync("h2", "b2")
	w.write("h2", 700, 300)
	w.close("h2")

	// A rewrite of a file.
	w.open("h3", "a", fs.WriteOnly|fs.Truncate, "a2")
	w.write("h3", 0, 2000)
	w.close("h3")

	// A file in a nested directory.
	w.mkdir("docs/sub")
	w.create("h4", "docs/sub/c", 0o600, fs.WriteOnly, "c1")
	w.write("h4", 0, 1300)
	w.close("h4")

	// Appends, acknowledged by Sync and then by Close.
	w.open("h5", "docs/b", fs.WriteOnly|fs.Append, "b3")
	w.write("h5", 0, 600)
	w.sync("h5", "b4")
	w.write("h5", 0, 100)
	w.close("h5")

	// A file moved to another directory, and one overwritten in place
	// across sectors.
	w.rename("a", "docs/sub/a")
	w.open("h6", "docs/sub/c", fs.ReadWrite, "c2")
	w.write("h6", 200, 1000)
	w.close("h6")

	// A rewrite whose file moves to another directory before the rewrite
	// is acknowledged.
	w.open("h7", "docs/sub/a", fs.WriteOnly|fs.Truncate, "a3")
	w.write("h7", 0, 900)
	w.rename("docs/sub/a", "a")
	w.close("h7")

	// An empty file, replaced by a rename from another directory.
	w.create("h8", "d", 0o644, fs.ReadOnly, "")
	w.close("h8")
	w.rename("docs/sub/c", "d")

	// Attributes.
	w.chmod("d", 0o604)
	w.truncate("a", 100)

	// A rewrite that loses to a Remove of its file.
	w.open("h9", "docs/b", fs.WriteOnly|fs.Truncate, "b5")
	w.write("h9", 0, 800)
	w.remove("docs/b")
	w.close("h9")

	// A directory removed while a rewrite in it is pending.
	w.create("h10", "docs/sub/e", 0o644, fs.WriteOnly|fs.Excl, "e1")
	w.write("h10", 0, 10)
	w.close("h10")
	w.open("h11", "docs/sub/e", fs.WriteOnly|fs.Truncate, "e2")
	w.write("h11", 0, 600)
	w.remove("docs/sub/e")
	w.remove("docs/sub")
	w.close("h11")

	// A directory moved with its file; a rewrite through Create.
	w.create("h12", "docs/f", 0o644, fs.WriteOnly, "f1")
	w.write("h12", 0, 520)
	w.close("h12")
	w.rename("docs", "archive")
	w.create("h13", "archive/f", 0o644, fs.WriteOnly|fs.Truncate, "f2")
	w.write("h13", 0, 1100)
	w.close("h13")

	// Left open at the end, never acknowledged: a rewrite, a new file
	// and a write in place.
	w.open("h14", "a", fs.WriteOnly|fs.Truncate, "a4")
	w.write("h14", 0, 3000)
	w.create("h15", "g", 0o644, fs.WriteOnly, "g1")
	w.write("h15", 0, 100)
	w.open("h16", "d", fs.ReadWrite, "d2")
	w.write("h16", 512, 100)
}

// found is what the recovered store shows at a path.
type found struct {
	dir  bool
	data []byte
	perm iofs.FileMode
}

// readTree reads every directory and file of the store.
func readTree(root fs.Dir) (map[string]found, error) {
	out := map[string]found{}
	var walk func(d fs.Dir, p string) error
	walk = func(d fs.Dir, p string) error {
		list, err := d.ReadDir(ctx)
		if err != nil {
			return err
		}
		for _, i := range list {
			q := fs.Join(p, i.Name)
			if strings.HasPrefix(i.Name, TempPrefix) {
				return fmt.Errorf("the store lists the temporary file %s", q)
			}
			n, err := d.Lookup(ctx, i.Name)
			if err != nil {
				return err
			}
			switch n := n.(type) {
			case fs.Dir:
				out[q] = found{dir: true}
				if err := walk(n, q); err != nil {
					return err
				}
			case fs.File:
				data, err := fs.ReadAll(ctx, n, 1<<20)
				if err != nil {
					return err
				}
				out[q] = found{data: data, perm: i.Mode.Perm()}
			}
		}
		return nil
	}
	return out, walk(root, "")
}

// matches reports whether f (nil for nothing) is what v (nil for
// nothing) asks for.
func matches(v *want, f *found) bool {
	switch {
	case v == nil || f == nil:
		return v == nil && f == nil
	case v.dir || f.dir:
		return v.dir == f.dir
	case f.perm != v.perm:
		return false
	case !v.inPlace:
		return bytes.Equal(f.data, v.data)
	case len(f.data) < v.acked || len(f.data) > len(v.data):
		return false
	}
	for i, b := range f.data[:v.acked] {
		if b != v.data[i] && !slices.ContainsFunc(v.loose, func(s span) bool { return s.from <= i && i < s.to }) {
			return false
		}
	}
	return true
}

func (v *want) String() string {
	switch {
	case v == nil:
		return "nothing"
	case v.dir:
		return "a directory"
	case v.inPlace:
		return fmt.Sprintf("%q (%d to %d bytes, mode %#o; its first %d bytes as acknowledged outside %v)",
			v.label, v.acked, len(v.data), v.perm, v.acked, v.loose)
	}
	return fmt.Sprintf("%q (%d bytes, mode %#o)", v.label, len(v.data), v.perm)
}

// describe says what f is, naming the version it holds, or where it
// differs from the files of wants.
func (w *workload) describe(f *found, wants ...*want) string {
	switch {
	case f == nil:
		return "nothing"
	case f.dir:
		return "a directory"
	}
	s := fmt.Sprintf("%d bytes, mode %#o", len(f.data), f.perm)
	for _, label := range slices.Sorted(maps.Keys(w.known)) {
		if bytes.Equal(w.known[label], f.data) {
			return fmt.Sprintf("%s: version %q", s, label)
		}
	}
	s += fmt.Sprintf(", a version never acknowledged (%.24q...)", f.data)
	for _, v := range wants {
		if v == nil || v.dir {
			continue
		}
		i := 0
		for i < min(len(f.data), len(v.data)) && f.data[i] == v.data[i] {
			i++
		}
		s += fmt.Sprintf("; it differs from %q at byte %d", v.label, i)
	}
	return s
}

// check compares the recovered tree got with what the workload allows,
// and returns what is wrong, or "".
func (w *workload) check(got map[string]found) string {
	type state struct {
		name string
		t    tree
	}
	states := []state{{"as the step leaves it", w.now}}
	if w.before != nil {
		states = []state{{"as before the step", w.before}, {"as the step leaves it", w.now}}
	}
	paths := slices.Collect(maps.Keys(got))
	for _, s := range states {
		paths = append(paths, slices.Collect(maps.Keys(s.t))...)
	}
	slices.Sort(paths)
	paths = slices.Compact(paths)

	at := func(t tree, p string) *want {
		if v, ok := t[p]; ok {
			return &v
		}
		return nil
	}
	gotAt := func(p string) *found {
		if f, ok := got[p]; ok {
			return &f
		}
		return nil
	}
	var wrong []string
	fits := make([][]string, len(states)) // by state, the paths that fit it
	for _, p := range paths {
		f := gotAt(p)
		var wants []*want
		var texts []string
		fit := false
		for i, s := range states {
			v := at(s.t, p)
			if matches(v, f) {
				fits[i] = append(fits[i], p)
				fit = true
			}
			wants = append(wants, v)
			if t := v.String(); !slices.Contains(texts, t) {
				texts = append(texts, t)
			}
		}
		if !fit {
			wrong = append(wrong, fmt.Sprintf("  %s: found %s; want %s", p, w.describe(f, wants...), strings.Join(texts, " or ")))
		}
	}
	if len(wrong) > 0 {
		return strings.Join(wrong, "\n")
	}
	for _, f := range fits {
		if len(f) == len(paths) {
			return ""
		}
	}
	var mix []string
	for i, s := range states {
		mix = append(mix, fmt.Sprintf("  %s: %s", s.name, strings.Join(fits[i], ", ")))
	}
	return "every path fits, but not all the same tree; the paths that fit each:\n" + strings.Join(mix, "\n")
}

// seedKind says what a seed does with what was not durable.
func seedKind(seed uint64) string {
	switch seed {
	case 0:
		return "loses everything unsynced"
	case 1:
		return "keeps everything unsynced"
	}
	return "keeps and garbles at random"
}

// crashRun runs script on a new crashDisk that crashes at call point (or
// never, for 0), and for each of seeds recovers on the image that the
// seed chooses and checks it. It returns what is wrong, if anything.
func crashRun(script func(*workload), point int, seeds ...uint64) []string {
	d := newCrashDisk()
	d.setCrash(point)
	s := openDisk(d, "crash disk", nil)
	w := newWorkload(s.Root())
	script(w)
	s.Close()
	calls, crashed := d.state()
	where := fmt.Sprintf("crash point %d", point)
	switch {
	case w.err != nil && crashed == "":
		return []string{fmt.Sprintf("%s: the workload failed without a crash: %v", where, w.err)}
	case crashed == "":
		where = fmt.Sprintf("power cut after the workload's %d calls", calls)
	default:
		where += " (" + crashed + ")"
	}
	if w.err != nil {
		where += ", in " + w.step
		if w.done != "" {
			where += " after " + w.done + " returned"
		}
	} else {
		where += ", after the last step"
	}
	var wrong []string
	for _, seed := range seeds {
		if msg := checkImage(d.Crash(seed), w); msg != "" {
			wrong = append(wrong, fmt.Sprintf("%s, seed %d (%s): %s", where, seed, seedKind(seed), msg))
		}
	}
	return wrong
}

// checkImage opens a store on img and checks it against w.
func checkImage(img *crashDisk, w *workload) string {
	r := openDisk(img, "crash disk image", nil)
	defer r.Close()
	got, err := readTree(r.Root())
	if err != nil {
		return fmt.Sprintf("reading the recovered store: %v", err)
	}
	var temps []string
	for _, p := range img.files() {
		if _, name := fs.Split(p); strings.HasPrefix(name, TempPrefix) {
			temps = append(temps, p)
		}
	}
	if len(temps) > 0 {
		return fmt.Sprintf("temporary files left after recovery: %v", temps)
	}
	if msg := w.check(got); msg != "" {
		return "after recovery:\n" + msg
	}
	return ""
}

// countCalls runs script without a crash, checks that no step fails, and
// returns the number of calls it makes to the disk.
func countCalls(t *testing.T, script func(*workload)) int {
	t.Helper()
	d := newCrashDisk()
	s := openDisk(d, "crash disk", nil)
	w := newWorkload(s.Root())
	script(w)
	n, _ := d.state()
	s.Close()
	if w.err != nil {
		t.Fatalf("the workload fails without a crash: %v", w.err)
	}
	return n
}

const maxReported = 5

// TestCrashPoints cuts the power at every call of smallWorkload, and
// checks what the store recovers from several images of each crash.
func TestCrashPoints(t *testing.T) {
	seeds := []uint64{0, 1, 2, 3, 4, 5}
	total := countCalls(t, smallWorkload)
	failed := 0
	for point := 1; point <= total+1; point++ {
		for _, msg := range crashRun(smallWorkload, point, seeds...) {
			t.Error(msg)
			if failed++; failed == maxReported {
				t.Fatalf("stopping after %d failures", failed)
			}
		}
	}
	t.Logf("%d crash points x %d seeds", total+1, len(seeds))
}

// randomWorkload returns a workload of steps drawn from seed: files of up
// to six sectors made, rewritten, written in place, appended to, cut,
// renamed and removed, rewrites left pending across other steps, and
// directories made, moved and removed.
func randomWorkload(seed uint64, steps int) func(*workload) {
	return func(w *workload) {
		g := &generator{w: w, r: rand.New(rand.NewPCG(seed, 2))}
		for range steps {
			if w.err != nil {
				return
			}
			g.step()
		}
	}
}

// generator draws the steps of a random workload.
type generator struct {
	w       *workload
	r       *rand.Rand
	version int
	keys    int
	pending []string // the keys of rewrites left open
}

func (g *generator) pick(list []string) string { return list[g.r.IntN(len(list))] }

// label names a new version of p.
func (g *generator) label(p string) string {
	g.version++
	return fmt.Sprintf("%s#%d", p, g.version)
}

func (g *generator) key() string {
	g.keys++
	return fmt.Sprintf("k%d", g.keys)
}

// busy reports whether a Handle is open on p.
func (g *generator) busy(p string) bool {
	for _, h := range g.w.handles {
		if h.path == p {
			return true
		}
	}
	return false
}

// fill writes n bytes through the Handle k, in up to three parts in any
// order.
func (g *generator) fill(k string, n int) {
	cuts := []int{0, g.r.IntN(n + 1), g.r.IntN(n + 1), n}
	slices.Sort(cuts)
	for _, i := range g.r.Perm(3) {
		if cuts[i+1] > cuts[i] {
			g.w.write(k, cuts[i], cuts[i+1]-cuts[i])
		}
	}
}

// finish closes the rewrite k, or leaves it pending, or publishes it with
// Sync and writes on in place.
func (g *generator) finish(k string) {
	switch g.r.IntN(4) {
	case 0:
		g.pending = append(g.pending, k)
	case 1:
		g.w.sync(k, g.label(g.w.handles[k].path))
		g.w.write(k, g.r.IntN(3000), 1+g.r.IntN(700))
		g.w.close(k)
	default:
		g.w.close(k)
	}
}

func (g *generator) step() {
	w, r := g.w, g.r
	dirs := []string{""}
	var files, idle []string // files, and those with no Handle open
	for _, p := range slices.Sorted(maps.Keys(w.now)) {
		switch {
		case w.now[p].dir:
			dirs = append(dirs, p)
		case g.busy(p):
			files = append(files, p)
		default:
			files = append(files, p)
			idle = append(idle, p)
		}
	}
	// free draws a name for a new file or directory in a directory that
	// exists, or "" if the one drawn is taken.
	free := func() string {
		p := fs.Join(g.pick(dirs), g.pick([]string{"p", "q", "r", "x", "y"}))
		if _, taken := w.now[p]; taken || g.busy(p) || len(p) > 12 {
			return ""
		}
		return p
	}
	perms := []iofs.FileMode{0o600, 0o640, 0o644}

	switch op := r.IntN(13); {
	case op == 0: // a directory
		if p := free(); p != "" {
			w.mkdir(p)
		}
	case op <= 2: // a new file
		if p := free(); p != "" {
			k := g.key()
			w.create(k, p, perms[r.IntN(3)], fs.WriteOnly|fs.Excl, g.label(p))
			g.fill(k, r.IntN(3000))
			g.finish(k)
		}
	case op <= 4 && len(idle) > 0: // a rewrite
		p, k := g.pick(idle), g.key()
		if r.IntN(2) == 0 {
			w.open(k, p, fs.WriteOnly|fs.Truncate, g.label(p))
		} else {
			w.create(k, p, 0o600, fs.ReadWrite|fs.Truncate, g.label(p))
		}
		g.fill(k, r.IntN(3000))
		g.finish(k)
	case op == 5 && len(idle) > 0: // writes in place
		p, k := g.pick(idle), g.key()
		w.open(k, p, fs.ReadWrite, g.label(p))
		size := len(w.now[p].data)
		w.write(k, r.IntN(size+600), 1+r.IntN(1200))
		if r.IntN(2) == 0 {
			w.sync(k, g.label(p))
			w.write(k, r.IntN(size+600), 1+r.IntN(600))
		}
		w.close(k)
	case op == 6 && len(idle) > 0: // appends
		p, k := g.pick(idle), g.key()
		w.open(k, p, fs.WriteOnly|fs.Append, g.label(p))
		w.write(k, 0, 1+r.IntN(1000))
		w.write(k, 0, 1+r.IntN(300))
		w.close(k)
	case op == 7 && len(files) > 0: // a file renamed, maybe over another
		from := g.pick(files)
		to := free()
		if r.IntN(2) == 0 {
			to = g.pick(files)
		}
		if to != "" && to != from {
			w.rename(from, to)
		}
	case op == 8 && len(files) > 0:
		w.remove(g.pick(files))
	case op == 9 && len(files) > 0: // attributes
		p := g.pick(files)
		if r.IntN(2) == 0 {
			w.chmod(p, perms[r.IntN(3)])
		} else {
			w.truncate(p, r.IntN(len(w.now[p].data)+700))
		}
	case op == 10 && len(dirs) > 1: // a directory moved, or removed if empty
		d := g.pick(dirs[1:])
		empty := !slices.ContainsFunc(slices.Collect(maps.Keys(w.now)), func(p string) bool { return p != d && nodetab.Within(p, d) })
		switch to := free(); {
		case empty && r.IntN(2) == 0:
			w.remove(d)
		case to != "" && !nodetab.Within(to, d):
			w.rename(d, to)
		}
	case op >= 11 && len(g.pending) > 0: // a pending rewrite finished
		i := r.IntN(len(g.pending))
		k := g.pending[i]
		g.pending = slices.Delete(g.pending, i, i+1)
		if r.IntN(3) == 0 {
			w.sync(k, g.label(w.handles[k].path))
		}
		w.close(k)
	}
}

// TestCrashPointsRandom cuts the power at a sample of the calls of a few
// random workloads, bigger than smallWorkload.
func TestCrashPointsRandom(t *testing.T) {
	workloads, steps, points := uint64(3), 120, 50
	if testing.Short() {
		workloads, points = 1, 20
	}
	seeds := []uint64{0, 1, 2, 3, 4, 5}
	failed := 0
	for ws := range workloads {
		script := randomWorkload(ws, steps)
		total := countCalls(t, script)
		r := rand.New(rand.NewPCG(ws, 3))
		sample := []int{total + 1}
		for range points - 1 {
			sample = append(sample, 1+r.IntN(total))
		}
		slices.Sort(sample)
		for _, point := range slices.Compact(sample) {
			for _, msg := range crashRun(script, point, seeds...) {
				t.Errorf("random workload %d, %s", ws, msg)
				if failed++; failed == maxReported {
					t.Fatalf("stopping after %d failures", failed)
				}
			}
		}
		t.Logf("random workload %d: %d calls, %d crash points x %d seeds", ws, total, len(slices.Compact(sample)), len(seeds))
	}
}
