package objstore

import (
	"context"
	"io"
	"sync"

	"github.com/minio/minio-go/v7"
)

// Read-ahead. A handle whose reads follow each other loads the next few
// blocks of the object in the background into the store's block cache,
// where a read of a block being loaded waits for that load instead of
// making another request.
//
// Reads follow each other when each begins within aheadSlack blocks (or
// read lengths, if larger) of the end of the furthest read so far: the
// reads that a client sends several at a time may arrive out of order.
// After aheadStreak reads in a row that follow each other, the reads that
// go further keep the aheadWindow blocks after them loaded or loading:
// once no more than aheadWindow-aheadRun blocks are left ahead, the
// window is filled again, in runs of up to aheadRun consecutive blocks,
// each run one ranged GET (several GETs at once if the window needs
// them). Each block of a run goes into the cache as soon as it has
// arrived. One GET for several blocks, rather than one for each, matters:
// a request costs the server about as much as a few MiB of data. A read
// elsewhere ends the streak (the loads in progress run to their end).
//
// Bounds: the window of each handle; aheadRunning blocks loading ahead
// for the whole store; and half the cache's bound of data held ahead of
// the store's readers (loaded or loading, not read yet), beyond which no
// new load starts until readers catch up: read-ahead never pushes out
// more than half of the cache. A block loaded ahead is cached under the version
// the handle opened (key, ETag, size), like any other, and its GET is
// conditional on that ETag, so it is never served to a reader of another
// version.
//
// The loads of a handle end when it closes (Close, Abort, or the store's
// Close), which cancels them and waits for them; a write through the
// handle cancels them too, since it reads what it staged from then on.
// Each load has the deadline of any GET of its size. A load that fails is
// forgotten: the reader of that block loads it itself, and reports its
// own error.
const (
	aheadWindow = 8 // blocks kept loading ahead of a sequential reader
	aheadSlack  = 4 // blocks (or reads) of reordering between reads that follow each other
	aheadStreak = 2 // reads in a row that follow each other before read-ahead starts
	aheadRun    = 4 // blocks loaded by one GET at most
)

// readAhead is a handle's read-ahead.
type readAhead struct {
	mu      sync.Mutex
	v       blockKey // the version read: key, etag and size
	bs      int64    // its blocks' size
	streak  int      // reads in a row that followed each other
	hi      int64    // the end of the furthest of those reads
	base    int64    // the first block not read yet
	next    int64    // the first block after those held ahead, not before base
	stopped bool

	ctx    context.Context // the loads', ended by stop
	cancel context.CancelFunc
	wg     sync.WaitGroup // the loads in progress
}

// observe notes a read of n bytes (n > 0, within the object) at off of
// the version v of an object, and starts the loads of the blocks ahead
// of it if it is part of a sequential streak.
func (a *readAhead) observe(s *Store, v blockKey, off, n int64) {
	bs, c := s.cfg.BlockSize, s.cache
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stopped || s.closed.Load() {
		return
	}
	v.index = 0
	end := off + n
	last := (end - 1) / bs
	slack := aheadSlack * max(bs, n)
	switch {
	case a.streak > 0 && v == a.v && off >= a.hi-slack && off <= a.hi+slack:
		if end > a.hi {
			a.hi = end
			a.streak++
		}
	default:
		a.settle(c)
		a.v, a.bs, a.hi, a.streak = v, bs, end, 1
		a.base, a.next = last+1, last+1
	}
	if last >= a.base {
		// Read: what was held ahead up to the end of this read.
		c.release(span(v.size, bs, a.base, min(last+1, a.next)))
		a.base = last + 1
		a.next = max(a.next, a.base)
	}
	if a.streak < aheadStreak {
		return
	}
	if a.next-(last+1) > aheadWindow-aheadRun {
		return // enough ahead: refill by runs
	}
	blocks := (v.size + bs - 1) / bs
	stop := min(last+1+aheadWindow, blocks)
	for a.next < stop {
		// A run: the blocks from a.next to load, at most aheadRun.
		first := a.next
		var calls []*loadCall
		var lens []int64
		full := false
		for i := first; i < stop && len(calls) < aheadRun; i++ {
			k := v
			k.index = i
			length := min(bs, v.size-i*bs)
			call, ok := c.startAhead(k, length)
			if !ok {
				full = true // the store's bounds: maybe at the next read
				break
			}
			a.next = i + 1
			if call == nil {
				break // cached, or being loaded: the run ends before it
			}
			calls, lens = append(calls, call), append(lens, length)
		}
		if len(calls) > 0 {
			a.load(s, v, first, calls, lens)
		}
		if full {
			return
		}
	}
}

// load loads the blocks of v from first on, whose read-ahead calls are
// calls and lengths lens, in the background.
func (a *readAhead) load(s *Store, v blockKey, first int64, calls []*loadCall, lens []int64) {
	if a.ctx == nil {
		a.ctx, a.cancel = context.WithCancel(context.Background())
	}
	a.wg.Add(1)
	go func(ctx context.Context) {
		defer a.wg.Done()
		s.getRun(ctx, v.key, v.etag, first*s.cfg.BlockSize, lens, func(i int, b []byte, err error) {
			k := v
			k.index = first + int64(i)
			s.cache.endAhead(k, calls[i], b, err)
		})
	}(a.ctx)
}

// getRun reads consecutive blocks of the lengths lens, from off, of the
// version etag of the object key, with one ranged GET, and gives each
// block to got (i its index in lens) as soon as it is read. If that
// fails, it gives the error to got for each block not read.
func (s *Store) getRun(ctx context.Context, key, etag string, off int64, lens []int64, got func(i int, b []byte, err error)) {
	var total int64
	for _, n := range lens {
		total += n
	}
	ctx, cancel := s.deadline(ctx, total)
	defer cancel()
	i := 0
	fail := func(err error) {
		for ; i < len(lens); i++ {
			got(i, nil, cause(ctx, err))
		}
	}
	var opts minio.GetObjectOptions
	if err := opts.SetRange(off, off+total-1); err != nil {
		fail(err)
		return
	}
	if etag != "" {
		opts.SetMatchETag(etag)
	}
	body, _, _, err := s.core.GetObject(ctx, s.cfg.Bucket, key, opts)
	if err != nil {
		fail(err)
		return
	}
	defer body.Close()
	for ; i < len(lens); i++ {
		b := make([]byte, lens[i])
		if _, err := io.ReadFull(body, b); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			fail(err)
			return
		}
		got(i, b, nil)
	}
}

// span is the number of bytes in the blocks [from, to) of an object of
// size bytes in blocks of bs.
func span(size, bs, from, to int64) int64 {
	if from >= to {
		return 0
	}
	return min(to*bs, size) - from*bs
}

// settle stops holding the blocks ahead of the reader. a.mu is held.
func (a *readAhead) settle(c *blockCache) {
	c.release(span(a.v.size, a.bs, a.base, a.next))
	a.base = a.next
}

// stop ends the read-ahead for good: it cancels the loads in progress
// and, with wait, waits for them to end.
func (a *readAhead) stop(c *blockCache, wait bool) {
	a.mu.Lock()
	a.stopped = true
	a.settle(c)
	if a.cancel != nil {
		a.cancel()
	}
	a.mu.Unlock()
	if wait {
		a.wg.Wait()
	}
}
