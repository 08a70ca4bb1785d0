package call

import (
	"slices"
	"testing"
	"time"
)

// TestWindow: past Max the oldest IDs fall out; past TTL they expire;
// Newest gives the last ones in order.
func TestWindow(t *testing.T) {
	w := Window{Max: 3, TTL: time.Minute}
	t0 := time.Now()
	for i, id := range []string{"a", "b", "c"} {
		if out := w.Add(id, t0.Add(time.Duration(i)*time.Second)); out != nil {
			t.Errorf("adding %s dropped %v", id, out)
		}
	}
	if out := w.Add("d", t0.Add(3*time.Second)); !slices.Equal(out, []string{"a"}) {
		t.Errorf("past Max, dropped %v, want [a]", out)
	}
	if got := w.Newest(2); !slices.Equal(got, []string{"c", "d"}) {
		t.Errorf("Newest(2) = %v", got)
	}
	if out := w.Expire(t0.Add(time.Minute + 2500*time.Millisecond)); !slices.Equal(out, []string{"b", "c"}) {
		t.Errorf("expired %v, want [b c]", out)
	}
	if w.Len() != 1 || !slices.Equal(w.Newest(5), []string{"d"}) {
		t.Errorf("left %v", w.Newest(5))
	}
}
