package main

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"strata/fs/objstore/s3test"
)

// TestKillDurabilityObjectStore is TestKillDurability for an edge whose
// /store is in an S3 bucket: `strata serve edge -store URL` is killed with
// SIGKILL while a client writes and closes checksummed files through its
// plain port, restarted on the same bucket and data directory, and every
// file is checked: each acknowledged file whole, at its last acknowledged
// version or the one whose close was in flight, no torn or mixed file, no
// object in the bucket that is not a file of the store, and the staging
// directories of the killed edges gone. Some writes are larger than a
// multipart part, so that kills also land in the middle of multipart
// uploads. Twenty rounds (four with -short), alternating the two 9P
// dialects.
//
// The edge's parent is never up: /store does not need it.
func TestKillDurabilityObjectStore(t *testing.T) {
	rounds := 20
	if testing.Short() {
		rounds = 4
	}
	bin, keys := objSetup(t)
	const bucket = "strata-kill"
	g := s3test.Start(t, bucket)
	g.Env(t)
	storeURL := g.URL(bucket, "g1")
	data := filepath.Join(t.TempDir(), "edge")

	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 13))
	writes := newAckLog()
	var bigAcked, killedInFlight, killedBig int
	var startTimes, roundTimes []time.Duration
	for round := range rounds {
		// The edge's /store, in either dialect.
		dial, dialect, aname := dialLinux, "9P2000.L", "/store"
		if round%2 == 1 {
			dial, dialect, aname = dialPlan9, "9P2000", "store"
		}
		t0 := time.Now()
		e := objStartEdge(t, bin, data, keys, storeURL)
		startTimes = append(startTimes, time.Since(t0))
		objCheckStaging(t, round, data)
		c, err := dial(e.local, aname)
		if err != nil {
			t.Fatalf("round %d: dial %s: %v\n%s", round, dialect, err, e.logs)
		}
		if round > 0 {
			verify(t, round, c, writes)
			if t.Failed() {
				c.close()
				t.FailNow()
			}
		}
		clear(writes.inflight)

		// The writer runs until the edge dies. The kill comes at a random
		// moment after the round's first acknowledged write. What the
		// writer counts here is read once it has stopped.
		roundAcked := 0
		curBig := false // the write under way is a large one
		firstAck := make(chan struct{})
		done := make(chan struct{})
		wr := rand.New(rand.NewPCG(uint64(round), 17))
		go func() {
			defer close(done)
			for i := 0; i < 10_000; i++ {
				name := durabilityName(wr, round, i)
				// Every fourth round starts with a large write, and one
				// write in 25 is large.
				big := wr.IntN(25) == 0 || (i == 0 && round%4 == 0)
				v := writes.begin(name)
				curBig = big
				rec := record(name, v, wr)
				if big {
					rec = objBigRecord(name, v, wr)
				}
				if err := c.put(name, rec); err != nil {
					return // the edge was killed
				}
				writes.ack(name, v)
				roundAcked++
				if big {
					bigAcked++
				}
				if roundAcked == 1 {
					close(firstAck)
				}
			}
		}()
		select {
		case <-firstAck:
		case <-done:
			t.Fatalf("round %d: the writer stopped before any write was acknowledged\n%s", round, e.logs)
		case <-time.After(60 * time.Second):
			t.Fatalf("round %d: no write acknowledged within 60s\n%s", round, e.logs)
		}
		time.Sleep(time.Duration(r.IntN(400)) * time.Millisecond)
		e.cmd.Process.Kill() // SIGKILL
		<-e.done
		<-done
		c.close()
		killedInFlight += len(writes.inflight)
		if len(writes.inflight) > 0 && curBig {
			killedBig++
		}
		roundTimes = append(roundTimes, time.Since(t0))
	}

	e := objStartEdge(t, bin, data, keys, storeURL)
	objCheckStaging(t, rounds, data)
	c, err := dialLinux(e.local, "/store")
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	verify(t, rounds, c, writes)
	names, err := c.list()
	if err != nil {
		t.Fatal(err)
	}

	// Behind the store: every object of the bucket is the plain port's
	// client directory or one of the files listed.
	cl, err := g.Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stray []string
	objects := 0
	for o := range cl.ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		objects++
		name, ok := strings.CutPrefix(o.Key, "g1/local/")
		if o.Key != "g1/local/" && (!ok || !slices.Contains(names, name)) {
			stray = append(stray, o.Key)
		}
	}
	if len(stray) > 0 {
		t.Errorf("objects that are no file of the store: %q", stray)
	}
	t.Logf("%d rounds, %d acknowledged writes (%d over 16 MiB, multipart), %d kills with a write under way (%d of them a large one), %d files checked, %d objects in the bucket",
		rounds, writes.total, bigAcked, killedInFlight, killedBig, len(writes.acked), objects)
	t.Logf("edge start to serving: median %v, max %v; round (start, check, write, kill): median %v",
		objMedian(startTimes), slices.Max(startTimes), objMedian(roundTimes))
	if writes.total < 2*rounds {
		t.Errorf("only %d writes were acknowledged in %d rounds: the test did not exercise the store", writes.total, rounds)
	}
}

// objSetup builds strata and makes a keyring of one group.
func objSetup(t *testing.T) (bin, keys string) {
	t.Helper()
	bin = strataBin(t)
	keys = filepath.Join(t.TempDir(), "keys")
	makeKeys(t, bin, keys)
	return bin, keys
}

// objStartEdge starts an edge of group g1 on the object store at
// storeURL, staging in data; its parent's address is one nothing listens
// on.
func objStartEdge(t *testing.T, bin, data, keys, storeURL string) *tierProc {
	t.Helper()
	return startTier(t, bin, "edge", "-listen", "127.0.0.1:0", "-local", "127.0.0.1:0", "-parent", "127.0.0.1:1",
		"-data", data, "-keys", keys, "-store", storeURL, "-timeout", "2s")
}

// objCheckStaging checks that the staging directory of data holds only
// the running edge's: those of killed edges were removed when it opened.
func objCheckStaging(t *testing.T, round int, data string) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(data, "staging"))
	if err != nil {
		t.Fatalf("round %d: %v", round, err)
	}
	if len(ents) != 1 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("round %d: staging holds %q, want the running edge's directory alone", round, names)
	}
}

// objBigRecord is a record (see record) of 16 to 20 MiB: more than one
// part of a multipart upload.
func objBigRecord(name string, version int, r *rand.Rand) []byte {
	body := make([]byte, 16<<20+r.IntN(4<<20))
	for i := 0; i+8 <= len(body); i += 8 {
		u := r.Uint64()
		for j := range 8 {
			body[i+j] = byte(u >> (8 * j))
		}
	}
	return recordOf(name, version, body)
}

func objMedian(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
