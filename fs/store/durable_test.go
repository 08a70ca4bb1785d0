package store

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"strata/fs"
	"strata/fs/fstest"
)

func TestConformance(t *testing.T) {
	s, dir := open(t)
	if err := fstest.Check(ctx, s.Root()); err != nil {
		t.Fatal(err)
	}
	if tt := temps(t, dir); len(tt) != 0 {
		t.Errorf("temporary files left: %v", tt)
	}
	put(t, s.Root(), "top", []byte("top"))
	d, _ := s.Root().Mkdir(ctx, "d", 0o755)
	put(t, d, "inner", bytes.Repeat([]byte("inner"), 1000))
	if err := fstest.Check(ctx, s.Root(), "top", "d/inner"); err != nil {
		t.Fatal(err)
	}
}

// childEnv names the store directory of the process that TestKill9 kills.
const childEnv = "STORE_TEST_KILL9_DIR"

// TestKill9Child is the process that TestKill9 kills. It acknowledges some
// data, leaves other writes unacknowledged, says "ready" and waits.
func TestKill9Child(t *testing.T) {
	dir := os.Getenv(childEnv)
	if dir == "" {
		t.Skip("run by TestKill9")
	}
	s, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	root := s.Root()
	f := put(t, root, "acked", []byte("acknowledged"))
	h, _ := f.Open(ctx, fs.WriteOnly|fs.Truncate)
	write(t, h, []byte("not acknowledged"), 0)
	_, h, _ = root.Create(ctx, "fresh", fs.WriteOnly, 0o644)
	write(t, h, []byte("not acknowledged"), 0)
	_, h, _ = root.Create(ctx, "synced", fs.WriteOnly, 0o644)
	write(t, h, []byte("synced"), 0)
	if err := h.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	d, _ := root.Mkdir(ctx, "d", 0o755)
	put(t, d, "moved", []byte("moved"))
	d.Rename(ctx, "moved", root, "moved")
	fmt.Println("ready")
	time.Sleep(time.Hour)
}

func TestKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a process")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestKill9Child$")
	cmd.Env = append(os.Environ(), childEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if line != "ready\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("the child said %q, %v", line, err)
	}
	if len(temps(t, dir)) != 2 {
		t.Errorf("temporary files of the child: %v", temps(t, dir))
	}
	cmd.Process.Kill()
	cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("the child ended with %v, not by SIGKILL", cmd.ProcessState)
	}

	s, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	root := s.Root()
	expect(t, root, "acked", "acknowledged")
	expect(t, root, "fresh", "")
	expect(t, root, "synced", "synced")
	expect(t, root, "moved", "moved")
	if tt := temps(t, dir); len(tt) != 0 {
		t.Errorf("temporary files not swept: %v", tt)
	}
}

func TestConcurrent(t *testing.T) {
	s, _ := open(t)
	root := s.Root()
	const workers = 8
	var wg sync.WaitGroup

	// Many writers and readers of their own and each other's files.
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("f%d", i)
			for round := range 20 {
				data := bytes.Repeat([]byte{byte('a' + round)}, 1000+i)
				if err := store(root, name, data); err != nil {
					t.Error(err)
					return
				}
				if got, err := load(root, name); err != nil || !bytes.Equal(got, data) {
					t.Errorf("%s round %d: read back %d bytes, %v", name, round, len(got), err)
				}
				other := fmt.Sprintf("f%d", (i+1)%workers)
				if b, err := load(root, other); err == nil && len(b) > 0 && !bytes.Equal(b, bytes.Repeat(b[:1], len(b))) {
					t.Errorf("%s: a torn read: %q...", other, b[:min(len(b), 20)])
				}
			}
		}()
	}

	// One handle written and read at disjoint offsets at once.
	_, h, err := root.Create(ctx, "shared", fs.ReadWrite, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	const chunk = 4096
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := bytes.Repeat([]byte{byte('A' + i)}, chunk)
			for range 20 {
				if n, err := h.WriteAt(ctx, data, int64(i*chunk)); n != chunk || err != nil {
					t.Errorf("chunk %d: wrote %d bytes, %v", i, n, err)
				}
				buf := make([]byte, chunk)
				if n, err := h.ReadAt(ctx, buf, int64(i*chunk)); n != chunk || !bytes.Equal(buf, data) {
					t.Errorf("chunk %d reads %d bytes, %v", i, n, err)
				}
			}
		}()
	}

	// Names that come and go, and directories that move, meanwhile.
	sub, _ := root.Mkdir(ctx, "sub", 0o755)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := range 30 {
				name := fmt.Sprintf("t%d", i)
				if err := store(sub, name, []byte(name)); err != nil {
					t.Error(err)
				}
				sub.Rename(ctx, name, root, name+"-moved")
				root.Remove(ctx, name+"-moved")
				if round%10 == 0 && i == 0 {
					root.Rename(ctx, "sub", root, "sub2")
					root.Rename(ctx, "sub2", root, "sub")
				}
				root.ReadDir(ctx)
				sub.ReadDir(ctx)
			}
		}()
	}
	wg.Wait()
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	got := get(t, root, "shared")
	for i := range workers {
		if !bytes.Equal(got[i*chunk:(i+1)*chunk], bytes.Repeat([]byte{byte('A' + i)}, chunk)) {
			t.Errorf("shared: chunk %d differs", i)
		}
	}
	if sub, err := root.Lookup(ctx, "sub"); err != nil {
		t.Error(err)
	} else if list, err := sub.(fs.Dir).ReadDir(ctx); err != nil || len(list) != 0 {
		t.Errorf("sub at the end: %v, %v", list, err)
	}
}

// store and load are put and get for goroutines other than the test's.
func store(d fs.Dir, name string, data []byte) error {
	_, h, err := d.Create(ctx, name, fs.WriteOnly|fs.Truncate, 0o644)
	if err != nil {
		return err
	}
	if _, err := h.WriteAt(ctx, data, 0); err != nil {
		h.Close(ctx)
		return err
	}
	return h.Close(ctx)
}

func load(d fs.Dir, name string) ([]byte, error) {
	n, err := d.Lookup(ctx, name)
	if err != nil {
		return nil, err
	}
	h, err := n.(fs.File).Open(ctx, fs.ReadOnly)
	if err != nil {
		return nil, err
	}
	defer h.Close(ctx)
	info, err := n.Stat(ctx)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, info.Size+1)
	k, err := h.ReadAt(ctx, buf, 0)
	if err != nil && err != io.EOF {
		return nil, err
	}
	return buf[:k], nil
}

const benchSize = 64 << 20

func BenchmarkWrite64MiB(b *testing.B) {
	s, _ := open(b)
	buf := bytes.Repeat([]byte("0123456789abcdef"), (1<<20)/16)
	b.SetBytes(benchSize)
	for b.Loop() {
		_, h, err := s.Root().Create(ctx, "big", fs.WriteOnly|fs.Truncate, 0o644)
		if err != nil {
			b.Fatal(err)
		}
		for off := int64(0); off < benchSize; off += int64(len(buf)) {
			if _, err := h.WriteAt(ctx, buf, off); err != nil {
				b.Fatal(err)
			}
		}
		if err := h.Close(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRead64MiB(b *testing.B) {
	s, dir := open(b)
	if err := os.WriteFile(filepath.Join(dir, "big"), make([]byte, benchSize), 0o644); err != nil {
		b.Fatal(err)
	}
	f := lookupFile(b, s.Root(), "big")
	buf := make([]byte, 1<<20)
	b.SetBytes(benchSize)
	for b.Loop() {
		h, err := f.Open(ctx, fs.ReadOnly)
		if err != nil {
			b.Fatal(err)
		}
		for off := int64(0); off < benchSize; off += int64(len(buf)) {
			if n, err := h.ReadAt(ctx, buf, off); n != len(buf) || err != nil {
				b.Fatal(n, err)
			}
		}
		if err := h.Close(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
