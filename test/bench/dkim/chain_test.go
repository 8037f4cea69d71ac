// Package dkimbench measures one milter against three: Debian's opendkim
// (verify), opendmarc and postfix-policyd-spf-python chained in front of
// Postfix, against sluice alone doing SPF, DKIM, DMARC and its default
// limits, on the same signed messages; bare Postfix is the baseline.
//
// Run it through test/bench/dkim/run, which installs the Debian packages
// and gives the test a mount namespace whose /etc/resolv.conf names the
// loopback DNS server this test starts on port 53: opendmarc and
// policyd-spf ask only the system's resolver. Debian's opendkim resolves
// through libunbound, which ignores resolv.conf and recurses from the root
// servers unless given Nameservers; without it every key lookup waited
// for a timeout, and opendkim gave no result at all.
package dkimbench

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/authres"

	"sluice/auth/dkim/dkimtest"
	"sluice/test/dnstest"
	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// dnsHost is where the zone is served, on port 53: the nameserver the run
// script writes into the namespace's resolv.conf, and opendkim's
// Nameservers.
const dnsHost = "127.0.0.153"

const dnsAddr = dnsHost + ":53"

const authID = "mx.bench.test"

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

var (
	rsaKey = dkimtest.RSA2048("", "r")
	edKey  = dkimtest.Ed25519("", "e")
)

const domains = 10

// zone: d0..d9.example each publish both keys and p=none (so every
// message is delivered and its verdict read from its header); SPF allows
// loopback, except d8.example's, which soft-fails everyone, and
// d9.example publishes no DMARC record. other.example's SPF allows nobody.
func zone() *dnstest.Zone {
	z := dnstest.NewZone()
	for i := range domains {
		d := fmt.Sprintf("d%d.example", i)
		for _, k := range []*dkimtest.Key{rsaKey, edKey} {
			kk := *k
			kk.Domain = d
			z.MustAddText(kk.ZoneLine())
		}
		spf := "v=spf1 ip4:127.0.0.0/8 -all"
		if i == 8 {
			spf = "v=spf1 ~all"
		}
		z.MustAddText(d + `. 3600 IN TXT "` + spf + `"`)
		if i != 9 {
			z.MustAddText(`_dmarc.` + d + `. 3600 IN TXT "v=DMARC1; p=none"`)
		}
	}
	z.MustAddText(`other.example. 3600 IN TXT "v=spf1 -all"`)
	return z.NegativeTTL(3600)
}

// message i: signed with RSA 2048, with ed25519, signed then changed, or
// unsigned; sent from an aligned envelope sender or from other.example.
func message(i int) (sender string, msg []byte) {
	d := fmt.Sprintf("d%d.example", i%domains)
	msg = dkimtest.Message("a@"+d, "rcpt@example.org", fmt.Sprintf("bench %d", i), 2000)
	switch i % 4 {
	case 0, 2:
		k := *rsaKey
		k.Domain = d
		msg = dkimtest.Sign(msg, &k, dkimtest.Options{Relaxed: true})
		if i%4 == 2 {
			msg = bytes.Replace(msg, []byte("lazy dog"), []byte("lazy cat"), 1)
		}
	case 1:
		k := *edKey
		k.Domain = d
		msg = dkimtest.Sign(msg, &k, dkimtest.Options{Relaxed: true})
	}
	sender = "b@" + d
	if i%3 == 0 {
		sender = "b@other.example"
	}
	return sender, msg
}

type variant struct {
	name string
	pf   *mta.Postfix
	cpu  *cpuGroup
	// milters is in the command line of every milter and policy server
	// of the setup (their config's directory); empty: none.
	milters   string
	rates     []float64 // messages per second
	cpus      []float64 // milliseconds of CPU per message, all processes
	milterCPU []float64 // milliseconds of CPU per message, the milters
}

func BenchmarkChain(b *testing.B) {
	testenv.Require(b)
	if rc, err := os.ReadFile("/etc/resolv.conf"); err != nil || !strings.Contains(string(rc), dnsHost) {
		b.Fatalf("/etc/resolv.conf does not name %s: run this through test/bench/dkim/run", dnsAddr)
	}
	srv, err := dnstest.NewServerAt(zone(), dnsAddr)
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	n := envInt("BENCH_DKIM_MESSAGES", 2000)
	work := testenv.Dir(b, "dkimchain")
	os.Chmod(work, 0o755)

	vs := []*variant{
		{name: "bare Postfix", cpu: newCPUGroup(b, "bare")},
		{name: "opendkim+opendmarc+policyd-spf", cpu: newCPUGroup(b, "chain"), milters: work + "/"},
		{name: "sluice", cpu: newCPUGroup(b, "sluice")},
	}
	bare, chain, withSluice := vs[0], vs[1], vs[2]
	bare.pf = startIn(b, bare.cpu, func() *mta.Postfix { return mta.StartPostfix(b, mta.PostfixOptions{}) })
	chain.pf = startIn(b, chain.cpu, func() *mta.Postfix { return startChain(b, work) })
	withSluice.pf = startIn(b, withSluice.cpu, func() *mta.Postfix {
		sl := sluicetest.StartSluice(b, fmt.Sprintf("authserv_id = %q\n", authID)+sluicetest.CountEverything+fmt.Sprintf(`
[dns]
servers = [%q]

[spf]
enabled = true

[dkim]
enabled = true

[dmarc]
enabled = true
`, dnsAddr))
		withSluice.milters = sl.Config
		return mta.StartPostfix(b, mta.PostfixOptions{Milter: sl.Listen})
	})

	msgs := make([][]byte, n)
	senders := make([]string, n)
	for i := range n {
		senders[i], msgs[i] = message(i)
	}
	// The first pass fills every cache and gives the verdicts to compare.
	for _, v := range vs {
		send(b, v.pf.Addr, senders, msgs)
		v.pf.WaitDelivered(n, 5*time.Minute)
	}
	compare(b, chain.pf.Sink.Messages(b), withSluice.pf.Sink.Messages(b), n)
	for r := 0; r < envInt("BENCH_ROUNDS", 3); r++ {
		for _, v := range vs {
			want := n * (r + 2)
			var mcpu0 time.Duration
			if v.milters != "" {
				mcpu0 = processCPU(v.milters)
			}
			start, cpu0 := time.Now(), v.cpu.usage(b)
			send(b, v.pf.Addr, senders, msgs)
			// Counting the sink's files is cheap; WaitDelivered reads
			// every message, which is not the MTA's time.
			if err := testenv.Poll(10*time.Minute, func() error {
				if got := v.pf.Sink.Count(); got < want {
					return fmt.Errorf("%s: sink has %d of %d messages", v.name, got, want)
				}
				return nil
			}); err != nil {
				b.Fatal(err)
			}
			v.rates = append(v.rates, float64(n)/time.Since(start).Seconds())
			v.cpus = append(v.cpus, float64(v.cpu.usage(b)-cpu0)/float64(time.Millisecond)/float64(n))
			if v.milters != "" {
				v.milterCPU = append(v.milterCPU, float64(processCPU(v.milters)-mcpu0)/float64(time.Millisecond)/float64(n))
			}
			v.pf.WaitDelivered(want, time.Minute)
		}
	}
	base := median(bare.rates)
	for _, v := range vs {
		fmt.Printf("value\t%s msg/s (median of %d)\t%.0f\t\n", v.name, len(v.rates), median(v.rates))
	}
	chainRatio, sluiceRatio := median(chain.rates)/base, median(withSluice.rates)/base
	fmt.Printf("ratio\tchain / bare Postfix\t%.2f\t\n", chainRatio)
	fmt.Printf("ratio\tsluice / bare Postfix\t%.2f\t\n", sluiceRatio)
	fmt.Printf("ratio\tsluice's ratio / the chain's\t%.2f\t>= 1.5\n", sluiceRatio/chainRatio)
	if bare.cpu == nil || chain.cpu == nil || withSluice.cpu == nil {
		return
	}
	for _, v := range vs {
		fmt.Printf("value\t%s CPU ms/msg, all its processes (median of %d)\t%.2f\t\n", v.name, len(v.cpus), median(v.cpus))
	}
	baseCPU, chainCPU, sluiceCPU := median(bare.cpus), median(chain.cpus), median(withSluice.cpus)
	fmt.Printf("value\tCPU ms/msg above bare Postfix: chain, sluice\t%.2f, %.2f\t\n", chainCPU-baseCPU, sluiceCPU-baseCPU)
	fmt.Printf("value\tof which the milters' own processes: chain, sluice\t%.2f, %.2f\t\n", median(chain.milterCPU), median(withSluice.milterCPU))
	// As throughput would be if the machine were CPU-bound and the setup
	// alone on it: bare Postfix's CPU per message over the setup's.
	fmt.Printf("ratio\tchain / bare Postfix, by CPU cost\t%.2f\t\n", baseCPU/chainCPU)
	fmt.Printf("ratio\tsluice / bare Postfix, by CPU cost\t%.2f\t\n", baseCPU/sluiceCPU)
	fmt.Printf("ratio\tsluice's ratio / the chain's, by CPU cost\t%.2f\t>= 1.5\n", chainCPU/sluiceCPU)
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// send delivers every message over 20 concurrent SMTP sessions of 10
// messages each, from loopback.
func send(b *testing.B, addr string, senders []string, msgs [][]byte) {
	b.Helper()
	const workers, perSession = 20, 10
	next := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed []string
	for range workers {
		wg.Go(func() {
			var c *mta.Client
			sent := 0
			for i := range next {
				if c == nil {
					var err error
					if c, err = mta.Dial(addr); err == nil {
						_, err = c.Ehlo("client.bench.test")
					}
					if err != nil {
						mu.Lock()
						failed = append(failed, err.Error())
						mu.Unlock()
						c = nil
						continue
					}
				}
				tr, err := c.Send(senders[i], []string{"rcpt@example.org"}, msgs[i])
				if err != nil || !tr.Accepted() {
					mu.Lock()
					failed = append(failed, fmt.Sprintf("message %d: %v %v", i, tr, err))
					mu.Unlock()
				}
				if sent++; sent == perSession {
					c.Quit()
					c, sent = nil, 0
				}
			}
			if c != nil {
				c.Quit()
			}
		})
	}
	for i := range msgs {
		next <- i
	}
	close(next)
	wg.Wait()
	if len(failed) > 0 {
		b.Fatalf("%d messages not accepted, first: %s", len(failed), failed[0])
	}
}

// verdict is what one message was found to be: SPF, each DKIM signature,
// DMARC.
type verdict struct{ spf, dkim, dmarc string }

// compare checks that both setups gave every message the same verdict.
func compare(b *testing.B, chain, sluice []mta.Message, n int) {
	b.Helper()
	raw := map[string]mta.Message{}
	of := func(name string, ms []mta.Message, read func(mta.Message) (verdict, error)) map[string]verdict {
		out := map[string]verdict{}
		for _, m := range ms {
			subj := m.Header.Get("Subject")
			v, err := read(m)
			if err != nil {
				b.Fatalf("%s, %q (%s): %v", name, subj, m.Path, err)
			}
			if _, ok := out[subj]; ok {
				b.Fatalf("%s delivered %q twice", name, subj)
			}
			out[subj] = v
			if _, ok := raw[subj]; !ok && name == "chain" {
				raw[subj] = m
			}
		}
		return out
	}
	c, s := of("chain", chain, chainVerdict), of("sluice", sluice, sluiceVerdict)
	same, kinds, logged := 0, map[verdict]int{}, false
	for i := range n {
		subj := fmt.Sprintf("bench %d", i)
		cv, cok := c[subj]
		sv, sok := s[subj]
		switch {
		case !cok || !sok:
			b.Errorf("message %d: delivered through the chain %v, through sluice %v", i, cok, sok)
			continue
		case cv != sv:
			if !logged {
				b.Logf("first difference, message %d, as the chain delivered it: %v", i, raw[subj].Header)
				logged = true
			}
			b.Errorf("message %d: chain %+v, sluice %+v", i, cv, sv)
			continue
		}
		same++
		kinds[sv]++
	}
	fmt.Printf("value\tmessages with the same SPF, DKIM and DMARC verdict in both\t%d of %d\t%d\n", same, n, n)
	var lines []string
	for k, v := range kinds {
		lines = append(lines, fmt.Sprintf("# %d messages: spf=%s dkim=%s dmarc=%s", v, k.spf, k.dkim, k.dmarc))
	}
	sort.Strings(lines)
	fmt.Println(strings.Join(lines, "\n"))
}

// results are the Authentication-Results of m written by id.
func results(m mta.Message, id string) ([]authres.Result, error) {
	var out []authres.Result
	for _, v := range m.Header["Authentication-Results"] {
		v = strings.Join(strings.Fields(uncomment(v)), " ")
		got, rs, err := authres.Parse(v)
		if err != nil {
			return nil, fmt.Errorf("parse Authentication-Results %q: %w", v, err)
		}
		if strings.EqualFold(got, id) {
			out = append(out, rs...)
		}
	}
	return out, nil
}

// uncomment replaces the comments of a header field value (RFC 5322's
// CFWS) by spaces. opendkim writes "dkim=pass (2048-bit key; unprotected)",
// and go-msgauth's parser splits the results at every semicolon, even one
// inside a comment; quoted strings (reason="...") are kept as they are.
func uncomment(v string) string {
	var b strings.Builder
	depth, quoted, escaped := 0, false, false
	for _, r := range v {
		switch {
		case escaped:
			escaped = false
		case r == '\\':
			escaped = true
		case quoted:
			quoted = r != '"'
		case r == '"' && depth == 0:
			quoted = true
		case r == '(':
			depth++
			continue
		case r == ')' && depth > 0:
			if depth--; depth == 0 {
				b.WriteByte(' ')
			}
			continue
		}
		if depth == 0 {
			b.WriteRune(r)
		}
	}
	return b.String()
}

func value(rs []authres.Result, method string) string {
	var vals []string
	for _, r := range rs {
		switch r := r.(type) {
		case *authres.DKIMResult:
			if method == "dkim" {
				vals = append(vals, string(r.Value))
			}
		case *authres.DMARCResult:
			if method == "dmarc" {
				vals = append(vals, string(r.Value))
			}
		case *authres.SPFResult:
			if method == "spf" {
				vals = append(vals, string(r.Value))
			}
		}
	}
	return strings.Join(vals, ",")
}

// chainVerdict reads policyd-spf's Received-SPF and the
// Authentication-Results of opendkim and opendmarc.
func chainVerdict(m mta.Message) (verdict, error) {
	rs, err := results(m, authID)
	if err != nil {
		return verdict{}, err
	}
	spf := strings.ToLower(strings.Fields(m.Header.Get("Received-SPF") + " none")[0])
	return verdict{spf: spf, dkim: value(rs, "dkim"), dmarc: value(rs, "dmarc")}, nil
}

// sluiceVerdict reads sluice's one Authentication-Results.
func sluiceVerdict(m mta.Message) (verdict, error) {
	rs, err := results(m, authID)
	if err != nil {
		return verdict{}, err
	}
	return verdict{spf: value(rs, "spf"), dkim: value(rs, "dkim"), dmarc: value(rs, "dmarc")}, nil
}

// startChain starts opendkim (verify) and opendmarc as milters and
// policyd-spf as Postfix's policy service, each in its Debian package's
// setup with what a test needs changed: loopback is not skipped, nothing
// is refused (every verdict is a header), logs off. opendkim forwards to
// the test's DNS server and has no TrustAnchorFile (Debian's default
// config names one): the test's zone is unsigned, and with the root's
// trust anchor every key lookup fails after a 5-second wait.
func startChain(b *testing.B, work string) *mta.Postfix {
	b.Helper()
	for _, bin := range []string{"/usr/sbin/opendkim", "/usr/sbin/opendmarc", "/usr/bin/policyd-spf"} {
		if _, err := os.Stat(bin); err != nil {
			b.Fatalf("%s: %v (test/bench/dkim/run installs opendkim, opendmarc and postfix-policyd-spf-python)", bin, err)
		}
	}
	write := func(name, text string) string {
		p := filepath.Join(work, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			b.Fatal(err)
		}
		return p
	}
	dkimPort, dmarcPort := testenv.FreePort(b), testenv.FreePort(b)
	ignore := write("ignore-hosts", "192.0.2.255\n")
	dkimConf := write("opendkim.conf", fmt.Sprintf(`Mode v
Socket inet:%d@127.0.0.1
AuthservID %s
AlwaysAddARHeader yes
PidFile %s/opendkim.pid
Syslog no
PeerList %s
InternalHosts %s
Nameservers %s
`, dkimPort, authID, work, ignore, ignore, dnsHost))
	dmarcConf := write("opendmarc.conf", fmt.Sprintf(`Socket inet:%d@127.0.0.1
AuthservID %s
TrustedAuthservIDs %s
IgnoreHosts %s
IgnoreAuthenticatedClients false
PublicSuffixList /usr/share/publicsuffix/public_suffix_list.dat
RejectFailures false
SPFIgnoreResults false
SPFSelfValidate false
PidFile %s/opendmarc.pid
Syslog false
`, dmarcPort, authID, authID, ignore, work))
	spfConf := write("policyd-spf.conf", `debugLevel = 0
TestOnly = 1
HELO_reject = False
Mail_From_reject = False
PermError_reject = False
TempError_Defer = False
skip_addresses = 192.0.2.255/32
Header_Type = SPF
Hide_Receiver = No
Authserv_Id = `+authID+`
`)
	for _, d := range []struct {
		name string
		cmd  *exec.Cmd
		port int
	}{
		{"opendkim", exec.Command("/usr/sbin/opendkim", "-f", "-x", dkimConf), dkimPort},
		{"opendmarc", exec.Command("/usr/sbin/opendmarc", "-f", "-c", dmarcConf), dmarcPort},
	} {
		p := testenv.StartProcess(b, d.name, d.cmd)
		b.Cleanup(func() { p.Stop(15, 10*time.Second) })
		testenv.WaitFor(b, 20*time.Second, d.name+" listening", func() error { return testenv.TCPListening(fmt.Sprintf("127.0.0.1:%d", d.port)) })
	}
	pf := mta.StartPostfix(b, mta.PostfixOptions{
		Milter: fmt.Sprintf("inet:127.0.0.1:%d, inet:127.0.0.1:%d", dkimPort, dmarcPort),
		Main: map[string]string{
			"smtpd_recipient_restrictions": "check_policy_service unix:private/policyd-spf, permit_mynetworks, reject_unauth_destination",
			"policyd-spf_time_limit":       "3600",
		},
	})
	etc := filepath.Join(pf.Dir, "etc")
	testenv.Run(b, "postconf", "-c", etc, "-M", "policyd-spf/unix=policyd-spf unix - n n - 0 spawn user=nobody argv=/usr/bin/policyd-spf "+spfConf)
	testenv.Run(b, testenv.Tool(b, "postfix"), "-c", etc, "reload")
	return pf
}
