package fuse

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"weak"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"

	"strata/fs"
)

// Options configures a Mount. The zero value is usable.
type Options struct {
	// Log receives the mount's messages: failures with their op, path and
	// reason, panics, calls left running. Nil discards them.
	Log *slog.Logger

	// Timeout bounds each call into the tree (default 10s): its context
	// expires then, and a call that has not returned shortly after is
	// left running while the request fails with ETIMEDOUT.
	Timeout time.Duration

	// AttrTimeout is how long the kernel may use a file's attributes
	// (size, mode, times) without asking again, and EntryTimeout how long
	// it may use a name it looked up. Both default to 1s; a negative value
	// means no caching. Changes made through the mount are seen at once
	// whatever these are; they bound how long a change made behind the
	// mount goes unseen. Stream files never have their attributes cached.
	AttrTimeout, EntryTimeout time.Duration

	// AllowOther lets users other than the one mounting use the mount
	// (fusermount3 allows it for others than root only with
	// user_allow_other in /etc/fuse.conf).
	AllowOther bool

	// Debug logs every FUSE request and reply to Log, at Debug level.
	Debug bool
}

// Defaults for Options.
const (
	DefaultTimeout = 10 * time.Second
	DefaultCache   = time.Second
)

// abandonGrace is how long past its deadline a call is waited for, so that
// a tree that honours its context can answer with its own error.
const abandonGrace = 250 * time.Millisecond

// Mounted is a tree that Mount has mounted at a directory.
type Mounted struct {
	root       fs.Dir
	mountpoint string
	log        *slog.Logger
	timeout    time.Duration
	attrTTL    time.Duration
	entryTTL   time.Duration
	uid, gid   uint32
	start      time.Time

	server *gofuse.Server
	done   chan struct{} // closed when the server has stopped
	umu    sync.Mutex    // serializes Unmount

	// epoch counts renames of directories through the mount; a node's
	// fs.Node resolved in an older epoch is looked up again before use.
	epoch atomic.Uint64

	imu    sync.Mutex
	idents map[identKey]weak.Pointer[ident]
	gen    uint64 // the last generation number given to an ident

	hmu     sync.Mutex
	handles map[*handle]struct{}

	running atomic.Int64 // calls left running past their bound
	ahead   atomic.Int64 // bytes of read-ahead held, for aheadBudget
}

// Mount mounts root at mountpoint, an existing directory, and serves it
// until Unmount, `fusermount3 -u`, or the kernel ends the mount. ctx bounds
// the mounting only (the first Stat of root and the kernel's handshake);
// it does not end the mount.
func Mount(ctx context.Context, root fs.Dir, mountpoint string, opts Options) (*Mounted, error) {
	if root == nil {
		return nil, errors.New("fuse: mount: nil root")
	}
	mp, err := filepath.Abs(mountpoint)
	if err != nil {
		return nil, fmt.Errorf("fuse: mount %s: %w", mountpoint, err)
	}
	fi, err := os.Stat(mp)
	switch {
	case errors.Is(err, syscall.ENOTCONN):
		return nil, fmt.Errorf("fuse: mount %s: %w (a FUSE mount whose server died is still there; CleanStale removes it)", mp, err)
	case err != nil:
		return nil, fmt.Errorf("fuse: mount: %w", err)
	case !fi.IsDir():
		return nil, fmt.Errorf("fuse: mount %s: not a directory", mp)
	}

	m := &Mounted{
		root:       root,
		mountpoint: mp,
		log:        opts.Log,
		timeout:    opts.Timeout,
		attrTTL:    ttl(opts.AttrTimeout),
		entryTTL:   ttl(opts.EntryTimeout),
		uid:        uint32(os.Getuid()),
		gid:        uint32(os.Getgid()),
		start:      time.Now(),
		done:       make(chan struct{}),
		idents:     map[identKey]weak.Pointer[ident]{},
		handles:    map[*handle]struct{}{},
	}
	if m.log == nil {
		m.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if m.timeout <= 0 {
		m.timeout = DefaultTimeout
	}

	sctx, cancel := context.WithTimeout(ctx, m.timeout)
	info, err := root.Stat(sctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("fuse: mount %s: stat the root: %w", mp, err)
	}
	if !info.IsDir() {
		return nil, fmt.Errorf("fuse: mount %s: the root is not a directory (mode %v)", mp, info.Mode)
	}

	rootNode := &node{m: m, id: &ident{ino: 1, mode: syscall.S_IFDIR, node: root}, isDir: true}
	goLog := slog.NewLogLogger(m.log.Handler(), slog.LevelDebug)
	fo := &fusefs.Options{
		MountOptions: gofuse.MountOptions{
			FsName:        "strata",
			Name:          "strata",
			AllowOther:    opts.AllowOther,
			Debug:         opts.Debug,
			Logger:        goLog,
			DisableXAttrs: true,
			// The largest reads and writes the kernel sends: fewer
			// calls into the tree (round trips, for a remote tree).
			MaxWrite: maxWrite,
			// O_TRUNC comes with OPEN, not as a SETATTR before it, so a
			// tree can replace a rewritten file atomically.
			ExtraCapabilities: gofuse.CAP_ATOMIC_O_TRUNC,
			PanicHandler:      m.panicked,
		},
		// No Entry/AttrTimeout here: every reply sets its own, and a zero
		// set by a reply (a Stream file) must stay zero.
		RootStableAttr: &fusefs.StableAttr{Ino: 1},
		Logger:         goLog,
	}
	raw := fusefs.NewNodeFS(rootNode, fo)
	srv, err := gofuse.NewServer(raw, mp, &fo.MountOptions)
	if err != nil {
		return nil, fmt.Errorf("fuse: mount %s: %w", mp, err)
	}
	m.server = srv
	go func() {
		srv.Serve()
		close(m.done)
		m.closeHandles()
	}()
	ready := make(chan error, 1)
	go func() { ready <- srv.WaitMount() }()
	select {
	case err = <-ready:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		if uerr := srv.Unmount(); uerr != nil {
			m.log.Warn("fuse: unmount after a failed mount", "mountpoint", mp, "err", uerr)
		}
		return nil, fmt.Errorf("fuse: mount %s: %w", mp, err)
	}
	m.tuneReadAhead()
	m.log.Debug("fuse: mounted", "mountpoint", mp)
	return m, nil
}

// kernelReadAhead is the read-ahead the kernel is asked to keep on the
// mount's files (its own default is 128 KiB): with it the kernel asks for
// up to MaxWrite bytes at a time, and fewer requests cross the mount.
const kernelReadAhead = 1 << 20

// tuneReadAhead sets the kernel's read-ahead for the mount: the
// read_ahead_kb of its backing device in sysfs, named by the device
// number that /proc/self/mountinfo gives the mount point. Only root may;
// without the privilege, or without sysfs, the kernel's default stays.
func (m *Mounted) tuneReadAhead() {
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	dev := ""
	for _, line := range strings.Split(string(info), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && unescapeMount(f[4]) == m.mountpoint {
			dev = f[2] // the last mount there wins
		}
	}
	if dev == "" || strings.ContainsAny(dev, "/.") {
		return
	}
	p := "/sys/class/bdi/" + dev + "/read_ahead_kb"
	if err := os.WriteFile(p, []byte(strconv.Itoa(kernelReadAhead>>10)), 0); err != nil {
		m.log.Debug("fuse: the kernel's read-ahead stays as it is", "file", p, "err", err)
	}
}

// unescapeMount undoes the octal escapes (\040 for a space) of a path in
// /proc/self/mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func ttl(d time.Duration) time.Duration {
	switch {
	case d == 0:
		return DefaultCache
	case d < 0:
		return 0
	}
	return d
}

// Mountpoint is the absolute path the tree is mounted at.
func (m *Mounted) Mountpoint() string { return m.mountpoint }

// Unmount unmounts cleanly (fusermount3 -u) and returns when the mount
// has stopped serving. It fails, leaving the mount as it is, while files
// on the mount are in use (EBUSY). Unmounting a mount that is already gone
// returns nil.
func (m *Mounted) Unmount() error {
	m.umu.Lock()
	defer m.umu.Unlock()
	if m.stopped() {
		return nil
	}
	if err := m.server.Unmount(); err != nil {
		if m.stopped() {
			return nil // unmounted meanwhile, by someone else
		}
		return fmt.Errorf("fuse: unmount %s: %w", m.mountpoint, err)
	}
	<-m.done
	m.log.Debug("fuse: unmounted", "mountpoint", m.mountpoint)
	return nil
}

// Wait returns when the mount has stopped: by Unmount, by `fusermount3
// -u`, or by the kernel.
func (m *Mounted) Wait() { <-m.done }

func (m *Mounted) stopped() bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

// closeHandles closes the handles that were still open when the mount
// stopped, so that their data is acknowledged to the tree.
func (m *Mounted) closeHandles() {
	m.hmu.Lock()
	hs := make([]*handle, 0, len(m.handles))
	for h := range m.handles {
		hs = append(hs, h)
	}
	clear(m.handles)
	m.hmu.Unlock()
	for _, h := range hs {
		h.release()
	}
}

func (m *Mounted) track(h *handle) {
	m.hmu.Lock()
	m.handles[h] = struct{}{}
	m.hmu.Unlock()
}

// untrack reports whether h was still tracked, so that exactly one of
// Release and closeHandles closes it.
func (m *Mounted) untrack(h *handle) bool {
	m.hmu.Lock()
	defer m.hmu.Unlock()
	_, ok := m.handles[h]
	delete(m.handles, h)
	return ok
}

// panicked answers a panic in the mount's own code (not in the tree,
// whose panics are recovered around each call).
func (m *Mounted) panicked(v any) gofuse.Status {
	m.log.Error("fuse: panic serving a request", "panic", fmt.Sprint(v))
	return gofuse.EIO
}

// CleanStale makes mountpoint usable again if it is a dead FUSE mount (its
// server gone, so that stat fails with ENOTCONN): it unmounts it lazily
// (fusermount3 -u -z, or umount2 with MNT_DETACH as root). For anything
// else, a live mount included, it does nothing and returns nil.
func CleanStale(mountpoint string) error {
	_, err := os.Stat(mountpoint)
	if !errors.Is(err, syscall.ENOTCONN) {
		return nil
	}
	var msgs []string
	if bin, berr := fusermount(); berr == nil {
		out, rerr := exec.Command(bin, "-u", "-z", mountpoint).CombinedOutput()
		if rerr == nil {
			return checkClean(mountpoint)
		}
		msgs = append(msgs, fmt.Sprintf("%s -u -z: %v: %s", filepath.Base(bin), rerr, out))
	} else {
		msgs = append(msgs, berr.Error())
	}
	uerr := syscall.Unmount(mountpoint, syscall.MNT_DETACH)
	if uerr == nil {
		return checkClean(mountpoint)
	}
	msgs = append(msgs, "umount2 MNT_DETACH: "+uerr.Error())
	return fmt.Errorf("fuse: clean stale mount %s: %v", mountpoint, msgs)
}

func checkClean(mountpoint string) error {
	if _, err := os.Stat(mountpoint); errors.Is(err, syscall.ENOTCONN) {
		return fmt.Errorf("fuse: clean stale mount %s: still not connected after unmounting", mountpoint)
	}
	return nil
}

// fusermount finds fusermount3, or else fusermount.
func fusermount() (string, error) {
	for _, name := range []string{"fusermount3", "fusermount"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
		if p := "/bin/" + name; isExec(p) {
			return p, nil
		}
	}
	return "", errors.New("neither fusermount3 nor fusermount is installed")
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}
