package ninep

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"strata/fs"
	"strata/fs/memfs"
)

// diodTool finds one of Debian's diod tools. In CI they are always
// installed, so a missing tool fails the test there; elsewhere it skips.
func diodTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
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

func runDiod(t *testing.T, tool string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, tool, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\nstderr: %s", tool, strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

// TestLinuxDiodTools: Debian's diodcat and diodls (libnpclient) read and
// list the tree. They send Tauth first and give up on anything but ENOENT.
func TestLinuxDiodTools(t *testing.T) {
	diodcat := diodTool(t, "diodcat")
	diodls := diodTool(t, "diodls")

	ctx := context.Background()
	tree := memfs.New()
	put := func(d fs.Dir, name, data string) {
		_, h, err := d.Create(ctx, name, fs.WriteOnly, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.WriteAt(ctx, []byte(data), 0); err != nil {
			t.Fatal(err)
		}
		if err := h.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	put(tree, "hello.txt", "hello from strata\n")
	big := strings.Repeat("0123456789abcdef", 40000) // 640 kB: many reads at 64 KiB
	put(tree, "big", big)
	sub, err := tree.Mkdir(ctx, "sub", 0o755)
	if err != nil {
		t.Fatal(err)
	}
	put(sub, "inner", "deeper\n")
	addr, _ := startL(t, tree)
	server := []string{"-s", addr, "-a", "/", "-t", "20"}

	if got := runDiod(t, diodcat, append(server, "hello.txt")...); got != "hello from strata\n" {
		t.Errorf("diodcat hello.txt: %q", got)
	}
	if got := runDiod(t, diodcat, append(server, "-m", "8192", "big")...); got != big {
		t.Errorf("diodcat big with msize 8192: %d bytes, want %d", len(got), len(big))
	}
	if got := runDiod(t, diodcat, append(server, "sub/inner")...); got != "deeper\n" {
		t.Errorf("diodcat sub/inner: %q", got)
	}
	// An aname below the root.
	if got := runDiod(t, diodcat, "-s", addr, "-a", "/sub", "-t", "20", "inner"); got != "deeper\n" {
		t.Errorf("diodcat -a /sub inner: %q", got)
	}

	if got := strings.Fields(runDiod(t, diodls, server...)); !equalSet(got, []string{"big", "hello.txt", "sub"}) {
		t.Errorf("diodls: %q", got)
	}
	if got := strings.Fields(runDiod(t, diodls, append(server, "sub")...)); !equalSet(got, []string{"inner"}) {
		t.Errorf("diodls sub: %q", got)
	}
	long := runDiod(t, diodls, append(server, "-l", "hello.txt")...)
	if !strings.Contains(long, "hello.txt") || !strings.Contains(long, " 18 ") {
		t.Errorf("diodls -l hello.txt: %q (want the name and the size 18)", long)
	}
}

func equalSet(got, want []string) bool {
	if len(got) != len(want) {
		return false
	}
	seen := map[string]bool{}
	for _, g := range got {
		seen[g] = true
	}
	for _, w := range want {
		if !seen[w] {
			return false
		}
	}
	return true
}
