package ninep

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"9fans.net/go/plan9"
	"github.com/hugelgupf/p9/p9"

	"strata/fs/store"
)

// TestAbandonedRewrite: a client that opens a file with truncate, writes
// part of its new content and goes away without clunking has had nothing
// acknowledged, so the store keeps the old content whole (a rewrite cut
// off by its writer's death is never committed), in both dialects. The
// same steps with a clunk do replace the content: the test can tell.
func TestAbandonedRewrite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tree")
	st, err := store.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	addr, _ := startL(t, st.Root())
	const old, part = "old content, whole", "NEW PART"

	// settle reads name for a while: the server closes what a departed
	// client left open soon after the connection ends, and what it does
	// then must not change the content.
	settle := func(t *testing.T, name, want string) {
		t.Helper()
		for range 20 {
			b, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil || string(b) != want {
				t.Fatalf("%s holds %q (%v), want %q", name, b, err, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for _, clunk := range []bool{false, true} {
		want := old
		if clunk {
			want = part
		}
		t.Run(map[bool]string{false: "9P2000.L hangup", true: "9P2000.L clunk"}[clunk], func(t *testing.T) {
			name := map[bool]string{false: "l-hangup", true: "l-clunk"}[clunk]
			if err := os.WriteFile(filepath.Join(dir, name), []byte(old), 0o644); err != nil {
				t.Fatal(err)
			}
			cl, root := dialL(t, addr, 64<<10)
			f := walkTo(t, root, name)
			if _, _, err := f.Open(p9.WriteOnly | lOTRUNC); err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt([]byte(part), 0); err != nil {
				t.Fatal(err)
			}
			if clunk {
				if err := f.Close(); err != nil {
					t.Fatal(err)
				}
			}
			cl.Close() // the connection ends; fids still held are p9's to close
			settle(t, name, want)
		})
		t.Run(map[bool]string{false: "9P2000 hangup", true: "9P2000 clunk"}[clunk], func(t *testing.T) {
			name := map[bool]string{false: "p-hangup", true: "p-clunk"}[clunk]
			if err := os.WriteFile(filepath.Join(dir, name), []byte(old), 0o644); err != nil {
				t.Fatal(err)
			}
			rc := plan9DialAttach(t, addr)
			rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 1, Wname: []string{name}})
			rc.ok(&plan9.Fcall{Type: plan9.Topen, Tag: 1, Fid: 1, Mode: plan9.OWRITE | plan9.OTRUNC})
			rc.ok(&plan9.Fcall{Type: plan9.Twrite, Tag: 1, Fid: 1, Data: []byte(part)})
			if clunk {
				rc.ok(&plan9.Fcall{Type: plan9.Tclunk, Tag: 1, Fid: 1})
			}
			rc.c.Close()
			settle(t, name, want)
		})
	}
}
