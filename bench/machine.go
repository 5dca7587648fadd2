package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Machine describes where the figures were measured.
type Machine struct {
	NumCPU          int      `json:"nproc"`
	CPUModel        string   `json:"cpu_model"`
	Kernel          string   `json:"kernel"`
	OS              string   `json:"os"`
	Memory          string   `json:"memory"`
	GoVersion       string   `json:"go_version"`
	Packages        []string `json:"packages"`
	SpacegateCommit string   `json:"spacegate_commit"`
}

// debianPackages are the packages whose versions the results record.
func debianPackages() []string {
	return []string{"postgresql-15", "postgresql-client-15", "redis-server", "redis-tools", "stunnel4", "pgbouncer", "haproxy", "openssl"}
}

// describeMachine gathers the machine description; the spacegate commit
// is that of the checkout in dir. Whatever cannot be read is left empty or
// "unknown".
func describeMachine(ctx context.Context, dir string) Machine {
	m := Machine{NumCPU: runtime.NumCPU(), GoVersion: runtime.Version(), CPUModel: "unknown", OS: "unknown", Memory: "unknown"}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for line := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "PRETTY_NAME="); ok {
				m.OS = strings.Trim(v, `"`)
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				m.Memory = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
			}
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, pkg := range debianPackages() {
		out, err := exec.CommandContext(ctx, "dpkg-query", "-W", "-f=${Version}", pkg).Output()
		v := strings.TrimSpace(string(out))
		if err != nil || v == "" {
			v = "not installed"
		}
		m.Packages = append(m.Packages, pkg+" "+v)
	}
	m.SpacegateCommit = "unknown"
	git := func(args ...string) ([]byte, error) {
		cmd := exec.CommandContext(ctx, "git", args...)
		cmd.Dir = dir
		return cmd.Output()
	}
	if out, err := git("rev-parse", "--short=12", "HEAD"); err == nil {
		m.SpacegateCommit = strings.TrimSpace(string(out))
		if st, err := git("status", "--porcelain", "--untracked-files=no"); err == nil && len(st) > 0 {
			m.SpacegateCommit += " with uncommitted changes"
		}
	}
	return m
}
