package e2e

import (
	"bytes"
	"context"
	"image"
	"image/png"
	"os"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"sluice/test/testenv"
)

// chartInfo is what the page's DOM says of one chart.
type chartInfo struct {
	Rule   string  `json:"rule"`
	Bars   int     `json:"bars"`
	Sum    int64   `json:"sum"`
	Width  float64 `json:"width"`
	Height float64 `json:"height"`
}

// checkHTMLReport opens the HTML report in headless Chromium and checks,
// from the DOM, that each rule has a chart with a bar per hour of the
// period whose counts add up to the rule's crossings, and from a
// screenshot of each chart that its bars are drawn: the bar colour is
// on the screen where the chart is, for every rule that crossed.
func checkHTMLReport(t *testing.T, path string, rep *replayed) {
	t.Helper()
	chromium := testenv.Tool(t, "chromium")
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.UserDataDir(testenv.Dir(t, "chromium")),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-first-run", true),
		chromedp.WindowSize(1200, 900),
	)
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, 60*time.Second)
	defer cancel()

	if err := chromedp.Do(ctx, chromedp.Navigate("file://"+path), chromedp.WaitReady(chromedp.CSS("body"))); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	charts, err := chromedp.Run(ctx, chromedp.Evaluate[[]chartInfo](`Array.from(document.querySelectorAll("svg.chart")).map(s => {
		const bars = s.querySelectorAll("rect.bar");
		const r = s.getBoundingClientRect();
		let sum = 0;
		bars.forEach(b => sum += Number(b.dataset.count));
		return {rule: s.dataset.rule, bars: bars.length, sum: sum, width: r.width, height: r.height};
	})`))
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	// Nothing is loaded from elsewhere: no script, style sheet, image or
	// frame, and no resource fetched.
	external, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("script[src], link[href], img[src], iframe, object").length +
		performance.getEntriesByType("resource").length`))
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	if external != 0 {
		t.Errorf("the report loads %d resources from elsewhere", external)
	}
	if len(charts) != len(rep.Rules) {
		t.Fatalf("the page has %d charts, the report %d rules", len(charts), len(rep.Rules))
	}
	for i, r := range rep.Rules {
		c := charts[i]
		if c.Rule != r.Rule || c.Bars != len(r.Hourly) || c.Sum != r.Crossed || c.Width < 100 || c.Height < 50 {
			t.Errorf("chart %d: %+v; want rule %s with %d bars adding up to %d", i, c, r.Rule, len(r.Hourly), r.Crossed)
			continue
		}
		shot, err := chromedp.Run(ctx, chromedp.Screenshot(chromedp.CSS(`svg.chart[data-rule="`+r.Rule+`"]`)))
		if err != nil {
			t.Fatalf("screenshot of %s's chart: %v", r.Rule, err)
		}
		img, err := png.Decode(bytes.NewReader(shot))
		if err != nil {
			t.Fatalf("screenshot of %s's chart: %v", r.Rule, err)
		}
		red := barPixels(img)
		switch {
		case r.Crossed > 0 && red == 0:
			os.WriteFile(path+"."+r.Rule+".png", shot, 0o644)
			t.Errorf("chart of %s (%d crossings) shows no bar; screenshot in %s.%s.png", r.Rule, r.Crossed, path, r.Rule)
		case r.Crossed == 0 && red != 0:
			t.Errorf("chart of %s (never crossed) shows %d bar pixels", r.Rule, red)
		}
	}
	if full, err := chromedp.Run(ctx, chromedp.FullScreenshot(90)); err == nil {
		os.WriteFile(path+".png", full, 0o644)
	}
}

// barPixels counts the pixels of the bars' colour, #c0392b.
func barPixels(img image.Image) int {
	n := 0
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			if near(r>>8, 0xc0) && near(g>>8, 0x39) && near(bl>>8, 0x2b) {
				n++
			}
		}
	}
	return n
}

func near(a uint32, b uint32) bool { return a+12 >= b && a <= b+12 }
