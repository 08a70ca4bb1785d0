// Package nodetab keeps the live nodes of a tree by path, for a tree that
// gives out one node per path and must move or retire every node that a
// rename or a remove through it affects (fs/store, fs/objstore).
//
// A node is held by its users only: the table keeps a weak pointer to it,
// and the node's cleanup forgets its entry once it is collected. What says
// where a node is, its Slot, is kept apart from the node so that the
// cleanup can still find the entry.
//
// A Table is not safe for concurrent use: the tree guards it, and the
// fields of its Slots, with a lock of its own.
package nodetab

import (
	"runtime"
	"strings"
	"weak"
)

// A Slot says where a node is. Data is what the tree keeps there besides.
type Slot[N, D any] struct {
	Path string // slash-separated from the root; "" is the root
	Gone bool   // removed or replaced through the tree
	Data D
	wp   weak.Pointer[N]
}

// Table is the live nodes of a tree, by path.
type Table[N, D any] struct {
	m      map[string]*Slot[N, D]
	forget func(*Slot[N, D])
}

// New returns an empty table. forget is the cleanup of a collected node:
// it takes the tree's lock and calls [Table.Forget].
func New[N, D any](forget func(*Slot[N, D])) *Table[N, D] {
	return &Table[N, D]{m: map[string]*Slot[N, D]{}, forget: forget}
}

// Node returns the live node for path p, or makes one with mk, given its
// new slot, and keeps it.
func (t *Table[N, D]) Node(p string, mk func(*Slot[N, D]) *N) *N {
	if sl := t.m[p]; sl != nil {
		if n := sl.wp.Value(); n != nil {
			return n
		}
	}
	sl := &Slot[N, D]{Path: p}
	n := mk(sl)
	sl.wp = weak.Make(n)
	t.m[p] = sl
	runtime.AddCleanup(n, t.forget, sl)
	return n
}

// Forget drops the entry of sl, if it is still the one at its path.
func (t *Table[N, D]) Forget(sl *Slot[N, D]) {
	if t.m[sl.Path] == sl {
		delete(t.m, sl.Path)
	}
}

// Retire forgets sl and marks it gone.
func (t *Table[N, D]) Retire(sl *Slot[N, D]) {
	t.Forget(sl)
	sl.Gone = true
}

// Drop retires the nodes at p and below it.
func (t *Table[N, D]) Drop(p string) {
	for q, sl := range t.m {
		if Within(q, p) {
			sl.Gone = true
			delete(t.m, q)
		}
	}
}

// Move moves the nodes at from and below it to to, and retires those that
// were at to and below it.
func (t *Table[N, D]) Move(from, to string) {
	t.Drop(to)
	var move []*Slot[N, D]
	for q, sl := range t.m {
		if Within(q, from) {
			move = append(move, sl)
			delete(t.m, q)
		}
	}
	for _, sl := range move {
		sl.Path = to + sl.Path[len(from):]
		t.m[sl.Path] = sl
	}
}

// Len is the number of nodes kept.
func (t *Table[N, D]) Len() int { return len(t.m) }

// Within reports whether p is dir or below it.
func Within(p, dir string) bool {
	return p == dir || (dir != "" && strings.HasPrefix(p, dir+"/"))
}
