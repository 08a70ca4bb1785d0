package fs

import "testing"

func TestPaths(t *testing.T) {
	for _, tc := range []struct{ dir, name, want string }{
		{"", "a", "a"}, {"a", "b", "a/b"}, {"a/b", "c", "a/b/c"},
	} {
		if got := Join(tc.dir, tc.name); got != tc.want {
			t.Errorf("Join(%q, %q) = %q, want %q", tc.dir, tc.name, got, tc.want)
		}
		if d, n := Split(tc.want); d != tc.dir || n != tc.name {
			t.Errorf("Split(%q) = %q, %q", tc.want, d, n)
		}
	}
	if PathID("a/b") == PathID("a") || PathID("a/b") != PathID("a/b") {
		t.Error("PathID is not a stable hash of the path")
	}
}
