package e2e

// Named lists in files with real Postfix: re-read on SIGHUP, the old list
// kept (and the error logged) when the file cannot be read at a reload,
// an error naming the file when it cannot be read at start; and `sluice
// explain` run as the admin would.

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

func listConfig(path string) string {
	return policyConfig(`mode = "enforce"`, `
[lists]
watch = "file:`+path+`"

[[limit]]
name = "watched"
count = "messages"
per = "client_ip"
rate = "1/1h"
match.client = ["watch"]
`)
}

// accepted sends two messages from ip and returns how many were accepted.
func acceptedOf(t *testing.T, addr, ip string) int {
	t.Helper()
	c := session(t, addr, ip)
	defer c.Quit()
	n := 0
	for _, tr := range sendN(t, c, "list@example.test", 2) {
		if tr.Accepted() {
			n++
		}
	}
	return n
}

func TestPolicyListFileReload(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.NewSluice(t)
	list := filepath.Join(sl.Dir, "watch.list")
	write := func(text string) {
		t.Helper()
		if err := os.WriteFile(list, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("# clients to watch\n192.0.2.60\n")
	sl.Start(listConfig(list))
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen})

	if n := acceptedOf(t, pf.Addr, "192.0.2.60"); n != 1 {
		t.Errorf("192.0.2.60 on the list: %d of 2 accepted, want 1", n)
	}
	if n := acceptedOf(t, pf.Addr, "192.0.2.61"); n != 2 {
		t.Errorf("192.0.2.61 not on the list: %d of 2 accepted, want 2", n)
	}

	// The file changes; SIGHUP re-reads it.
	write("192.0.2.61/32\n")
	reloads := len(sl.Find(func(l sluicetest.LogLine) bool { return l.Msg() == "reloaded" }))
	sl.Signal(syscall.SIGHUP)
	waitLogCount(t, sl, "reloaded", reloads+1, 10*time.Second)
	// Off the list its messages were not counted by the rule: it starts
	// afresh, 1 an hour.
	if n := acceptedOf(t, pf.Addr, "192.0.2.61"); n != 1 {
		t.Errorf("192.0.2.61, now on the list: %d of 2 accepted, want 1", n)
	}
	if n := acceptedOf(t, pf.Addr, "192.0.2.60"); n != 2 {
		t.Errorf("192.0.2.60, now off the list: %d of 2 accepted, want 2", n)
	}

	// The file is gone at the next reload: the list loaded before stays,
	// and the error names the file.
	if err := os.Remove(list); err != nil {
		t.Fatal(err)
	}
	sl.Signal(syscall.SIGHUP)
	l := sl.WaitLog(10*time.Second, "list not reloaded", func(l sluicetest.LogLine) bool { return l.Msg() == "list not reloaded" })
	t.Logf("sluice: %v", l)
	if !strings.Contains(l.Str("error"), list) || !strings.Contains(l.Str("error"), "keeping the list loaded before") {
		t.Errorf("the error does not name %s: %v", list, l)
	}
	waitLogCount(t, sl, "reloaded", reloads+2, 10*time.Second)
	if n := acceptedOf(t, pf.Addr, "192.0.2.62"); n != 2 {
		t.Errorf("192.0.2.62, on no list: %d of 2 accepted, want 2", n)
	}
	if n := acceptedOf(t, pf.Addr, "192.0.2.61"); n != 0 {
		t.Errorf("192.0.2.61, on the kept list: %d of 2 accepted, want 0", n)
	}
}

// At start there is no list to keep: check and serve fail, naming the file
// and the config line.
func TestPolicyListFileMissingAtStart(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.NewSluice(t)
	list := filepath.Join(sl.Dir, "missing.list")
	config := sl.WriteConfig(listConfig(list))
	res := sluicetest.RunSluice(t, "check", "-config", config)
	t.Logf("sluice check (exit %d): %s", res.Code, strings.TrimSpace(res.Stderr))
	if res.Code != 1 || !strings.Contains(res.Stderr, list) || !strings.Contains(res.Stderr, config+":") {
		t.Errorf("sluice check with a missing list file: exit %d, %q; want 1 naming %s and the config file", res.Code, res.Stderr, list)
	}
	// serve has its logger by then: the error is its last log line.
	res = sluicetest.RunSluice(t, "serve", "-config", config)
	t.Logf("sluice serve (exit %d): %s%s", res.Code, strings.TrimSpace(res.Stdout), strings.TrimSpace(res.Stderr))
	if res.Code != 1 || !strings.Contains(res.Stdout+res.Stderr, list) {
		t.Errorf("sluice serve with a missing list file: exit %d; want 1 and an error naming %s", res.Code, list)
	}
}

// sluice explain, run as the admin would before loading a policy.
func TestPolicyExplainCommand(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.NewSluice(t)
	list := filepath.Join(sl.Dir, "jp.cidr")
	if err := os.WriteFile(list, []byte("203.0.113.0/24\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	snap := filepath.Join(sl.Dir, "counters.snap")
	config := sl.WriteConfig(policyConfig(`mode = "enforce"`, `
[store]
snapshot = "`+snap+`"

[lists]
jp = "file:`+list+`"

[[limit]]
name = "jp"
count = "messages"
per = "client_ip"
rate = "50/1h"
final = true
match.client = ["jp"]

[[limit]]
name = "per-sender"
count = "messages"
per = "sender"
rate = "10/1h"

[[limit]]
name = "gmail"
count = "recipients"
per = "rcpt_domain"
rate = "6/1m"
match.rcpt_domain = ["gmail.com"]
`))
	res := sluicetest.RunSluice(t, "explain", "-config", config, "-client", "192.0.2.7", "-helo", "h.example.test",
		"-sender", "a@example.test", "-rcpt", "c@gmail.com", "-listener", "submission", "-auth", "alice")
	t.Logf("sluice explain (exit %d):\n%s%s", res.Code, res.Stdout, res.Stderr)
	if res.Code != 0 {
		t.Fatalf("exit %d", res.Code)
	}
	for _, want := range []string{
		`client 192.0.2.7 [unknown] on listener "submission", HELO "h.example.test", authenticated as "alice"`,
		"match.client: client 192.0.2.7 (unknown) is in none of jp",
		"per-sender  applies  sender:a@example.test",
		"gmail  applies  rcpt_domain:gmail.com",
		"from session 7, rcpt c@gmail.com: tempfail",
		"from session 11, mail: tempfail",
	} {
		if !strings.Contains(res.Stdout, want) {
			t.Errorf("explain output lacks %q", want)
		}
	}
	if _, err := os.Stat(snap); !os.IsNotExist(err) {
		t.Errorf("explain wrote the store's snapshot: %v", err)
	}
}
