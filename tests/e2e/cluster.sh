#!/usr/bin/env bash
# A one-node Kubernetes for the end-to-end suite, on this machine, as root:
#   bash tests/e2e/cluster.sh up   K8S_BIN_DIR STATE_DIR
#   bash tests/e2e/cluster.sh down STATE_DIR
#
# `up` starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# containerd and a kubelet, all listening on 127.0.0.1 (free ports) or on a
# private bridge (lbe2e0, 10.244.77.0/24), waits for the node to be Ready and
# writes STATE_DIR/kubeconfig (an admin). K8S_BIN_DIR holds kube-apiserver,
# kube-controller-manager, kube-scheduler and kubelet, plain or as .zst.
# etcd, containerd, runc and the CNI plugins come from Debian
# (tests/e2e/run.sh installs them).
#
# `down` stops everything by the PIDs `up` recorded (and containerd's shims,
# which carry its socket path) and undoes every change to the host: the
# bridge, the NAT rule, the sysctls the kubelet and `up` set, the iptables
# chains and network namespaces that appeared while it ran, mounts, the
# kubepods cgroups. It is safe to run twice, and after an `up` that failed
# half-way.
#
# A run killed outright (SIGKILL, a CI job cut off at its time limit) never
# reaches `down`: its bridge, NAT rule, mounts and state folder stay. The
# next `up` finds such a leftover through $OWNER (or the /tmp/lifeboat-e2e.*
# folders run.sh makes) and takes it down first, but only when none of the
# processes it recorded still live; a cluster that runs is never touched.
#
# Why each setting is what it is: docs/E2E.md.
set -euo pipefail

cmd=${1:?usage: cluster.sh up K8S_BIN_DIR STATE_DIR | down STATE_DIR}
BRIDGE=lbe2e0
BRIDGE_IP=10.244.77.1
POD_CIDR=10.244.77.0/24
SERVICE_CIDR=10.96.77.0/24
SERVICE_IP=10.96.77.1
NODE=lifeboat-e2e
OWNER=/run/lifeboat-e2e.state
KUBELET_SYSCTLS="vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes"

log() { echo "cluster.sh: $*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Starts a program in the background in its own session, logging to
# logs/NAME.log, and records its PID for `down`.
start() {
  local name=$1; shift
  setsid "$@" >"$STATE/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$STATE/pids/$name"
}

wait_for() {
  local what=$1 seconds=$2; shift 2
  local i
  for ((i = 0; i < seconds * 5; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  log "timed out after ${seconds}s waiting for $what"
  return 1
}

certs() {
  local d=$STATE/pki
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=lifeboat-e2e-ca \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  # name CN O SANs
  leaf() {
    local name=$1 cn=$2 o=$3 san=$4 subj="/CN=$2"
    [ -n "$o" ] && subj="/O=$o/CN=$cn"
    openssl req -newkey rsa:2048 -nodes -subj "$subj" -keyout "$d/$name.key" -out "$d/$name.csr" 2>/dev/null
    local ext
    ext=$(mktemp)
    if [ -n "$san" ]; then
      printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$san" >"$ext"
    else
      printf 'extendedKeyUsage=clientAuth\n' >"$ext"
    fi
    openssl x509 -req -in "$d/$name.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
      -days 2 -extfile "$ext" -out "$d/$name.crt" 2>/dev/null
    rm -f "$ext" "$d/$name.csr"
  }
  leaf apiserver kube-apiserver "" \
    "IP:127.0.0.1,IP:$SERVICE_IP,IP:$BRIDGE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  leaf kubelet "system:node:$NODE" system:nodes "IP:$BRIDGE_IP,IP:127.0.0.1,DNS:$NODE"
  leaf apiserver-kubelet-client kube-apiserver-kubelet-client system:masters ""
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
}

kubeconfig() {
  local file=$1 user=$2 token=$3
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: e2e
    cluster:
      server: https://127.0.0.1:$API_PORT
      certificate-authority: $STATE/pki/ca.crt
users:
  - name: $user
    user:
      token: $token
contexts:
  - name: e2e
    context: {cluster: e2e, user: $user}
current-context: e2e
EOF
}

binaries() {
  local src=$1 b
  mkdir -p "$STATE/bin"
  for b in kube-apiserver kube-controller-manager kube-scheduler kubelet; do
    if [ -x "$src/$b" ]; then
      cp "$src/$b" "$STATE/bin/$b"
    elif [ -f "$src/$b.zst" ]; then
      zstd -q -d -f "$src/$b.zst" -o "$STATE/bin/$b"
    else
      log "LIFEBOAT_E2E_K8S=$src holds neither $b nor $b.zst (expected the Kubernetes server binaries, e.g. ../shared/k8s)"
      exit 1
    fi
    chmod +x "$STATE/bin/$b"
  done
}

network() {
  # What `down` restores.
  cat /proc/sys/net/ipv4/ip_forward >"$STATE/saved-ip_forward"
  # The kubelet sets these itself (protectKernelDefaults: false); `down`
  # puts them back.
  local k
  for k in $KUBELET_SYSCTLS; do
    sysctl -n "$k" >"$STATE/saved-sysctl-$k" 2>/dev/null || rm -f "$STATE/saved-sysctl-$k"
  done
  ip netns list 2>/dev/null | awk '{print $1}' >"$STATE/saved-netns"
  local ipt table
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for table in filter nat mangle; do
      "$ipt" -t "$table" -S 2>/dev/null | awk -v t="$table" '/^-N / {print t " " $2}'
    done >"$STATE/saved-chains-$ipt"
  done
  [ -e /var/lib/cni ] || : >"$STATE/made-var-lib-cni"
  ip link add "$BRIDGE" type bridge
  ip addr add "$BRIDGE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  echo "$STATE" >"$OWNER"
  sysctl -q -w net.ipv4.ip_forward=1
  sysctl -q -w "net.ipv4.conf.$BRIDGE.route_localnet=1"
  # No kube-proxy: pods reach the API server at the service IP through this
  # one rule, to the API server on loopback.
  iptables -t nat -A PREROUTING -i "$BRIDGE" -d "$SERVICE_IP" -p tcp --dport 443 \
    -j DNAT --to-destination "127.0.0.1:$API_PORT" -m comment --comment lifeboat-e2e
  mkdir -p "$STATE/cni/net.d"
  cat >"$STATE/cni/net.d/10-lifeboat-e2e.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "lifeboat-e2e",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false,
     "ipam": {"type": "host-local", "dataDir": "$STATE/cni/ipam",
              "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$BRIDGE_IP"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
EOF
}

containerd_config() {
  local c=$STATE/containerd
  mkdir -p "$c/root" "$c/state"
  containerd config default >"$c/config.toml"
  # Everything under STATE; the pause image is one we import; runc must not
  # set oom_score_adj (root here lacks CAP_SYS_RESOURCE); cgroupfs driver.
  sed -i \
    -e "s|^root = .*|root = \"$c/root\"|" \
    -e "s|^state = .*|state = \"$c/state\"|" \
    -e "s|^\(\s*\)address = \"/run/containerd/containerd.sock\"|\1address = \"$c/containerd.sock\"|" \
    -e "s|sandbox_image = .*|sandbox_image = \"lifeboat-e2e/pause:1\"|" \
    -e "s|restrict_oom_score_adj = false|restrict_oom_score_adj = true|" \
    -e "s|SystemdCgroup = true|SystemdCgroup = false|" \
    -e "s|bin_dir = \"/opt/cni/bin\"|bin_dir = \"/usr/lib/cni\"|" \
    -e "s|conf_dir = \"/etc/cni/net.d\"|conf_dir = \"$STATE/cni/net.d\"|" \
    "$c/config.toml"
  grep -q "$c/containerd.sock" "$c/config.toml" || { log "containerd config: could not set the socket address"; exit 1; }
  grep -q 'restrict_oom_score_adj = true' "$c/config.toml" || { log "containerd config: could not set restrict_oom_score_adj"; exit 1; }
}

kubelet_config() {
  cat >"$STATE/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $BRIDGE_IP
port: $KUBELET_PORT
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
readOnlyPort: 0
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
evictionHard: {}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
containerRuntimeEndpoint: unix://$STATE/containerd/containerd.sock
podLogsDir: $STATE/pod-logs
tlsCertFile: $STATE/pki/kubelet.crt
tlsPrivateKeyFile: $STATE/pki/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $STATE/pki/ca.crt}
authorization:
  mode: AlwaysAllow
resolvConf: /etc/resolv.conf
EOF
}

up() {
  local src=${1:?K8S_BIN_DIR}
  STATE=$(realpath -m "${2:?STATE_DIR}")
  if [ -e "$STATE/pids" ]; then
    log "$STATE holds a cluster already (run: cluster.sh down $STATE)"
    exit 1
  fi
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    reclaim
  fi
  mkdir -p "$STATE"/{pids,logs,etcd,kubelet,pod-logs,audit}
  : >"$STATE/.lifeboat-e2e"
  binaries "$src"
  ETCD_PORT=$(free_port); ETCD_PEER_PORT=$(free_port); API_PORT=$(free_port)
  KCM_PORT=$(free_port); SCHED_PORT=$(free_port)
  KUBELET_PORT=$(free_port); KUBELET_HEALTHZ_PORT=$(free_port)
  echo "$API_PORT" >"$STATE/api-port"
  certs
  cat >"$STATE/tokens.csv" <<EOF
e2e-admin-token,e2e-admin,e2e-admin,system:masters
e2e-kcm-token,system:kube-controller-manager,system:kube-controller-manager
e2e-scheduler-token,system:kube-scheduler,system:kube-scheduler
e2e-node-token,system:node:$NODE,system:node:$NODE,system:nodes
EOF
  kubeconfig "$STATE/kubeconfig" e2e-admin e2e-admin-token
  kubeconfig "$STATE/kcm.kubeconfig" kcm e2e-kcm-token
  kubeconfig "$STATE/scheduler.kubeconfig" scheduler e2e-scheduler-token
  kubeconfig "$STATE/kubelet.kubeconfig" kubelet e2e-node-token
  # Every request a service account makes, so the suite can prove the
  # shipped Role is all lifeboat uses.
  cat >"$STATE/audit/policy.yaml" <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
EOF
  network

  start etcd etcd --name e2e --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "e2e=http://127.0.0.1:$ETCD_PEER_PORT"
  wait_for etcd 30 curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

  start kube-apiserver "$STATE/bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --secure-port "$API_PORT" --advertise-address "$BRIDGE_IP" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --tls-cert-file "$STATE/pki/apiserver.crt" --tls-private-key-file "$STATE/pki/apiserver.key" \
    --client-ca-file "$STATE/pki/ca.crt" --token-auth-file "$STATE/tokens.csv" \
    --authorization-mode Node,RBAC \
    --service-account-key-file "$STATE/pki/sa.pub" --service-account-signing-key-file "$STATE/pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc \
    --kubelet-client-certificate "$STATE/pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$STATE/pki/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --audit-policy-file "$STATE/audit/policy.yaml" --audit-log-path "$STATE/audit/audit.log" \
    --allow-privileged=true
  wait_for "the API server" 90 kubectl --kubeconfig "$STATE/kubeconfig" get --raw /readyz

  start kube-controller-manager "$STATE/bin/kube-controller-manager" \
    --kubeconfig "$STATE/kcm.kubeconfig" --authentication-kubeconfig "$STATE/kcm.kubeconfig" \
    --authorization-kubeconfig "$STATE/kcm.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" \
    --use-service-account-credentials --service-account-private-key-file "$STATE/pki/sa.key" \
    --root-ca-file "$STATE/pki/ca.crt" --leader-elect=false
  start kube-scheduler "$STATE/bin/kube-scheduler" \
    --kubeconfig "$STATE/scheduler.kubeconfig" --authentication-kubeconfig "$STATE/scheduler.kubeconfig" \
    --authorization-kubeconfig "$STATE/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" --leader-elect=false

  containerd_config
  start containerd containerd --config "$STATE/containerd/config.toml"
  wait_for containerd 30 ctr --address "$STATE/containerd/containerd.sock" version
  if [ -n "${LIFEBOAT_E2E_PAUSE_IMAGE:-}" ]; then
    ctr --address "$STATE/containerd/containerd.sock" -n k8s.io images import "$LIFEBOAT_E2E_PAUSE_IMAGE" >/dev/null
  fi

  kubelet_config
  start kubelet "$STATE/bin/kubelet" --config "$STATE/kubelet/config.yaml" \
    --kubeconfig "$STATE/kubelet.kubeconfig" --hostname-override "$NODE" --node-ip "$BRIDGE_IP" \
    --root-dir "$STATE/kubelet/root"
  wait_for "the node $NODE to be Ready" 120 sh -c \
    "kubectl --kubeconfig '$STATE/kubeconfig' get node $NODE -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
  # Pods start only once their namespace has the root CA ConfigMaps.
  wait_for "kube-root-ca.crt in default" 60 kubectl --kubeconfig "$STATE/kubeconfig" -n default get configmap kube-root-ca.crt
  log "node $NODE Ready; KUBECONFIG=$STATE/kubeconfig"
}

# True when the process recorded as $2 in state folder $1 runs and is the
# one we started: its command line names that folder (etcd's names its data
# folder, the others the binary copied there). A zombie's is empty.
running() {
  local pid
  pid=$(cat "$1/pids/$2" 2>/dev/null) || return 1
  kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$1"
}

# True when any process recorded in state folder $1 still runs.
alive() {
  local pidfile
  for pidfile in "$1"/pids/*; do
    [ -f "$pidfile" ] && running "$1" "$(basename "$pidfile")" && return 0
  done
  return 1
}

# The bridge exists: take down what a killed run left, or refuse when a
# cluster still runs.
reclaim() {
  local old candidates=()
  [ -f "$OWNER" ] && candidates+=("$(cat "$OWNER")")
  for old in /tmp/lifeboat-e2e.*; do candidates+=("$old"); done
  for old in "${candidates[@]}"; do
    [ -e "$old/.lifeboat-e2e" ] && [ "$old" != "$STATE" ] || continue
    if alive "$old"; then
      log "another e2e cluster runs here, from $old: stop it with cluster.sh down $old"
      exit 1
    fi
    log "a run that was killed left its cluster in $old; taking it down first"
    bash "${BASH_SOURCE[0]}" down "$old" || log "taking down $old left something behind (above)"
  done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    log "the bridge $BRIDGE exists and no cluster.sh state folder owns it; if no e2e cluster runs here, remove it: ip link del $BRIDGE"
    exit 1
  fi
}

stop_pid() {
  local name=$1 pidfile=$STATE/pids/$1 pid i
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if running "$STATE" "$name"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

down() {
  # Best effort at every step: one that fails must not keep the later ones
  # from running (each failure that matters is logged).
  set +e +o pipefail
  STATE=$(realpath -m "${1:?STATE_DIR}")
  if [ ! -e "$STATE" ]; then log "$STATE is gone already"; return 0; fi
  [ -e "$STATE/.lifeboat-e2e" ] || { log "$STATE is not a cluster.sh state folder"; exit 1; }
  local sock=$STATE/containerd/containerd.sock
  # Controllers first, so nothing recreates the pods; then the pods, so the
  # app containers get their SIGTERM.
  stop_pid kube-controller-manager
  stop_pid kube-scheduler
  if running "$STATE" kubelet && running "$STATE" kube-apiserver; then
    timeout 60 kubectl --kubeconfig "$STATE/kubeconfig" delete pods --all --all-namespaces \
      --grace-period=5 --wait=true >/dev/null 2>&1 || log "deleting the pods did not finish; killing their containers"
  fi
  stop_pid kubelet
  if [ -S "$sock" ]; then
    local t c
    for t in $(ctr --address "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$sock" -n k8s.io tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
    done
    sleep 1
    # Deleting the tasks and containers removes the shims' and runc's state
    # under /run/containerd.
    for t in $(ctr --address "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$sock" -n k8s.io tasks delete -f "$t" >/dev/null 2>&1 || true
    done
    for c in $(ctr --address "$sock" -n k8s.io containers ls -q 2>/dev/null); do
      ctr --address "$sock" -n k8s.io containers rm "$c" >/dev/null 2>&1 || true
    done
  fi
  stop_pid containerd
  # The shims outlive containerd; they carry its socket on their command line.
  pkill -KILL -f "containerd-shim.*-address $sock" 2>/dev/null || true
  stop_pid kube-apiserver
  stop_pid etcd
  # Mounts under the state folder (overlay roots, secret tmpfs, shm), deepest first.
  awk -v p="$STATE/" 'index($2, p) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
  # Network namespaces the CNI made for our pods.
  if [ -f "$STATE/saved-netns" ]; then
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^cni-' | grep -vxF -f "$STATE/saved-netns" || true); do
      ip netns delete "$ns" 2>/dev/null || true
    done
  fi
  rm -rf /var/lib/cni/results/lifeboat-e2e-* 2>/dev/null || true
  if [ -f "$STATE/made-var-lib-cni" ]; then rm -rf /var/lib/cni; fi
  if [ -f "$STATE/api-port" ]; then
    iptables -t nat -D PREROUTING -i "$BRIDGE" -d "$SERVICE_IP" -p tcp --dport 443 \
      -j DNAT --to-destination "127.0.0.1:$(cat "$STATE/api-port")" -m comment --comment lifeboat-e2e 2>/dev/null || true
  fi
  remove_chains iptables
  remove_chains ip6tables
  ip link del "$BRIDGE" 2>/dev/null || true
  if [ "$(cat "$OWNER" 2>/dev/null)" = "$STATE" ]; then rm -f "$OWNER"; fi
  if [ -f "$STATE/saved-ip_forward" ]; then
    sysctl -q -w "net.ipv4.ip_forward=$(cat "$STATE/saved-ip_forward")" || true
  fi
  local k
  for k in $KUBELET_SYSCTLS; do
    if [ -f "$STATE/saved-sysctl-$k" ]; then
      sysctl -q -w "$k=$(cat "$STATE/saved-sysctl-$k")" || log "could not restore $k"
    fi
  done
  # The kubelet's cgroups (cgroupfs driver, v1: one tree per controller).
  local c
  for c in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [ -d "$c" ] || continue
    # Container processes whose shim is gone would keep the cgroup busy.
    find "$c" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u | xargs -r kill -KILL 2>/dev/null || true
    sleep 0.2
    find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    [ -d "$c" ] && log "could not remove the cgroup $c"
  done
  rm -f /var/log/containers/*_lifeboat-e2e* 2>/dev/null || true
  find /var/log/containers -xtype l -delete 2>/dev/null || true
  local left=""
  ip link show "$BRIDGE" >/dev/null 2>&1 && left+=" the bridge $BRIDGE;"
  iptables -t nat -S PREROUTING 2>/dev/null | grep -q lifeboat-e2e && left+=" the NAT rule;"
  rm -rf "$STATE" || left+=" $STATE;"
  if [ -n "$left" ]; then
    log "stopped, but left:$left"
    return 1
  fi
  log "stopped; host restored"
}

# The kubelet's KUBE-* and CNI's CNI-* chains: flushed and removed from
# every table, with the jumps to them.
remove_chains() {
  local ipt=$1 table chain
  command -v "$ipt" >/dev/null || return 0
  local before=$STATE/saved-chains-$ipt
  [ -f "$before" ] || return 0
  for table in filter nat mangle; do
    local ours
    ours=$("$ipt" -t "$table" -S 2>/dev/null | awk '/^-N (KUBE|CNI)-/ {print $2}' | grep -vxF -f <(grep "^$table " "$before" | cut -d' ' -f2) || true)
    for chain in $ours; do
      # Jumps to the chain from elsewhere (kept as printed: eval keeps quoted comments whole).
      "$ipt" -t "$table" -S 2>/dev/null | grep -E -- "-j $chain( |\$)" | grep -v "^-A $chain " | sed 's/^-A/-D/' | while read -r rule; do
        eval "\"\$ipt\" -t \"\$table\" $rule" 2>/dev/null || true
      done
    done
    for chain in $ours; do "$ipt" -t "$table" -F "$chain" 2>/dev/null || true; done
    for chain in $ours; do "$ipt" -t "$table" -X "$chain" 2>/dev/null || true; done
  done
}

case "$cmd" in
  up) shift; up "$@" ;;
  down) shift; down "$@" ;;
  *) echo "usage: cluster.sh up K8S_BIN_DIR STATE_DIR | down STATE_DIR" >&2; exit 2 ;;
esac
