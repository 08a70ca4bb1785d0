package call

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"strata/fs"
)

func TestIDs(t *testing.T) {
	id := NewID(KindApp, "upper")
	kind, app, err := ParseID(id)
	if err != nil || kind != KindApp || app != "upper" {
		t.Fatalf("ParseID(%q) = %q, %q, %v", id, kind, app, err)
	}
	if NewID(KindApp, "upper") == id {
		t.Fatal("two IDs are equal")
	}
	for _, bad := range []string{"", "app.upper", "x.upper.0123456789", "app.Upper.0123456789", "app.upper.short", "app.up/per.0123456789", "app.upper.0123456789.x", strings.Repeat("a", MaxIDLen+1)} {
		if _, _, err := ParseID(bad); fs.KindOf(err) != fs.Invalid {
			t.Errorf("ParseID(%q) = %v, want an Invalid error", bad, err)
		}
	}
}

func TestRequestRoundTrip(t *testing.T) {
	id := NewID(KindApp, "wc")
	in := &Request{ID: id, App: "wc", Input: []byte("a\n\nb\n"), Budget: 1500 * time.Millisecond}
	got, err := DecodeRequest(id, EncodeRequest(in))
	if err != nil {
		t.Fatal(err)
	}
	if got.App != "wc" || !bytes.Equal(got.Input, in.Input) || got.Budget != in.Budget {
		t.Fatalf("got %+v, want %+v", got, in)
	}
	for _, bad := range []string{"", "hello", "strata-call 2\n\n", "strata-call 1\nbudget-ms x\n\n", "strata-call 1\nbudget-ms 1\nbudget-ms 2\n\n"} {
		if _, err := DecodeRequest(id, []byte(bad)); fs.KindOf(err) != fs.Invalid {
			t.Errorf("DecodeRequest(%q) = %v, want Invalid", bad, err)
		}
	}
}

func TestReplyRoundTrip(t *testing.T) {
	id := NewID(KindApp, "wc")
	for _, r := range []*Reply{
		{ID: id, OK: true, Where: "appedge/g1", Why: "replica hit", Route: "edge/g1 > appedge/g1", Out: []byte("1 2 3\n"), Err: []byte("log\n")},
		{ID: id, Where: "cloud", Kind: fs.Timeout, Reason: "app stopped\nat its limit", Transient: true},
		{ID: id, OK: true, Where: "cloud"},
	} {
		enc := EncodeReply(r)
		if n := ReplyLen(enc[:len(enc)-1]); n != len(enc) && len(r.Out)+len(r.Err) > 0 {
			t.Errorf("ReplyLen of a partial reply = %d, want %d", n, len(enc))
		}
		if n := ReplyLen(enc); n != len(enc) {
			t.Errorf("ReplyLen = %d, want %d", n, len(enc))
		}
		got, err := DecodeReply(id, enc)
		if err != nil {
			t.Fatal(err)
		}
		if got.OK != r.OK || got.Where != r.Where || got.Why != r.Why || got.Route != r.Route || got.Kind != r.Kind ||
			got.Transient != r.Transient || !bytes.Equal(got.Out, r.Out) || !bytes.Equal(got.Err, r.Err) {
			t.Errorf("got %+v, want %+v", got, r)
		}
		if !r.OK && (got.Reason != "app stopped; at its limit" || fs.KindOf(got.Error()) != fs.Timeout) {
			t.Errorf("failure = %q, %v", got.Reason, got.Error())
		}
	}
	if ReplyLen([]byte("strata-call 1\nstatus ok\n")) != -1 {
		t.Error("ReplyLen of a header without its end is not -1")
	}
	if _, err := DecodeReply(id, []byte("strata-call 1\nstatus ok\nout 5\nerr 0\n\nabc")); err == nil {
		t.Error("a short body decoded")
	}
}

func TestRecorderReplays(t *testing.T) {
	r := NewRecorder(2, 0, time.Hour)
	var runs atomic.Int32
	fn := func(context.Context) *Reply {
		runs.Add(1)
		time.Sleep(20 * time.Millisecond)
		return &Reply{OK: true, Out: []byte("x")}
	}
	var wg sync.WaitGroup
	replays := atomic.Int32{}
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep, replayed := r.Do(context.Background(), "a", fn)
			if string(rep.Out) != "x" {
				t.Errorf("reply %q", rep.Out)
			}
			if replayed {
				replays.Add(1)
			}
		}()
	}
	wg.Wait()
	if runs.Load() != 1 || replays.Load() != 7 {
		t.Fatalf("runs %d replays %d, want 1 and 7", runs.Load(), replays.Load())
	}
	// The oldest record goes when the cap is passed.
	r.Do(context.Background(), "b", fn)
	r.Do(context.Background(), "c", fn)
	if _, replayed := r.Do(context.Background(), "a", fn); replayed {
		t.Fatal("record a was kept past the cap")
	}
}

func TestRecorderDropsTransient(t *testing.T) {
	r := NewRecorder(0, 0, 0)
	n := 0
	fn := func(context.Context) *Reply {
		n++
		if n == 1 {
			return Failed("a", "edge", &fs.Error{Op: "dial", Kind: fs.Unavailable})
		}
		return &Reply{OK: true}
	}
	if rep, _ := r.Do(context.Background(), "a", fn); rep.OK || !rep.Transient {
		t.Fatalf("first reply %+v", rep)
	}
	if rep, replayed := r.Do(context.Background(), "a", fn); !rep.OK || replayed || n != 2 {
		t.Fatalf("retry after a transient failure: %+v replayed=%v runs=%d", rep, replayed, n)
	}
	if _, replayed := r.Do(context.Background(), "a", fn); !replayed || n != 2 {
		t.Fatal("a recorded reply ran again")
	}
}

func TestRecorderExpires(t *testing.T) {
	r := NewRecorder(0, 0, 10*time.Millisecond)
	fn := func(context.Context) *Reply { return &Reply{OK: true} }
	r.Do(context.Background(), "a", fn)
	time.Sleep(30 * time.Millisecond)
	if _, replayed := r.Do(context.Background(), "a", fn); replayed {
		t.Fatal("an expired record replayed")
	}
}

// The recorder holds at most its byte budget of answers: large replies
// push the oldest out, the newest stays even when it alone is larger, and
// the count goes down as replies are forgotten.
func TestRecorderByteBudget(t *testing.T) {
	const budget = 1 << 20
	r := NewRecorder(0, budget, time.Hour)
	big := func(n int) func(context.Context) *Reply {
		return func(context.Context) *Reply { return &Reply{OK: true, Out: make([]byte, n)} }
	}
	for i := range 100 {
		r.Do(context.Background(), fmt.Sprint("a", i), big(100<<10))
		if b := r.Bytes(); b > budget {
			t.Fatalf("after %d replies of 100 KiB the recorder holds %d bytes, budget %d", i+1, b, budget)
		}
	}
	if n := r.Len(); n < 9 || n > 10 {
		t.Fatalf("%d replies of 100 KiB kept in a 1 MiB budget", n)
	}
	if _, replayed := r.Do(context.Background(), "a99", big(1)); !replayed {
		t.Error("the newest reply was not kept")
	}
	if _, replayed := r.Do(context.Background(), "a0", big(1)); replayed {
		t.Error("the oldest reply was kept past the budget")
	}
	r.Do(context.Background(), "huge", big(3<<20))
	if _, replayed := r.Do(context.Background(), "huge", big(1)); !replayed || r.Len() != 1 {
		t.Errorf("a reply larger than the budget: replayed=%v, %d kept", replayed, r.Len())
	}
	r.Do(context.Background(), "small", big(10))
	if r.Len() != 1 || r.Bytes() > 1024 {
		t.Errorf("after a small reply: %d kept, %d bytes", r.Len(), r.Bytes())
	}
}
