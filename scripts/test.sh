#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs, builds
# both binaries, runs every test. Run as root: the tests check that owners
# survive a restore (CI runs as root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --workspace --bins --locked
cargo test --workspace --locked
# The release binaries the images ship: static, < 20 MB, names resolve in
# an empty root (prints both sizes).
bash scripts/build-static.sh
