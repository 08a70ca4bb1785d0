package up

import (
	"context"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"9fans.net/go/plan9"

	"strata/fs"
	"strata/mount/remote"
	"strata/tiers/call"
	"strata/tiers/tier"
)

// section is one "# NAME" section of a /status or /trace text.
type section struct {
	name string
	body string // the lines after the header
}

func sectionsOf(t *testing.T, text string) []section {
	t.Helper()
	var out []section
	for _, line := range strings.SplitAfter(text, "\n") {
		if name, ok := strings.CutPrefix(line, "# "); ok {
			out = append(out, section{name: strings.TrimSuffix(name, "\n")})
			continue
		}
		if line == "" {
			continue
		}
		if len(out) == 0 {
			t.Fatalf("text before the first section header:\n%s", text)
		}
		out[len(out)-1].body += line
	}
	return out
}

func names(ss []section) []string {
	var n []string
	for _, s := range ss {
		n = append(n, s.name)
	}
	return n
}

// wantLines fails unless every line of want is a line of s's body.
func wantLines(t *testing.T, s section, text string, want ...string) {
	t.Helper()
	lines := strings.Split(s.body, "\n")
	for _, w := range want {
		if !slices.Contains(lines, w) {
			t.Errorf("section %s lacks the line %q:\n%s", s.name, w, text)
		}
	}
}

// wantMatch fails unless a line of s's body matches re.
func wantMatch(t *testing.T, s section, text, re string) {
	t.Helper()
	rx := regexp.MustCompile("(?m)^" + re + "$")
	if !rx.MatchString(s.body) {
		t.Errorf("section %s has no line matching %q:\n%s", s.name, re, text)
	}
}

var arrivedLine = `arrived \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z`

// forward invokes app with input through the edge at tree under id.
func forward(t *testing.T, tree *remote.Tree, id, app, input string) *call.Reply {
	t.Helper()
	r, err := tier.Forward(context.Background(), tree, &call.Request{ID: id, App: app, Input: []byte(input), Budget: 10 * time.Second})
	if err != nil {
		t.Fatalf("invoking %s: %v", app, err)
	}
	if !r.OK {
		t.Fatalf("invoking %s: %s", app, r.Reason)
	}
	return r
}

// An invocation's trace, read at the edge, shows every tier it touched,
// with the right decisions; a retry shows the replay; an unknown ID is
// NotExist; ls lists the IDs.
func TestTraceThroughTiers(t *testing.T) {
	h := start(t, Config{})
	edge := h.Groups[0].Edge.Local()
	tree, err := remote.Dial(context.Background(), "tcp", edge, remote.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer tree.Close()
	fsys := fsys9(t, edge)

	// upper: a hit at the app edge.
	upperID := call.NewID(call.KindApp, "upper")
	if r := forward(t, tree, upperID, "upper", "hello"); string(r.Out) != "HELLO" {
		t.Fatalf("upper answered %q", r.Out)
	}
	text := read9(t, fsys, "trace/"+upperID)
	t.Logf("trace of upper:\n%s", text)
	ss := sectionsOf(t, text)
	if got := names(ss); !slices.Equal(got, []string{"edge/g1", "appedge/g1"}) {
		t.Fatalf("upper's trace has sections %v, want edge/g1 then appedge/g1:\n%s", got, text)
	}
	wantLines(t, ss[0], text, "request "+upperID, "decision forwarded to appedge/g1: app requests go up", "where appedge/g1", "outcome ok")
	wantLines(t, ss[1], text, "request "+upperID, "decision ran here: replica hit (version 1)", "where appedge/g1", "outcome ok")
	for _, s := range ss {
		wantMatch(t, s, text, arrivedLine)
		wantMatch(t, s, text, `took-ms \d+\.\d{3}`)
	}

	// sha256: a miss at the app edge, run at the cloud.
	shaID := call.NewID(call.KindApp, "sha256")
	forward(t, tree, shaID, "sha256", "abc")
	text = read9(t, fsys, "trace/"+shaID)
	t.Logf("trace of sha256:\n%s", text)
	ss = sectionsOf(t, text)
	if got := names(ss); !slices.Equal(got, []string{"edge/g1", "appedge/g1", "cloud"}) {
		t.Fatalf("sha256's trace has sections %v, want edge/g1, appedge/g1, cloud:\n%s", got, text)
	}
	wantLines(t, ss[0], text, "decision forwarded to appedge/g1: app requests go up", "where cloud", "outcome ok")
	wantLines(t, ss[1], text, "decision forwarded to cloud: no replica here", "where cloud", "outcome ok")
	wantLines(t, ss[2], text, "decision ran here: it holds every app (version 1)", "where cloud", "outcome ok")

	// A retry with the same ID is replayed at the edge: the app edge and
	// the cloud saw it once.
	forward(t, tree, shaID, "sha256", "abc")
	text = read9(t, fsys, "trace/"+shaID)
	t.Logf("trace of sha256 after a retry:\n%s", text)
	ss = sectionsOf(t, text)
	if got := names(ss); !slices.Equal(got, []string{"edge/g1", "edge/g1", "appedge/g1", "cloud"}) {
		t.Fatalf("the retried trace has sections %v, want two arrivals at edge/g1, then appedge/g1 and cloud once:\n%s", got, text)
	}
	wantLines(t, ss[0], text, "decision forwarded to appedge/g1: app requests go up", "outcome ok")
	wantLines(t, ss[1], text, "decision replayed from the recorder", "where cloud", "outcome ok")

	// The same trace through the p9 client and Query.
	n, err := fs.Walk(context.Background(), tree.Root(), "trace/"+shaID)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := tier.Query(context.Background(), n.(fs.File)); err != nil || len(sectionsOf(t, string(b))) != 4 {
		t.Fatalf("Query of the trace: %v\n%s", err, b)
	}

	// An unknown ID: NotExist (a walk that stops short, in 9P2000).
	unknown := call.NewID(call.KindApp, "upper")
	if _, err := fsys.Open("trace/"+unknown, plan9.OREAD); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("open of an unknown trace: %v", err)
	}
	if _, err := fs.Walk(context.Background(), tree.Root(), "trace/"+unknown); fs.KindOf(err) != fs.NotExist {
		t.Fatalf("walk to an unknown trace over 9P2000.L: %v, want NotExist", err)
	}
	if _, err := fs.Walk(context.Background(), tree.Root(), "trace/not.an.id"); fs.KindOf(err) != fs.NotExist {
		t.Fatalf("walk to a malformed trace ID: %v, want NotExist", err)
	}

	// ls /trace lists both IDs.
	d, err := fsys.Open("trace", plan9.OREAD)
	if err != nil {
		t.Fatal(err)
	}
	ds, err := d.Dirreadall()
	d.Close()
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, e := range ds {
		listed = append(listed, e.Name)
	}
	if !slices.Contains(listed, upperID) || !slices.Contains(listed, shaID) || len(listed) != 2 {
		t.Fatalf("ls trace = %v, want %s and %s", listed, upperID, shaID)
	}
}

// A client tier's /trace starts with the client's section.
func TestTraceFromClient(t *testing.T) {
	h := start(t, Config{})
	c := startClient(t, h, 0, time.Second)
	root := client(t, c.Local())
	if got, err := invoke(t, root, "upper", "hi"); err != nil || got != "HI" {
		t.Fatalf("upper: %q %v", got, err)
	}
	var id string
	for _, line := range strings.Split(readFile(t, root, "apps/upper/where"), "\n") {
		if v, ok := strings.CutPrefix(line, "id "); ok {
			id = v
		}
	}
	if id == "" {
		t.Fatal("where names no request ID")
	}
	text := readFile(t, root, "trace/"+id)
	t.Logf("trace at the client:\n%s", text)
	ss := sectionsOf(t, text)
	if got := names(ss); !slices.Equal(got, []string{"client/g1-c1", "edge/g1", "appedge/g1"}) {
		t.Fatalf("sections %v, want client/g1-c1, edge/g1, appedge/g1:\n%s", got, text)
	}
	wantMatch(t, ss[0], text, `decision forwarded to edge/g1: .+`)
	wantLines(t, ss[0], text, "where appedge/g1", "outcome ok")
	wantLines(t, ss[2], text, "decision ran here: replica hit (version 1)", "outcome ok")
}

// /status at the edge has a section per tier up to the cloud: link
// states, counters, per-app hits and misses.
func TestStatusAllTiers(t *testing.T) {
	h := start(t, Config{})
	edge := h.Groups[0].Edge.Local()
	tree, err := remote.Dial(context.Background(), "tcp", edge, remote.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer tree.Close()
	forward(t, tree, call.NewID(call.KindApp, "upper"), "upper", "x")
	shaID := call.NewID(call.KindApp, "sha256")
	forward(t, tree, shaID, "sha256", "x")

	text := read9(t, fsys9(t, edge), "status")
	t.Logf("status at the edge:\n%s", text)
	ss := sectionsOf(t, text)
	if got := names(ss); !slices.Equal(got, []string{"edge/g1", "appedge/g1", "cloud"}) {
		t.Fatalf("status has sections %v, want edge/g1, appedge/g1, cloud:\n%s", got, text)
	}
	wantLines(t, ss[0], text, "tier edge/g1", "role edge", "invocations 2", "forwarded 2",
		"app sha256 invocations 1 hits 0 misses 0 failed 0", "app upper invocations 1 hits 0 misses 0 failed 0")
	wantMatch(t, ss[0], text, `parent appedge/g1 127\.0\.0\.1:\d+ connected since \S+, reconnects 0`)
	wantLines(t, ss[1], text, "tier appedge/g1", "role appedge", "invocations 2", "ran-here 1", "forwarded 1",
		"app sha256 invocations 1 hits 0 misses 1 failed 0", "app upper invocations 1 hits 1 misses 0 failed 0")
	wantMatch(t, ss[1], text, `parent cloud 127\.0\.0\.1:\d+ connected since \S+, reconnects 0`)
	wantMatch(t, ss[1], text, `held upper version 1 size \d+ hash [0-9a-f]{12} pinned`)
	wantLines(t, ss[2], text, "tier cloud", "role cloud", "invocations 1", "ran-here 1", "app sha256 invocations 1 hits 0 misses 0 failed 0")
	if strings.Contains(ss[2].body, "parent ") {
		t.Errorf("the cloud's section names a parent:\n%s", text)
	}

	// The cloud goes away: the edge's /status still answers soon, with
	// every section it can get and one line for the cloud.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	h.Cloud.Shutdown(ctx)
	cancel()
	began := time.Now()
	text = read9(t, fsys9(t, edge), "status")
	took := time.Since(began)
	t.Logf("status at the edge with the cloud down, after %v:\n%s", took, text)
	if took > tier.DefaultQueryBudget+time.Second {
		t.Errorf("/status took %v with the cloud down", took)
	}
	ss = sectionsOf(t, text)
	if got := names(ss); !slices.Equal(got, []string{"edge/g1", "appedge/g1", "cloud"}) {
		t.Fatalf("status has sections %v, want edge/g1, appedge/g1, cloud:\n%s", got, text)
	}
	wantLines(t, ss[0], text, "tier edge/g1", "invocations 2")
	wantMatch(t, ss[0], text, `parent appedge/g1 127\.0\.0\.1:\d+ connected since .*`)
	wantLines(t, ss[1], text, "tier appedge/g1", "app upper invocations 1 hits 1 misses 0 failed 0")
	wantMatch(t, ss[2], text, `unreachable cloud \(127\.0\.0\.1:\d+\): .+`)
	if strings.Count(ss[2].body, "\n") != 1 {
		t.Errorf("the cloud's section is not one line:\n%s", text)
	}
	// So does the trace of an invocation that reached the cloud.
	text = read9(t, fsys9(t, edge), "trace/"+shaID)
	ss = sectionsOf(t, text)
	if got := names(ss); !slices.Equal(got, []string{"edge/g1", "appedge/g1", "cloud"}) {
		t.Fatalf("trace has sections %v, want edge/g1, appedge/g1, cloud:\n%s", got, text)
	}
	wantLines(t, ss[1], text, "decision forwarded to cloud: no replica here", "outcome ok")
	wantMatch(t, ss[2], text, `unreachable cloud \(127\.0\.0\.1:\d+\): .+`)

	// The app edge's own link state says so too, once it has noticed.
	text = read9(t, fsys9(t, edge), "status")
	ss = sectionsOf(t, text)
	wantMatch(t, ss[1], text, `parent cloud 127\.0\.0\.1:\d+ down: .+`)
}
