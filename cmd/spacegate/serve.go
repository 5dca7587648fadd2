package main

import (
	"cmp"
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/spacegate/spacegate/config"
	"github.com/spacegate/spacegate/proxy"
)

func newServeCmd() *cobra.Command {
	var config, name string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the gate",
		Long: "Run the gate with the config file given by --config, $SPACEGATE_CONFIG or ./spacegate.yaml.\n" +
			"SIGTERM or SIGINT stop accepting, let live connections finish up to limits.drain_timeout, and exit 0.",
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runServe(cmd.Context(), configPath(config), cmp.Or(name, os.Getenv(replicaNameEnv)))
		},
	}
	cmd.Flags().StringVar(&config, "config", "", "config file (default $SPACEGATE_CONFIG or ./spacegate.yaml)")
	cmd.Flags().StringVar(&name, "replica-name", "", "this replica's name in /v1/status and /v1/fleet (default $"+replicaNameEnv+", else the host name)")
	return cmd
}

// replicaNameEnv names the replica when --replica-name does not. The host
// name is the default: on Kubernetes, the pod's name.
const replicaNameEnv = "SPACEGATE_REPLICA_NAME"

// runServe loads the config at path and serves it until ctx ends, as the
// replica called name ("" for the host name).
func runServe(ctx context.Context, path, name string) error {
	cfg, err := config.Load(path)
	if err != nil {
		return problemsError(err)
	}
	log, err := proxy.NewLogger(cfg.Log)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	// Under systemd (Type=notify) the gate says when it is ready, reloading
	// and stopping.
	srv, err := proxy.NewServer(proxy.Options{Config: cfg, Logger: log, Notify: sdNotifier(log), Name: name})
	if err != nil {
		return problemsError(err)
	}
	// SIGHUP reloads, as with PgBouncer, stunnel and ghostunnel; file
	// changes reload by themselves.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		// A SIGHUP before the listeners are open waits for them, so that
		// the reload's "ready" cannot reach systemd before the gate is.
		select {
		case <-ctx.Done():
			return
		case <-srv.Ready():
		}
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				_ = srv.Reload() // logged inside
			}
		}
	}()
	if err := srv.Run(ctx); err != nil {
		log.Error("serve failed", zap.Error(err))
		return err
	}
	return nil
}
