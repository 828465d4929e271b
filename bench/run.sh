#!/usr/bin/env bash
# Builds the release binaries (as the images ship them) and runs the
# benchmark: bench/run.sh [--size 1G] [--runs 3] [--tiny 200000] [--no-gzip]
# or, for incremental chains: bench/run.sh --incremental [--size 1G] [--tiny 200000]
# or, for memory with many names: bench/run.sh --shapes [--runs 1]
#   [--shape-files 1000000] [--shape-links 200000] [--baseline DIR]
# or, for continuous WAL archiving (PostgreSQL 15): bench/run.sh --wal [--quick]
#   [--scale 20] [--seconds 60] [--runs 2] [--interval 10s] [--idle 300]
# Prints a Markdown table on stdout, progress on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v zstd >/dev/null && [ -x /usr/bin/time ] || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zstd time
}
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked \
  --target x86_64-unknown-linux-gnu -p lifeboat-sidecar -p lifeboat-restore >&2
bin="${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release"
if [ "${1:-}" = --wal ]; then
  shift
  exec python3 bench/wal.py --bin "$bin" "$@"
fi
exec python3 bench/bench.py --bin "$bin" "$@"
