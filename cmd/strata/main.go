// Command strata runs the tiers of a Strata hierarchy and talks to them.
//
//	strata up -dir DIR [-groups N]              a whole hierarchy on loopback
//	strata serve cloud|appedge|edge [flags]     one tier per process
//	strata serve store -listen ADDR -data DIR   a durable /store alone
//	strata keygen -keys DIR ...                 make or rotate link keysets
//	strata mount -edge ADDR -key FILE DIR       the client tier, mounted with FUSE
//	strata call APP < request > answer          invoke through an edge
//	strata deploy APP FILE.wasm                 deploy at the cloud
//	strata status                               every tier's /status
//	strata trace REQUEST-ID                     one invocation through every tier
//	strata token issue|revoke|list              the clients' web tokens
//	strata delay -listen ADDR -to ADDR          a delay line (latency, rate)
//	strata apps -o DIR                          build the sample apps
//	strata load -addr ADDR [-apps a,b] [-n 200] a bounded load of invocations, with latencies
//
// Every subcommand prints its flags with -h.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

type command struct {
	name  string
	usage string
	run   func(ctx context.Context, args []string) error
}

func commands() []command {
	return []command{
		{"up", "up [-dir DIR] [-groups N] [-port P] [-store s3://BUCKET/PREFIX?endpoint=HOST:PORT]", upCmd},
		{"serve", "serve cloud|appedge|edge|store [flags]", serve},
		{"keygen", "keygen -keys DIR [-groups N] [-clients A,B] [-rotate PURPOSE] [-retire PURPOSE:ID] [-list]", keygen},
		{"mount", "mount -edge ADDR -key FILE [-threshold1 5] [-threshold2 51200] MOUNTPOINT", mountCmd},
		{"call", "call [-dir DIR | -addr ADDR] [-client NAME] APP < request > answer", callCmd},
		{"deploy", "deploy [-dir DIR | -addr ADDR] APP FILE.wasm", deployCmd},
		{"status", "status [-dir DIR | -addr ADDR] [-timeout 3s]", statusTreeCmd},
		{"trace", "trace [-dir DIR | -addr ADDR] [-client NAME] REQUEST-ID | -list", traceCmd},
		{"token", "token [-dir DIR | -tokens FILE] issue CLIENT | revoke CLIENT|ID | list", tokenCmd},
		{"delay", "delay -listen ADDR -to ADDR [-delay 10ms] [-rate BYTES/S] [-for D]", delayCmd},
		{"apps", "apps [-o DIR]", appsCmd},
		{"load", "load (-addr ADDR | -edge ADDR -key FILE) [-apps a,b] [-zipf S] [-n 200] [-c 1]", loadCmd},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "strata:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "help" || args[0] == "--help" {
		usage(os.Stderr)
		if len(args) == 0 {
			return fmt.Errorf("no command given")
		}
		return nil
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, args[1:])
		}
	}
	usage(os.Stderr)
	return fmt.Errorf("unknown command %q", args[0])
}

func usage(w *os.File) {
	fmt.Fprintln(w, "usage: strata COMMAND [flags]")
	for _, c := range commands() {
		fmt.Fprintf(w, "  strata %s\n", c.usage)
	}
}

// newLogger returns the process's logger: text on stderr at the given level.
func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("-log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}
