#!/usr/bin/env bash
# deploy/k8stest/chart.sh: the Helm chart on a real control plane. Run it
# inside cluster.sh, which provides the cluster (three fake nodes, one per
# zone), KUBECONFIG, and kubectl on PATH:
#
#   deploy/k8stest/cluster.sh run deploy/k8stest/chart.sh
#
# First the real CRDs of the Prometheus Operator and cert-manager, from
# their Go modules, so that the ServiceMonitor, PrometheusRule and
# Certificate the chart writes are validated by their real schemas. Then,
# for the default values and every ci/*.yaml: `helm install --wait`, a check
# of what landed (every object of the release exists; the gates are ready
# and, with 3 replicas, spread over the 3 zones; the PDB allows one
# disruption; the headless fleet Service lists every gate; the
# PrometheusRule holds the alerts of deploy/prometheus/alerts.yaml; the
# NetworkPolicy), with the default values a drained zone, then `helm upgrade
# --wait` (a rolling update that keeps the admin token) and `helm uninstall`
# that leaves nothing behind. A warning from the API server fails too. Any
# mismatch prints what the cluster holds.
set -euo pipefail

cd "$(dirname "$0")/../.."

# The CRDs' sources (go list -m -versions shows others).
prometheus_operator=github.com/prometheus-operator/prometheus-operator@v0.85.0
cert_manager=github.com/cert-manager/cert-manager@v1.21.2

chart=deploy/helm/spacegate
alerts=deploy/prometheus/alerts.yaml
wait_timeout=3m

log() { printf 'chart: %s\n' "$*" >&2; }

# fail: say what is wrong, show the namespace under test, and exit.
ns=""
fail() {
  log "FAIL: $*"
  if [[ -n $ns ]]; then
    log "---- kubectl get all,pdb,networkpolicy,endpointslices -n $ns -o wide"
    kubectl get all,pdb,networkpolicy,endpointslices -n "$ns" -o wide >&2 || true
    log "---- pods"
    kubectl describe pods -n "$ns" >&2 || true
    log "---- events"
    kubectl get events -n "$ns" --sort-by=.lastTimestamp >&2 || true
  fi
  log "---- nodes"
  kubectl get nodes -L topology.kubernetes.io/zone >&2 || true
  exit 1
}

# eventually SECONDS DESCRIPTION COMMAND...: run COMMAND every half second
# until it succeeds; fail with DESCRIPTION and its last output after
# SECONDS.
eventually() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit)) out
  until out=$("$@" 2>&1); do
    ((SECONDS < deadline)) || fail "$what (after ${limit}s): $out"
    sleep 0.5
  done
}

mod_dir() {
  go mod download -json "$1" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p'
}

# helm_run LOG ARGS...: helm, its output in LOG; fail on an error or on any
# warning the API server sent (an unknown field, a malformed certificate).
helm_run() {
  local out=$1
  shift
  if ! helm "$@" >"$out" 2>&1; then
    cat "$out" >&2
    fail "helm $*"
  fi
  if grep -iE 'warning|W[0-9]{4} ' "$out" >&2; then
    fail "helm $*: the API server warned (above)"
  fi
}

# patch_load_balancers NS: give every LoadBalancer Service of NS an
# address, as a cloud's controller would (there is none here), so that
# helm --wait sees it ready. Runs until killed.
patch_load_balancers() {
  local svc
  while :; do
    for svc in $(kubectl get svc -n "$1" -o jsonpath='{range .items[?(@.spec.type=="LoadBalancer")]}{.metadata.name}{" "}{end}' 2>/dev/null); do
      kubectl patch svc "$svc" -n "$1" --subresource=status --type=merge \
        -p '{"status":{"loadBalancer":{"ingress":[{"ip":"127.0.0.1"}]}}}' >/dev/null 2>&1 || true
    done
    sleep 0.5
  done
}

# helm_wait LOG ARGS...: helm install or upgrade --wait, while a cloud's
# load balancer controller is played beside it.
helm_wait() {
  local out=$1
  shift
  patch_load_balancers "$ns" &
  local patcher=$!
  local rc=0
  helm_run "$out" "$@" --wait --timeout "$wait_timeout" || rc=$?
  kill "$patcher" 2>/dev/null || true
  wait "$patcher" 2>/dev/null || true
  return "$rc"
}

# zones_of SELECTOR: the zones of the nodes the selected pods run on, one
# line per pod, sorted; fails if a pod is not Running on a node.
zones_of() {
  local pod node phase
  kubectl get pods -n "$ns" -l "$1" -o jsonpath='{range .items[*]}{.metadata.name} {.spec.nodeName} {.status.phase}{"\n"}{end}' |
    while read -r pod node phase; do
      [[ $phase == Running && -n $node ]] || {
        echo "pod $pod is $phase on node '$node'"
        return 1
      }
      kubectl get node "$node" -o jsonpath='{.metadata.labels.topology\.kubernetes\.io/zone}{"\n"}'
    done | sort
}

# spread_is SELECTOR WANT: the selected pods run in exactly the zones WANT
# (e.g. "zone-a zone-b zone-c"), one line per pod.
spread_is() {
  local got
  got=$(zones_of "$1") || {
    echo "$got"
    return 1
  }
  got=$(echo $got)
  [[ $got == "$2" ]] || {
    echo "pods in zones [$got], want [$2]"
    return 1
  }
}

# ready_gates DEPLOY N: the Deployment has N updated, ready replicas and
# no other pods (no surge left, none Pending).
ready_gates() {
  local st
  st=$(kubectl get deploy "$1" -n "$ns" -o jsonpath='{.status.updatedReplicas}/{.status.readyReplicas}/{.status.replicas}')
  [[ $st == "$2/$2/$2" ]] || {
    echo "deployment $1 updated/ready/total = $st, want $2/$2/$2"
    return 1
  }
}

# fleet_lists SERVICE N: the headless Service's EndpointSlices hold N ready
# addresses: one DNS record per gate.
fleet_lists() {
  local n
  n=$(kubectl get endpointslices -n "$ns" -l "kubernetes.io/service-name=$1" \
    -o jsonpath='{range .items[*].endpoints[?(@.conditions.ready==true)]}{.addresses[0]}{"\n"}{end}' | grep -c . || true)
  [[ $n == "$2" ]] || {
    echo "Service $1 has $n ready endpoints, want $2"
    return 1
  }
}

# check_release NAME VALUES: what helm installed is what the chart promises.
check_release() {
  local rel=$1 values=$2 manifest out kinds
  manifest=$(helm get manifest "$rel" -n "$ns")
  # Every object of the release exists.
  if ! out=$(kubectl get -n "$ns" -f - <<<"$manifest" 2>&1); then
    fail "objects of release $rel are missing: $out"
  fi
  kinds=$(sed -n 's/^kind: //p' <<<"$manifest" | sort | uniq -c | awk '{print $2 "=" $1}' | tr '\n' ' ')
  log "$rel: $kinds"

  local want
  case $values in
  default) want="Deployment=1 Service=3 PodDisruptionBudget=1 NetworkPolicy=1 ConfigMap=2 Secret=1 ServiceAccount=1" ;;
  full-values) want="Deployment=1 Service=3 PodDisruptionBudget=1 NetworkPolicy=1 ServiceMonitor=1 PrometheusRule=1 Secret=3" ;;
  certmanager-values) want="Deployment=1 Service=3 Certificate=1 PodDisruptionBudget=1 NetworkPolicy=1" ;;
  minimal-values) want="Deployment=1 Service=3" ;;
  *) want="Deployment=1 Service=3" ;;
  esac
  local k
  for k in $want; do
    [[ " $kinds" == *" $k "* ]] || fail "$rel ($values): want $k in the release, have $kinds"
  done

  local full replicas selector
  full=$(kubectl get deploy -n "$ns" -l "app.kubernetes.io/instance=$rel" -o jsonpath='{.items[0].metadata.name}')
  replicas=$(kubectl get deploy "$full" -n "$ns" -o jsonpath='{.spec.replicas}')
  selector="app.kubernetes.io/name=spacegate,app.kubernetes.io/instance=$rel"
  eventually 60 "$full: $replicas ready gates" ready_gates "$full" "$replicas"
  if ((replicas == 3)); then
    eventually 30 "3 gates over 3 zones" spread_is "$selector" "zone-a zone-b zone-c"
  fi

  # The fleet: headless, one ready address per gate.
  [[ $(kubectl get svc "$full-fleet" -n "$ns" -o jsonpath='{.spec.clusterIP}') == None ]] ||
    fail "Service $full-fleet is not headless"
  eventually 30 "the fleet Service lists every gate" fleet_lists "$full-fleet" "$replicas"
  # ...and the gates' admin.fleet names it, so that /v1/fleet asks them all.
  if [[ $values == default ]] && ! grep -q -- "- dns:$full-fleet\.$ns\.svc\.cluster\.local:9187\$" <<<"$manifest"; then
    fail "$rel: the config's admin.fleet does not name dns:$full-fleet.$ns.svc.cluster.local:9187"
  fi

  if [[ " $kinds" == *" PodDisruptionBudget="* ]]; then
    eventually 30 "the PDB allows one disruption" bash -c \
      "[[ \$(kubectl get pdb '$full' -n '$ns' -o jsonpath='{.status.currentHealthy}/{.status.disruptionsAllowed}') == '$replicas/1' ]]"
  fi
  if [[ " $kinds" == *" NetworkPolicy="* ]]; then
    local sel
    sel=$(kubectl get networkpolicy "$full" -n "$ns" -o jsonpath='{.spec.podSelector.matchLabels.app\.kubernetes\.io/instance}/{.spec.policyTypes}')
    [[ $sel == "$rel/[\"Ingress\",\"Egress\"]" ]] || fail "NetworkPolicy $full: selector/policyTypes $sel"
  fi
  if [[ " $kinds" == *" PrometheusRule="* ]]; then
    local got wantalerts
    got=$(kubectl get prometheusrule "$full" -n "$ns" -o jsonpath='{range .spec.groups[*]}{.name}:{range .rules[*]}{.alert} {end}{"\n"}{end}')
    wantalerts=$(awk '/^  - name: /{if (g) print g; g=$3 ":"} /^      - alert: /{g=g $3 " "} END{print g}' "$alerts")
    [[ $got == "$wantalerts" ]] || fail "PrometheusRule $full holds
$got
want the groups and alerts of $alerts:
$wantalerts"
  fi
}

# drain_zone DEPLOY SELECTOR: cordon and drain zone-c's node; its gate
# must come back in the other two zones (values.yaml, topologySpread).
drain_zone() {
  local full=$1 selector=$2
  kubectl drain node-c --ignore-daemonsets --delete-emptydir-data --timeout 90s >/dev/null 2>&1 ||
    fail "kubectl drain node-c: $(kubectl drain node-c --ignore-daemonsets --timeout 5s 2>&1)"
  eventually 60 "with zone-c drained, 3 ready gates" ready_gates "$full" 3
  local got
  got=$(zones_of "$selector") || fail "$got"
  got=$(echo $got)
  [[ $got == "zone-a zone-a zone-b" || $got == "zone-a zone-b zone-b" ]] ||
    fail "with zone-c drained the gates run in [$got], want two in one of zone-a, zone-b and one in the other"
  kubectl uncordon node-c >/dev/null
  log "drained zone-c: its gate moved, gates in [$got]"
}

start=$SECONDS

# The CRDs, as their projects publish them.
po=$(mod_dir "$prometheus_operator")
cm=$(mod_dir "$cert_manager")
[[ -d $po/example/prometheus-operator-crd && -d $cm/deploy/crds ]] ||
  fail "CRDs not found in $prometheus_operator ($po) or $cert_manager ($cm)"
# Server-side: some CRDs are too large for the last-applied annotation.
kubectl apply --server-side -f "$po/example/prometheus-operator-crd/" >/dev/null
kubectl apply --server-side -f "$cm/deploy/crds/" >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
log "CRDs of $prometheus_operator and $cert_manager established"

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

for values in "" "$chart"/ci/*.yaml; do
  name=$(basename "${values:-default}" .yaml)
  ns=k8stest-$name
  rel=gate
  t0=$SECONDS
  set_values=()
  [[ -z $values ]] || set_values=(-f "$values")
  kubectl create namespace "$ns" >/dev/null

  helm_wait "$logs/install-$name" install "$rel" "$chart" -n "$ns" "${set_values[@]}"
  check_release "$rel" "$name"
  full=$(kubectl get deploy -n "$ns" -l "app.kubernetes.io/instance=$rel" -o jsonpath='{.items[0].metadata.name}')
  selector="app.kubernetes.io/name=spacegate,app.kubernetes.io/instance=$rel"
  token=$(kubectl get secret -n "$ns" -l "app.kubernetes.io/instance=$rel" -o jsonpath='{range .items[*]}{.metadata.name}={.data}{"\n"}{end}' | grep -- '-admin-token=' || true)

  if [[ -z $values ]]; then
    drain_zone "$full" "$selector"
  fi

  # An upgrade that changes the pods: a rolling update, gates spread
  # again, the admin token kept (the chart looks its Secret up).
  helm_wait "$logs/upgrade-$name" upgrade "$rel" "$chart" -n "$ns" "${set_values[@]}" --set-string podAnnotations.k8stest-upgrade=2
  check_release "$rel" "$name"
  [[ $(kubectl get deploy "$full" -n "$ns" -o jsonpath='{.spec.template.metadata.annotations.k8stest-upgrade}') == 2 ]] ||
    fail "helm upgrade did not change the pod template"
  token2=$(kubectl get secret -n "$ns" -l "app.kubernetes.io/instance=$rel" -o jsonpath='{range .items[*]}{.metadata.name}={.data}{"\n"}{end}' | grep -- '-admin-token=' || true)
  [[ $token == "$token2" ]] || fail "helm upgrade changed the admin token Secret"

  # Uninstall leaves nothing of the release: every namespaced kind is
  # listed, and only what Kubernetes puts in every namespace remains.
  helm_run "$logs/uninstall-$name" uninstall "$rel" -n "$ns" --wait --timeout "$wait_timeout"
  listable=$(kubectl api-resources --verbs=list --namespaced -o name | grep -vE '^(events|events\.events\.k8s\.io)$' | paste -sd, -)
  left() {
    local out
    out=$(kubectl get "$listable" -n "$ns" -o name) || {
      echo "kubectl get: $out"
      return 1
    }
    out=$(grep -vE '^(serviceaccount/default|configmap/kube-root-ca\.crt)$' <<<"$out" || true)
    [[ -z $out ]] || {
      echo "left behind: $out"
      return 1
    }
  }
  eventually 60 "helm uninstall leaves nothing in $ns" left
  kubectl delete namespace "$ns" --wait=false >/dev/null
  log "$name: install, checks, upgrade, uninstall in $((SECONDS - t0))s"
  ns=""
done
log "all values files passed in $((SECONDS - start))s"
