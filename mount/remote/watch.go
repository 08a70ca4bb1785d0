package remote

import (
	"fmt"
	"sync"
	"time"
)

// A link's watch keeps the time of the steps in flight on it with one
// timer, armed for the earliest moment that matters: a step's bound,
// when an unanswered step is stuck, or a detached caller's deadline, when
// the caller stops waiting. A timer per step would cost an allocation and
// two operations on the runtime's timer heap for every round trip; here a
// step costs two short critical sections, and the timer is touched only
// when a step needs it sooner than it is armed for (which, with equal
// bounds, is when none is in flight).
type watch struct {
	mu    sync.Mutex
	steps inflight      // sentinel of the ring of steps in flight
	timer *time.Timer   // made on first use
	armed time.Duration // when the timer fires (see clock); 0 if it is not armed
}

// clock is the watch's time: monotonic, since clockStart.
func clock() time.Duration { return time.Since(clockStart) }

var clockStart = time.Now()

// inflight is a step on its way. Everything in it is guarded by the
// watch's mu, except what the step's caller set before start.
type inflight struct {
	prev, next *inflight // in the ring while the step runs

	op, path string
	bound    time.Duration
	due      time.Duration // clock time when the link is next tested (see fire)
	state    int32         // running, answered or stuck
	probe    bool          // the step is a probe: at its bound it is stuck
	extended int           // the times the step was given more time

	// A detached step: the caller waits until done or its deadline,
	// whichever comes first; the one that comes second finds the other
	// recorded and leaves the step to it.
	callerDue time.Duration // clock time of the caller's deadline; 0 if attached
	wake      bool          // the caller still has to be woken at callerDue
	ch        chan struct{} // wakes the caller: at most one token
	done      bool          // the step has its answer, for the caller
	abandoned bool          // the caller stopped waiting
}

var inflightPool = sync.Pool{New: func() any { return &inflight{ch: make(chan struct{}, 1)} }}

// start records a step under pl that begins now.
func (w *watch) start(s *link, op, path string, pl plan) *inflight {
	st := inflightPool.Get().(*inflight)
	now := clock()
	st.op, st.path, st.bound = op, path, pl.bound
	st.due = now + pl.bound
	st.state = running
	st.probe, st.extended = pl.probe, 0
	st.callerDue, st.wake, st.done, st.abandoned = 0, false, false, false
	next := st.due
	if pl.detached() {
		st.callerDue = now + time.Until(pl.deadline)
		st.wake = true
		next = min(next, st.callerDue)
	}
	w.mu.Lock()
	if w.steps.next == nil {
		w.steps.next, w.steps.prev = &w.steps, &w.steps
	}
	st.prev, st.next = w.steps.prev, &w.steps
	st.prev.next, w.steps.prev = st, st
	w.arm(s, now, next)
	w.mu.Unlock()
	return st
}

// arm makes the timer fire at or before at. Called with mu held.
func (w *watch) arm(s *link, now, at time.Duration) {
	if w.armed != 0 && w.armed <= at {
		return
	}
	w.armed = at
	if w.timer == nil {
		w.timer = time.AfterFunc(at-now, func() { w.fire(s) })
		return
	}
	w.timer.Reset(at - now)
}

// end records that the step's fn has returned, and releases st. It
// reports whether the answer came in time; if not, the step was stuck and
// the link has been (or is being) closed.
func (w *watch) end(st *inflight) bool {
	w.mu.Lock()
	ok := st.state == running
	if ok {
		st.state = answered
		st.prev.next, st.next.prev = st.next, st.prev
	}
	st.prev, st.next = nil, nil
	w.mu.Unlock()
	st.op, st.path = "", ""
	inflightPool.Put(st)
	return ok
}

// deliver tells a detached step's caller that the answer is there. It
// reports false if the caller has stopped waiting: then the step ends
// without it.
func (w *watch) deliver(st *inflight) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if st.abandoned {
		return false
	}
	st.done = true
	w.signal(st)
	return true
}

// await waits, in a detached step's caller, for the answer or the
// caller's deadline. It reports false if the deadline came first: then
// the step ends without the caller.
func (w *watch) await(st *inflight) bool {
	for {
		<-st.ch
		w.mu.Lock()
		switch {
		case st.done:
			w.mu.Unlock()
			return true
		case clock() >= st.callerDue:
			st.abandoned = true
			w.mu.Unlock()
			return false
		}
		w.mu.Unlock()
	}
}

// signal puts the caller's token, unless one is waiting. Called with mu
// held.
func (w *watch) signal(st *inflight) {
	select {
	case st.ch <- struct{}{}:
	default:
	}
}

// maxExtensions is how many times a step past its bound may be given
// more time because the link is alive.
const maxExtensions = 2

// fire handles what is due: a step past its bound gets more time if the
// link has answered anything within the last bound, or else a probe of
// the link and half a bound more to see it answered; past that, or past
// maxExtensions, it is stuck and closes the link. A detached caller past
// its deadline is woken. Then the timer is armed for what comes next.
func (w *watch) fire(s *link) {
	var stuckErr error
	var probeAfter *inflight // a step whose lateness calls for a probe
	var probeBound time.Duration
	heard := time.Since(time.Unix(0, s.heard.Load()))
	w.mu.Lock()
	now := clock()
	w.armed = 0
	next := time.Duration(0)
	soonest := func(at time.Duration) {
		if next == 0 || at < next {
			next = at
		}
	}
	if w.steps.next != nil {
		for st := w.steps.next; st != &w.steps; {
			following := st.next
			if st.wake {
				if st.callerDue <= now {
					st.wake = false
					if !st.done && !st.abandoned {
						w.signal(st)
					}
				} else {
					soonest(st.callerDue)
				}
			}
			if st.due <= now && !st.probe && st.extended < maxExtensions {
				st.extended++
				if heard < st.bound {
					st.due = now + st.bound
				} else {
					if probeAfter == nil || st.bound < probeBound {
						probeAfter, probeBound = st, st.bound/2
					}
					st.due = now + st.bound/2 + st.bound/8
				}
			}
			if st.due <= now {
				// Only a step still waiting for its answer is stuck.
				st.state = stuck
				st.prev.next, st.next.prev = st.next, st.prev
				st.prev, st.next = nil, nil
				if stuckErr == nil {
					stuckErr = timeoutError(fmt.Sprintf("%s: no answer within %v", joinOp(st.op, st.path), st.bound))
				}
			} else {
				soonest(st.due)
			}
			st = following
		}
	}
	var late string
	if probeAfter != nil {
		late = fmt.Sprintf("%s unanswered for %v", joinOp(probeAfter.op, probeAfter.path), probeAfter.bound)
	}
	if next != 0 {
		w.arm(s, now, next)
	}
	w.mu.Unlock()
	if stuckErr != nil {
		s.kill(stuckErr)
		return
	}
	if probeAfter != nil {
		s.probe(late, probeBound)
	}
}
