package remote

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"strata/fs"
)

// fakeLink is a link on a pipe, for steps whose fn does not use it.
func fakeLink(t testing.TB) *link {
	tr := New("tcp", "127.0.0.1:1", Options{Name: "test"})
	t.Cleanup(func() { tr.Close() })
	c, peer := net.Pipe()
	t.Cleanup(func() { c.Close(); peer.Close() })
	s := &link{t: tr, conn: c, done: make(chan struct{})}
	s.ping = func() error { <-s.done; return net.ErrClosed } // a silent server
	return s
}

// untilDead is an fn that answers when the link is closed, as p9's client
// does when the connection goes.
func untilDead(s *link) func() (int, error) {
	return func() (int, error) {
		<-s.done
		return 0, net.ErrClosed
	}
}

func ringLen(s *link) int {
	s.watch.mu.Lock()
	defer s.watch.mu.Unlock()
	n := 0
	if s.watch.steps.next != nil {
		for st := s.watch.steps.next; st != &s.watch.steps; st = st.next {
			n++
		}
	}
	return n
}

// TestWatchShorterBound: a step with a short bound that starts while a
// step with a long one is in flight is found stuck at its own bound.
func TestWatchShorterBound(t *testing.T) {
	s := fakeLink(t)
	release := make(chan struct{})
	longDone := make(chan error, 1)
	go func() {
		c := WithTimeout(ctx, time.Hour)
		_, err := exec(c, s, s.plan(c), "long", "", func() (int, error) { <-release; return 1, nil }, nil)
		longDone <- err
	}()
	for ringLen(s) == 0 {
		time.Sleep(time.Millisecond)
	}
	c := WithTimeout(ctx, 50*time.Millisecond)
	start := time.Now()
	_, err := exec(c, s, s.plan(c), "short", "x", untilDead(s), nil)
	took := time.Since(start)
	wantKind(t, "short step", err, fs.Timeout)
	if took < 50*time.Millisecond || took > 2*time.Second {
		t.Errorf("short step took %v, want about 50ms", took)
	}
	if !s.dead.Load() || fs.KindOf(s.cause) != fs.Timeout {
		t.Errorf("link dead %v, cause %v; want closed with a timeout", s.dead.Load(), s.cause)
	}
	close(release)
	if err := <-longDone; err != nil {
		t.Errorf("long step, answered before its bound: %v", err)
	}
	if n := ringLen(s); n != 0 {
		t.Errorf("%d steps left in the watch", n)
	}
}

// TestWatchRearms: after the timer has fired with nothing due, a new
// step is still bounded.
func TestWatchRearms(t *testing.T) {
	s := fakeLink(t)
	c := WithTimeout(ctx, 20*time.Millisecond)
	for range 3 {
		if _, err := exec(c, s, s.plan(c), "quick", "", func() (int, error) { return 1, nil }, nil); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(60 * time.Millisecond) // the timer fires and finds nothing
	start := time.Now()
	_, err := exec(c, s, s.plan(c), "slow", "", untilDead(s), nil)
	wantKind(t, "slow step", err, fs.Timeout)
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("slow step took %v, want about 20ms", took)
	}
	if !s.dead.Load() {
		t.Error("link still up after a stuck step")
	}
}

// TestWatchDetached: a caller whose deadline comes first gets a Timeout
// at its deadline; the step runs on, answers within its bound, and what
// it returns is dropped; the link stays up.
func TestWatchDetached(t *testing.T) {
	s := fakeLink(t)
	c, cancel := context.WithTimeout(ctx, 40*time.Millisecond)
	defer cancel()
	c = WithTimeout(c, 5*time.Second)
	release := make(chan struct{})
	dropped := make(chan int, 1)
	f := newFid(nil)
	start := time.Now()
	_, err := exec(c, s, s.plan(c), "read", "f", func() (int, error) { <-release; return 7, nil }, func(v int) { dropped <- v }, f)
	took := time.Since(start)
	wantKind(t, "read past the caller's deadline", err, fs.Timeout)
	if took < 40*time.Millisecond || took > 2*time.Second {
		t.Errorf("caller waited %v, want about 40ms", took)
	}
	ch := f.quiet()
	if ch == nil {
		t.Fatal("fid quiet while a step still runs on it")
	}
	close(release)
	select {
	case v := <-dropped:
		if v != 7 {
			t.Errorf("dropped %d, want 7", v)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the late answer was not dropped")
	}
	<-ch
	if s.dead.Load() {
		t.Errorf("link closed: %v", s.cause)
	}
	for ringLen(s) != 0 {
		time.Sleep(time.Millisecond)
	}
}

// TestWatchDetachedStuck: the caller stops waiting at its deadline; the
// step, still unanswered at its bound, closes the link.
func TestWatchDetachedStuck(t *testing.T) {
	s := fakeLink(t)
	c, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	c = WithTimeout(c, 100*time.Millisecond)
	var dropped atomic.Bool
	start := time.Now()
	_, err := exec(c, s, s.plan(c), "walk", "a", untilDead(s), func(int) { dropped.Store(true) })
	wantKind(t, "walk past the caller's deadline", err, fs.Timeout)
	if took := time.Since(start); took >= 100*time.Millisecond {
		t.Errorf("caller waited %v, want about 20ms", took)
	}
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		t.Fatal("link still up after the bound")
	}
	if took := time.Since(start); took < 100*time.Millisecond {
		t.Errorf("link closed after %v, before the bound", took)
	}
	if fs.KindOf(s.cause) != fs.Timeout {
		t.Errorf("link closed by %v, want a timeout", s.cause)
	}
	if dropped.Load() {
		t.Error("dropped the result of a failed step")
	}
}

// TestWatchMany: steps of both kinds, many at once, all answered in time.
func TestWatchMany(t *testing.T) {
	s := fakeLink(t)
	var wg sync.WaitGroup
	errs := make(chan error, 400)
	for i := range 400 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := WithTimeout(ctx, time.Duration(1+i%7)*time.Second)
			if i%2 == 1 {
				var cancel context.CancelFunc
				c, cancel = context.WithTimeout(c, 500*time.Millisecond)
				defer cancel()
			}
			v, err := exec(c, s, s.plan(c), "op", "", func() (int, error) {
				time.Sleep(time.Duration(i%5) * time.Millisecond)
				return i, nil
			}, nil)
			if err == nil && v != i {
				err = errors.New("wrong answer")
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := ringLen(s); n != 0 {
		t.Errorf("%d steps left in the watch", n)
	}
	if s.dead.Load() {
		t.Errorf("link closed: %v", s.cause)
	}
}

// TestWatchAliveLink: a step past its bound on a link that still answers
// (a probe, here) is a server waiting on something of its own, not a
// stuck one: the step gets more time and its answer arrives, the link
// stays. A step that never answers is stuck all the same, once the
// extensions are spent.
func TestWatchAliveLink(t *testing.T) {
	const bound = 100 * time.Millisecond
	s := fakeLink(t)
	var probes atomic.Int32
	s.ping = func() error { probes.Add(1); return nil }
	c := WithTimeout(ctx, bound)
	n, err := exec(c, s, s.plan(c), "readdir", "apps", func() (int, error) {
		time.Sleep(bound * 3 / 2)
		return 7, nil
	}, nil)
	if err != nil || n != 7 {
		t.Fatalf("a late answer on a live link: %d, %v", n, err)
	}
	if probes.Load() == 0 {
		t.Error("the link was not probed")
	}
	if s.dead.Load() {
		t.Fatalf("the link was closed: %v", s.cause)
	}

	start := time.Now()
	_, err = exec(c, s, s.plan(c), "walk", "never", untilDead(s), nil)
	took := time.Since(start)
	if !s.dead.Load() {
		t.Fatalf("the link is up after a step that never answered: %v", err)
	}
	wantKind(t, "a step that never answers", err, fs.Timeout)
	if min := bound * 5 / 2; took < min || took > 20*bound {
		t.Errorf("the stuck step ended the link after %v, want between %v and %v", took, min, 20*bound)
	}
}

// TestMinRate: a read or write step's bound grows with its size at
// Options.MinRate; other steps have the plain bound.
func TestMinRate(t *testing.T) {
	tr := New("tcp", "127.0.0.1:1", Options{Timeout: 2 * time.Second, MinRate: 8 << 10})
	defer tr.Close()
	s := &link{t: tr}
	if b := s.plan(ctx).bound; b != 2*time.Second {
		t.Errorf("plain bound %v", b)
	}
	if b := s.planFor(ctx, 128<<10).bound; b != 18*time.Second {
		t.Errorf("bound of a 128 KiB step at 8 KiB/s: %v, want 18s", b)
	}
	if b := s.planFor(WithTimeout(ctx, time.Second), 8<<10).bound; b != 2*time.Second {
		t.Errorf("bound of an 8 KiB step with a 1s timeout: %v, want 2s", b)
	}
	def := New("tcp", "127.0.0.1:1", Options{})
	defer def.Close()
	if b := (&link{t: def}).planFor(ctx, DefaultMinRate).bound; b != DefaultTimeout+time.Second {
		t.Errorf("default bound of a step of DefaultMinRate bytes: %v", b)
	}
}
