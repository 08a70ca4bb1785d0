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
	mu  sync.Mutex
	m   map[string]*record
	win Window // the recorded IDs, oldest first
}

type record struct {
	done  chan struct{}
	reply *Reply
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
	return &Recorder{m: map[string]*record{}, win: Window{Max: max, TTL: ttl}}
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
			rec.reply = reply
			for _, old := range r.win.Add(id, time.Now()) {
				r.drop(old)
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
	for _, id := range r.win.Expire(now) {
		r.drop(id)
	}
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
	return r.win.Len()
}
