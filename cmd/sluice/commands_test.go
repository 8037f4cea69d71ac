package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// flagMethods are the flag.FlagSet methods that define a flag, with the
// index of the flag's name among their arguments.
var flagMethods = map[string]int{
	"Bool": 0, "BoolVar": 1, "BoolFunc": 0, "Duration": 0, "DurationVar": 1,
	"Float64": 0, "Float64Var": 1, "Func": 0, "Int": 0, "IntVar": 1,
	"Int64": 0, "Int64Var": 1, "String": 0, "StringVar": 1, "TextVar": 1,
	"Uint": 0, "UintVar": 1, "Uint64": 0, "Uint64Var": 1, "Var": 1,
}

// programCommands reads cmd/sluice's source: the commands are the cases of
// run's switch, and a command's flags are those its function (the one
// its case returns the result of) defines on a flag.FlagSet.
func programCommands(t *testing.T) map[string][]string {
	t.Helper()
	fset := token.NewFileSet()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	funcs := make(map[string]*ast.FuncDecl)
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			if fd, ok := d.(*ast.FuncDecl); ok && fd.Recv == nil {
				funcs[fd.Name.Name] = fd
			}
		}
	}
	run := funcs["run"]
	if run == nil {
		t.Fatal("no func run in cmd/sluice")
	}
	cmds := make(map[string][]string)
	ast.Inspect(run.Body, func(n ast.Node) bool {
		cc, ok := n.(*ast.CaseClause)
		if !ok {
			return true
		}
		var fn string
		for _, st := range cc.Body {
			if r, ok := st.(*ast.ReturnStmt); ok && len(r.Results) == 1 {
				if call, ok := r.Results[0].(*ast.CallExpr); ok {
					if id, ok := call.Fun.(*ast.Ident); ok {
						fn = id.Name
					}
				}
			}
		}
		for _, e := range cc.List {
			lit, ok := e.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				continue
			}
			cmd, _ := strconv.Unquote(lit.Value)
			cmds[cmd] = nil
			if fd := funcs[fn]; fd != nil {
				cmds[cmd] = definedFlags(fd)
			}
		}
		return true
	})
	return cmds
}

func definedFlags(fd *ast.FuncDecl) []string {
	var names []string
	ast.Inspect(fd.Body, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		i, ok := flagMethods[sel.Sel.Name]
		if !ok || len(call.Args) <= i {
			return true
		}
		// zap.String and its kin share the flag package's method names.
		if pkg, ok := sel.X.(*ast.Ident); ok && pkg.Name == "zap" {
			return true
		}
		if lit, ok := call.Args[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
			name, _ := strconv.Unquote(lit.Value)
			names = append(names, name)
		}
		return true
	})
	slices.Sort(names)
	return slices.Compact(names)
}

// documentedCommands parses the COMMANDS section of sluice(8): a
// "## sluice COMMAND" heading per command, a "- `-flag ARG`: ..." bullet
// per flag.
func documentedCommands(t *testing.T) map[string][]string {
	cmds := make(map[string][]string)
	bullets(t, cmdPage, "COMMANDS", func(heading, bullet string, line int) {
		cmd, ok := strings.CutPrefix(heading, "sluice ")
		if !ok {
			t.Errorf("%s:%d: a heading of COMMANDS must be \"sluice COMMAND\"", cmdPage, line)
			return
		}
		flag, ok := strings.CutPrefix(bullet, "- `-")
		if !ok {
			t.Errorf("%s:%d: a bullet of COMMANDS must start with the flag: - `-flag ARG`: ...", cmdPage, line)
			return
		}
		flag, _, _ = strings.Cut(flag, "`")
		flag, _, _ = strings.Cut(flag, " ")
		cmds[cmd] = append(cmds[cmd], flag)
	})
	// Commands without flags have a heading and no bullet.
	for _, h := range headings(t, cmdPage, "COMMANDS") {
		if cmd, ok := strings.CutPrefix(h, "sluice "); ok {
			if _, seen := cmds[cmd]; !seen {
				cmds[cmd] = nil
			}
		}
	}
	return cmds
}

func headings(t *testing.T, page, top string) []string {
	t.Helper()
	var hs []string
	in := false
	for _, line := range strings.Split(readFile(t, page), "\n") {
		if strings.HasPrefix(line, "# ") {
			in = line == "# "+top
		} else if in && strings.HasPrefix(line, "## ") {
			hs = append(hs, strings.TrimPrefix(line, "## "))
		}
	}
	return hs
}

func TestManPageDocumentsEveryCommandAndFlag(t *testing.T) {
	program := programCommands(t)
	documented := documentedCommands(t)
	if len(program) < 5 || program["check"] == nil {
		t.Fatalf("found commands %v in the source: its reading broke", program)
	}
	for _, cmd := range slices.Sorted(maps.Keys(program)) {
		doc, ok := documented[cmd]
		if !ok {
			t.Errorf("command %q is not in %s: add a \"## sluice %s\" section to COMMANDS", cmd, cmdPage, cmd)
			continue
		}
		for _, f := range program[cmd] {
			if !slices.Contains(doc, f) {
				t.Errorf("sluice %s -%s is not in %s: add a bullet \"- `-%s ARG`: ...\" under \"## sluice %s\"", cmd, f, cmdPage, f, cmd)
			}
		}
		for _, f := range doc {
			if !slices.Contains(program[cmd], f) {
				t.Errorf("%s documents sluice %s -%s, which the program does not define", cmdPage, cmd, f)
			}
		}
	}
	for cmd := range documented {
		if _, ok := program[cmd]; !ok {
			t.Errorf("%s documents the command %q, which run does not know", cmdPage, cmd)
		}
	}
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
