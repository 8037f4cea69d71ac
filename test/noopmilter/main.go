// Command noopmilter is the baseline sluice is measured against: a milter
// built the naive way on the same go-milter v0.5.0, taking every event and
// doing nothing with it.
//
//	noopmilter -listen inet:127.0.0.1:8891
//
// It answers continue to every event, so the MTA or load generator pays
// each round trip a milter can negotiate, and serves the listener straight
// through go-milter's own Server (no deadlines, no buffered reads).
package main

import (
	"flag"
	"fmt"
	"net"
	"net/textproto"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/emersion/go-milter"
)

// noop takes every event and continues.
type noop struct{}

func (noop) Connect(host, family string, port uint16, addr net.IP, m *milter.Modifier) (milter.Response, error) {
	return milter.RespContinue, nil
}

func (noop) Helo(name string, m *milter.Modifier) (milter.Response, error) {
	return milter.RespContinue, nil
}

func (noop) MailFrom(from string, m *milter.Modifier) (milter.Response, error) {
	return milter.RespContinue, nil
}

func (noop) RcptTo(rcpt string, m *milter.Modifier) (milter.Response, error) {
	return milter.RespContinue, nil
}

func (noop) Header(name, value string, m *milter.Modifier) (milter.Response, error) {
	return milter.RespContinue, nil
}

func (noop) Headers(h textproto.MIMEHeader, m *milter.Modifier) (milter.Response, error) {
	return milter.RespContinue, nil
}

func (noop) BodyChunk(chunk []byte, m *milter.Modifier) (milter.Response, error) {
	return milter.RespContinue, nil
}

// Body continues rather than accepts, as sluice does: an accept would make
// go-milter build a new backend for the next message.
func (noop) Body(m *milter.Modifier) (milter.Response, error) {
	return milter.RespContinue, nil
}

func (noop) Abort(m *milter.Modifier) error { return nil }

// floor sees only CONNECT and accepts there: the MTA leaves it out of the
// rest of the session. It is the least any milter that looks at the client
// can cost the MTA — the connection, the negotiation and one round trip.
type floor struct{ noop }

func (floor) Connect(host string, family string, port uint16, addr net.IP, m *milter.Modifier) (milter.Response, error) {
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
	srv := &milter.Server{
		NewMilter: func() milter.Milter { return noop{} },
		// The same actions as sluice asks for; every event a v2 milter
		// can get (go-milter never sees DATA or unknown commands).
		Actions:  milter.OptAddHeader | milter.OptChangeHeader | milter.OptQuarantine,
		Protocol: milter.OptNoUnknown | milter.OptNoData,
	}
	if *least {
		srv.NewMilter = func() milter.Milter { return floor{} }
		srv.Protocol |= milter.OptNoHelo | milter.OptNoMailFrom | milter.OptNoRcptTo | milter.OptNoBody | milter.OptNoHeaders | milter.OptNoEOH
	}
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
