package testenv

import (
	"context"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestRedisSetGet(t *testing.T) {
	t.Parallel()
	r := StartRedisT(t)
	if r.Port == 6379 || r.Addr != loopbackAddr(r.Port) {
		t.Fatalf("server at %s (port %d), want 127.0.0.1 and a port other than 6379", r.Addr, r.Port)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer c.Close()
	if err := c.Set(ctx, "spacegate", "ok", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	got, err := c.Get(ctx, "spacegate").Result()
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	if got != "ok" {
		t.Fatalf("GET spacegate = %q, want \"ok\"", got)
	}
}

func TestRedisCLIPing(t *testing.T) {
	t.Parallel()
	Require(t, "redis-cli")
	r := StartRedisT(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "redis-cli", "-h", "127.0.0.1", "-p", strconv.Itoa(r.Port), "PING").CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli PING: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "PONG" {
		t.Fatalf("redis-cli PING printed %q, want \"PONG\"", got)
	}
}

func TestRedisStopStart(t *testing.T) {
	t.Parallel()
	r := StartRedisT(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := r.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := redisPing(ctx, r.Addr); err == nil {
		t.Fatal("PING after Stop succeeded, want an error")
	}
	if err := r.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := redisPing(ctx, r.Addr); err != nil {
		t.Fatalf("PING after Start: %v", err)
	}
}

func TestRedisClose(t *testing.T) {
	t.Parallel()
	Require(t, "redis-server")
	r, err := StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := os.Stat(r.Dir); !os.IsNotExist(err) {
		t.Errorf("Dir %s after Close: stat error %v, want not exist", r.Dir, err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := redisPing(ctx, r.Addr); err == nil {
		t.Error("PING after Close succeeded, want an error")
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := r.Start(); err == nil {
		t.Error("Start after Close succeeded, want an error")
	}
}

func TestRedisStartPortTaken(t *testing.T) {
	t.Parallel()
	r := StartRedisT(t)
	if err := r.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	ln, err := net.Listen("tcp", r.Addr)
	if err != nil {
		t.Fatalf("taking the stopped server's port: %v", err)
	}
	defer ln.Close()
	err = r.Start()
	if err == nil {
		t.Fatal("Start on a taken port succeeded, want an error")
	}
	if !strings.Contains(strings.ToLower(err.Error()), "address already in use") {
		t.Fatalf("Start on a taken port: %v; want the log's \"address already in use\"", err)
	}
}
