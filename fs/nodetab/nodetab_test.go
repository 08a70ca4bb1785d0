package nodetab

import (
	"runtime"
	"sync"
	"testing"
	"time"
)

type node struct{ at *Slot[node, int] }

func newTable() (*Table[node, int], *sync.Mutex) {
	var mu sync.Mutex
	var t *Table[node, int]
	t = New(func(sl *Slot[node, int]) {
		mu.Lock()
		defer mu.Unlock()
		t.Forget(sl)
	})
	return t, &mu
}

func mk(sl *Slot[node, int]) *node { return &node{at: sl} }

func TestNodeMoveDrop(t *testing.T) {
	tab, _ := newTable()
	a := tab.Node("a", mk)
	if tab.Node("a", mk) != a {
		t.Fatal("a second Node of a live path made another node")
	}
	ab := tab.Node("a/b", mk)
	abc := tab.Node("a/b/c", mk)
	ax := tab.Node("ax", mk)
	x := tab.Node("x", mk)
	xb := tab.Node("x/b", mk)

	tab.Move("a", "x")
	for _, c := range []struct {
		n    *node
		path string
		gone bool
	}{{a, "x", false}, {ab, "x/b", false}, {abc, "x/b/c", false}, {ax, "ax", false}, {x, "x", true}, {xb, "x/b", true}} {
		if c.n.at.Path != c.path || c.n.at.Gone != c.gone {
			t.Errorf("after Move(a, x): a node at %q (gone %v), want %q (gone %v)", c.n.at.Path, c.n.at.Gone, c.path, c.gone)
		}
	}
	if tab.Node("x/b", mk) != ab {
		t.Error("the node moved to x/b is not the one found there")
	}
	tab.Drop("x/b")
	if !ab.at.Gone || !abc.at.Gone || a.at.Gone {
		t.Errorf("after Drop(x/b): gone %v %v %v, want true true false", ab.at.Gone, abc.at.Gone, a.at.Gone)
	}
	if n := tab.Node("x/b", mk); n == ab || n.at.Gone {
		t.Error("a path dropped still gives its old node")
	}
	tab.Retire(a.at)
	if !a.at.Gone || tab.Node("x", mk) == a {
		t.Error("a retired node is still found")
	}
	for _, c := range [][2]string{{"a", "a"}, {"a/b", "a"}, {"ab", "a"}, {"a", ""}, {"x", ""}} {
		want := c != [2]string{"ab", "a"} && c[1] != ""
		if Within(c[0], c[1]) != want {
			t.Errorf("Within(%q, %q) = %v", c[0], c[1], !want)
		}
	}
}

// A collected node's entry is forgotten.
func TestCollectedNodeForgotten(t *testing.T) {
	tab, mu := newTable()
	mu.Lock()
	tab.Node("gone-soon", mk)
	keep := tab.Node("kept", mk)
	mu.Unlock()
	for start := time.Now(); ; time.Sleep(10 * time.Millisecond) {
		runtime.GC()
		mu.Lock()
		n := tab.Len()
		mu.Unlock()
		if n == 1 {
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("%d entries after the node was collected, want 1", n)
		}
	}
	runtime.KeepAlive(keep)
}
