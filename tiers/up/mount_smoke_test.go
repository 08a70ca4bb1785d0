package up

import (
	"os"
	"path/filepath"
	"testing"
)

func TestMountSmoke(t *testing.T) {
	h := start(t, Config{})
	mnt, _ := mountClient(t, h, "", 0)
	if err := os.WriteFile(filepath.Join(mnt, "store", "x"), []byte("hi"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "store", "x")); err != nil || string(b) != "hi" {
		t.Fatalf("%q %v", b, err)
	}
}
