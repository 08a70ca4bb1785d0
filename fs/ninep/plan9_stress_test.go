package ninep

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"9fans.net/go/plan9"
	"9fans.net/go/plan9/client"

	"strata/fs"
)

// plan9Pipeline sends frames without waiting and returns the replies by tag.
func plan9Pipeline(t *testing.T, rc *plan9Raw, reqs []*plan9.Fcall) map[uint16]*plan9.Fcall {
	t.Helper()
	var all []byte
	for _, f := range reqs {
		b, err := f.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	sent := make(chan error, 1)
	go func() {
		rc.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
		_, err := rc.c.Write(all)
		sent <- err
	}()
	got := map[uint16]*plan9.Fcall{}
	for range reqs {
		rx, err := rc.tryRecv(30 * time.Second)
		if err != nil {
			t.Fatalf("after %d replies: %v", len(got), err)
		}
		if got[rx.Tag] != nil {
			t.Fatalf("two replies for tag %d", rx.Tag)
		}
		got[rx.Tag] = rx
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	return got
}

// 1,000 requests outstanding on one connection: all are answered, none
// dropped, and the server lives (go9p's own server panics past ~200).
func TestPlan9Outstanding1000(t *testing.T) {
	data := strings.Repeat("0123456789abcdef", 64) // 1 KiB
	for _, maxOut := range []int{0, 8} {
		t.Run(fmt.Sprintf("MaxOutstanding=%d", maxOut), func(t *testing.T) {
			addr := plan9Serve(t, plan9TestTree(t, map[string]string{"f": data}), func(s *Server) { s.MaxOutstanding = maxOut })
			rc := plan9DialAttach(t, addr)
			rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 1, Wname: []string{"f"}})
			rc.ok(&plan9.Fcall{Type: plan9.Topen, Tag: 1, Fid: 1, Mode: plan9.OREAD})
			var reqs []*plan9.Fcall
			for i := range 1000 {
				reqs = append(reqs, &plan9.Fcall{Type: plan9.Tread, Tag: uint16(i + 1), Fid: 1, Offset: uint64(i % 1024), Count: 100})
			}
			got := plan9Pipeline(t, rc, reqs)
			for i := range 1000 {
				rx := got[uint16(i+1)]
				off := i % 1024
				want := data[off:min(off+100, len(data))]
				if rx == nil || rx.Type != plan9.Rread || string(rx.Data) != want {
					t.Fatalf("tag %d: %v", i+1, rx)
				}
			}
			rc.ok(&plan9.Fcall{Type: plan9.Tclunk, Tag: 1, Fid: 1})
		})
	}
}

// Past MaxOutstanding the server stops reading: the tree never sees more
// than that many requests at once, and nothing is lost.
func TestPlan9Backpressure(t *testing.T) {
	gate := newPlan9Gate()
	root := &plan9Extra{Dir: plan9TestTree(t, nil), extra: map[string]fs.Node{"gate": gate}}
	addr := plan9Serve(t, root, func(s *Server) { s.MaxOutstanding = 4 })
	rc := plan9DialAttach(t, addr)
	rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 1, Wname: []string{"gate"}})
	rc.ok(&plan9.Fcall{Type: plan9.Topen, Tag: 1, Fid: 1, Mode: plan9.OREAD})
	for i := range 10 {
		rc.send(&plan9.Fcall{Type: plan9.Tread, Tag: uint16(100 + i), Fid: 1, Count: 10})
	}
	for range 4 {
		select {
		case <-gate.entered:
		case <-time.After(10 * time.Second):
			t.Fatal("reads did not reach the tree")
		}
	}
	time.Sleep(200 * time.Millisecond)
	gate.mu.Lock()
	most, blocked := gate.most, gate.blocked
	gate.mu.Unlock()
	if most != 4 || blocked != 4 || len(gate.entered) != 0 {
		t.Fatalf("%d reads in the tree at most, %d now, %d more entered; want 4, 4, 0", most, blocked, len(gate.entered))
	}
	close(gate.open)
	seen := map[uint16]bool{}
	for range 10 {
		rx := rc.recv()
		if rx.Type != plan9.Rread || string(rx.Data) != "gate" || seen[rx.Tag] {
			t.Fatalf("reply %v", rx)
		}
		seen[rx.Tag] = true
	}
	if gate.most != 4 {
		t.Errorf("%d reads in the tree at once, want at most 4", gate.most)
	}
}

// plan9SlowDir is a directory whose lookups block until canceled.
type plan9SlowDir struct {
	fs.DirDefaults
	entered chan struct{}
}

func (d *plan9SlowDir) Stat(context.Context) (fs.Info, error) {
	return fs.Info{Name: "slowdir", Mode: 0o755 | 1<<31, ID: 8888}, nil
}
func (d *plan9SlowDir) ReadDir(context.Context) ([]fs.Info, error) { return nil, nil }
func (d *plan9SlowDir) Lookup(ctx context.Context, name string) (fs.Node, error) {
	d.entered <- struct{}{}
	<-ctx.Done()
	return nil, &fs.Error{Op: "lookup", Path: "slowdir/" + name, Kind: fs.Canceled, Err: ctx.Err()}
}

func TestPlan9Flush(t *testing.T) {
	gate := newPlan9Gate()
	slow := &plan9SlowDir{entered: make(chan struct{}, 16)}
	root := &plan9Extra{Dir: plan9TestTree(t, map[string]string{"f": "file"}), extra: map[string]fs.Node{"gate": gate, "slowdir": slow}}
	addr := plan9Serve(t, root)
	rc := plan9DialAttach(t, addr)
	rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 1, Wname: []string{"gate"}})
	rc.ok(&plan9.Fcall{Type: plan9.Topen, Tag: 1, Fid: 1, Mode: plan9.OREAD})

	// A read blocked in the tree: Rflush comes, the read's reply never.
	rc.send(&plan9.Fcall{Type: plan9.Tread, Tag: 10, Fid: 1, Count: 10})
	<-gate.entered
	if rx := rc.rpc(&plan9.Fcall{Type: plan9.Tflush, Tag: 11, Oldtag: 10}); rx.Type != plan9.Rflush {
		t.Fatalf("Tflush: %v", rx)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		gate.mu.Lock()
		b := gate.blocked
		gate.mu.Unlock()
		if b == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the flushed read is still blocked in the tree: its context was not canceled")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if rx, err := rc.tryRecv(300 * time.Millisecond); err == nil {
		t.Fatalf("after Rflush: %v", rx)
	}
	// The tag is free again.
	if rx := rc.rpc(&plan9.Fcall{Type: plan9.Tstat, Tag: 10, Fid: 1}); rx.Type != plan9.Rstat {
		t.Fatalf("reusing the flushed tag: %v", rx)
	}
	// A flush of a tag not in flight is answered at once.
	if rx := rc.rpc(&plan9.Fcall{Type: plan9.Tflush, Tag: 12, Oldtag: 999}); rx.Type != plan9.Rflush {
		t.Fatalf("Tflush of an unknown tag: %v", rx)
	}
	// A duplicate tag in flight is refused; the first request goes on.
	rc.send(&plan9.Fcall{Type: plan9.Tread, Tag: 20, Fid: 1, Count: 10})
	<-gate.entered
	if e := rc.fail(&plan9.Fcall{Type: plan9.Tstat, Tag: 20, Fid: 1}); !strings.Contains(e, "tag 20 is already in use") {
		t.Errorf("duplicate tag: %s", e)
	}
	if e := rc.fail(&plan9.Fcall{Type: plan9.Tflush, Tag: 20, Oldtag: 20}); !strings.Contains(e, "tag 20 is already in use") {
		t.Errorf("Tflush with a tag in flight: %s", e)
	}
	if rx := rc.rpc(&plan9.Fcall{Type: plan9.Tflush, Tag: 21, Oldtag: 20}); rx.Type != plan9.Rflush {
		t.Fatalf("Tflush: %v", rx)
	}
	// A flushed walk makes no fid: the newfid can be used at once.
	rc.send(&plan9.Fcall{Type: plan9.Twalk, Tag: 30, Fid: 0, Newfid: 50, Wname: []string{"slowdir", "x"}})
	<-slow.entered
	if rx := rc.rpc(&plan9.Fcall{Type: plan9.Tflush, Tag: 31, Oldtag: 30}); rx.Type != plan9.Rflush {
		t.Fatalf("Tflush of a walk: %v", rx)
	}
	if rx := rc.rpc(&plan9.Fcall{Type: plan9.Twalk, Tag: 30, Fid: 0, Newfid: 50, Wname: []string{"f"}}); rx.Type != plan9.Rwalk {
		t.Fatalf("walk to the flushed walk's newfid: %v", rx)
	}
}

// Flushes racing with fast replies: the reply comes before the Rflush or
// not at all, never after it.
func TestPlan9FlushRace(t *testing.T) {
	addr := plan9Serve(t, plan9TestTree(t, map[string]string{"f": strings.Repeat("x", 4096)}))
	rc := plan9DialAttach(t, addr)
	rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 1, Wname: []string{"f"}})
	rc.ok(&plan9.Fcall{Type: plan9.Topen, Tag: 1, Fid: 1, Mode: plan9.OREAD})
	const n = 500
	var reqs []*plan9.Fcall
	for i := range n {
		a, b := uint16(1000+2*i), uint16(1001+2*i)
		reqs = append(reqs,
			&plan9.Fcall{Type: plan9.Tread, Tag: a, Fid: 1, Count: 4096},
			&plan9.Fcall{Type: plan9.Tflush, Tag: b, Oldtag: a})
	}
	var all []byte
	for _, f := range reqs {
		b, _ := f.Bytes()
		all = append(all, b...)
	}
	go rc.c.Write(all)
	flushed := map[uint16]bool{}
	answered, flushes := 0, 0
	for flushes < n {
		rx := rc.recv()
		switch rx.Type {
		case plan9.Rflush:
			flushes++
			flushed[rx.Tag-1] = true
		case plan9.Rread:
			if flushed[rx.Tag] {
				t.Fatalf("Rread for tag %d after its Rflush", rx.Tag)
			}
			answered++
		default:
			t.Fatalf("unexpected %v", rx)
		}
	}
	if rx, err := rc.tryRecv(200 * time.Millisecond); err == nil {
		t.Fatalf("after every Rflush: %v", rx)
	}
	t.Logf("%d of %d reads answered before their flush", answered, n)
}

// Twenty clients at once, each doing a mix of everything (run with -race).
func TestPlan9ConcurrentClients(t *testing.T) {
	shared := strings.Repeat("shared ", 5000)
	root := plan9TestTree(t, map[string]string{"shared": shared})
	addr := plan9Serve(t, root)
	var wg sync.WaitGroup
	for c := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := plan9Mixed(addr, c, shared); err != nil {
				t.Errorf("client %d: %v", c, err)
			}
		}()
	}
	wg.Wait()
	list, err := root.ReadDir(context.Background())
	if err != nil || len(list) != 1 {
		t.Errorf("at the end the root holds %d entries (%v), want 1", len(list), err)
	}
}

func plan9Mixed(addr string, c int, shared string) error {
	conn, err := client.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	fsys, err := conn.Attach(nil, fmt.Sprintf("user%d", c), "")
	if err != nil {
		return err
	}
	dir := fmt.Sprintf("c%02d", c)
	d, err := fsys.Create(dir, plan9.OREAD, plan9.DMDIR|0o755)
	if err != nil {
		return err
	}
	d.Close()
	var inner sync.WaitGroup
	errs := make(chan error, 3)
	for g := range 3 {
		inner.Add(1)
		go func() {
			defer inner.Done()
			r := rand.New(rand.NewPCG(uint64(c), uint64(g)))
			for i := range 5 {
				name := fmt.Sprintf("%s/f%d-%d", dir, g, i)
				data := make([]byte, 1+r.IntN(150_000))
				for j := range data {
					data[j] = byte(c + g + i + j)
				}
				if err := plan9Put(fsys, name, data); err != nil {
					errs <- err
					return
				}
				got, err := plan9Get(fsys, name)
				if err != nil || !bytes.Equal(got, data) {
					errs <- fmt.Errorf("%s: read back %d of %d bytes: %v", name, len(got), len(data), err)
					return
				}
				sh, err := plan9Get(fsys, "shared")
				if err != nil || string(sh) != shared {
					errs <- fmt.Errorf("shared: %d bytes, %v", len(sh), err)
					return
				}
				var nd plan9.Dir
				nd.Null()
				nd.Name = fmt.Sprintf("r%d-%d", g, i)
				if err := fsys.Wstat(name, &nd); err != nil {
					errs <- fmt.Errorf("rename %s: %v", name, err)
					return
				}
			}
		}()
	}
	inner.Wait()
	close(errs)
	for err := range errs {
		return err
	}
	df, err := fsys.Open(dir, plan9.OREAD)
	if err != nil {
		return err
	}
	ents, err := df.Dirreadall()
	df.Close()
	if err != nil {
		return err
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name)
	}
	if len(names) != 15 || !slices.IsSorted(names) {
		return fmt.Errorf("listing of %s: %v", dir, names)
	}
	for _, n := range names {
		if err := fsys.Remove(dir + "/" + n); err != nil {
			return err
		}
	}
	return fsys.Remove(dir)
}

func plan9Put(fsys *client.Fsys, name string, data []byte) error {
	fid, err := fsys.Create(name, plan9.OWRITE, 0o644)
	if err != nil {
		return err
	}
	if n, err := fid.Write(data); err != nil || n != len(data) {
		fid.Close()
		return fmt.Errorf("write %s: %d of %d bytes: %v", name, n, len(data), err)
	}
	return fid.Close()
}

func plan9Get(fsys *client.Fsys, name string) ([]byte, error) {
	fid, err := fsys.Open(name, plan9.OREAD)
	if err != nil {
		return nil, err
	}
	defer fid.Close()
	return io.ReadAll(fid)
}
