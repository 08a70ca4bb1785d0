package tier

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"strata/fs"
	"strata/fs/memfs"
	"strata/tiers/call"
)

func TestTraceRingBounds(t *testing.T) {
	r := newTraceRing(3, time.Minute)
	now := time.Now()
	ids := []string{"app.a.00000001", "app.a.00000002", "app.a.00000003", "app.a.00000004"}
	for i, id := range ids {
		a := r.arrive(id, now.Add(time.Duration(i)*time.Millisecond))
		r.decide(a, "ran here: test", false)
		r.finish(a, &call.Reply{ID: id, OK: true, Where: "x"}, false, time.Millisecond)
	}
	if _, ok := r.has(ids[0]); ok {
		t.Errorf("the oldest of 4 IDs is kept in a ring of 3")
	}
	for _, id := range ids[1:] {
		if _, ok := r.has(id); !ok {
			t.Errorf("%s is not kept", id)
		}
	}
	if got := r.list(2); len(got) != 2 || got[0].Name != ids[2] || got[1].Name != ids[3] {
		t.Errorf("list(2) = %v, want the newest two", got)
	}
	// Arrivals of one ID are capped.
	for range maxTraceArrivals + 3 {
		a := r.arrive(ids[3], time.Now())
		r.finish(a, &call.Reply{ID: ids[3], OK: true, Where: "x"}, true, 0)
	}
	text, _, _ := r.text(ids[3], "x")
	if n := strings.Count(string(text), "request "+ids[3]+"\narrived "); n != maxTraceArrivals {
		t.Errorf("%d arrivals shown, want %d:\n%s", n, maxTraceArrivals, text)
	}
	if !strings.Contains(string(text), "more-arrivals 4 not kept") {
		t.Errorf("the arrivals left out are not counted:\n%s", text)
	}
	// The TTL drops old records.
	old := newTraceRing(10, 50*time.Millisecond)
	old.arrive(ids[0], time.Now().Add(-time.Second))
	if _, ok := old.has(ids[0]); ok || old.Len() != 0 {
		t.Errorf("a record past its TTL is kept")
	}
}

func TestParseQuery(t *testing.T) {
	q, err := parseQuery([]byte("budget-ms 1500\nhops 2\nfuture-key x\n"))
	if err != nil || q.budget != 1500*time.Millisecond || q.hops != 2 {
		t.Errorf("parseQuery = %+v, %v", q, err)
	}
	if q, err := parseQuery(nil); err != nil || q.budget != DefaultQueryBudget || q.hops != 0 {
		t.Errorf("empty query = %+v, %v", q, err)
	}
	if q, _ := parseQuery([]byte("budget-ms 99999999\n")); q.budget != MaxQueryBudget {
		t.Errorf("budget not capped: %v", q.budget)
	}
	for _, bad := range []string{"budget-ms -1", "budget-ms x", "hops -3"} {
		if _, err := parseQuery([]byte(bad)); err == nil {
			t.Errorf("parseQuery(%q) succeeded", bad)
		}
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// edgeWithParent serves an edge whose parent, called parentName, is at
// parentAddr, on addr's plain port ("" for none).
func edgeWithParent(t *testing.T, name, parentName, parentAddr, addr string) *Tier {
	t.Helper()
	parent := Parent{Name: parentName, Addr: parentAddr, Timeout: 5 * time.Second}.Mount(nil)
	t.Cleanup(func() { parent.Close() })
	st := memfs.New()
	tr, err := New(Config{Role: Edge, Name: name, Parent: parent, ParentName: parentName, Store: func(context.Context, string) (fs.Dir, error) { return st, nil }})
	if err != nil {
		t.Fatal(err)
	}
	if addr != "" {
		s, err := Serve(context.Background(), tr, Ports{Local: addr}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			s.Shutdown(ctx)
		})
	}
	return tr
}

func readLocal(t *testing.T, tr *Tier, p string) (string, error) {
	t.Helper()
	ctx := context.Background()
	root, err := tr.Root(ctx, "local")
	if err != nil {
		t.Fatal(err)
	}
	n, err := fs.Walk(ctx, root, p)
	if err != nil {
		return "", err
	}
	b, err := fs.ReadAll(ctx, n.(fs.File), 1<<20)
	return string(b), err
}

// A tier that is its own parent: /status answers once per tier up to
// MaxQueryHops, then says it stopped, and does so quickly.
func TestStatusParentLoop(t *testing.T) {
	addr := freeAddr(t)
	tr := edgeWithParent(t, "loop", "loop", addr, addr)
	start := time.Now()
	st, err := readLocal(t, tr, "status")
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("a looping /status took %v", took)
	}
	if n := strings.Count(st, "# loop\ntier loop\n"); n != MaxQueryHops {
		t.Errorf("%d sections of the tier, want %d:\n%s", n, MaxQueryHops, st)
	}
	if !strings.HasSuffix(st, "# loop\nnot asked: 8 tiers up from the reader (do the parents loop?)\n") {
		t.Errorf("the last section does not say why it stopped:\n%s", st)
	}
}

// A parent that accepts connections and never answers: /status still
// answers within its budget, with the local section and one line for
// the parent.
func TestStatusStuckParent(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, never answered, until the test ends
		}
	}()
	tr := edgeWithParent(t, "edge/x", "appedge/x", ln.Addr().String(), "")
	start := time.Now()
	st, err := readLocal(t, tr, "status")
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after %v:\n%s", took, st)
	if took > DefaultQueryBudget+time.Second {
		t.Errorf("/status with a stuck parent took %v", took)
	}
	if !strings.HasPrefix(st, "# edge/x\ntier edge/x\nrole edge\n") || !strings.Contains(st, "\ninvocations 0\n") {
		t.Errorf("the local section is missing:\n%s", st)
	}
	if !strings.Contains(st, "\n# appedge/x\nunreachable appedge/x (") {
		t.Errorf("the parent's section does not say it is unreachable:\n%s", st)
	}

	// Two tiers below the stuck one: the middle tier answers within the
	// budget the lowest one gave it, so its section is not lost.
	midAddr := freeAddr(t)
	edgeWithParent(t, "mid", "stuck", ln.Addr().String(), midAddr)
	low := edgeWithParent(t, "low", "mid", midAddr, "")
	start = time.Now()
	st, err = readLocal(t, low, "status")
	took = time.Since(start)
	t.Logf("after %v:\n%s", took, st)
	if err != nil {
		t.Fatal(err)
	}
	if took > DefaultQueryBudget+time.Second {
		t.Errorf("/status two tiers below a stuck one took %v", took)
	}
	for _, want := range []string{"# low\ntier low\n", "\n# mid\ntier mid\n", "\n# stuck\nunreachable stuck ("} {
		if !strings.Contains(st, want) {
			t.Errorf("status lacks %q", want)
		}
	}

	// A shorter budget, asked through Query, is kept too.
	ctx, cancel := context.WithTimeout(context.Background(), 800*time.Millisecond)
	defer cancel()
	root, _ := tr.Root(ctx, "local")
	n, _ := root.Lookup(ctx, "status")
	start = time.Now()
	b, err := Query(ctx, n.(fs.File))
	if err != nil || time.Since(start) > time.Second || !strings.Contains(string(b), "# appedge/x\nunreachable ") {
		t.Errorf("Query with 800ms: %v after %v:\n%s", err, time.Since(start), b)
	}
}

// An unknown or malformed ID is NotExist; a recorded one shows its
// decision and outcome.
func TestTraceLocal(t *testing.T) {
	tr := edgeWithParent(t, "edge/x", "appedge/x", "127.0.0.1:1", "")
	id := call.NewID(call.KindApp, "upper")
	if _, err := readLocal(t, tr, "trace/"+id); fs.KindOf(err) != fs.NotExist || !strings.Contains(err.Error(), "no record of request "+id) {
		t.Fatalf("unknown id: %v", err)
	}
	if _, err := readLocal(t, tr, "trace/not-an-id"); fs.KindOf(err) != fs.NotExist {
		t.Fatalf("malformed id: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	r := tr.Invoke(ctx, &call.Request{ID: id, App: "upper", Input: []byte("x")})
	cancel()
	if r.OK {
		t.Fatalf("an invocation through a parent that is not there succeeded")
	}
	got, err := readLocal(t, tr, "trace/"+id)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"# edge/x\nrequest " + id + "\narrived 20",
		"\ndecision forwarded to appedge/x: app requests go up\nwhere edge/x\ntook-ms ",
		"\noutcome failed: appedge/x: ",
		// It was forwarded, so the parent is asked, and cannot answer.
		"\n# appedge/x\nunreachable ",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("trace lacks %q:\n%s", want, got)
		}
	}
	root, _ := tr.Root(context.Background(), "local")
	n, _ := root.Lookup(context.Background(), "trace")
	list, err := n.(fs.Dir).ReadDir(context.Background())
	if err != nil || len(list) != 1 || list[0].Name != id {
		t.Errorf("ls trace = %v, %v", list, err)
	}
}
