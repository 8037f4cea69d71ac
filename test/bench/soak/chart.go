package main

import (
	"fmt"
	"os"
	"slices"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// panel is one tile of the chart: the curves named, on one y axis.
type panel struct {
	title, y  string
	curves    []string // curve names; "p99 ms " takes every stage's
	perWindow bool     // drawn a judged window at a time, as the verdict reads them
}

var panels = []panel{
	{"load", "messages/s", []string{"messages/s"}, false},
	{"memory", "MB", []string{"RSS MB", "Go heap in use MB", "Go heap goal MB"}, false},
	{"goroutines and open fds", "count", []string{"goroutines", "open fds"}, false},
	{"store keys (max_keys)", "keys", []string{"store keys"}, false},
	{"CPU per message: sluice, the do-nothing milter, the load generator", "ms", []string{"CPU ms/message", "do-nothing CPU ms/message", "load gen CPU ms/message"}, false},
	{"sluice's own time per stage (its stage histogram), p99 a minute at a time", "ms", []string{"own p99 ms "}, true},
	{"sluice's p99 per stage, round trip from the load generator, a minute at a time", "ms", []string{"p99 ms "}, true},
	{"the do-nothing milter's p99 per stage beside it, a minute at a time", "ms", []string{"do-nothing p99 ms "}, true},
	{"sluice over the do-nothing milter, the same minute: CPU, p99 per stage", "ratio", []string{"CPU / do-nothing's", "p99 / do-nothing's "}, true},
}

// drawChart draws every curve against minutes since the load started, a
// tile per panel, with a dashed line where the verdict starts judging.
func drawChart(path string, s settings, samples []sample) error {
	const cols = 2
	all := curves(samples)
	minutes := windows(samples, s.judge)
	// Without the do-nothing milter its panels would be empty.
	var drawn []panel
	for _, pn := range panels {
		if slices.ContainsFunc(all, func(c curve) bool { _, ok := wanted(pn, c.name); return ok }) {
			drawn = append(drawn, pn)
		}
	}
	rows := (len(drawn) + cols - 1) / cols
	plots := make([][]*plot.Plot, rows)
	for i := range plots {
		plots[i] = make([]*plot.Plot, cols)
	}
	for i, pn := range drawn {
		p := plot.New()
		p.Title.Text = pn.title
		p.X.Label.Text = "minutes"
		p.Y.Label.Text = pn.y
		p.Y.Min = 0
		p.Add(plotter.NewGrid())
		p.Legend.Top = true
		p.Legend.Left = true
		var lines []any
		top := 0.0
		for _, c := range all {
			label, ok := wanted(pn, c.name)
			if !ok {
				continue
			}
			var xy plotter.XYs
			points := samples
			if pn.perWindow {
				points = minutes
			}
			for _, sm := range points {
				if v, ok := c.get(sm); ok {
					xy = append(xy, plotter.XY{X: sm.at.Minutes(), Y: v})
					top = max(top, v)
				}
			}
			if len(xy) > 0 {
				lines = append(lines, label, xy)
			}
		}
		if err := plotutil.AddLines(p, lines...); err != nil {
			return fmt.Errorf("chart %s: %w", pn.title, err)
		}
		p.Y.Max = top * 1.15 // room for the legend
		if s.warmup > 0 && top > 0 {
			w, err := plotter.NewLine(plotter.XYs{{X: s.warmup.Minutes(), Y: 0}, {X: s.warmup.Minutes(), Y: top * 1.15}})
			if err != nil {
				return err
			}
			w.Dashes = []vg.Length{vg.Points(3), vg.Points(3)}
			p.Add(w)
		}
		plots[i/cols][i%cols] = p
	}
	img := vgimg.New(vg.Points(1100), vg.Points(330*float64(rows)))
	dc := draw.New(img)
	t := draw.Tiles{Rows: rows, Cols: cols, PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 4,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	canvases := plot.Align(plots, t, dc)
	for j := range plots {
		for i, p := range plots[j] {
			if p != nil {
				p.Draw(canvases[j][i])
			}
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

// wanted reports whether the panel draws the curve, and its label there:
// a name the panel lists ending in a space takes every curve it begins,
// labelled by the rest (the stage).
func wanted(p panel, name string) (string, bool) {
	for _, c := range p.curves {
		if name == c {
			return name, true
		}
		if strings.HasSuffix(c, " ") && strings.HasPrefix(name, c) {
			return strings.TrimPrefix(name, c), true
		}
	}
	return "", false
}
