#!/usr/bin/env bash
# Builds the release binaries the images ship: static glibc (crt-static on
# the gnu target; no musl target here), then checks what the images rely
# on: no dynamic loader needed, each within its size budget, and host names resolve in
# an empty root that holds only the binary, /etc/hosts and /etc/resolv.conf,
# as in a scratch container. Prints the sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$target" \
  -p lifeboat-sidecar -p lifeboat-restore
out="target/$target/release"
# Budgets in MB (10^6 bytes), README "Binary size": a ratchet, so the
# binaries do not grow back (11.3 and 8.1 MB when they were set).
declare -A budget=([lifeboat-sidecar]=12 [lifeboat-restore]=10)
for bin in lifeboat-sidecar lifeboat-restore; do
  f="$out/$bin"
  limit=$((budget[$bin] * 1000 * 1000))
  if ldd "$f" 2>&1 | grep -q "=>"; then
    echo "FAIL: $bin links shared libraries:"; ldd "$f"; exit 1
  fi
  size=$(stat -c %s "$f")
  printf '%s: %s bytes (%s MiB), ldd: %s\n' "$bin" "$size" "$(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1048576 }')" "$(ldd "$f" 2>&1 | tr -d '\t')"
  if [ "$size" -gt "$limit" ]; then echo "FAIL: $bin is over its budget of ${budget[$bin]} MB (README, Binary size)"; exit 1; fi
done
# Name resolution without NSS modules (run as root: mknod, chroot): an S3 endpoint named "localhost" on a
# closed port must fail with "connection refused", not a DNS error.
chroot_bin=$(command -v chroot || echo /usr/sbin/chroot)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/etc" "$root/tmp" "$root/dev"
# A container runtime always provides /dev/random and /dev/urandom (the static binary's
# random source: getrandom cannot find glibc's wrapper without a loader).
mknod -m 444 "$root/dev/urandom" c 1 9
mknod -m 444 "$root/dev/random" c 1 8
cp "$out/lifeboat-sidecar" "$root/"
echo "127.0.0.1 localhost" > "$root/etc/hosts"
echo "nameserver 127.0.0.1" > "$root/etc/resolv.conf"
# Path style, so the name asked is localhost itself (virtual-host style asks
# for probe-bucket.localhost, which only a DNS server could answer).
log=$(env -i HOSTNAME=probe LIFEBOAT_PATHS=/tmp LIFEBOAT_TARGETS=s3://probe-bucket LIFEBOAT_S3_PATH_STYLE=true \
  LIFEBOAT_S3_ENDPOINT=http://localhost:9 AWS_ACCESS_KEY_ID=a AWS_SECRET_ACCESS_KEY=b \
  LIFEBOAT_S3_REGION=us-east-1 timeout 120 "$chroot_bin" "$root" /lifeboat-sidecar list 2>&1 || true)
if echo "$log" | grep -qi "dns error\|name resolution\|cannot resolve"; then
  echo "FAIL: the static binary cannot resolve localhost in an empty root:"; echo "$log"; exit 1
fi
if ! echo "$log" | grep -qi "refused"; then
  echo "FAIL: expected a refused connection to localhost:9, got:"; echo "$log"; exit 1
fi
echo "static binaries: ok (names resolve without libc NSS in an empty root)"
