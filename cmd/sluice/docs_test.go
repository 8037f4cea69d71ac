package main

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// fence is one fenced block of a Markdown file.
type fence struct {
	doc  string
	line int    // of the opening fence
	info string // what follows the opening ```: "toml", "toml partial", "text file=/etc/sluice/cn.cidr"
	text string
}

// fences reads the fenced blocks of a Markdown file, indented ones (in a
// list item) too, without their indent.
func fences(t *testing.T, path string) []fence {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []fence
	var cur *fence
	var body []string
	indent := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimLeft(line, " ")
		if strings.HasPrefix(trimmed, "```") {
			if cur == nil {
				indent = line[:len(line)-len(trimmed)]
				cur = &fence{doc: path, line: n, info: strings.TrimSpace(trimmed[3:])}
				body = body[:0]
				continue
			}
			cur.text = strings.Join(body, "\n") + "\n"
			out = append(out, *cur)
			cur = nil
			continue
		}
		if cur != nil {
			body = append(body, strings.TrimPrefix(line, indent))
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

var etcPath = regexp.MustCompile(`/etc/[A-Za-z0-9_./-]+`)

// Every ```toml block of README.md and docs/ is a config `sluice check`
// accepts, unless its fence says "toml partial" (a snippet of a larger
// file). The files a config names under /etc are those a block of the
// same page gives as "```text file=/etc/...", written into a scratch
// root; a file a page names without showing it is created empty, so that
// the config itself is what is checked.
func TestDocsConfigsPassCheck(t *testing.T) {
	docs, err := filepath.Glob("../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	checked, partial := 0, 0
	for _, doc := range append([]string{"../../README.md"}, docs...) {
		blocks := fences(t, doc)
		files := map[string]string{}
		for _, b := range blocks {
			for _, w := range strings.Fields(b.info) {
				if p, ok := strings.CutPrefix(w, "file="); ok {
					files[p] = b.text
				}
			}
		}
		for _, b := range blocks {
			words := strings.Fields(b.info)
			if len(words) == 0 || words[0] != "toml" {
				continue
			}
			if len(words) > 1 && words[1] == "partial" {
				partial++
				continue
			}
			checked++
			root := t.TempDir()
			config := etcPath.ReplaceAllStringFunc(b.text, func(p string) string {
				local := filepath.Join(root, p)
				if _, err := os.Stat(local); os.IsNotExist(err) {
					os.MkdirAll(filepath.Dir(local), 0o755)
					if err := os.WriteFile(local, []byte(files[p]), 0o644); err != nil {
						t.Fatal(err)
					}
				}
				return local
			})
			path := filepath.Join(root, "sluice.toml")
			if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
				t.Fatal(err)
			}
			code, out, errs := runCmd("check", "-config", path)
			if code != 0 {
				t.Errorf("%s:%d: the ```toml block does not pass sluice check (exit %d): %s%s(mark a snippet ```toml partial)",
					doc, b.line, code, errs, out)
			}
		}
	}
	t.Logf("%d configs checked, %d partial snippets left out", checked, partial)
	if checked == 0 {
		t.Error("no ```toml block found")
	}
}
