package fuse

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"strata/fs"
	"strata/fs/fstest"
	"strata/fs/memfs"
	"strata/fs/ninep"
	"strata/fs/store"
	"strata/mount/remote"
)

// childEnv, when set to a directory, makes the test binary mount a memfs
// tree there and wait to be killed (see TestCleanStale).
const childEnv = "STRATA_FUSE_TEST_CHILD_MOUNT"

func TestMain(m *testing.M) {
	if dir := os.Getenv(childEnv); dir != "" {
		os.Exit(childMount(dir))
	}
	os.Exit(m.Run())
}

func childMount(dir string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := Mount(ctx, memfs.New(), dir, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	fmt.Println("mounted")
	select {
	case <-time.After(60 * time.Second): // the parent failed to kill us
		m.Unmount()
	case <-m.done:
	}
	return 0
}

// ci reports whether the tests run under CI, where missing FUSE is a
// failure, not a reason to skip.
func ci() bool {
	v := os.Getenv("CI")
	return v != "" && v != "0" && v != "false"
}

func needFUSE(t *testing.T) {
	t.Helper()
	var missing []string
	if _, err := os.Stat("/dev/fuse"); err != nil {
		missing = append(missing, "/dev/fuse")
	}
	if _, err := fusermount(); err != nil {
		missing = append(missing, "fusermount3")
	}
	if len(missing) == 0 {
		return
	}
	msg := "FUSE is not available: missing " + strings.Join(missing, " and ")
	if ci() {
		t.Fatal(msg + " (CI is set, so this fails instead of skipping)")
	}
	t.Skip(msg + " (install fuse3 to run this test)")
}

// logBuf collects a mount's log, safe for the goroutines that outlive a
// request.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// testLog returns a Debug logger whose output is shown if t fails.
func testLog(t *testing.T) (*slog.Logger, *logBuf) {
	lb := &logBuf{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("mount log:\n%s", lb.String())
		}
	})
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})), lb
}

// mountT mounts root in a temporary directory and unmounts it when t ends.
func mountT(t *testing.T, root fs.Dir, opts Options) (*Mounted, string) {
	t.Helper()
	needFUSE(t)
	mp := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mp, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := Mount(ctx, root, mp, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountT(t, m, mp) })
	return m, mp
}

// unmountT unmounts m, lazily if it is busy, and waits for it to stop.
func unmountT(t *testing.T, m *Mounted, mp string) {
	if err := m.Unmount(); err != nil {
		t.Errorf("unmount: %v", err)
		lazyUnmount(mp)
	}
	done := make(chan struct{})
	go func() { m.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Errorf("the mount did not stop within 20s of unmounting")
	}
}

func lazyUnmount(mp string) {
	if bin, err := fusermount(); err == nil {
		exec.Command(bin, "-u", "-z", mp).Run()
	}
}

// sh runs script with sh -c in the mount point ($M) and returns its
// output. Messages are in English (LC_ALL=C).
func sh(t *testing.T, mp, script string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", `cd "$M" || exit 100`+"\n"+script)
	cmd.Env = append(os.Environ(), "M="+mp, "LC_ALL=C")
	cmd.WaitDelay = 5 * time.Second
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

func mustSh(t *testing.T, mp, script string) string {
	t.Helper()
	out, errOut, err := sh(t, mp, script)
	if err != nil {
		t.Fatalf("%s: %v\nstdout: %s\nstderr: %s", script, err, out, errOut)
	}
	return out
}

func wantSh(t *testing.T, mp, script, want string) {
	t.Helper()
	out, errOut, err := sh(t, mp, script)
	if err != nil {
		t.Fatalf("%s: %v\nstdout: %s\nstderr: %s", script, err, out, errOut)
	}
	if out != want {
		t.Errorf("%s:\ngot  %q\nwant %q\nstderr %q", script, out, want, errOut)
	}
}

// wantShFail runs script, which must fail with a message containing msg.
func wantShFail(t *testing.T, mp, script, msg string) {
	t.Helper()
	out, errOut, err := sh(t, mp, script)
	if err == nil {
		t.Errorf("%s: succeeded (stdout %q), want a failure saying %q", script, out, msg)
		return
	}
	if !strings.Contains(errOut, msg) {
		t.Errorf("%s: failed with %v and stderr %q, want it to say %q", script, err, errOut, msg)
	}
}

// treeBytes reads the file at p straight from the tree.
func treeBytes(t *testing.T, root fs.Dir, p string) []byte {
	t.Helper()
	ctx := context.Background()
	n, err := fs.Walk(ctx, root, p)
	if err != nil {
		t.Fatalf("walk %s in the tree: %v", p, err)
	}
	f, ok := n.(fs.File)
	if !ok {
		t.Fatalf("%s in the tree is a %T", p, n)
	}
	b, err := fs.ReadAll(ctx, f, 64<<20)
	if err != nil {
		t.Fatalf("read %s in the tree: %v", p, err)
	}
	return b
}

// forTrees runs f on an in-memory tree; on a durable store, which
// rewrites a file atomically (in a temporary file until Sync or Close)
// and gives a rewritten file a new ID; and on a store seen over 9P, whose
// nodes are paths, as a client tier mounts its edge.
func forTrees(t *testing.T, f func(t *testing.T, root fs.Dir, isStore bool)) {
	t.Run("memfs", func(t *testing.T) { f(t, memfs.New(), false) })
	t.Run("store", func(t *testing.T) { f(t, openStore(t), true) })
	t.Run("remote", func(t *testing.T) {
		srv := ninep.NewServer(openStore(t), nil)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(context.Background(), ln)
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			srv.Shutdown(ctx)
		})
		tr, err := remote.Dial(context.Background(), "tcp", ln.Addr().String(), remote.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		f(t, tr.Root(), true)
	})
}

func openStore(t *testing.T) fs.Dir {
	st, err := store.Open(filepath.Join(t.TempDir(), "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st.Root()
}

func TestShellTools(t *testing.T) { forTrees(t, shellTools) }

func shellTools(t *testing.T, root fs.Dir, isStore bool) {
	log, _ := testLog(t)
	_, mp := mountT(t, root, Options{Log: log})

	wantSh(t, mp, `echo hello > f && cat f`, "hello\n")
	wantSh(t, mp, `echo world >> f && cat f`, "hello\nworld\n")
	wantSh(t, mp, `stat -c %s f`, "12\n")
	wantSh(t, mp, `ls -l f | awk '{print $1, $5, $9}'`, "-rw-r--r-- 12 f\n")
	if got := string(treeBytes(t, root, "f")); got != "hello\nworld\n" {
		t.Errorf("the tree holds %q", got)
	}

	// Sizes are right at once after a rewrite, growing and shrinking.
	wantSh(t, mp, `echo abc > s; stat -c %s s; echo abcdefgh > s; ls -l s | awk '{print $5}'; echo a > s; stat -c %s s; cat s`,
		"4\n9\n2\na\n")

	wantSh(t, mp, `cp f g && cat g`, "hello\nworld\n")
	wantSh(t, mp, `mkdir d e && mv g d/g2 && ls d && mv d/g2 e/g3 && ls d e && cat e/g3`,
		"g2\nd:\n\ne:\ng3\nhello\nworld\n")
	wantSh(t, mp, `ls -a e`, ".\n..\ng3\n")
	wantSh(t, mp, `rm f && ls`, "d\ne\ns\n")
	wantShFail(t, mp, `cat f`, "No such file or directory")

	// Rename over a file, and a directory with what is in it.
	wantSh(t, mp, `echo 1 > a1 && echo 2 > a2 && mv a1 a2 && cat a2 && ls a1 2>/dev/null; echo $?`, "1\n2\n")
	wantSh(t, mp, `mkdir -p p/q && echo deep > p/q/file && mv p e/p && cat e/p/q/file && echo more >> e/p/q/file && cat e/p/q/file`,
		"deep\ndeep\nmore\n")
	if got := string(treeBytes(t, root, "e/p/q/file")); got != "deep\nmore\n" {
		t.Errorf("the tree holds %q", got)
	}

	// mkdir, rmdir, and their errors.
	wantShFail(t, mp, `mkdir d`, "File exists")
	wantShFail(t, mp, `rmdir e`, "Directory not empty")
	wantSh(t, mp, `rmdir d && ls`, "a2\ne\ns\n")

	// tee to two files.
	wantSh(t, mp, `echo x | tee t1 t2 >/dev/null && cat t1 t2`, "x\nx\n")

	// dd, sha256sum, cp of a bigger file, checked against the tree.
	wantSh(t, mp, `dd if=/dev/urandom of=big bs=4k count=300 2>/dev/null && stat -c %s big`, "1228800\n")
	sum := sha256.Sum256(treeBytes(t, root, "big"))
	want := hex.EncodeToString(sum[:]) + "\n"
	wantSh(t, mp, `sha256sum big | cut -d' ' -f1`, want)
	wantSh(t, mp, `cp big big2 && sha256sum big2 | cut -d' ' -f1`, want)
	wantSh(t, mp, `dd if=big bs=4k skip=100 count=2 2>/dev/null | wc -c`, "8192\n")
	wantSh(t, mp, `dd if=/dev/zero of=big bs=4k count=1 seek=1 conv=notrunc 2>/dev/null && stat -c %s big`, "1228800\n")
	if b := treeBytes(t, root, "big"); !bytes.Equal(b[4096:8192], make([]byte, 4096)) {
		t.Errorf("dd conv=notrunc seek=1 did not zero the second block")
	}

	// truncate.
	wantSh(t, mp, `truncate -s 10 t1 && stat -c %s t1`, "10\n")
	if got := treeBytes(t, root, "t1"); !bytes.Equal(got, []byte("x\n\x00\x00\x00\x00\x00\x00\x00\x00")) {
		t.Errorf("after truncate -s 10 the tree holds %q", got)
	}
	wantSh(t, mp, `truncate -s 0 t1 && stat -c %s t1 && cat t1`, "0\n")
	wantSh(t, mp, `truncate -s 5 new && stat -c %s new && wc -c < new`, "5\n5\n")
	wantSh(t, mp, `: > t2 && stat -c %s t2`, "0\n")
	wantSh(t, mp, `echo abc > z && : > z && stat -c %s z && cat z && echo end`, "0\nend\n")
	wantSh(t, mp, `echo abc > z && : > z; stat -c %s z; cat z; echo end`, "0\nend\n")
	// While a descriptor truncated the file and holds it, and while
	// another one appends to a file that one created.
	wantSh(t, mp, `echo old-content > z2; exec 3>z2; stat -c %s z2; printf new >&3; stat -c %s z2; cat z2`, "0\n3\nnew")
	wantSh(t, mp, `exec 3>z3; echo a >> z3; stat -c %s z3; cat z3`, "2\na\n")

	// <> opens for reading and writing, at offset 0 without truncating.
	wantSh(t, mp, `printf abcdef > r && exec 3<>r && printf XY >&3 && cat <&3 && exec 3>&- && echo && cat r`, "cdef\nXYcdef")

	// chmod and touch go to SetAttr.
	wantSh(t, mp, `chmod 600 s && stat -c %a s`, "600\n")
	wantSh(t, mp, `touch -d 2001-02-03T04:05:06Z s && TZ=UTC stat -c %y s | cut -c1-19`, "2001-02-03 04:05:06\n")

	// Inode numbers are stable across a rename, and listings agree.
	ino1 := mustSh(t, mp, `stat -c %i s`)
	ino2 := mustSh(t, mp, `mv s s2 && stat -c %i s2`)
	if ino1 != ino2 {
		t.Errorf("inode number changed across a rename: %s then %s", ino1, ino2)
	}
	if ls := mustSh(t, mp, `ls -i | awk '$2=="s2" {print $1}'`); ls != ino2 {
		t.Errorf("ls -i says %q, stat says %q", ls, ino2)
	}
}

// TestConformance runs fs/fstest through the mount: the mounted directory,
// seen through the os package, must keep the promises of the tree.
func TestConformance(t *testing.T) {
	forTrees(t, func(t *testing.T, root fs.Dir, _ bool) {
		log, _ := testLog(t)
		_, mp := mountT(t, root, Options{Log: log})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if err := fstest.Check(ctx, osDir{osNode{root: mp}}); err != nil {
			t.Fatal(err)
		}
	})
}

func TestUnmount(t *testing.T) {
	needFUSE(t)
	ctx := context.Background()
	mp := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mp, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lazyUnmount(mp) })

	// Unmount twice; Wait returns.
	m, err := Mount(ctx, memfs.New(), mp, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !isMounted(t, mp) {
		t.Fatal("not in /proc/self/mountinfo after Mount")
	}
	if err := m.Unmount(); err != nil {
		t.Fatal(err)
	}
	if err := m.Unmount(); err != nil {
		t.Fatalf("second Unmount: %v", err)
	}
	waitStopped(t, m)
	if isMounted(t, mp) {
		t.Fatal("still mounted after Unmount")
	}

	// Busy: a file open on the mount keeps it.
	m, err = Mount(ctx, memfs.New(), mp, Options{})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(mp, "open"))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Unmount(); err == nil {
		t.Error("Unmount with a file open: succeeded, want EBUSY")
	}
	f.Close()
	if err := m.Unmount(); err != nil {
		t.Fatalf("Unmount after closing the file: %v", err)
	}
	waitStopped(t, m)

	// Unmounted from outside: Wait returns and Unmount is a no-op.
	m, err = Mount(ctx, memfs.New(), mp, Options{})
	if err != nil {
		t.Fatal(err)
	}
	bin, _ := fusermount()
	if out, err := exec.Command(bin, "-u", mp).CombinedOutput(); err != nil {
		t.Fatalf("%s -u: %v: %s", bin, err, out)
	}
	waitStopped(t, m)
	if err := m.Unmount(); err != nil {
		t.Fatalf("Unmount after an outside unmount: %v", err)
	}

	// The mount point must be a directory, and the root a Dir.
	if _, err := Mount(ctx, memfs.New(), filepath.Join(mp, "nothing"), Options{}); err == nil {
		t.Error("Mount on a missing directory: succeeded")
	}
}

func waitStopped(t *testing.T, m *Mounted) {
	t.Helper()
	done := make(chan struct{})
	go func() { m.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Wait did not return within 20s")
	}
}

// isMounted reports whether mp is a mount point of this process's view.
func isMounted(t *testing.T, mp string) bool {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if fields := strings.Fields(s.Text()); len(fields) > 4 && fields[4] == mp {
			return true
		}
	}
	return false
}

// renameat2 calls renameat2(2), which package syscall does not have.
func renameat2(t *testing.T, from, to string, flags uint) error {
	t.Helper()
	var nr uintptr
	switch runtime.GOARCH {
	case "amd64":
		nr = 316
	case "arm64", "riscv64", "loong64":
		nr = 276
	default:
		t.Skipf("renameat2 syscall number not known for %s", runtime.GOARCH)
	}
	p1, err := syscall.BytePtrFromString(from)
	if err != nil {
		return err
	}
	p2, err := syscall.BytePtrFromString(to)
	if err != nil {
		return err
	}
	atFDCWD := -100
	_, _, e := syscall.Syscall6(nr, uintptr(atFDCWD), uintptr(unsafe.Pointer(p1)), uintptr(atFDCWD), uintptr(unsafe.Pointer(p2)), uintptr(flags), 0)
	runtime.KeepAlive(p1)
	runtime.KeepAlive(p2)
	if e != 0 {
		return e
	}
	return nil
}

func TestRenameFlags(t *testing.T) {
	log, _ := testLog(t)
	_, mp := mountT(t, memfs.New(), Options{Log: log})
	mustSh(t, mp, `echo a > a && echo b > b`)
	a, b, c := filepath.Join(mp, "a"), filepath.Join(mp, "b"), filepath.Join(mp, "c")
	if err := renameat2(t, a, b, renameNoReplace); !errors.Is(err, syscall.EEXIST) {
		t.Errorf("RENAME_NOREPLACE over a file: %v, want EEXIST", err)
	}
	if err := renameat2(t, a, b, renameExchange); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("RENAME_EXCHANGE: %v, want EINVAL", err)
	}
	if err := renameat2(t, a, c, renameNoReplace); err != nil {
		t.Errorf("RENAME_NOREPLACE to a new name: %v", err)
	}
	wantSh(t, mp, `cat b c`, "b\na\n")
}
