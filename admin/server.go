package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/netutil"
	"golang.org/x/sys/unix"

	"sluice/conf"
	"sluice/guard"
	"sluice/limits"
)

// MaxConnections caps the connections the admin socket serves at once;
// more wait in the listen backlog. `sluice counters` opens one.
const MaxConnections = 8

// idleTimeout closes a keep-alive connection idle this long.
var idleTimeout = 30 * time.Second

// What one request may send: a key, a rule name and a duration fit in a
// few hundred bytes (a key sluice makes is at most about 2 KiB); the
// bounds keep a runaway request from being held, echoed or logged whole.
const (
	maxRequestBytes = 64 << 10 // the header, and the body of a POST
	maxKeyBytes     = 8 << 10  // one KEY or -rule
)

// Server answers admin requests on a unix socket.
type Server struct {
	srv *http.Server
	log *zap.Logger
}

// Serve answers requests on ln (a unix listener whose file the caller made
// 0600) until Close. engine returns the engine in force, which a reload
// replaces. Only root and sluice's own user get an answer: the socket's
// mode says so already, and the peer's credentials are checked too in case
// the file's mode or directory is loosened by hand.
func Serve(ln net.Listener, engine func() Counters, log *zap.Logger) *Server {
	s := &Server{log: log}
	mux := http.NewServeMux()
	h := &handler{engine: engine, log: log}
	mux.HandleFunc("GET /v1/counters/top", h.top)
	mux.HandleFunc("GET /v1/counters/show", h.show)
	mux.HandleFunc("POST /v1/counters/reset", h.reset)
	mux.HandleFunc("POST /v1/counters/allow", h.allow)
	mux.HandleFunc("GET /v1/counters/allows", h.allows)
	mux.HandleFunc("POST /v1/counters/limit", h.limit)
	mux.HandleFunc("POST /v1/counters/unlimit", h.unlimit)
	mux.HandleFunc("GET /v1/counters/limits", h.limits)
	mux.HandleFunc("GET /v1/counters/restricted", h.restricted)
	mux.HandleFunc("POST /v1/counters/release", h.release)
	s.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.ContentLength > maxRequestBytes {
				w.Header().Set("Connection", "close")
				h.fail(w, http.StatusRequestEntityTooLarge, fmt.Errorf("request of %d bytes; the admin API takes at most %d", r.ContentLength, maxRequestBytes))
				return
			}
			r.Body = http.MaxBytesReader(w, r.Body, maxRequestBytes)
			mux.ServeHTTP(w, r)
		}),
		MaxHeaderBytes:    maxRequestBytes,
		ReadHeaderTimeout: 5 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       idleTimeout,
		ErrorLog:          zap.NewStdLog(log),
	}
	guard.Go(log, "admin server", func() {
		// The peer check sees the socket itself; a refused peer never
		// takes a place under the cap.
		ln := netutil.LimitListener(&peerListener{Listener: ln, log: log}, MaxConnections)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin endpoint stopped", zap.Error(err))
		}
	})
	return s
}

// Close stops the server, letting requests in progress finish until ctx
// is done.
func (s *Server) Close(ctx context.Context) error { return s.srv.Shutdown(ctx) }

// peerListener drops connections from users other than root and our own.
type peerListener struct {
	net.Listener
	log *zap.Logger
}

func (l *peerListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		uid, err := peerUID(c)
		if err == nil && (uid == 0 || uid == os.Getuid()) {
			return c, nil
		}
		l.log.Warn("admin connection refused", zap.Int("uid", uid), zap.NamedError("reason", err))
		c.Close()
	}
}

func peerUID(c net.Conn) (int, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return -1, errors.New("not a unix socket")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return -1, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return -1, err
	}
	if cerr != nil {
		return -1, cerr
	}
	return int(cred.Uid), nil
}

type handler struct {
	engine func() Counters
	log    *zap.Logger
}

func (h *handler) top(w http.ResponseWriter, r *http.Request) {
	n := 20
	if s := r.FormValue("n"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			h.fail(w, http.StatusBadRequest, fmt.Errorf("-n %q: want a number of keys, 1 or more", s))
			return
		}
		n = v
	}
	cs, err := h.engine().Top(r.Context(), r.FormValue("rule"), n)
	h.counters(w, cs, err)
}

func (h *handler) show(w http.ResponseWriter, r *http.Request) {
	key, ok := h.key(w, r)
	if !ok {
		return
	}
	cs, err := h.engine().Show(r.Context(), key, r.FormValue("rule"))
	h.counters(w, cs, err)
}

func (h *handler) reset(w http.ResponseWriter, r *http.Request) {
	key, ok := h.key(w, r)
	if !ok {
		return
	}
	cs, err := h.engine().Reset(r.Context(), key, r.FormValue("rule"))
	if err == nil {
		h.log.Info("counters reset by admin", zap.String("key", key), zap.String("rule", r.FormValue("rule")), zap.Int("counters", len(cs)))
	}
	h.counters(w, cs, err)
}

func (h *handler) allow(w http.ResponseWriter, r *http.Request) {
	key, ok := h.key(w, r)
	if !ok {
		return
	}
	d, err := conf.ParseDuration(r.FormValue("for"))
	if err != nil {
		// conf.ParseDuration bounds it: now plus the longest exemption is
		// still a time the stores can hold in Unix nanoseconds.
		h.fail(w, http.StatusBadRequest, fmt.Errorf("-for: %v; want a duration such as 2h or 1d (0 lifts the exemption)", err))
		return
	}
	var until time.Time
	if d > 0 {
		until = time.Now().Add(d)
	}
	keys, err := h.engine().Allow(r.Context(), key, until)
	if err != nil {
		h.fail(w, status(err), err)
		return
	}
	resp := response{}
	for _, k := range keys {
		resp.Exemptions = append(resp.Exemptions, Exemption{Key: k, Until: until})
	}
	if until.IsZero() {
		h.log.Info("exemption lifted by admin", zap.Strings("keys", keys))
	} else {
		h.log.Info("exemption set by admin", zap.Strings("keys", keys), zap.Time("until", until))
	}
	h.write(w, http.StatusOK, resp)
}

func (h *handler) allows(w http.ResponseWriter, r *http.Request) {
	m, err := h.engine().Exemptions(r.Context())
	if err != nil {
		h.fail(w, http.StatusInternalServerError, err)
		return
	}
	resp := response{}
	for k, until := range m {
		resp.Exemptions = append(resp.Exemptions, Exemption{Key: k, Until: until})
	}
	slices.SortFunc(resp.Exemptions, func(a, b Exemption) int { return strings.Compare(a.Key, b.Key) })
	h.write(w, http.StatusOK, resp)
}

func (h *handler) key(w http.ResponseWriter, r *http.Request) (string, bool) {
	if err := r.ParseForm(); err != nil {
		h.fail(w, http.StatusBadRequest, fmt.Errorf("unreadable request: %v", err))
		return "", false
	}
	key := r.FormValue("key")
	switch {
	case key == "":
		h.fail(w, http.StatusBadRequest, errors.New("missing KEY (e.g. sender:alice@example.org)"))
		return "", false
	case len(key) > maxKeyBytes || len(r.FormValue("rule")) > maxKeyBytes:
		h.fail(w, http.StatusBadRequest, fmt.Errorf("KEY or -rule longer than %d bytes: no counter has such a key", maxKeyBytes))
		return "", false
	}
	return key, true
}

func (h *handler) counters(w http.ResponseWriter, cs []limits.Counter, err error) {
	if err != nil {
		h.fail(w, status(err), err)
		return
	}
	h.write(w, http.StatusOK, response{Counters: fromLimits(cs)})
}

// status tells a mistake in the request from a failing store.
func status(err error) int {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return http.StatusGatewayTimeout
	}
	var pe *limits.KeyError
	if errors.As(err, &pe) {
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

func (h *handler) fail(w http.ResponseWriter, code int, err error) {
	h.write(w, code, response{Error: conf.ClipMessage(err.Error())})
}

func (h *handler) write(w http.ResponseWriter, code int, resp response) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	if err := json.NewEncoder(w).Encode(resp); err != nil {
		h.log.Debug("admin reply not written", zap.Error(err))
	}
}
