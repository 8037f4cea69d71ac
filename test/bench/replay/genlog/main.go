// Command genlog writes a made-up Postfix log of many clients and
// senders (see sluice/maillog/maillogtest) to stdout, for measuring
// `sluice replay` on logs of any size.
package main

import (
	"flag"
	"fmt"
	"os"

	"sluice/maillog/maillogtest"
)

func main() {
	lines := flag.Int("lines", 1_000_000, "about this many lines")
	rate := flag.Float64("rate", 50, "sessions per second of log time")
	clients := flag.Int("clients", 5000, "distinct client addresses")
	senders := flag.Int("senders", 20000, "distinct senders")
	seed := flag.Uint64("seed", 1, "random seed")
	flag.Parse()
	n, err := maillogtest.Postfix(os.Stdout, maillogtest.Options{Lines: *lines, Rate: *rate, Clients: *clients, Senders: *senders, Seed: *seed})
	if err != nil {
		fmt.Fprintln(os.Stderr, "genlog:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "genlog: %d lines\n", n)
}
