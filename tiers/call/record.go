package call

import (
	"context"
	"sync"
	"time"

	"strata/fs"
)

// Recorder remembers the replies of recent requests by ID, so that a
// retried request gets the recorded reply instead of running again, and a
// request that arrives while its twin is running waits for that run.
// It keeps at most Max replies for at most TTL (oldest go first); it is in
// memory only, so a restarted tier runs a retried request again.
type Recorder struct {
	max int
	ttl time.Duration

	mu    sync.Mutex
	m     map[string]*record
	order []string // IDs in the order they were recorded, oldest first
}

type record struct {
	done  chan struct{}
	reply *Reply
	at    time.Time
}

// Defaults of a Recorder.
const (
	DefaultRecords   = 10000
	DefaultRecordTTL = 10 * time.Minute
)

// NewRecorder returns a recorder keeping max replies for ttl (defaults if
// zero).
func NewRecorder(max int, ttl time.Duration) *Recorder {
	if max <= 0 {
		max = DefaultRecords
	}
	if ttl <= 0 {
		ttl = DefaultRecordTTL
	}
	return &Recorder{max: max, ttl: ttl, m: map[string]*record{}}
}

// Do returns the recorded reply of id, or waits for the run of id in
// flight, or runs fn and records its reply unless it is transient.
// replayed reports that fn did not run for this caller.
func (r *Recorder) Do(ctx context.Context, id string, fn func(context.Context) *Reply) (reply *Reply, replayed bool) {
	for {
		r.mu.Lock()
		r.expire(time.Now())
		rec, ok := r.m[id]
		if !ok {
			rec = &record{done: make(chan struct{})}
			r.m[id] = rec
			r.mu.Unlock()
			return r.run(ctx, id, rec, fn), false
		}
		r.mu.Unlock()
		select {
		case <-rec.done:
			if rec.reply != nil {
				return rec.reply, true
			}
			// The run was transient and dropped: try again.
		case <-ctx.Done():
			return Failed(id, "", &fs.Error{Op: "wait for request", Path: id, Kind: fs.KindOf(ctx.Err()), Err: ctx.Err()}), false
		}
	}
}

func (r *Recorder) run(ctx context.Context, id string, rec *record, fn func(context.Context) *Reply) (reply *Reply) {
	defer func() {
		r.mu.Lock()
		if reply != nil && !reply.Transient {
			rec.reply, rec.at = reply, time.Now()
			r.order = append(r.order, id)
			for len(r.order) > r.max {
				r.drop(r.order[0])
				r.order = r.order[1:]
			}
		} else {
			delete(r.m, id)
		}
		r.mu.Unlock()
		close(rec.done)
	}()
	return fn(ctx)
}

// expire drops records older than the TTL. r.mu is held.
func (r *Recorder) expire(now time.Time) {
	n := 0
	for _, id := range r.order {
		rec := r.m[id]
		if rec == nil || now.Sub(rec.at) <= r.ttl {
			break
		}
		r.drop(id)
		n++
	}
	r.order = r.order[n:]
}

func (r *Recorder) drop(id string) {
	if rec := r.m[id]; rec != nil && rec.reply != nil {
		delete(r.m, id)
	}
}

// Len is the number of recorded replies.
func (r *Recorder) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.order)
}
