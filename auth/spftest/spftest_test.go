package spftest

import (
	"strings"
	"testing"
)

func TestLoad(t *testing.T) {
	scenarios, err := Load(SuitePath())
	if err != nil {
		t.Fatal(err)
	}
	n, optional := 0, 0
	for _, s := range scenarios {
		n += len(s.Cases)
		for _, c := range s.Cases {
			if c.Optional() {
				optional++
			}
			if c.Host == "" || len(c.Results) == 0 {
				t.Errorf("%s: host %q results %v", c.Name, c.Host, c.Results)
			}
		}
	}
	if len(scenarios) != 16 || n != 203 || optional != 6 {
		t.Errorf("%d scenarios, %d cases, %d optional; want 16, 203, 6", len(scenarios), n, optional)
	}
	for name := range KnownFailures {
		found := false
		for _, s := range scenarios {
			for _, c := range s.Cases {
				found = found || c.Name == name
			}
		}
		if !found {
			t.Errorf("known failure %s is no case of the suite", name)
		}
	}
}

func TestJudge(t *testing.T) {
	c := Case{Name: "x", MailFrom: "a@b.example", Results: []string{"fail", "permerror"}}
	for _, tc := range []struct {
		fields []Field
		pass   bool
		why    string
	}{
		{[]Field{{"Received-SPF", "fail (x) client-ip=1.2.3.4"}, {"Authentication-Results", "mx.test; spf=fail smtp.mailfrom=a@b.example"}}, true, ""},
		{[]Field{{"received-spf", "PermError (x)"}, {"authentication-results", "MX.test; spf=permerror smtp.mailfrom=a@b.example"}}, true, ""},
		{[]Field{{"Received-SPF", "pass (x)"}, {"Authentication-Results", "mx.test; spf=pass smtp.mailfrom=a@b.example"}}, false, "result pass, want fail or permerror"},
		{[]Field{{"Received-SPF", "fail (x)"}, {"Authentication-Results", "mx.test; spf=pass smtp.mailfrom=a@b.example"}}, false, "Received-SPF says fail, Authentication-Results says pass"},
		{[]Field{{"Received-SPF", "fail (x)"}, {"Authentication-Results", "other.test; spf=fail smtp.mailfrom=a@b.example"}}, false, "no Authentication-Results with authserv-id mx.test"},
		{[]Field{{"Authentication-Results", "mx.test; spf=fail smtp.mailfrom=a@b.example"}}, false, "0 Received-SPF fields"},
		{[]Field{{"Received-SPF", "fail (x)"}, {"Authentication-Results", "mx.test; spf=fail smtp.helo=b.example"}}, false, "no smtp.mailfrom"},
	} {
		o := Outcome{Case: c}
		o.judge(tc.fields, "mx.test")
		if o.Pass != tc.pass || !strings.Contains(o.Problem, tc.why) {
			t.Errorf("%v: pass %v problem %q, want %v %q", tc.fields, o.Pass, o.Problem, tc.pass, tc.why)
		}
	}
}
