// Package fuse mounts any fs.Dir at a directory through FUSE, so that
// ordinary tools (a shell, cat, cp, dd, sha256sum, an editor) work on a
// Strata namespace. It is built on the node API of go-fuse
// (github.com/hanwen/go-fuse/v2/fs) and needs /dev/fuse and fusermount3.
//
//	m, err := fuse.Mount(ctx, root, "/mnt/strata", fuse.Options{Log: logger})
//	...
//	defer m.Unmount()
//
// # Nodes
//
// A node is found by name with fs.Dir.Lookup. The kernel's node for a file
// is the same for as long as the file keeps its tree ID (Info.ID, or
// fs.PathID of the path for a tree without IDs) and its path: the ID alone
// does not say, as a tree without generation numbers (one whose IDs are
// the disk's inode numbers) may give a freed number to a new file
// elsewhere at once. For the same reason the inode number a node shows is
// a hash of its ID and the path where the kernel first met it, kept across
// renames through the mount; two names never show one number, so mv, cp
// and tar do not take two files for one. A tree that gives a rewritten
// file a new ID (the store's atomic rewrite makes a new inode) does not
// make it a new node when the rewrite was made through the mount: the
// node keeps its number, as a file rewritten in place would. A node
// remembers the fs.Node that the tree gave it, and a lookup that finds it
// again updates it.
// After a directory is renamed through the mount, every remembered fs.Node
// is looked up again from its parent when next used, so that trees whose
// nodes are paths (a remote tree) stay right; a node that a tree reports
// gone is looked up again by name once before the call fails.
//
// A node removed, or replaced by a rename, through the mount has no name
// left to stat: fstat(2) of a descriptor still open on it is answered by
// its handle where the handle can describe the file it has open
// (fs.HandleStater: the store's, a remote tree's), else with the
// attributes the node last had, with a link count of 0. So is fstat(2)
// of a file that the tree no longer has at its name (removed behind the
// mount), where the handle can say.
//
// # Caching
//
// The kernel caches names (Options.EntryTimeout) and attributes
// (Options.AttrTimeout), one second each by default; failed lookups are
// not cached. Everything done through the mount is seen at once through
// it: the kernel updates sizes on write, drops names on remove and rename,
// and refetches attributes after a change. The timeouts bound how long a
// change made behind the mount (by another client of the tree) can go
// unseen. Stream files (Info.Stream: ctl, out, err, where, status) have
// no attribute cache at all.
//
// File data: regular files use the page cache without FOPEN_KEEP_CACHE,
// so every open(2) reads what the tree holds now, and writes go through
// to the tree (no write-back cache in the kernel; see below for the
// mount's own). Stream files are opened with FOPEN_DIRECT_IO and
// reported with size 0: every read(2) goes to the tree and is read to
// EOF, never cut at a size the kernel believes.
//
// # Read-ahead and write-behind
//
// Each FUSE request is a call into the tree, and for a remote tree a
// round trip, so the mount keeps several calls in flight per handle of a
// regular file. The kernel is asked for reads and writes of up to 1 MiB
// (MaxWrite), and, where the mount may set it (as root, through sysfs),
// to read ahead 1 MiB rather than 128 KiB.
//
// Reads: once a handle's reads follow each other, it reads the next
// chunks of the file (1 MiB each, 4 at most, and 256 MiB over the whole
// mount) in the background and answers reads inside them from memory.
// Chunks are dropped when the reads stop following them, when the file
// is written, truncated or rewritten through the mount, and when they
// are older than the attribute timeout, which bounds how long a change
// behind the mount goes unseen, as for the kernel's own cache; with no
// attribute caching there is no read-ahead.
//
// Writes: a write to a regular file (not O_APPEND, not O_SYNC, not a
// Stream file) is answered once it is on its way to the tree; at most 4
// are under way per handle, and one that overlaps a write under way
// waits for it, so the last write of a byte wins. Data is acknowledged at
// FLUSH or fsync(2) only, as before: both wait for every write under way
// and return the error of one that failed, as does every later write;
// RELEASE waits for them before it closes the handle. A read, open,
// truncate, attribute change or fsync(2) of the file waits for the
// writes under way through every handle of it, so that it sees them; a
// stat shows the size they make.
//
// # Open, Flush, Release
//
// Each open(2) gets one fs.Handle, opened with the access mode and
// O_APPEND and O_TRUNC of the call (the mount asks the kernel to pass
// O_TRUNC to open rather than truncating first, so that a tree can
// replace a rewritten file atomically). O_CREAT goes to fs.Dir.Create,
// with O_EXCL. Reads and writes go to ReadAt and WriteAt at the offsets
// the kernel sends; an O_APPEND handle is expected to write at its end
// whatever the offset, as fs trees do.
//
// FUSE has two close events: FLUSH comes with every close(2) of a
// descriptor (of each dup, and of each process that inherited it) and
// close(2) returns its error; RELEASE comes once, after the last
// descriptor is gone, asynchronously, and its error is seen by no one.
// So the work that close(2) must report, and finish before close(2)
// returns, runs at FLUSH, if the handle was written (or truncated with
// ftruncate) since it was opened or last flushed or synced:
//
//   - If the fs.Handle implements Flusher, Flush calls it, and close(2)
//     returns its error. A ctl file implements it to run its pending
//     request: `echo data > ctl; cat out` then sees the answer, and a
//     failed run fails close(2) with the errno of its Kind (coreutils
//     report it, e.g. "echo: write error: Invalid argument"; a shell
//     ignores close errors of its builtins' redirections).
//   - Otherwise Flush calls Sync: data is acknowledged (durable, for a
//     durable tree) when close(2) returns, and a rewrite with O_TRUNC is
//     in place before the next command opens the file.
//
// A FLUSH with nothing written does nothing. That matters: a shell running
// `echo data > f` opens f, dup2s it onto stdout and closes the original
// descriptor before echo writes, so the first FLUSH comes before any data;
// acting on it would run an empty ctl request, or commit an empty rewrite
// and break its atomicity. The price: a handle closed without any write
// (`: > ctl`, `: > file` on a tree that rewrites atomically) is finished
// only by RELEASE, which the kernel sends as close(2) returns but does not
// wait for.
//
// RELEASE calls fs.Handle.Close (after any call on the handle that the
// mount gave up waiting for, or that runs behind the requests, has
// returned); its error is only logged. A
// stat or open of the file that comes while a Close is under way waits
// for it (up to Options.Timeout), so the next command sees what the close
// committed. fsync(2) calls Sync.
//
// A tree may show a rewritten file's new content only when the writing
// handle syncs (fs/store writes it to a temporary file and renames it into
// place: the atomic rewrite). Meanwhile the kernel must not be told the old
// size, or it would cut reads and writes through the writing descriptor
// short; so while a handle opened with O_TRUNC, or one that created the
// file, has not synced, the file's size is reported as what the handle
// has written. ftruncate(2) through such a handle commits the rewrite
// first: fs.Handle cannot change a size, only the file can.
//
// Every close of a dup of a written descriptor flushes, so a ctl request
// written through a shared descriptor runs at the first close after it
// was written: in `exec 3<>ctl; printf a >&3; printf b >&3` each printf's
// redirection closes a dup, and "a" and "b" are two requests. Write a
// request in one redirection (`{ printf a; printf b; } >&3`).
//
// # Stream offsets
//
// A ctl file is written and then read through one descriptor (`exec
// 3<>ctl; echo x >&3; read answer <&3`), and the answer starts at offset 0
// whatever was written. The kernel sends the descriptor's position, which
// after the write is past the request. So for Stream files the mount
// counts offsets from the start of each run of reads or of writes: the
// first read after a write, and the first write after open, after a read
// or after a Flusher's Flush, is at offset 0 of the tree's handle, and the
// ones after it follow on. So `echo x >> ctl` is a request from offset 0
// too, whatever size the kernel believes ctl has. Regular files get the
// kernel's offsets unchanged.
//
// # Bounds, errors and panics
//
// Every call into the tree runs with a context that is cancelled when the
// kernel interrupts the request (the calling process got a signal) and
// that expires after Options.Timeout. The tree's answer is returned
// whether or not it honoured the cancellation, so an operation that did
// complete is never reported as interrupted. A call that has not returned
// shortly after its deadline is left running and the request fails with
// ETIMEDOUT: a stuck tree never hangs a system call for longer than that.
// The buffers such a call uses are its own, so it can do no harm when it
// finishes, and a handle it opens by then is closed again; what it changes
// in the tree stays changed.
//
// Go programs are interrupted often (the runtime preempts goroutines with
// signals), so a tree that honours cancellation may see them; a
// cancelled call returns EINTR, which Go's os package retries where that
// is safe.
//
// Errors become the errno of their fs.Kind (fs.ErrnoOf): a Timeout is
// ETIMEDOUT, an Invalid is EINVAL, and so on; EIO only when nothing better
// fits. Each failure is logged with its op, path and full message, at
// Debug for the everyday ones (no such file, exists, not empty,
// interrupted) and at Warn otherwise. A panic in the tree is recovered,
// logged with its stack at Error, and answered with EIO; the mount goes on.
//
// # Renames
//
// rename(2) maps to fs.Dir.Rename, within and across directories;
// between trees it fails with EXDEV, and mv copies instead.
// RENAME_NOREPLACE is honoured by looking the target up first (so it is
// not atomic against another client of the tree); RENAME_EXCHANGE and
// RENAME_WHITEOUT fail with EINVAL, which renameat2(2) documents for a
// flag that a file system does not support.
//
// # Mounting
//
// The mount is named "strata" (fsname and subtype: type fuse.strata in
// /proc/mounts), does not use default_permissions (the tree decides who
// may do what), and allows other users only with Options.AllowOther.
// Extended attributes are not supported. If the process serving a mount
// dies, every access to the mount point fails with ENOTCONN until it is
// unmounted; CleanStale does that, so that a new Mount can take its place.
package fuse
