#!/usr/bin/env bash
# deploy/k8stest/cluster.sh: a real Kubernetes control plane on loopback, for
# the chart's tests. Pods never run (no kubelet, no container runtime), but
# everything else is real: the API server's validation and admission, the
# controllers that turn a Deployment into pods, the scheduler with topology
# spread and PodDisruptionBudgets, and Helm talking to all of it.
#
#   deploy/k8stest/cluster.sh build            build and cache the binaries
#   deploy/k8stest/cluster.sh run CMD [ARG...] start a cluster, run CMD with
#                                              KUBECONFIG and PATH set, stop it
#
# The binaries (kube-apiserver, kube-controller-manager, kube-scheduler and
# kubectl v1.31.4 built from the Go module proxy, kwok for fake nodes) are
# built once (7 minutes on 2 idle cores; 33 measured on 2 cores shared with
# other builds) into a versioned directory
# ($SPACEGATE_K8S_CACHE, default ~/.cache/spacegate-k8stest), so later runs
# on the same machine start in seconds. etcd comes from Debian (etcd-server),
# installed with apt-get when missing.
#
# run starts etcd, the API server, the controller-manager, the scheduler and
# kwok on free loopback ports in a temporary directory, registers three fake
# nodes, one per zone (zone-a, zone-b, zone-c), and always stops them all
# and removes the directory when CMD ends, fails or is interrupted. Every
# wait is bounded. On failure the components' logs are printed.
set -euo pipefail

k8s_version=v1.31.4
kwok_version=v0.8.0

have() { command -v "$1" >/dev/null 2>&1; }
log() { printf 'k8stest: %s\n' "$*" >&2; }
die() {
  log "$*"
  exit 1
}

have go || export PATH="/usr/local/go/bin:$PATH"
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}

cache_root=${SPACEGATE_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spacegate-k8stest}
bin=$cache_root/k8s-$k8s_version-kwok-$kwok_version

# build: the control plane binaries, once. A build writes into a fresh
# directory and renames it into place, so an interrupted build leaves no
# half-filled cache behind.
build() {
  local want=(kube-apiserver kube-controller-manager kube-scheduler kubectl kwok)
  local b ok=1
  for b in "${want[@]}"; do [[ -x $bin/$b ]] || ok=0; done
  [[ -d $bin/kwok-stages ]] || ok=0
  if ((ok)); then
    return 0
  fi
  log "building Kubernetes $k8s_version and kwok $kwok_version into $bin (about 7 minutes from a cold Go cache)"
  local start=$SECONDS
  mkdir -p "$cache_root"
  # What an interrupted build left (the module copy is read-only).
  chmod -R u+w "$cache_root"/build.* 2>/dev/null || true
  rm -rf "$cache_root"/build.*
  local work
  work=$(mktemp -d "$cache_root/build.XXXXXX")

  # The kubernetes module as the proxy serves it: without the staging
  # directories its go.mod replaces 31 k8s.io modules with, and with a
  # vendor directory that no longer matches. Point each replace at the
  # published module of the same release instead.
  local dir
  dir=$(go mod download -json "k8s.io/kubernetes@$k8s_version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [[ -n $dir ]] || die "go mod download k8s.io/kubernetes@$k8s_version: no Dir"
  cp -r "$dir" "$work/src"
  chmod -R u+w "$work/src"
  rm -rf "$work/src/vendor" "$work/src/go.work" "$work/src/go.work.sum"
  local staged edits=()
  staged=$(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/.*#\1#p' "$work/src/go.mod")
  local m
  for m in $staged; do
    edits+=("-dropreplace=$m" "-require=$m@${k8s_version/v1./v0.}")
  done
  ((${#edits[@]})) || die "k8s.io/kubernetes@$k8s_version: no staging replaces found in go.mod"
  (cd "$work/src" && go mod edit "${edits[@]}")

  # Without the version the server says v0.0.0-master, and a chart's
  # kubeVersion constraint refuses it.
  local minor=${k8s_version#v1.}
  minor=${minor%%.*}
  local pkg ldflags=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  done
  mkdir -p "$work/bin"
  (cd "$work/src" && GOFLAGS="-mod=mod -buildvcs=false" go build -trimpath -ldflags "-s -w$ldflags" -o "$work/bin/" \
    ./cmd/kube-apiserver ./cmd/kube-controller-manager ./cmd/kube-scheduler ./cmd/kubectl)

  # kwok, and the stages it plays (node heartbeats, pods turning Ready);
  # without them it exits with "no stages found".
  GOBIN="$work/bin" GOFLAGS=-buildvcs=false go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$kwok_version"
  local kdir
  kdir=$(go mod download -json "sigs.k8s.io/kwok@$kwok_version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  mkdir -p "$work/bin/kwok-stages"
  local s
  for s in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
    pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
    cp "$kdir/kustomize/stage/$s.yaml" "$work/bin/kwok-stages/" ||
      die "kwok $kwok_version: no stage $s under $kdir/kustomize/stage"
  done

  rm -rf "$bin"
  mv "$work/bin" "$bin"
  chmod -R u+w "$work"
  rm -rf "$work"
  log "built in $((SECONDS - start))s"
}

# need_etcd: Debian's etcd-server, installed when missing (as .ci/run does
# for its packages: the maintainer scripts may not start the system etcd).
need_etcd() {
  have etcd && return 0
  [[ $(id -u) == 0 ]] || die "etcd is missing: apt-get install etcd-server"
  log "installing etcd-server"
  local policy=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server >&2
  [[ -z $policy ]] || rm -f "$policy"
  have etcd || die "apt-get install etcd-server gave no etcd"
}

# free_port: a TCP port no socket on this machine uses, and not handed out
# before in this run. A race with another process remains; the component
# that loses it fails to start, and the wait for it says so.
taken=" "
free_port() {
  local p hex
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 40000))
    hex=$(printf ':%04X ' "$p")
    [[ $taken == *" $p "* ]] && continue
    grep -q "$hex" /proc/net/tcp /proc/net/tcp6 2>/dev/null && continue
    taken+="$p "
    echo "$p"
    return 0
  done
  die "no free port found"
}

# wait_for DESCRIPTION SECONDS COMMAND...: run COMMAND every half second
# until it succeeds; fail after SECONDS, or at once if a component died.
wait_for() {
  local what=$1 limit=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    local name
    for name in "${!pids[@]}"; do
      kill -0 "${pids[$name]}" 2>/dev/null || die "$name exited while waiting for $what"
    done
    ((SECONDS < deadline)) || die "$what: not after ${limit}s"
    sleep 0.5
  done
}

declare -A pids=()
order=()
dir=""

# start NAME COMMAND...: run a component in the background, its output in
# $dir/NAME.log.
start() {
  local name=$1
  shift
  "$@" >"$dir/$name.log" 2>&1 &
  pids[$name]=$!
  order+=("$name")
}

# stop: every component, newest first (kwok before the API server before
# etcd), with a bounded wait; then the directory. Logs are printed when the
# run failed.
stop() {
  local rc=$?
  trap - EXIT INT TERM
  local i name pid
  if ((rc != 0)) && [[ -n $dir ]]; then
    for name in "${order[@]}"; do
      log "---- last lines of $name's log"
      tail -n 30 "$dir/$name.log" >&2 || true
    done
  fi
  for ((i = ${#order[@]} - 1; i >= 0; i--)); do
    name=${order[i]}
    pid=${pids[$name]}
    kill -TERM "$pid" 2>/dev/null || continue
    local deadline=$((SECONDS + 10))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  [[ -z $dir ]] || rm -rf "$dir"
  exit "$rc"
}

# run: the cluster, CMD against it, and the teardown.
run() {
  (($# > 0)) || die "run: no command"
  build
  need_etcd
  have openssl || die "openssl is missing"
  local t0=$SECONDS
  dir=$(mktemp -d "${TMPDIR:-/tmp}/spacegate-k8stest.XXXXXX")
  trap stop EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  local etcd_client etcd_peer etcd_metrics api cm sched kwok_port
  etcd_client=$(free_port)
  etcd_peer=$(free_port)
  etcd_metrics=$(free_port)
  api=$(free_port)
  cm=$(free_port)
  sched=$(free_port)
  kwok_port=$(free_port)

  start etcd etcd --name k8stest --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "k8stest=http://127.0.0.1:$etcd_peer" \
    --listen-metrics-urls "http://127.0.0.1:$etcd_metrics"

  # The service account key pair, an admin token, and a kubeconfig that
  # sends it (the API server's certificate is self-signed: not verified).
  openssl ecparam -name prime256v1 -genkey -noout -out "$dir/sa.key" 2>/dev/null
  openssl ec -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
  local token
  token=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
  echo "$token,admin,admin,system:masters" >"$dir/tokens.csv"
  cat >"$dir/kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
  - name: k8stest
    cluster:
      server: https://127.0.0.1:$api
      insecure-skip-tls-verify: true
users:
  - name: admin
    user:
      token: $token
contexts:
  - name: k8stest
    context: {cluster: k8stest, user: admin}
current-context: k8stest
KUBECONFIG
  chmod 600 "$dir/kubeconfig" "$dir/tokens.csv"
  export KUBECONFIG=$dir/kubeconfig
  export PATH="$bin:$PATH"

  wait_for "etcd on 127.0.0.1:$etcd_client" 30 bash -c "exec 3<>/dev/tcp/127.0.0.1/$etcd_client"

  start kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_client" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api" \
    --cert-dir "$dir/apiserver" \
    --token-auth-file "$dir/tokens.csv" --authorization-mode AlwaysAllow \
    --service-account-key-file "$dir/sa.pub" --service-account-signing-key-file "$dir/sa.key" \
    --service-account-issuer https://kubernetes.default.svc \
    --service-cluster-ip-range 10.96.0.0/16 --allow-privileged
  wait_for "kube-apiserver /readyz" 90 "$bin/kubectl" get --raw /readyz

  # kwok's fake nodes renew their status every 10 to 20 minutes: a longer
  # grace keeps the node lifecycle controller from marking them NotReady
  # (which turns every pod on them unready) between two heartbeats.
  start kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$dir/kubeconfig" --authentication-kubeconfig "$dir/kubeconfig" --authorization-kubeconfig "$dir/kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$cm" --leader-elect=false \
    --service-account-private-key-file "$dir/sa.key" --use-service-account-credentials=false \
    --node-monitor-grace-period 1h \
    --controllers '*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller,-persistentvolume-binder'
  start kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig "$dir/kubeconfig" --authentication-kubeconfig "$dir/kubeconfig" --authorization-kubeconfig "$dir/kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$sched" --leader-elect=false

  local stages=() f
  for f in "$bin"/kwok-stages/*.yaml; do stages+=(--config "$f"); done
  start kwok "$bin/kwok" "${stages[@]}" \
    --kubeconfig "$dir/kubeconfig" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --node-ip 127.0.0.1 --node-port "$kwok_port" --server-address "127.0.0.1:$kwok_port" \
    --cidr 10.244.0.1/16

  # Three fake nodes, one per zone, with room for a few gates each.
  local zone
  for zone in a b c; do
    "$bin/kubectl" apply -f - >/dev/null <<NODE
apiVersion: v1
kind: Node
metadata:
  name: node-$zone
  annotations:
    kwok.x-k8s.io/node: fake
  labels:
    kubernetes.io/hostname: node-$zone
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    topology.kubernetes.io/zone: zone-$zone
    type: kwok
spec: {}
status:
  allocatable: {cpu: "8", memory: 32Gi, pods: "110"}
  capacity: {cpu: "8", memory: 32Gi, pods: "110"}
NODE
  done
  wait_for "three Ready nodes" 60 "$bin/kubectl" wait --for=condition=Ready node --all --timeout=1s
  wait_for "the default service account" 60 "$bin/kubectl" get serviceaccount default
  log "control plane up in $((SECONDS - t0))s ($("$bin/kubectl" version -o json | sed -n 's/.*"gitVersion": "\(v[^"]*\)".*/\1/p' | tail -1)); running: $*"

  "$@"
}

case ${1:-} in
build)
  build
  ;;
run)
  shift
  run "$@"
  ;;
*)
  echo "usage: $0 build | run CMD [ARG...]" >&2
  exit 2
  ;;
esac
