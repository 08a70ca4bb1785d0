package up

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	iofs "io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"github.com/hanwen/go-fuse/v2/posixtest"
)

// The client's mount, as a shell, go-fuse's POSIX conformance cases and
// io/fs's checker see it. Each test mounts the client tier of g1-c1 on a
// whole hierarchy and works on the client's durable store at the edge
// (store/) and on the apps.

// shellTimeout bounds one shell script on the mount.
const shellTimeout = 3 * time.Minute

// mountSh runs script with sh -c in dir, with messages in English, and
// returns what it printed on stdout and stderr. The shell changes to dir
// itself: with cmd.Dir the child would chdir into the mount between fork
// and exec, while this process, which serves the mount, may be stopping
// the world for a collection that waits for the forking thread.
func mountSh(t *testing.T, dir, script string, env ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), shellTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", `cd "$M" || exit 100`+"\n"+script)
	cmd.Env = append(append(os.Environ(), "LC_ALL=C", "M="+dir), env...)
	cmd.WaitDelay = 5 * time.Second
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("still running after %v: %w", shellTimeout, err)
	}
	return o.String(), e.String(), err
}

// mustMountSh runs script in dir and fails the test if it fails.
func mustMountSh(t *testing.T, dir, script string, env ...string) string {
	t.Helper()
	out, errOut, err := mountSh(t, dir, script, env...)
	if err != nil {
		t.Fatalf("sh -c %q: %v\nstdout: %s\nstderr: %s", script, err, out, errOut)
	}
	return out
}

// wantMountSh runs script in dir and checks what it prints.
func wantMountSh(t *testing.T, dir, script, want string) {
	t.Helper()
	if got := mustMountSh(t, dir, script); got != want {
		t.Errorf("sh -c %q:\ngot  %q\nwant %q", script, got, want)
	}
}

// watchdog bounds t: if t is still running after d, it is failed and
// the FUSE connection serving mnt is aborted (a forced unmount begins with
// that), so that every system call waiting on the mount returns and the
// test ends. A panic alone would not do: the binary could not exit while
// it holds descriptors on a mount that it serves itself; it is the last
// resort where the mount cannot be aborted (without the privilege to).
func watchdog(t *testing.T, mnt string, d time.Duration) {
	t.Helper()
	name := t.Name()
	var fired atomic.Bool
	timer := time.AfterFunc(d, func() {
		fired.Store(true)
		fmt.Fprintf(os.Stderr, "%s: still running after %v: aborting the mount %s\n", name, d, mnt)
		err := syscall.Unmount(mnt, syscall.MNT_FORCE)
		if err != nil && err != syscall.EBUSY {
			panic(fmt.Sprintf("%s: still running after %v, and the mount cannot be aborted: %v", name, d, err))
		}
		// The server stops when its connection is aborted, and then no
		// longer unmounts: detach the mount point now.
		syscall.Unmount(mnt, syscall.MNT_DETACH)
	})
	t.Cleanup(func() {
		timer.Stop()
		if fired.Load() {
			t.Errorf("still running after %v: the mount was aborted", d)
		}
	})
}

// seededFile writes size pseudo-random bytes from a fixed seed to a new
// file in dir and returns its path and the hex SHA-256 of its content.
func seededFile(t *testing.T, dir string, size int64) (string, string) {
	t.Helper()
	p := filepath.Join(dir, "source.bin")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	w := bufio.NewWriterSize(io.MultiWriter(f, h), 1<<20)
	src := rand.NewChaCha8([32]byte{'s', 't', 'r', 'a', 't', 'a'})
	if _, err := io.CopyN(w, src, size); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p, hex.EncodeToString(h.Sum(nil))
}

// sumField is the digest in a line of sha256sum's output.
func sumField(t *testing.T, out string) string {
	t.Helper()
	f := strings.Fields(out)
	if len(f) == 0 {
		t.Fatalf("sha256sum printed nothing")
	}
	return f[0]
}

func TestMountShellScenarios(t *testing.T) {
	h := start(t, Config{})
	mnt, _ := mountClient(t, h, "", 0)
	watchdog(t, mnt, 8*time.Minute)

	t.Run("WriteRead", func(t *testing.T) {
		wantMountSh(t, mnt, `echo hello > store/greeting; cat store/greeting`, "hello\n")
		// A rewrite replaces the content whole.
		wantMountSh(t, mnt, `printf 'bye' > store/greeting; cat store/greeting`, "bye")
		wantMountSh(t, mnt, `wc -c < store/greeting`, "3\n")
	})

	t.Run("Append", func(t *testing.T) {
		wantMountSh(t, mnt, `echo one > store/log; echo two >> store/log; printf three >> store/log; cat store/log`,
			"one\ntwo\nthree")
		wantMountSh(t, mnt, `wc -c < store/log`, "13\n")
	})

	t.Run("Rename", func(t *testing.T) {
		mustMountSh(t, mnt, `echo moved > store/before && mkdir store/into`)
		wantMountSh(t, mnt, `mv store/before store/after && cat store/after && test ! -e store/before && echo gone`,
			"moved\ngone\n")
		// Across directories, and over an existing file.
		wantMountSh(t, mnt, `echo old > store/into/target && mv store/after store/into/target && cat store/into/target && ls store/into`,
			"moved\ntarget\n")
		// A directory with its content.
		wantMountSh(t, mnt, `mv store/into store/renamed && cat store/renamed/target && test ! -e store/into && echo ok`,
			"moved\nok\n")
	})

	t.Run("Remove", func(t *testing.T) {
		mustMountSh(t, mnt, `echo x > store/doomed && mkdir store/emptydir`)
		wantMountSh(t, mnt, `rm store/doomed && rmdir store/emptydir && test ! -e store/doomed && test ! -e store/emptydir && echo gone`,
			"gone\n")
		// rm of a missing file and rmdir of a full directory fail with
		// their reason.
		if _, errOut, err := mountSh(t, mnt, `rm store/doomed`); err == nil || !strings.Contains(errOut, "No such file or directory") {
			t.Errorf("rm of a missing file: %v, stderr %q", err, errOut)
		}
		if _, errOut, err := mountSh(t, mnt, `rmdir store/renamed`); err == nil || !strings.Contains(errOut, "Directory not empty") {
			t.Errorf("rmdir of a full directory: %v, stderr %q", err, errOut)
		}
		wantMountSh(t, mnt, `rm -r store/renamed && test ! -e store/renamed && echo gone`, "gone\n")
	})

	t.Run("NestedDirs", func(t *testing.T) {
		wantMountSh(t, mnt, `mkdir -p store/a/b/c && echo deep > store/a/b/c/f && echo mid > store/a/b/g && cat store/a/b/c/f`,
			"deep\n")
		wantMountSh(t, mnt, `cd store/a && find . | sort`, ".\n./b\n./b/c\n./b/c/f\n./b/g\n")
		wantMountSh(t, mnt, `mkdir -p store/a/b/c && test -d store/a/b/c && echo again`, "again\n")
		wantMountSh(t, mnt, `rm -r store/a && test ! -e store/a && echo gone`, "gone\n")
	})

	t.Run("Big", func(t *testing.T) {
		const size = 64 << 20
		src, want := seededFile(t, t.TempDir(), size)
		env := "SRC=" + src
		mustMountSh(t, mnt, `dd if="$SRC" of=store/big bs=1M status=none`, env)
		wantMountSh(t, mnt, `wc -c < store/big`, fmt.Sprintf("%d\n", size))
		if got := sumField(t, mustMountSh(t, mnt, `sha256sum store/big`)); got != want {
			t.Fatalf("sha256sum store/big (written with dd) = %s, want %s", got, want)
		}
		// Copied within the mount, and read back.
		if got := sumField(t, mustMountSh(t, mnt, `cp store/big store/big.copy && sha256sum store/big.copy`)); got != want {
			t.Fatalf("sha256sum store/big.copy (cp) = %s, want %s", got, want)
		}
		mustMountSh(t, mnt, `cmp "$SRC" store/big.copy && rm store/big store/big.copy`, env)
	})

	t.Run("CtlOneDescriptor", func(t *testing.T) {
		wantMountSh(t, mnt, `exec 3<>apps/upper/ctl; echo hi >&3; cat <&3`, "HI\n")
	})

	t.Run("CtlThenOut", func(t *testing.T) {
		wantMountSh(t, mnt, `echo hi > apps/upper/ctl; cat apps/upper/out`, "HI\n")
	})

	t.Run("LsApps", func(t *testing.T) {
		names := strings.Fields(mustMountSh(t, mnt, `ls apps`))
		count := map[string]int{}
		for _, n := range names {
			count[n]++
		}
		for n, c := range count {
			if c != 1 {
				t.Errorf("ls apps lists %s %d times: %q", n, c, names)
			}
		}
		for _, app := range []string{"sha256", "spin", "upper", "wc"} {
			if count[app] == 0 {
				t.Errorf("ls apps lacks %s: %q", app, names)
			}
		}
	})
}

// posixSkip names the cases of go-fuse's posixtest that are not run on the
// mount, with why: each needs what the mount or the store does not offer,
// on purpose.
var posixSkip = map[string]string{
	"SymlinkReadlink":     "symlinks: the store refuses them on purpose (nothing may point out of it)",
	"SetattrSymlink":      "needs a symlink, which the store refuses on purpose",
	"OpenSymlinkRace":     "needs symlinks, which the store refuses on purpose",
	"Link":                "hard links: the store refuses them on purpose",
	"LinkUnlinkRename":    "needs a hard link, which the store refuses on purpose",
	"Fallocate":           "fallocate(2) is not offered by the mount (EOPNOTSUPP)",
	"FallocateKeepSize":   "fallocate(2) is not offered by the mount (EOPNOTSUPP)",
	"XAttr":               "extended attributes are not offered (the mount disables them)",
	"XAttrLarge":          "extended attributes are not offered (the mount disables them)",
	"Tmpfile":             "O_TMPFILE is not offered by the mount (EOPNOTSUPP)",
	"FcntlFlockLocksFile": "FUSE file locks are not offered: the kernel keeps POSIX locks locally, and one process's locks never conflict",
}

func TestMountPosix(t *testing.T) {
	h := start(t, Config{})
	mnt, _ := mountClient(t, h, "", 0)
	base := filepath.Join(mnt, "store", "posix")
	if err := os.Mkdir(base, 0o755); err != nil {
		t.Fatal(err)
	}

	names := make([]string, 0, len(posixtest.All))
	for name := range posixtest.All {
		names = append(names, name)
	}
	slices.Sort(names)
	var skipped []string
	for _, name := range names {
		if why, ok := posixSkip[name]; ok {
			skipped = append(skipped, name+": "+why)
		}
	}
	t.Logf("posixtest cases skipped (%d of %d):\n\t%s", len(skipped), len(names), strings.Join(skipped, "\n\t"))
	for name := range posixSkip {
		if posixtest.All[name] == nil {
			t.Errorf("posixSkip names %s, which posixtest does not have", name)
		}
	}

	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			if why, ok := posixSkip[name]; ok {
				t.Skip(why)
			}
			watchdog(t, mnt, 2*time.Minute)
			dir := filepath.Join(base, name)
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			posixtest.All[name](t, dir)
			// What a case leaves can be removed through the mount.
			if err := os.RemoveAll(dir); err != nil {
				t.Errorf("removing what the case left: %v", err)
			}
		})
	}
}

func TestMountFSTest(t *testing.T) {
	h := start(t, Config{})
	mnt, _ := mountClient(t, h, "", 0)
	watchdog(t, mnt, 5*time.Minute)
	root := filepath.Join(mnt, "store", "fstest")
	files := map[string]string{
		"hello.txt":        "hello, world\n",
		"empty":            "",
		"a/one":            "one\n",
		"a/b/two":          "two\n",
		"a/b/three.txt":    strings.Repeat("three ", 5000),
		"a/b/c/deep/leaf":  "leaf\n",
		"z/last":           "last\n",
		"z/sub/also-there": "also there\n",
	}
	var want []string
	for name, content := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		want = append(want, name)
	}
	if err := os.Mkdir(filepath.Join(root, "emptydir"), 0o755); err != nil {
		t.Fatal(err)
	}
	want = append(want, "emptydir")
	slices.Sort(want)

	fsys := os.DirFS(root)
	if err := fstest.TestFS(fsys, want...); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		b, err := iofs.ReadFile(fsys, name)
		if err != nil || string(b) != content {
			t.Errorf("%s: read %d bytes (%v), want %d", name, len(b), err, len(content))
		}
	}
}
