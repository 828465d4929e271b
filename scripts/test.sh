#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs, builds
# both binaries, runs every test. Run as root: the tests check that owners
# survive a restore (CI runs as root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# How long each step took, so a slow CI run says where its time went.
# And how much of the two cores' time was left idle (from /proc/stat):
# idle cores during a step are time a background job could have used.
cpu_times() { awk '/^cpu / { print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }
t0=$(date +%s)
read -r idle0 total0 < <(cpu_times)
step() {
  local now idle total
  now=$(date +%s)
  read -r idle total < <(cpu_times)
  echo "test.sh: $1 took $((now - t0)) s, CPU idle $(( (idle - idle0) * 100 / (total - total0 + 1) )) %"
  t0=$now idle0=$idle total0=$total
}
# The S3 tests write ~2.5 GiB at their peak (a 1 GiB volume, its artifact in
# SeaweedFS, the others beside); a full disk shows up as odd S3 errors, so
# say how much room there was.
disk_report() { echo "test.sh: free disk $1: $(df -Ph . "${TMPDIR:-/tmp}" | awk 'NR>1 {print $6 " " $4}' | paste -sd, -)"; }
disk_report "before the build"
# The release binaries the images ship (static, within their size budgets, names resolve in
# an empty root; the log prints both sizes) build in the background from the
# start, at the lowest priority: they take the CPU the debug build leaves
# idle (its last crates and links run one at a time) and the tests leave
# idle (they mostly wait on their peers), so on two cores the builds and
# the tests side by side take minutes less than one after the other, and the
# foreground keeps the CPU it needs. Its own lock files (target/release,
# target/x86_64-unknown-linux-gnu) do not block the debug ones.
static_log=target/build-static.log
mkdir -p target
# In a session of its own, so that stopping it (when the tests fail) stops
# cargo and every rustc under it too.
setsid bash scripts/lowest-priority.sh bash scripts/build-static.sh > "$static_log" 2>&1 &
static_pid=$!
trap 'kill -TERM -- "-$static_pid" 2>/dev/null || true' EXIT

# One build for the binaries and the tests: `cargo test --workspace` builds
# every package's binaries (each has integration tests) with the features the
# tests resolve (lifeboat's dev-dependencies turn on tokio's test-util), so a
# separate `cargo build --bins` would compile the async stack a second time
# with other features (~6 CPU-minutes) only for the tests to rebuild it.
cargo test --workspace --locked --no-run
step "setup and the debug builds"

disk_report "before the tests"
# cargo-nextest (on the CI machine; .config/nextest.toml says why and how):
# four tests at a time across every test binary. Without it, cargo test.
# Neither runs doc tests here: there are none (`cargo test --doc` would
# spend a minute and a half finding that out); add it if you write one.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked
  step "the tests (cargo nextest)"
else
  echo "test.sh: cargo-nextest is not installed; running cargo test, one binary after another (slower)"
  cargo test --workspace --locked --tests --bins --lib
  step "the tests (cargo test)"
fi
disk_report "after the tests"
if ! wait "$static_pid"; then
  cat "$static_log"
  echo "test.sh: scripts/build-static.sh failed (its log is above)" >&2
  exit 1
fi
trap - EXIT
grep -E "^(lifeboat-|static binaries|FAIL)" "$static_log" || true
step "the rest of the static build"
# Every example on a real Kubernetes cluster, from those static binaries
# (tests/e2e/run.sh: LIFEBOAT_E2E_K8S or KUBECONFIG; skipped, and said so,
# without either).
bash tests/e2e/run.sh
step "the e2e suite"
