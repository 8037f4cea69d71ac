package redistest

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// StartReplica starts a server that replicates master and waits until its
// first sync is done.
func StartReplica(t testing.TB, master *Server) *Server {
	t.Helper()
	host, port, _ := strings.Cut(master.Addr, ":")
	r := Start(t, "--replicaof", host, port)
	c := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer c.Close()
	deadline := time.Now().Add(15 * time.Second)
	for {
		info, err := c.Info(context.Background(), "replication").Result()
		if err == nil && strings.Contains(info, "master_link_status:up") {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica %s of %s not in sync: %v\n%s", r.Addr, master.Addr, err, info)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Sentinels is a group of Sentinels watching one master, as in
// production: marking the master down takes a quorum of them and a
// failover a majority.
type Sentinels struct {
	Name  string
	Nodes []*Sentinel
}

// StartSentinels starts n Sentinels that monitor master under name with
// the given quorum, and waits until each knows the others and the
// master's replicas and reports that a failover could be authorized.
func StartSentinels(t testing.TB, name string, master *Server, replicas, n, quorum int) *Sentinels {
	t.Helper()
	g := &Sentinels{Name: name}
	for range n {
		g.Nodes = append(g.Nodes, startSentinel(t, name, master, quorum))
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, s := range g.Nodes {
		c := redis.NewSentinelClient(&redis.Options{Addr: s.Addr})
		for {
			ctx := context.Background()
			m, err := c.Master(ctx, name).Result()
			var quorumErr error
			if err == nil {
				_, quorumErr = c.CkQuorum(ctx, name).Result()
			}
			if err == nil && quorumErr == nil && m["num-other-sentinels"] == strconv.Itoa(n-1) && m["num-slaves"] == strconv.Itoa(replicas) {
				break
			}
			if time.Now().After(deadline) {
				c.Close()
				t.Fatalf("sentinel %s does not see the group (want %d others, %d replicas): %v %v %v\n%s",
					s.Addr, n-1, replicas, m, err, quorumErr, s.srv.output())
			}
			time.Sleep(100 * time.Millisecond)
		}
		c.Close()
	}
	return g
}

// Addrs are the Sentinels' addresses, as sluice's addrs take them.
func (g *Sentinels) Addrs() []string {
	a := make([]string, len(g.Nodes))
	for i, s := range g.Nodes {
		a[i] = s.Addr
	}
	return a
}

// Master is the master's address as the first Sentinel that answers says.
func (g *Sentinels) Master() (string, error) {
	var errs []string
	for _, s := range g.Nodes {
		m, err := s.Master(g.Name)
		if err == nil {
			return m, nil
		}
		errs = append(errs, fmt.Sprintf("%s: %v", s.Addr, err))
	}
	return "", fmt.Errorf("no sentinel answers: %s", strings.Join(errs, "; "))
}

// Kill ends the Sentinel with SIGKILL.
func (s *Sentinel) Kill() { s.srv.Kill() }
