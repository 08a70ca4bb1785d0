package link

import (
	"runtime"
	"sync/atomic"
)

// parallel calls work(i) for every i in [0, n), spreading the calls over
// the calling goroutine and up to n-1 helpers (no more than GOMAXPROCS
// allows), and returns once every call has returned. Work is claimed one
// index at a time, so a helper that the scheduler starts late finds less
// or nothing to do and the caller never waits for a helper that has not
// claimed anything: on a busy machine this degrades to a plain loop.
func parallel(n int, work func(i int)) {
	helpers := min(n, runtime.GOMAXPROCS(0)) - 1
	if helpers <= 0 {
		for i := range n {
			work(i)
		}
		return
	}
	var next, left atomic.Int32
	left.Store(int32(n))
	done := make(chan struct{})
	run := func() {
		for {
			i := int(next.Add(1)) - 1
			if i >= n {
				return
			}
			work(i)
			if left.Add(-1) == 0 {
				close(done)
			}
		}
	}
	for range helpers {
		go run()
	}
	run()
	<-done
}
