package tier

import (
	"testing"
	"time"
)

// TestSpeedEstimate: close samples are averaged; a sample far from the
// estimate (the link changed) replaces it; small transfers say nothing.
func TestSpeedEstimate(t *testing.T) {
	var s speed
	if _, _, ok := s.estimate(); ok {
		t.Fatal("an estimate before any sample")
	}
	s.observe(1<<20, time.Second) // 1 MiB/s
	s.observe(2<<20, time.Second) // 2 MiB/s: within the jump, averaged
	if bps, _, _ := s.estimate(); bps != 1.5*(1<<20) {
		t.Errorf("averaged estimate %.0f, want %d", bps, 3<<19)
	}
	s.observe(minSample-1, time.Second) // too small to count
	if bps, _, _ := s.estimate(); bps != 1.5*(1<<20) {
		t.Errorf("a small transfer changed the estimate to %.0f", bps)
	}
	s.observe(32<<10, time.Second) // the link became slow: 32 KiB/s
	if bps, _, _ := s.estimate(); bps != 32<<10 {
		t.Errorf("after a slow sample the estimate is %.0f, want %d", bps, 32<<10)
	}
	s.observe(48<<10, time.Second) // noise on the slow link: averaged
	if bps, _, _ := s.estimate(); bps != 40<<10 {
		t.Errorf("estimate %.0f, want %d", bps, 40<<10)
	}
	s.observe(4<<20, time.Second) // fast again
	if bps, _, _ := s.estimate(); bps != 4<<20 {
		t.Errorf("after a fast sample the estimate is %.0f", bps)
	}
}
