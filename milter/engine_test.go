package milter

import (
	"context"
	"path/filepath"
	"testing"

	"go.uber.org/zap"

	"sluice/engine"
	"sluice/engine/enginetest"
	"sluice/smtp"
	"sluice/socket"
)

// setup is the policy of a test server.
type setup = enginetest.Setup

// testEngine builds the engine a test server runs on, on a memory store of
// its own.
func testEngine(t testing.TB, su setup, log *zap.Logger) *engine.Engine {
	t.Helper()
	su.Log = log
	eng, _ := enginetest.New(t, su)
	return eng
}

// serve runs a Server for eng on a unix socket until the test ends and
// returns it with the socket's path.
func serve(t testing.TB, eng smtp.Engine, log *zap.Logger) (*Server, string) {
	t.Helper()
	mc := Config{}
	mc.Defaults()
	sock := filepath.Join(t.TempDir(), "sluice.sock")
	mc.Listen = "unix:" + sock
	srv := NewServer(mc, eng, log)
	ln, err := socket.Listen(mc.Listen)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return srv, sock
}
