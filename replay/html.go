package replay

import (
	"fmt"
	"html/template"
	"io"
)

// The HTML report is one self-contained page — inline CSS and SVG, no
// script, font or image from elsewhere — so that it can be mailed.

// chart geometry, in SVG units.
const (
	chartW    = 960.0
	chartH    = 180.0
	chartLeft = 48.0 // room for the count axis
	chartBase = 150.0
	chartTop  = 10.0
)

type htmlBar struct {
	X, Y, W, H float64
	Title      string
	Count      int64
}

type htmlTick struct {
	X     float64
	Label string
}

type htmlRule struct {
	RuleReport
	WouldText  string
	EventsText string
	ShareText  string
	Bars       []htmlBar
	Max        int64
	Ticks      []htmlTick
	TopRows    []htmlKey
}

type htmlKey struct {
	Key, Count, First, Last, For string
}

type htmlPage struct {
	*Report
	Period       string
	RefusedText  string
	Rules        []htmlRule
	ChartW       float64
	ChartH       float64
	ChartLeft    float64
	ChartBase    float64
	ChartTop     float64
	ChartRight   float64
	NumSessions  string
	NumMessages  string
	NumRcpts     string
	NumLines     string
	NumRefused   string
	NumSkipped   string
	NumPartial   string
	NumPartialSe string
}

// WriteHTML writes the report as one page with a chart per rule of its
// crossings per hour and its top keys.
func (rep *Report) WriteHTML(w io.Writer) error {
	page := htmlPage{
		Report:       rep,
		Period:       stamp(rep.From) + " to " + stamp(rep.To),
		RefusedText:  refusedAt(rep.MTARefusedAt),
		ChartW:       chartW,
		ChartH:       chartH,
		ChartLeft:    chartLeft,
		ChartBase:    chartBase,
		ChartTop:     chartTop,
		ChartRight:   chartW - 8,
		NumSessions:  num(rep.Sessions),
		NumMessages:  num(rep.Messages),
		NumRcpts:     num(rep.Recipients),
		NumLines:     num(rep.Lines),
		NumRefused:   num(rep.MTARefused),
		NumSkipped:   num(rep.Skipped),
		NumPartial:   num(rep.Partial),
		NumPartialSe: num(rep.PartialSessions),
	}
	for _, r := range rep.Rules {
		page.Rules = append(page.Rules, htmlRuleOf(r))
	}
	return pageTemplate.Execute(w, page)
}

func htmlRuleOf(r RuleReport) htmlRule {
	h := htmlRule{RuleReport: r, WouldText: r.Would.String(), EventsText: num(r.Events), ShareText: percent(r.Share)}
	for _, b := range r.Hourly {
		h.Max = max(h.Max, b.Count)
	}
	n := float64(len(r.Hourly))
	width := (chartW - 8 - chartLeft) / max(n, 1)
	gap := 0.0
	if width > 3 {
		gap = width * 0.15
	}
	for i, b := range r.Hourly {
		bh := 0.0
		if h.Max > 0 && b.Count > 0 {
			// A crossing is never thinner than two units: one is seen.
			bh = max(2, (chartBase-chartTop)*float64(b.Count)/float64(h.Max))
		}
		h.Bars = append(h.Bars, htmlBar{
			X: chartLeft + float64(i)*width + gap/2, Y: chartBase - bh, W: max(width-gap, 0.5), H: bh,
			Count: b.Count, Title: fmt.Sprintf("%s: %d", b.Hour.Format("2006-01-02 15:00Z"), b.Count),
		})
	}
	// Ticks: each day's midnight when the period is long, else every few
	// hours.
	step := 1
	switch {
	case len(r.Hourly) > 24*14:
		step = 24 * 7
	case len(r.Hourly) > 48:
		step = 24
	case len(r.Hourly) > 12:
		step = 6
	}
	for i, b := range r.Hourly {
		if i%step == 0 && (step < 24 || b.Hour.Hour() == 0 || i == 0) {
			label := b.Hour.Format("15:00")
			if step >= 24 || i == 0 {
				label = b.Hour.Format("Jan 2")
			}
			h.Ticks = append(h.Ticks, htmlTick{X: chartLeft + float64(i)*width, Label: label})
		}
	}
	for _, k := range r.Top {
		h.TopRows = append(h.TopRows, htmlKey{Key: k.Key, Count: num(k.Count), First: stamp(k.First), Last: stamp(k.Last),
			For: span(k.Last.Sub(k.First))})
	}
	return h
}

var pageTemplate = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>sluice replay: {{.Config}}</title>
<style>
body { font: 14px/1.4 sans-serif; margin: 2em; color: #222; background: #fff; max-width: 1000px; }
h1 { font-size: 1.4em; margin-bottom: .2em; }
h2 { font-size: 1.15em; margin: 1.6em 0 .3em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { text-align: left; padding: .2em .8em .2em 0; border-bottom: 1px solid #ddd; vertical-align: top; }
td.n, th.n { text-align: right; }
.key { font-family: monospace; word-break: break-all; }
.note { color: #555; }
svg.chart { display: block; margin: .5em 0; }
svg.chart .bar { fill: #c0392b; }
svg.chart .axis { stroke: #888; stroke-width: 1; }
svg.chart text { font: 11px sans-serif; fill: #555; }
</style>
</head>
<body>
<h1>What this policy would have done</h1>
<p class="note">sluice replay of <b>{{.Config}}</b> (mode {{.Mode}}; replayed in dry-run on fresh counters), {{.Period}}.</p>
<table id="summary">
<tr><th>log lines</th><td class="n">{{.NumLines}}</td><td class="note">{{.NumSkipped}} could not be read</td></tr>
<tr><th>sessions</th><td class="n">{{.NumSessions}}</td><td class="note">{{.NumPartialSe}} partial</td></tr>
<tr><th>messages</th><td class="n">{{.NumMessages}}</td><td class="note">{{.NumPartial}} partial</td></tr>
<tr><th>recipients</th><td class="n">{{.NumRcpts}}</td><td></td></tr>
<tr><th>refused by the MTA itself</th><td class="n">{{.NumRefused}}</td><td class="note">{{.RefusedText}}</td></tr>
</table>
<p class="note">Sender checks: {{.Checks}}.</p>
<h2>Rules</h2>
<table id="rules">
<tr><th>rule</th><th>counts</th><th>would</th><th class="n">of</th><th class="n">share</th><th class="n">keys</th></tr>
{{range .Rules}}<tr><td>{{.Rule}}</td><td>{{.Count}}</td><td>{{.WouldText}}</td><td class="n">{{.EventsText}} at {{.Stage}}</td><td class="n">{{.ShareText}}</td><td class="n">{{.Keys}}{{if .KeysCapped}}+{{end}}</td></tr>
{{end}}</table>
{{$p := .}}{{range .Rules}}
<section class="rule" data-rule="{{.Rule}}">
<h2>{{.Rule}}: crossings per hour</h2>
<svg class="chart" data-rule="{{.Rule}}" width="{{$p.ChartW}}" height="{{$p.ChartH}}" viewBox="0 0 {{$p.ChartW}} {{$p.ChartH}}" role="img" aria-label="crossings of {{.Rule}} per hour">
<line class="axis" x1="{{$p.ChartLeft}}" y1="{{$p.ChartBase}}" x2="{{$p.ChartRight}}" y2="{{$p.ChartBase}}"/>
<line class="axis" x1="{{$p.ChartLeft}}" y1="{{$p.ChartTop}}" x2="{{$p.ChartLeft}}" y2="{{$p.ChartBase}}"/>
{{if .Max}}<text x="{{$p.ChartLeft}}" y="{{$p.ChartTop}}" dx="-4" dy="8" text-anchor="end">{{.Max}}</text>{{end}}
<text x="{{$p.ChartLeft}}" y="{{$p.ChartBase}}" dx="-4" text-anchor="end">0</text>
{{range .Bars}}<rect class="bar" x="{{printf "%.2f" .X}}" y="{{printf "%.2f" .Y}}" width="{{printf "%.2f" .W}}" height="{{printf "%.2f" .H}}" data-count="{{.Count}}"><title>{{.Title}}</title></rect>
{{end}}{{range .Ticks}}<text x="{{printf "%.2f" .X}}" y="{{$p.ChartBase}}" dy="16">{{.Label}}</text>
{{end}}</svg>
{{if .TopRows}}<table class="top">
<tr><th>key</th><th class="n">crossed</th><th>first</th><th>last</th><th>for</th></tr>
{{range .TopRows}}<tr><td class="key">{{.Key}}</td><td class="n">{{.Count}}</td><td>{{.First}}</td><td>{{.Last}}</td><td>{{.For}}</td></tr>
{{end}}</table>{{else}}<p class="note">Never crossed.</p>{{end}}
</section>
{{end}}
</body>
</html>
`))
