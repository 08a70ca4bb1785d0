package ninep

import (
	"context"
	"strings"
	"testing"
	"time"

	"strata/fs/ninep/ninetest"
)

// TestLinuxDiodTools: Debian's diodcat and diodls (libnpclient) read and
// list the tree. They send Tauth first and give up on anything but ENOENT.
func TestLinuxDiodTools(t *testing.T) {
	opts := ninetest.DiodOptions{
		Diodcat: ninetest.DiodTool(t, "diodcat"),
		Diodls:  ninetest.DiodTool(t, "diodls"),
		Timeout: 20 * time.Second,
	}
	files := map[string]string{
		"hello.txt": "hello from strata\n",
		"big":       strings.Repeat("0123456789abcdef", 40000), // 640 kB: many reads at 64 KiB
		"sub/inner": "deeper\n",
	}
	addr, _ := startL(t, plan9TestTree(t, files))
	if err := ninetest.Diod(context.Background(), addr, files, opts); err != nil {
		t.Error(err)
	}
}
