// Package dnstest runs an authoritative DNS server on loopback for tests:
// zones given as Go values or in the RFC 7208 suite's YAML format, and
// faults (SERVFAIL, timeouts) on demand.
package dnstest

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Server answers DNS questions over UDP and TCP on one loopback port from
// its current Zone.
type Server struct {
	addr     string
	udp, tcp *dns.Server
	closed   chan struct{}
	close    sync.Once

	zone    atomic.Pointer[Zone]
	delay   atomic.Int64 // nanoseconds before each answer
	queries atomic.Int64
	mu      sync.Mutex
	counts  map[question]int
}

// NewServer starts a server on 127.0.0.1 with a random port, answering
// from z (nil: an empty zone).
func NewServer(z *Zone) (*Server, error) { return NewServerAt(z, "127.0.0.1:0") }

// NewServerAt is NewServer on the given loopback address, for programs
// that only ask the nameservers of /etc/resolv.conf, on port 53
// (benchmarks of other milters, in a mount namespace of their own).
func NewServerAt(z *Zone, addr string) (*Server, error) {
	if z == nil {
		z = NewZone()
	}
	s := &Server{closed: make(chan struct{}), counts: make(map[question]int)}
	s.zone.Store(z)
	var err error
	// UDP and TCP must share the port; another process may take the TCP
	// side of a free UDP port, so try a few.
	for range 10 {
		var pc net.PacketConn
		pc, err = net.ListenPacket("udp", addr)
		if err != nil {
			return nil, fmt.Errorf("dnstest: listen udp: %w", err)
		}
		var l net.Listener
		l, err = net.Listen("tcp", pc.LocalAddr().String())
		if err != nil {
			pc.Close()
			continue
		}
		s.addr = pc.LocalAddr().String()
		s.udp = &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(s.serve)}
		s.tcp = &dns.Server{Listener: l, Handler: dns.HandlerFunc(s.serve)}
		break
	}
	if err != nil {
		return nil, fmt.Errorf("dnstest: listen tcp: %w", err)
	}
	for _, srv := range []*dns.Server{s.udp, s.tcp} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		errc := make(chan error, 1)
		go func() { errc <- srv.ActivateAndServe() }()
		select {
		case <-started:
		case err := <-errc:
			s.Close()
			return nil, fmt.Errorf("dnstest: serve: %w", err)
		}
	}
	return s, nil
}

// Start is NewServer for tests: it fails tb on error and closes the server
// when the test ends.
func Start(tb testing.TB, z *Zone) *Server {
	tb.Helper()
	s, err := NewServer(z)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// Addr is the server's address, "127.0.0.1:port", for UDP and TCP alike.
func (s *Server) Addr() string { return s.addr }

// SetZone replaces the data the server answers from.
func (s *Server) SetZone(z *Zone) {
	if z == nil {
		z = NewZone()
	}
	s.zone.Store(z)
}

// SetDelay makes the server wait d before each answer, like a distant
// server; questions are still received at once.
func (s *Server) SetDelay(d time.Duration) { s.delay.Store(int64(d)) }

// Zone returns the zone the server answers from.
func (s *Server) Zone() *Zone { return s.zone.Load() }

// Queries is the number of questions received so far.
func (s *Server) Queries() int { return int(s.queries.Load()) }

// Count is the number of questions received for name and qtype.
func (s *Server) Count(name string, qtype uint16) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[question{canonical(name), qtype}]
}

// ResetCounts forgets the question counts.
func (s *Server) ResetCounts() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queries.Store(0)
	clear(s.counts)
}

// Close stops the server. Queries being held for a Timeout fault are
// released.
func (s *Server) Close() error {
	var errs []error
	s.close.Do(func() {
		close(s.closed)
		for _, srv := range []*dns.Server{s.udp, s.tcp} {
			if srv != nil {
				if err := srv.Shutdown(); err != nil && !strings.Contains(err.Error(), "not started") {
					errs = append(errs, err)
				}
			}
		}
	})
	return errors.Join(errs...)
}

func hasType(rrs []dns.RR, qtype uint16) bool {
	for _, rr := range rrs {
		if rr.Header().Rrtype == qtype || qtype == dns.TypeANY {
			return true
		}
	}
	return false
}

// holdTimeout bounds how long a TCP query under a Timeout fault is held
// open when the server is not closed first.
const holdTimeout = 30 * time.Second

func (s *Server) serve(w dns.ResponseWriter, r *dns.Msg) {
	if len(r.Question) != 1 {
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeFormatError)
		w.WriteMsg(m)
		return
	}
	q := r.Question[0]
	s.queries.Add(1)
	s.mu.Lock()
	s.counts[question{canonical(q.Name), q.Qtype}]++
	s.mu.Unlock()

	if d := time.Duration(s.delay.Load()); d > 0 {
		select {
		case <-s.closed:
			return
		case <-time.After(d):
		}
	}
	z := s.zone.Load()
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	// As real servers do: compressed, ~4,000 A records fit the 64 KiB a
	// TCP answer may hold.
	m.Compress = true
	fault, exists := z.answer(q, m)
	switch fault {
	case Timeout:
		if _, udp := w.RemoteAddr().(*net.UDPAddr); !udp {
			// Closing a TCP connection would tell the client at once;
			// a silent server keeps it open.
			select {
			case <-s.closed:
			case <-time.After(holdTimeout):
			}
		}
		return
	case ServFail, Refused:
		rcode := dns.RcodeServerFailure
		if fault == Refused {
			rcode = dns.RcodeRefused
		}
		m = new(dns.Msg)
		m.SetRcode(r, rcode)
		w.WriteMsg(m)
		return
	}
	if !hasType(m.Answer, q.Qtype) {
		if !exists {
			m.Rcode = dns.RcodeNameError
		}
		ttl := z.negativeTTL()
		m.Ns = []dns.RR{&dns.SOA{
			Hdr:     dns.RR_Header{Name: ".", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl},
			Ns:      "ns.dnstest.",
			Mbox:    "hostmaster.dnstest.",
			Serial:  1,
			Refresh: 3600,
			Retry:   600,
			Expire:  86400,
			Minttl:  ttl,
		}}
	}
	if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
		size := dns.MinMsgSize
		if opt := r.IsEdns0(); opt != nil {
			size = max(int(opt.UDPSize()), dns.MinMsgSize)
			m.SetEdns0(uint16(size), false)
		}
		m.Truncate(size)
	}
	w.WriteMsg(m)
}
