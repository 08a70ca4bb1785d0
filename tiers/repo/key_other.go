//go:build !linux

package repo

import "os"

// keyOf is the statKey of fi: its size and modification time.
func keyOf(fi os.FileInfo) statKey {
	return statKey{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
}
