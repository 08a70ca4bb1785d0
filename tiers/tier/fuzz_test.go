package tier

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"strata/fs"
	"strata/tiers/apps"
	"strata/tiers/call"
	"strata/tiers/repo"
	"strata/tiers/wasm"
)

// fuzzMaxInput caps a request in FuzzCtl's tier, small enough that the
// fuzzer reaches the cap.
const fuzzMaxInput = 64 << 10

// fuzzIterationLimit bounds one FuzzCtl input: past it the input hangs.
// It is below the ten seconds after which the fuzzing engine gives up on
// an input with no word of where it hung.
const fuzzIterationLimit = 8 * time.Second

// ctlFixture is the cloud tier FuzzCtl invokes upper on. It is made once
// per process (each fuzzing worker is one), before the inputs: building
// and compiling the app is far dearer than an invocation.
type ctlFixture struct {
	tier *Tier
	dir  string

	mu   sync.Mutex
	sent map[string][]*call.Request // requests sent under each ID, for replays
}

// ctlFix holds the process's fixture once made.
var ctlFix struct {
	mu  sync.Mutex
	fx  *ctlFixture
	err error
}

// getCtlFixture makes the fixture on first use.
func getCtlFixture() (*ctlFixture, error) {
	ctlFix.mu.Lock()
	defer ctlFix.mu.Unlock()
	if ctlFix.fx == nil && ctlFix.err == nil {
		ctlFix.fx, ctlFix.err = newCtlFixture()
	}
	return ctlFix.fx, ctlFix.err
}

// closeCtlFixture releases the fixture, if one was made.
func closeCtlFixture() {
	ctlFix.mu.Lock()
	defer ctlFix.mu.Unlock()
	if fx := ctlFix.fx; fx != nil {
		fx.tier.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		fx.tier.cfg.Runtime.Close(ctx)
		cancel()
		fx.tier.cfg.Apps.Close()
		os.RemoveAll(fx.dir)
	}
	ctlFix.fx, ctlFix.err = nil, errors.New("the fixture is closed")
}

func newCtlFixture() (_ *ctlFixture, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	mod, err := apps.Build(ctx, "upper")
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "strata-fuzz-ctl-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	r, err := repo.Open(dir, repo.Options{})
	if err != nil {
		return nil, err
	}
	if _, err := r.Put(ctx, "upper", mod); err != nil {
		return nil, err
	}
	rt, err := wasm.New(ctx, wasm.Config{})
	if err != nil {
		return nil, err
	}
	if err := rt.Compile(ctx, mod, wasm.Hash(mod)); err != nil {
		return nil, err
	}
	tr, err := New(Config{
		Role: Cloud, Name: "cloud", Apps: r, Runtime: rt,
		CallTimeout: 5 * time.Second, Limits: wasm.Limits{Timeout: 5 * time.Second},
		MaxInput: fuzzMaxInput,
	})
	if err != nil {
		return nil, err
	}
	return &ctlFixture{tier: tr, dir: dir, sent: map[string][]*call.Request{}}, nil
}

// remember notes that req was sent and returns every request sent under
// its ID so far: a retried ID may be answered with the recorded reply to
// an earlier one.
func (fx *ctlFixture) remember(req *call.Request) []*call.Request {
	fx.mu.Lock()
	defer fx.mu.Unlock()
	c := *req
	c.Input = bytes.Clone(req.Input)
	fx.sent[req.ID] = append(fx.sent[req.ID], &c)
	return slices.Clone(fx.sent[req.ID])
}

// upperModel is what the upper app answers: every character upper-cased
// as unicode.ToUpper does, bytes that are not UTF-8 as they are. For
// valid UTF-8 it is strings.ToUpper.
func upperModel(p []byte) []byte {
	var out []byte
	for i := 0; i < len(p); {
		r, size := utf8.DecodeRune(p[i:])
		if r == utf8.RuneError && size == 1 {
			out = append(out, p[i])
		} else {
			out = utf8.AppendRune(out, unicode.ToUpper(r))
		}
		i += size
	}
	return out
}

// wantUpper fails t unless got is upper's answer to input.
func wantUpper(t *testing.T, what string, input, got []byte) {
	t.Helper()
	if utf8.Valid(input) {
		if want := strings.ToUpper(string(input)); string(got) != want {
			t.Fatalf("%s: answer %q to %q, want strings.ToUpper: %q", what, clipQ(got), clipQ(input), clipQ([]byte(want)))
		}
		return
	}
	if want := upperModel(input); !bytes.Equal(got, want) {
		t.Fatalf("%s: answer %q to %q, want %q", what, clipQ(got), clipQ(input), clipQ(want))
	}
}

func clipQ(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}

// checkErr fails t unless err is an error a user can act on: an
// *fs.Error with a kind, and a non-empty message that names it.
func checkErr(t *testing.T, what string, err error) {
	t.Helper()
	var fe *fs.Error
	if !errors.As(err, &fe) {
		t.Fatalf("%s: error %v (%T) is not an *fs.Error", what, err, err)
	}
	k := fs.KindOf(err)
	msg := err.Error()
	if k == fs.Other || strings.TrimSpace(msg) == "" || !strings.Contains(msg, ": ") {
		t.Fatalf("%s: error %q has kind %q: want a message with a kind", what, msg, k)
	}
}

// watchdog panics, with every goroutine's stack, if the iteration is not
// done within d: a hang is a crash the fuzzer keeps.
func watchdog(d time.Duration, what string) (stop func() bool) {
	return time.AfterFunc(d, func() {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		panic(fmt.Sprintf("%s did not finish within %v:\n%s", what, d, buf))
	}).Stop
}

// readAnswer reads h from offset 0 to the end, chunk bytes at a time.
func readAnswer(ctx context.Context, h fs.Handle, chunk int) ([]byte, error) {
	var got []byte
	buf := make([]byte, chunk)
	for zero := 0; ; {
		n, err := h.ReadAt(ctx, buf, int64(len(got)))
		got = append(got, buf[:n]...)
		if errors.Is(err, io.EOF) {
			return got, nil
		}
		if err != nil {
			return got, err
		}
		if n == 0 {
			if zero++; zero > 100 {
				return got, errors.New("reads return nothing and no end")
			}
		}
	}
}

// pieces splits data after each sep byte; the pieces put back together
// are data.
func pieces(data []byte, sep byte) [][]byte {
	var ps [][]byte
	for len(data) > 0 {
		i := bytes.IndexByte(data, sep)
		if i < 0 {
			i = len(data) - 1
		}
		ps = append(ps, data[:i+1])
		data = data[i+1:]
	}
	return ps
}

// FuzzCtl writes arbitrary requests to the invocation files of upper in a
// cloud tier's namespace, with the real wasm runtime:
//
//   - /apps/upper/ctl: data in one or several writes (cut after each sep
//     byte, in order or backwards), then the answer read back from the
//     same handle, which must be strings.ToUpper of data (upper's
//     answer for bytes that are not UTF-8); or shell style, written and
//     closed, then /apps/upper/out; a write past the cap or at a
//     negative offset is refused and leaves the request whole;
//   - /apps/upper/calls/ID with ID fuzzed: a malformed ID, or one of
//     another app, is refused at lookup with a not-exist error that says
//     why; a good one takes data (raw, or encoded as a request) and
//     answers with a reply that decodes, or refuses data with a clear
//     error;
//   - an app that is not held here is not-exist, at lookup and invoked.
//
// Nothing may panic or hang, and every error is an *fs.Error with a kind.
//
//	go test -run '^$' -fuzz '^FuzzCtl$' -fuzztime 1m -parallel 1 ./tiers/tier/
func FuzzCtl(f *testing.F) {
	good := "app.upper.18a3c5e2f0b1c4d2-9f3b2a71c0de4455"
	for _, s := range []struct {
		data string
		sep  byte
		mode byte
		id   string
	}{
		{"hello", '\n', 0, good},
		{"hello world\nsecond line\n", '\n', 0x13, "app.upper.0123456789abcdef"},
		{"", 0, 0x04, good},
		{"straße ǆ ﬁ ß İ", ' ', 0x22, "app.upper.zzzzzzzz"},
		{"\xff\xfeinvalid \xc3 utf-8 \xe2\x82", 'i', 0x09, "app.upper.x"},
		{"strata-call 1\nbudget-ms 5000\n\nbody", '\n', 0, "app.upper.aaaaaaaa-bbbb"},
		{"strata-call 1\nbudget-ms 1\n\nslow?", '\n', 0, "app.upper.budget01"},
		{"strata-call 1\nbudget-ms -5\n\nx", 'x', 0, "app.upper.badbudget"},
		{"abc", 'b', 0x01, "store.upper.12345678"},
		{"abc", 'b', 0x10, "app.wc.12345678"},
		{"abc", 'c', 0x02, "app.UPPER.12345678"},
		{"abc", 'a', 0x08, "app.upper.1234567"},
		{"abc", 'a', 0xe0, "app..12345678"},
		{"abc", 'a', 0x00, "../../status"},
		{"abc", 'a', 0x00, "app.upper.12345678.extra"},
		{"abc", 'a', 0x00, "app.upper.12345678\x00"},
		{"abc", 'a', 0x00, strings.Repeat("a", 300)},
		{"abc", 'a', 0x00, "app.upper." + strings.Repeat("9", 200)},
		{"abc", 'a', 0x00, ""},
		{"abc", 'a', 0x00, "wc"},
	} {
		f.Add([]byte(s.data), s.sep, s.mode, s.id)
	}
	fx, err := getCtlFixture()
	if err != nil {
		f.Fatalf("making the tier: %v", err)
	}
	f.Cleanup(closeCtlFixture)
	f.Fuzz(func(t *testing.T, data []byte, sep, mode byte, id string) {
		defer watchdog(fuzzIterationLimit, "FuzzCtl iteration")()
		ctx, cancel := context.WithTimeout(context.Background(), fuzzIterationLimit*3/4)
		defer cancel()
		root, err := fx.tier.Root(ctx, "local")
		if err != nil {
			t.Fatal(err)
		}
		n, err := fs.Walk(ctx, root, "apps/upper")
		if err != nil {
			t.Fatalf("walk apps/upper: %v", err)
		}
		app := n.(fs.Dir)
		fuzzCtlFile(ctx, t, app, data, sep, mode)
		fuzzCallFile(ctx, t, fx, app, data, mode, id)
		fuzzMissingApp(ctx, t, fx, root, id)
	})
}

// fuzzCtlFile invokes upper through its ctl file.
func fuzzCtlFile(ctx context.Context, t *testing.T, app fs.Dir, data []byte, sep, mode byte) {
	lookup := func(name string) fs.File {
		n, err := app.Lookup(ctx, name)
		if err != nil {
			t.Fatalf("lookup %s: %v", name, err)
		}
		return n.(fs.File)
	}
	ctl := lookup("ctl")
	write := func(h fs.Handle, data []byte) {
		ps := pieces(data, sep)
		offs := make([]int64, len(ps))
		for i := 1; i < len(ps); i++ {
			offs[i] = offs[i-1] + int64(len(ps[i-1]))
		}
		if mode&0x01 != 0 { // backwards: each write leaves a gap before it
			slices.Reverse(ps)
			slices.Reverse(offs)
		}
		for i, p := range ps {
			if k, err := h.WriteAt(ctx, p, offs[i]); err != nil || k != len(p) {
				t.Fatalf("write of %d bytes at %d to ctl: %d, %v", len(p), offs[i], k, err)
			}
		}
	}
	chunk := 16 << (mode >> 5)

	if mode&0x04 != 0 {
		// Shell style: echo data > ctl, then cat out.
		h, err := ctl.Open(ctx, fs.WriteOnly)
		if err != nil {
			t.Fatalf("open ctl for writing: %v", err)
		}
		write(h, data)
		if err := h.Close(ctx); err != nil {
			checkErr(t, "close of ctl", err)
			t.Fatalf("close of ctl, which runs the request: %v", err)
		}
		out, err := fs.ReadAll(ctx, lookup("out"), 2*fuzzMaxInput)
		if err != nil {
			t.Fatalf("read out: %v", err)
		}
		wantUpper(t, "out after close", data, out)
		if e, err := fs.ReadAll(ctx, lookup("err"), 1<<16); err != nil || len(e) != 0 {
			t.Fatalf("err after a good run: %q, %v", e, err)
		}
		return
	}

	h, err := ctl.Open(ctx, fs.ReadWrite)
	if err != nil {
		t.Fatalf("open ctl: %v", err)
	}
	defer func() {
		if err := h.Close(ctx); err != nil {
			t.Errorf("close of ctl after reading the answer: %v", err)
		}
	}()
	if mode&0x08 != 0 {
		// Refused writes leave the request as it was.
		_, err := h.WriteAt(ctx, []byte("x"), fuzzMaxInput)
		if fs.KindOf(err) != fs.TooLarge {
			t.Fatalf("a write past the cap: %v, want too large", err)
		}
		checkErr(t, "write past the cap", err)
		_, err = h.WriteAt(ctx, []byte("x"), -1)
		if fs.KindOf(err) != fs.Invalid {
			t.Fatalf("a write at offset -1: %v, want invalid", err)
		}
		checkErr(t, "write at a negative offset", err)
	}
	write(h, data)
	got, err := readAnswer(ctx, h, chunk)
	if err != nil {
		checkErr(t, "reading ctl", err)
		t.Fatalf("reading ctl: %v", err)
	}
	wantUpper(t, "ctl", data, got)
	if mode&0x02 != 0 {
		// A write after the answer starts a new request.
		again := bytes.Clone(data)
		slices.Reverse(again)
		again = append(again, " again"...)
		write(h, again)
		got, err := readAnswer(ctx, h, chunk)
		if err != nil {
			checkErr(t, "reading ctl again", err)
			t.Fatalf("reading ctl again: %v", err)
		}
		wantUpper(t, "ctl, second request", again, got)
	}
}

// fuzzCallFile invokes upper through /apps/upper/calls/id.
func fuzzCallFile(ctx context.Context, t *testing.T, fx *ctlFixture, app fs.Dir, data []byte, mode byte, id string) {
	n, err := app.Lookup(ctx, "calls")
	if err != nil {
		t.Fatalf("lookup calls: %v", err)
	}
	calls := n.(fs.Dir)
	if err := fs.CheckName("walk", id); err != nil {
		return // no front end walks to such a name
	}
	kind, appID, perr := call.ParseID(id)
	cn, err := calls.Lookup(ctx, id)
	if perr != nil || kind != call.KindApp || appID != "upper" {
		if err == nil {
			t.Fatalf("lookup of calls/%q succeeded; want a refusal of the request ID", id)
		}
		checkErr(t, "lookup of a bad request ID", err)
		msg := err.Error()
		if fs.KindOf(err) != fs.NotExist || !(strings.Contains(msg, "request id") || strings.Contains(msg, "is not an invocation of upper")) {
			t.Fatalf("lookup of calls/%q: %q (%v), want not-exist saying what is wrong with the request ID", id, msg, fs.KindOf(err))
		}
		return
	}
	if err != nil {
		t.Fatalf("lookup of calls/%q, a good ID: %v", id, err)
	}
	msg := data
	if mode&0x10 != 0 {
		msg = call.EncodeRequest(&call.Request{ID: id, App: "upper", Input: data})
	}
	req, derr := call.DecodeRequest(id, msg)
	var sent []*call.Request
	if derr == nil {
		sent = fx.remember(req)
	}
	h, err := cn.(fs.File).Open(ctx, fs.ReadWrite)
	if err != nil {
		t.Fatalf("open calls/%s: %v", id, err)
	}
	defer h.Close(ctx)
	if k, err := h.WriteAt(ctx, msg, 0); err != nil || k != len(msg) {
		t.Fatalf("write of %d bytes to calls/%s: %d, %v", len(msg), id, k, err)
	}
	got, err := readAnswer(ctx, h, 16<<(mode>>5))
	if derr != nil {
		if err == nil {
			t.Fatalf("a request that does not decode (%v) was answered: %q", derr, clipQ(got))
		}
		checkErr(t, "a request that does not decode", err)
		if fs.KindOf(err) != fs.Invalid {
			t.Fatalf("a request that does not decode: %v, want invalid", err)
		}
		return
	}
	if err != nil {
		checkErr(t, "reading a call", err)
		t.Fatalf("reading calls/%s: %v", id, err)
	}
	r, err := call.DecodeReply(id, got)
	if err != nil {
		t.Fatalf("the reply to calls/%s does not decode: %v\n%q", id, err, clipQ(got))
	}
	if !r.OK {
		checkErr(t, "a failed call", r.Error())
		// Only a short budget, this time or under this ID before (a
		// failure that is not transient is recorded), may fail.
		for _, s := range sent {
			if s.Budget > 0 && s.Budget <= time.Second {
				return
			}
		}
		t.Fatalf("calls/%s with a budget of %v failed: %v", id, req.Budget, r.Error())
	}
	for _, s := range sent {
		if bytes.Equal(r.Out, upperModel(s.Input)) {
			return
		}
	}
	wantUpper(t, "calls/"+id, req.Input, r.Out)
}

// fuzzMissingApp looks up and invokes an app that is not held.
func fuzzMissingApp(ctx context.Context, t *testing.T, fx *ctlFixture, root fs.Dir, id string) {
	name := "nosuch"
	if repo.ValidID(id) == nil && id != "upper" {
		name = id
	}
	n, err := root.Lookup(ctx, "apps")
	if err != nil {
		t.Fatal(err)
	}
	_, err = n.(fs.Dir).Lookup(ctx, name)
	if fs.KindOf(err) != fs.NotExist || !strings.Contains(err.Error(), "not deployed") {
		t.Fatalf("lookup of apps/%s, not deployed: %v, want not-exist saying so", name, err)
	}
	checkErr(t, "lookup of an app not held", err)
	r := fx.tier.Invoke(ctx, &call.Request{ID: call.NewID(call.KindApp, "nosuch"), App: "nosuch", Input: []byte("x")})
	if r.OK || r.Kind != fs.NotExist || r.Transient {
		t.Fatalf("invoking an app not held: %+v, want a not-exist failure", r)
	}
	checkErr(t, "invoking an app not held", r.Error())
}
