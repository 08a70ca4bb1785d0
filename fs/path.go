package fs

import (
	"hash/fnv"
	"strings"
)

// Paths in a tree are slash-separated from its root, without a leading
// slash; "" is the root.

// Join is the path of name in the directory at dir.
func Join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// Split returns the directory and the last element of p.
func Split(p string) (dir, name string) {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return "", p
	}
	return p[:i], p[i+1:]
}

// PathID is an ID for the node at path p in a tree whose nodes have none
// (Info.ID == 0): a hash of the path, the same in every front end.
func PathID(p string) uint64 {
	h := fnv.New64a()
	h.Write([]byte("/"))
	h.Write([]byte(p))
	return h.Sum64()
}
