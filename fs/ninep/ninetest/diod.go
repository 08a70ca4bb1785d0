package ninetest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// DiodTool finds one of Debian's diod tools (diodcat, diodls) and returns
// its path. In CI they are always installed, so a missing tool fails the
// test there; elsewhere it skips the test.
func DiodTool(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/usr/bin", "/sbin"} {
		if _, err := os.Stat(dir + "/" + name); err == nil {
			return dir + "/" + name
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not installed (apt-get install diod); CI requires it", name)
	}
	t.Skipf("%s is not installed (apt-get install diod)", name)
	return ""
}

// DiodOptions says where Diod finds the tools and how long they may take.
type DiodOptions struct {
	Diodcat, Diodls string // paths, as DiodTool finds them
	// Timeout is how long a tool waits on the server (its -t; 20s if
	// zero). A run that takes twice as long is killed.
	Timeout time.Duration
}

// Diod checks the 9P2000.L server at addr (host:port, TCP) with Debian's
// diodcat and diodls, which send Tauth first and give up on any answer
// but ENOENT. The tree served must hold exactly files (slash-separated
// path to content) and the directories their paths imply. Diod reads
// every file with diodcat, those larger than one 64 KiB message again
// with msize 8192, and each file in a directory again with that
// directory as the aname; it lists every directory with diodls, and each
// file with diodls -l for its size. The tools only read.
func Diod(ctx context.Context, addr string, files map[string]string, opts DiodOptions) error {
	r := &report{check: "Diod"}
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = 20 * time.Second
	}
	run := func(tool string, aname string, args ...string) (string, bool) {
		args = append([]string{"-s", addr, "-a", aname, "-t", strconv.Itoa(int(timeout.Seconds()))}, args...)
		c, cancel := context.WithTimeout(ctx, 2*timeout)
		defer cancel()
		cmd := exec.CommandContext(c, tool, args...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			r.errorf("%s %s: %v (stderr: %s)", path.Base(tool), strings.Join(args, " "), err, strings.Join(strings.Fields(stderr.String()), " "))
			return "", false
		}
		return stdout.String(), true
	}

	var paths []string
	dirs := map[string][]string{"": nil} // directory -> the names in it
	for p := range files {
		paths = append(paths, p)
		for d, name := path.Split(p); ; d, name = path.Split(d) {
			d = strings.TrimSuffix(d, "/")
			if !slices.Contains(dirs[d], name) {
				dirs[d] = append(dirs[d], name)
			}
			if d == "" {
				break
			}
		}
	}
	sort.Strings(paths)

	for _, p := range paths {
		want := files[p]
		if got, ok := run(opts.Diodcat, "/", p); ok && got != want {
			r.errorf("diodcat %s: %s", p, differ([]byte(got), []byte(want)))
		}
		if len(want) > 64<<10 {
			if got, ok := run(opts.Diodcat, "/", "-m", "8192", p); ok && got != want {
				r.errorf("diodcat -m 8192 %s: %s", p, differ([]byte(got), []byte(want)))
			}
		}
		if d, name := path.Split(p); d != "" {
			aname := "/" + strings.TrimSuffix(d, "/")
			if got, ok := run(opts.Diodcat, aname, name); ok && got != want {
				r.errorf("diodcat -a %s %s: %s", aname, name, differ([]byte(got), []byte(want)))
			}
		}
	}

	var dnames []string
	for d := range dirs {
		dnames = append(dnames, d)
	}
	sort.Strings(dnames)
	for _, d := range dnames {
		want := slices.Sorted(slices.Values(dirs[d]))
		var args []string
		if d != "" {
			args = []string{d}
		}
		if out, ok := run(opts.Diodls, "/", args...); ok {
			if got := slices.Sorted(slices.Values(strings.Fields(out))); !slices.Equal(got, want) {
				r.errorf("diodls /%s: got %q, want %q", d, got, want)
			}
		}
	}
	for _, p := range paths {
		size := fmt.Sprintf(" %d ", len(files[p]))
		if out, ok := run(opts.Diodls, "/", "-l", p); ok && (!strings.Contains(out, path.Base(p)) || !strings.Contains(out, size)) {
			r.errorf("diodls -l %s: got %q, want the name and the size %d", p, out, len(files[p]))
		}
	}
	return r.err()
}
