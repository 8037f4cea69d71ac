package lists

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSetBuildAndReload(t *testing.T) {
	dir := t.TempDir()
	jp := filepath.Join(dir, "jp.cidr")
	write := func(text string) {
		t.Helper()
		if err := os.WriteFile(jp, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("192.0.2.0/24\n")
	c := Config{
		"jp":      "file:" + jp,
		"friends": []any{"example.org", ".example.net"},
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	s, kept, err := c.Build(nil)
	if err != nil || len(kept) != 0 {
		t.Fatalf("Build: %v %v", err, kept)
	}
	ip1, ip2 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("198.51.100.1")
	if !s.Get("jp").ContainsIP(ip1) || s.Get("jp").ContainsIP(ip2) || !s.Get("friends").MatchDomain("a.example.net") {
		t.Fatal("lists do not hold their entries")
	}
	if got := strings.Join(s.Names(), ","); got != "friends,jp" {
		t.Errorf("Names = %s", got)
	}
	if s.Get("nope") != nil || (*Set)(nil).Get("jp") != nil {
		t.Error("Get of a missing list")
	}

	// Reload: the file is read again.
	write("198.51.100.0/24\n")
	s2, kept, err := c.Build(s)
	if err != nil || len(kept) != 0 {
		t.Fatalf("reload: %v %v", err, kept)
	}
	if s2.Get("jp").ContainsIP(ip1) || !s2.Get("jp").ContainsIP(ip2) {
		t.Error("reload did not re-read the file")
	}

	// Reload with a broken file: the old list stays, the error names the line.
	write("198.51.100.0/24\n192.0.2.0/33\n")
	s3, kept, err := c.Build(s2)
	if err != nil {
		t.Fatalf("reload with a bad file failed the build: %v", err)
	}
	if len(kept) != 1 || !strings.Contains(kept[0].Error(), jp+":2:") || !strings.Contains(kept[0].Error(), "keeping the list loaded before") {
		t.Errorf("kept = %v", kept)
	}
	if s3.Get("jp") != s2.Get("jp") {
		t.Error("the old list was not kept")
	}

	// Reload with the file gone: the same.
	os.Remove(jp)
	s4, kept, err := c.Build(s3)
	if err != nil || len(kept) != 1 || !strings.Contains(kept[0].Error(), jp) || s4.Get("jp") != s2.Get("jp") {
		t.Errorf("reload with the file gone: %v %v", err, kept)
	}

	// At start there is nothing to keep: the error names the path.
	_, _, err = c.Build(nil)
	if err == nil || !strings.Contains(err.Error(), jp) || !strings.Contains(err.Error(), "jp") {
		t.Errorf("start with the file gone: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		c    Config
		want string
	}{
		{Config{"bad name": []any{"x.org"}}, "list name"},
		{Config{"a.b": []any{"x.org"}}, "list name"},
		{Config{"jp": "jp.cidr"}, "file:/path"},
		{Config{"jp": "file:"}, "file:/path"},
		{Config{"jp": "file:jp.cidr"}, "must be absolute"},
		{Config{"jp": []any{"x.org", 3}}, "jp.1: want a string in quotes"},
		{Config{"jp": 3}, "array of entries"},
		{Config{"jp": []any{"192.0.2.0/33"}}, "jp: entry 1: bad network"},
	} {
		err := tc.c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.c, err, tc.want)
		}
	}
	if err := (Config{"jp": "file:/does/not/exist"}).Validate(); err != nil {
		t.Errorf("Validate reads no files: %v", err)
	}
}
