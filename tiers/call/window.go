package call

import "time"

// Window is the order in which a bounded, time-limited memory forgets: IDs
// as they were added, oldest first, at most Max of them and none older
// than TTL. It holds no values: its owner keeps those, and drops the IDs
// that Add and Expire give back. The Recorder and a tier's traces use it.
// It is not safe for concurrent use.
type Window struct {
	Max int
	TTL time.Duration
	ids []windowEntry
}

type windowEntry struct {
	id string
	at time.Time
}

// Add appends id, added at at, and returns the IDs that fall out past Max.
func (w *Window) Add(id string, at time.Time) (out []string) {
	w.ids = append(w.ids, windowEntry{id, at})
	for len(w.ids) > w.Max {
		out = append(out, w.ids[0].id)
		w.ids = w.ids[1:]
	}
	return out
}

// Expire removes and returns the IDs added more than TTL before now.
func (w *Window) Expire(now time.Time) (out []string) {
	n := 0
	for n < len(w.ids) && now.Sub(w.ids[n].at) > w.TTL {
		out = append(out, w.ids[n].id)
		n++
	}
	w.ids = w.ids[n:]
	return out
}

// Shift removes and returns the oldest ID ("" if none).
func (w *Window) Shift() string {
	if len(w.ids) == 0 {
		return ""
	}
	id := w.ids[0].id
	w.ids = w.ids[1:]
	return id
}

// Len is the number of IDs held.
func (w *Window) Len() int { return len(w.ids) }

// Newest returns the last n IDs added, oldest first.
func (w *Window) Newest(n int) []string {
	tail := w.ids[max(0, len(w.ids)-n):]
	out := make([]string, len(tail))
	for i, e := range tail {
		out[i] = e.id
	}
	return out
}
