package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"golang.org/x/net/netutil"

	"sluice/guard"
)

// MaxConnections caps the connections the metrics listener serves at once;
// more wait in the listen backlog. Scrapers and probes need a few; the cap
// keeps anyone holding connections from taking the descriptors the MTA's
// sessions need.
const MaxConnections = 16

// idleTimeout closes a keep-alive connection idle this long: a scraper
// opens a new one at its next scrape.
var idleTimeout = 30 * time.Second

// Server serves /metrics, /healthz and /readyz.
type Server struct {
	ln  net.Listener
	srv *http.Server
}

// Listen opens the metrics listener; ready answers /readyz. The listener
// is opened here, at start, so that a port in use stops sluice with a clear
// error rather than a log line nobody reads.
func (m *Metrics) Listen(addr string, ready ReadyFunc, log *zap.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.InstrumentMetricHandler(m.reg,
		promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorLog: zap.NewStdLog(log), Registry: m.reg})))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		// Liveness: the process answers HTTP. Whether it can count is
		// /readyz's question; restarting sluice for a Redis outage would
		// not bring Redis back.
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := ready(ctx); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	s := &Server{ln: ln, srv: &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       idleTimeout,
		ErrorLog:          zap.NewStdLog(log),
	}}
	guard.Go(log, "metrics server", func() {
		if err := s.srv.Serve(netutil.LimitListener(ln, MaxConnections)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", zap.Error(err))
		}
	})
	return s, nil
}

// Addr is where the server listens.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Close stops the server, letting a scrape in progress finish until ctx is done.
func (s *Server) Close(ctx context.Context) error { return s.srv.Shutdown(ctx) }

// NotReady is the error a ReadyFunc gives while sluice starts or stops.
func NotReady(why string) error { return fmt.Errorf("%w: %s", errNotReady, why) }
