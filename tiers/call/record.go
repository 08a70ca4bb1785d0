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
// It keeps at most max replies, holding at most maxBytes of answers in
// all, for at most ttl (oldest go first), so that a flood of invocations
// with large answers cannot take the memory; it is in memory only, so a
// restarted tier runs a retried request again, as does a retry that
// comes after so many others that its reply has been forgotten.
type Recorder struct {
	mu       sync.Mutex
	m        map[string]*record
	win      Window // the recorded IDs, oldest first
	maxBytes int64
	bytes    int64 // the sizes of the recorded replies
}

type record struct {
	done  chan struct{}
	reply *Reply
	size  int64
}

// Defaults of a Recorder.
const (
	DefaultRecords     = 10000
	DefaultRecordBytes = 64 << 20
	DefaultRecordTTL   = 10 * time.Minute
)

// NewRecorder returns a recorder keeping max replies, of maxBytes in all,
// for ttl (defaults if zero). The newest reply is kept even if it alone is
// larger than maxBytes.
func NewRecorder(max int, maxBytes int64, ttl time.Duration) *Recorder {
	if max <= 0 {
		max = DefaultRecords
	}
	if maxBytes <= 0 {
		maxBytes = DefaultRecordBytes
	}
	if ttl <= 0 {
		ttl = DefaultRecordTTL
	}
	return &Recorder{m: map[string]*record{}, win: Window{Max: max, TTL: ttl}, maxBytes: maxBytes}
}

// replySize is what a recorded reply costs, roughly: its answers and a
// little for the rest.
func replySize(r *Reply) int64 {
	return int64(len(r.Out)+len(r.Err)+len(r.Reason)+len(r.Where)+len(r.ID)) + 256
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
			rec.size = replySize(reply)
			r.bytes += rec.size
			for _, old := range r.win.Add(id, time.Now()) {
				r.drop(old)
			}
			for r.bytes > r.maxBytes && r.win.Len() > 1 {
				r.drop(r.win.Shift())
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
		r.bytes -= rec.size
	}
}

// Len is the number of recorded replies.
func (r *Recorder) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.win.Len()
}

// Bytes is the size of the recorded replies, as counted against the
// recorder's cap.
func (r *Recorder) Bytes() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.bytes
}
