package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"strata/fs"
	"strata/mount/remote"
	"strata/tiers/call"
	"strata/tiers/keyring"
	"strata/tiers/repo"
	"strata/tiers/tier"
	"strata/tiers/up"
)

// target says which tier a client command talks to: a plain local port
// given outright, or a tier of the hierarchy in -dir (its plain port, or
// with -client its encrypted port as that client).
type target struct {
	dir, addr, group, client *string
	timeout                  *time.Duration
}

func targetFlags(fl *flag.FlagSet, role string) *target {
	return &target{
		dir:     fl.String("dir", "strata-data", "`directory` of a hierarchy started by strata up (its up.json)"),
		addr:    fl.String("addr", "", "plain 9P `address` of the "+role+" to use instead of -dir"),
		group:   fl.String("group", "g1", "`group` whose "+role+" to use, with -dir"),
		client:  fl.String("client", "", "connect to the edge's encrypted port as this client `name`, with -dir"),
		timeout: fl.Duration("timeout", remote.DefaultTimeout, "bound of each step on the connection"),
	}
}

func (tg *target) open(ctx context.Context, role string) (*remote.Tree, error) {
	opts := remote.Options{Name: role, Timeout: *tg.timeout}
	addr := *tg.addr
	if addr == "" {
		m, err := up.ReadManifest(*tg.dir)
		if err != nil {
			return nil, err
		}
		group := *tg.group
		if role == "cloud" {
			group = ""
		}
		e, ok := m.Find(role, group)
		if !ok {
			return nil, fmt.Errorf("no %s of group %s in %s/%s", role, group, *tg.dir, up.ManifestFile)
		}
		addr, opts.Name = e.Local, e.Name
		if *tg.client != "" {
			if role != "edge" {
				return nil, fmt.Errorf("-client connects to an edge only")
			}
			ring, err := keyring.Open(m.Keys, nil)
			if err != nil {
				return nil, err
			}
			addr = e.Addr
			opts.Dial = ring.Dial(*tg.client, keyring.Client(*tg.client))
		}
	}
	return remote.Dial(ctx, "tcp", addr, opts)
}

func callCmd(ctx context.Context, args []string) error {
	fl := flag.NewFlagSet("call", flag.ContinueOnError)
	tg := targetFlags(fl, "edge")
	budget := fl.Duration("call-timeout", tier.DefaultCallTimeout, "how long to wait for the answer, retries included")
	where := fl.Bool("where", false, "print which tier ran the app on stderr")
	fl.Usage = func() {
		fmt.Fprintln(fl.Output(), "usage: strata call [flags] APP < request > answer")
		fl.PrintDefaults()
	}
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() != 1 {
		fl.Usage()
		return fmt.Errorf("call: name one app")
	}
	app := fl.Arg(0)
	if err := repo.ValidID(app); err != nil {
		return err
	}
	input, err := io.ReadAll(io.LimitReader(os.Stdin, tier.DefaultMaxInput+1))
	if err != nil {
		return fmt.Errorf("call: reading the request: %w", err)
	}
	if len(input) > tier.DefaultMaxInput {
		return fmt.Errorf("call: the request is larger than %d bytes", tier.DefaultMaxInput)
	}
	ctx, cancel := context.WithTimeout(ctx, *budget)
	defer cancel()
	tree, err := tg.open(ctx, "edge")
	if err != nil {
		return err
	}
	defer tree.Close()
	// One ID for every attempt: a retry after a lost link gets the
	// recorded answer, it does not run the app twice.
	req := &call.Request{ID: call.NewID(call.KindApp, app), App: app, Input: input}
	var reply *call.Reply
	// What the attempts learned: a failed reply says which tier failed and
	// why, which beats our own deadline passing.
	var fromReply, fromLink error
	for attempt := 0; ; attempt++ {
		reply, err = tier.Forward(ctx, tree, req)
		if err == nil && !(reply.Transient && ctx.Err() == nil) {
			break
		}
		if err == nil {
			fromReply = fmt.Errorf("%s: %s", reply.Where, reply.Reason)
		} else {
			fromLink = err
		}
		if ctx.Err() != nil || (err != nil && fs.KindOf(err) == fs.Timeout && time.Until(deadlineOf(ctx)) < 50*time.Millisecond) {
			last := fromReply
			if last == nil {
				last = fromLink
			}
			return fmt.Errorf("call %s (id %s): no answer within %v; last failure: %w", app, req.ID, *budget, last)
		}
		if k := fs.KindOf(err); err != nil && k != fs.Unavailable && k != fs.Timeout {
			return fmt.Errorf("call %s: %w", app, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(min(time.Duration(attempt+1)*100*time.Millisecond, time.Second)):
		}
	}
	os.Stdout.Write(reply.Out)
	if len(reply.Err) > 0 {
		os.Stderr.Write(reply.Err)
		if !bytes.HasSuffix(reply.Err, []byte("\n")) {
			fmt.Fprintln(os.Stderr)
		}
	}
	if *where {
		fmt.Fprintf(os.Stderr, "ran at %s: %s (route %s, id %s)\n", reply.Where, reply.Why, reply.Route, reply.ID)
	}
	if !reply.OK {
		return fmt.Errorf("call %s failed at %s: %s", app, reply.Where, reply.Reason)
	}
	return nil
}

func deployCmd(ctx context.Context, args []string) error {
	fl := flag.NewFlagSet("deploy", flag.ContinueOnError)
	tg := targetFlags(fl, "cloud")
	fl.Usage = func() {
		fmt.Fprintln(fl.Output(), "usage: strata deploy [flags] APP FILE.wasm")
		fl.PrintDefaults()
	}
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() != 2 {
		fl.Usage()
		return fmt.Errorf("deploy: name an app and a module file")
	}
	app, file := fl.Arg(0), fl.Arg(1)
	if err := repo.ValidID(app); err != nil {
		return err
	}
	mod, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("deploy: %w", err)
	}
	tree, err := tg.open(ctx, "cloud")
	if err != nil {
		return err
	}
	defer tree.Close()
	apps := tree.Dir("apps")
	if _, err := apps.Lookup(ctx, app); fs.KindOf(err) == fs.NotExist {
		if _, err := apps.Mkdir(ctx, app, 0o755); err != nil && fs.KindOf(err) != fs.Exist {
			return fmt.Errorf("deploy: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("deploy: %w", err)
	}
	h, err := tree.File("apps/"+app+"/module.wasm").Open(ctx, fs.WriteOnly|fs.Truncate)
	if err != nil {
		return fmt.Errorf("deploy: %w", err)
	}
	if _, err := h.WriteAt(ctx, mod, 0); err != nil {
		h.Close(ctx)
		return fmt.Errorf("deploy: %w", err)
	}
	if err := h.Close(ctx); err != nil {
		return fmt.Errorf("deploy %s: %w", app, err)
	}
	info, err := readRemote(ctx, tree, "apps/"+app+"/info")
	if err != nil {
		return err
	}
	v, hash, err := tier.ParseInfo(info)
	if err != nil {
		return err
	}
	fmt.Printf("deployed %s version %d (%d bytes, sha256 %s)\n", app, v, len(mod), hash)
	return nil
}

func readRemote(ctx context.Context, tree *remote.Tree, p string) ([]byte, error) {
	return fs.ReadAll(ctx, tree.File(p), 64<<20)
}

func deadlineOf(ctx context.Context) time.Time {
	dl, ok := ctx.Deadline()
	if !ok {
		return time.Now().Add(time.Hour)
	}
	return dl
}
