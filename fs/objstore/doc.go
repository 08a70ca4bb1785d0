// Package objstore is a /store tree kept in an S3 bucket: the same fs
// interfaces as package store, on object storage instead of the local
// disk. It speaks S3 through minio-go, and is chosen by a URL:
//
//	s3://BUCKET/PREFIX?endpoint=HOST:PORT&region=R&secure=false
//
// Credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and
// AWS_SESSION_TOKEN), or from the shared credentials file
// (AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials, profile AWS_PROFILE
// or "default"), never from the URL. Open checks the bucket and the
// credentials at once, and says which is wrong.
//
// # Mapping
//
// Each client's store is a prefix of the bucket. The file at path P is the
// object PREFIX/P. The directory at P is the prefix PREFIX/P/: it exists
// if its marker object PREFIX/P/ (made by Mkdir, empty) or any object
// under it exists, so objects put by other S3 clients show as files in
// directories. Names are checked with fs.CheckName, and keys are only ever
// made by joining checked names to the prefix, so no path reaches an
// object outside the prefix, and keys under it that are no valid name
// (an empty element, "..") are not part of the tree. A key that is both a
// file and a directory (possible on S3, made by others) is a file.
//
// Permission bits are kept as the user metadata "mode" (octal), and a
// modification time set by SetAttr as "mtime" (Unix nanoseconds); an
// object made by a conditional upload (Create, Mkdir) also has a "token",
// by which a request that is sent again after its answer was lost knows
// the object for its own and does not fail with Exist. Objects without
// mode and mtime are 0644 files and 0755 directories, modified when they
// were written. A listing carries no metadata: ReadDir gives the default
// bits, and for directories the store's start time; Stat gives the kept
// ones. Info.ID is zero (front ends derive IDs from paths); Info.Version
// is a hash of the object's ETag and size.
//
// # Writes and durability
//
// A Handle that writes stages the whole file in a local temporary file,
// in a staging directory of the store's own (flocked while the store is
// open; those of stores that died are removed by the next Open on the same
// staging directory). With fs.Truncate, or from Create, it starts empty;
// otherwise the object, as it is then, is downloaded at the first write.
// Sync and Close upload the staged file whole with one PutObject
// (multipart above Config.PartSize) and return nil only once the server
// has acknowledged the object: acknowledged data is in the store, seen by
// every other edge that opens the file afterwards. An upload replaces the
// object atomically: others see the old object or the new one, and a
// crash or failure in the middle of an upload (multipart included: the
// parts are invisible until the upload completes) leaves the old object,
// or none if there was none. An incomplete multipart upload may stay on
// the server until the bucket's lifecycle rules abort it. Close uploads
// even if its context is done; if the upload fails, the staged data is
// discarded and the object stays as it was. Abort (fs.Aborter), and a
// Store.Close with handles still open, discard staged data without
// uploading. Create makes the empty object at once, so a new file exists
// from its creation on, as in package store.
//
// Writers on different edges do not lock each other out: the last upload
// wins, whole (never a mix of two writers' bytes). A write through a
// handle whose file was removed or replaced through the same store after
// the handle opened is dropped, as in package store; one removed by
// another edge is made again by the upload.
//
// # Reads and consistency
//
// Consistency between edges is close-to-open: Open makes a HEAD request,
// and the Handle reads the version (the ETag) it found, in ranged GETs
// conditional on that ETag (If-Match). A read never mixes two versions: if
// the object was rewritten or removed since Open, a read that needs a block
// not in the cache fails (IO, "changed since it was opened", or NotExist)
// and a new Open reads the new version. Reads go through a block cache
// shared by the store's handles: blocks of Config.BlockSize (1 MiB), least
// recently used evicted beyond Config.CacheBytes (64 MiB), keyed by object,
// ETag and size, so a cached block is never stale; concurrent misses of one
// block make one request. A Handle that has written reads its staged file.
// Stat, Lookup and ReadDir ask the server every time: they see every
// acknowledged change of every edge.
//
// A Handle read sequentially reads ahead. After two reads in a row that
// follow each other (each within four blocks of the end of the furthest
// read before it, since the reads a client sends several at a time
// arrive out of order), it keeps the next 8 blocks loaded or loading into
// the cache, in the background, by ranged GETs of up to 4 blocks
// (conditional on the ETag too, and each with the deadline of its size);
// a read of a block being loaded waits for that load. Reads at scattered offsets load
// nothing ahead. The store loads at most 32 blocks ahead at once, and
// holds at most half of Config.CacheBytes ahead of its readers (loaded or
// loading, not read yet), so read-ahead never pushes the whole cache out;
// with a cache of less than two blocks there is none. The loads of a
// Handle are canceled by its Close or Abort (which wait for them to end),
// by its first write (it reads its staged file from then on), and by the
// store's Close. A load ahead that fails is dropped silently: the read of
// that block loads it again, and reports its own error as any read does.
//
// # What is and is not atomic
//
//   - Atomic: the upload of a file (Sync, Close), including replacing an
//     existing object; the creation of a file or directory where the
//     server honours If-None-Match (Versity Gateway and AWS S3 do), so
//     that of many edges creating one name with fs.Excl exactly one wins.
//   - Rename of a file: a server-side copy (conditional on the ETag seen,
//     keeping the mode and modification time) to the new key, then a
//     delete of the old one. Another edge sees the old name, then both,
//     then the new one; a crash or failure in between leaves both, never
//     neither. Replacing an existing file is one atomic copy.
//   - Rename of a directory: not atomic. Every object under it is copied
//     (at most 10000, else TooLarge), then the originals are deleted, the
//     marker last. A failure during the copies removes the copies made and
//     leaves the old directory whole; a crash leaves both, partly; others
//     may see the move in progress. A directory may not replace anything.
//   - Remove of a directory: a listing that finds it empty, then the delete
//     of its marker; an object another edge puts into it in between keeps
//     the directory in being. Remove of a file is one delete.
//   - SetAttr of a size: a download of what stays, then an upload (a
//     read-modify-write that a concurrent writer on another edge may undo
//     or be undone by). Of the mode or time alone: a copy of the object
//     onto itself with new metadata.
//   - Create without fs.Excl, Mkdir and Lookup check with a HEAD and a
//     listing; what another edge does between the check and the change
//     is not seen.
//   - A directory without a marker (made only by objects put by others)
//     vanishes with its last object, as on any S3 client.
//
// # Errors and deadlines
//
// Every error is an *fs.Error. S3 error codes map to kinds (NoSuchKey and
// NoSuchBucket: NotExist; AccessDenied, InvalidAccessKeyId,
// SignatureDoesNotMatch: Permission; EntityTooLarge: TooLarge;
// KeyTooLongError: NameTooLong; SlowDown: Busy; ServiceUnavailable and
// network failures: Unavailable; deadlines: Timeout), and the cause names
// the S3 code. Every request has a deadline: Config.Timeout (30 s), plus
// the time to move its bytes at Config.MinRate (1 MiB/s) for transfers;
// a listing has Config.Timeout for each page.
//
// Nodes follow renames made through the store: a Dir or File looked up
// before its name (or a directory above it) moved still refers to it, and
// its open handles upload to the new name.
package objstore
