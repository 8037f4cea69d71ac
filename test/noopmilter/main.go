// Command noopmilter is the baseline sluice is measured against: a milter
// built the naive way on the same go-milter (d--j/go-milter, protocol 6),
// taking every event and doing nothing with it.
//
//	noopmilter -listen inet:127.0.0.1:8891
//
// It answers continue to every event and asks to skip no answer, so the
// MTA or load generator pays each round trip a milter can negotiate, and
// serves the listener straight through go-milter's own Server (no
// deadlines, no buffered reads).
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/d--j/go-milter"
)

// noop takes every event and continues; go-milter answers accept at the
// end of the message.
type noop struct{ milter.NoOpMilter }

// RcptTo, Header and BodyChunk continue: NoOpMilter would ask the MTA to
// skip the rest of them, which a naive milter does not.
func (noop) RcptTo(rcptTo, esmtpArgs string, m milter.Modifier) (*milter.Response, error) {
	return milter.RespContinue, nil
}

func (noop) Header(name, value string, m milter.Modifier) (*milter.Response, error) {
	return milter.RespContinue, nil
}

func (noop) BodyChunk(chunk []byte, m milter.Modifier) (*milter.Response, error) {
	return milter.RespContinue, nil
}

// floor sees only CONNECT and accepts there: the MTA leaves it out of the
// rest of the session. It is the least any milter that looks at the client
// can cost the MTA — the connection, the negotiation and one round trip.
type floor struct{ noop }

func (floor) Connect(host, family string, port uint16, addr string, m milter.Modifier) (*milter.Response, error) {
	return milter.RespAccept, nil
}

func main() {
	listen := flag.String("listen", "inet:127.0.0.1:8891", "socket in Postfix's syntax: inet:host:port or unix:/path")
	least := flag.Bool("floor", false, "take only CONNECT and accept there: the least a milter can cost")
	flag.Parse()
	ln, err := listenSpec(*listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "noopmilter:", err)
		os.Exit(1)
	}
	newMilter := func() milter.Milter { return noop{} }
	// The same actions as sluice asks for; every event but DATA and
	// unknown commands, which sluice never takes either.
	protocol := milter.OptNoUnknown | milter.OptNoData
	if *least {
		newMilter = func() milter.Milter { return floor{} }
		protocol |= milter.OptNoHelo | milter.OptNoMailFrom | milter.OptNoRcptTo | milter.OptNoBody | milter.OptNoHeaders | milter.OptNoEOH
	}
	srv := milter.NewServer(
		milter.WithMilter(newMilter),
		milter.WithActions(milter.OptAddHeader|milter.OptChangeHeader|milter.OptQuarantine),
		milter.WithProtocols(protocol),
	)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sigs
		srv.Close()
	}()
	fmt.Println("listening on", *listen)
	if err := srv.Serve(ln); err != nil && err != milter.ErrServerClosed {
		fmt.Fprintln(os.Stderr, "noopmilter:", err)
		os.Exit(1)
	}
}

func listenSpec(spec string) (net.Listener, error) {
	kind, addr, _ := strings.Cut(spec, ":")
	switch kind {
	case "inet":
		return net.Listen("tcp", addr)
	case "unix":
		os.Remove(addr)
		ln, err := net.Listen("unix", addr)
		if err == nil {
			err = os.Chmod(addr, 0o666)
		}
		return ln, err
	}
	return nil, fmt.Errorf("socket %q: want inet:host:port or unix:/path", spec)
}
