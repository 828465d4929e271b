#!/usr/bin/env bash
# Peak RSS of `lifeboat-sidecar backup-now` to a real S3 server (SeaweedFS
# `weed mini` on 127.0.0.1, as tests/s3.rs starts it), for README "Bounds".
# Uses the release static binaries bench/run.sh builds; prints one line per
# compression with the backup's own peak_rss_mib, wall seconds and the
# kernel's max RSS (KiB).
#   bench/s3-memory.sh                       # 1 GiB of random bytes, zstd:3 zstd:1 none
#   SIZE_MIB=4096 COMP=zstd:3 bench/s3-memory.sh
#   TUNS=glibc.malloc.arena_max=8 bench/s3-memory.sh   # try glibc tunables
#   DATA=/path/to/folder bench/s3-memory.sh  # that folder instead (e.g. bench.py's mixed
#                                            # set: random bytes are stored raw, so they
#                                            # leave zstd's workers idle)
set -euo pipefail
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release}
[ -x "$BIN/lifeboat-sidecar" ] || { echo "no $BIN/lifeboat-sidecar: run bench/run.sh --quick first, or set BIN" >&2; exit 1; }
W=$(mktemp -d /var/tmp/lifeboat-s3mem.XXXX)
P=${P:-$(( 40000 + RANDOM % 5000 ))}
mkdir -p "$W/data" "$W/vol"
echo '{"identities":[{"name":"l","credentials":[{"accessKey":"k","secretKey":"s"}],"actions":["Admin","Read","Write","List","Tagging"]}]}' > "$W/s3.json"
weed mini -dir="$W/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false -master.volumeSizeLimitMB=128 -volume.max=64 \
  -s3.port=$P -s3.config="$W/s3.json" -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 \
  -master.port=$((P+1)) -volume.port=$((P+2)) -filer.port=$((P+3)) > "$W/weed.log" 2>&1 &
WP=$!
# weed mini may not end on SIGTERM (it outlived every run before this
# was seen): it gets 5 s, then SIGKILL, before its folder goes.
stop_weed() {
  kill "$WP" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$WP" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$WP" 2>/dev/null || true
  wait "$WP" 2>/dev/null || true
  rm -rf "$W"
}
trap stop_weed EXIT
for _ in $(seq 60); do curl -s -o /dev/null "http://127.0.0.1:$P/" && break; sleep 1; done
sleep 3
echo "s3.bucket.create -name memory" | weed shell -master=127.0.0.1:$((P+1)) > /dev/null 2>&1 || true
if [ -n "${DATA:-}" ]; then
  VOL=$DATA
else
  head -c $(( ${SIZE_MIB:-1024} << 20 )) /dev/urandom > "$W/vol/blob"
  VOL=$W/vol
fi
for tun in "${TUNS:-}"; do
  for c in ${COMP:-zstd:3 zstd:1 none}; do
    out=$(env -i PATH="$PATH" HOSTNAME=nb-0 LIFEBOAT_LISTEN=off LIFEBOAT_ANNOTATIONS_FILE=/nonexistent \
      LIFEBOAT_PATHS="$VOL" LIFEBOAT_TARGETS=s3://memory LIFEBOAT_S3_ENDPOINT=http://127.0.0.1:$P \
      LIFEBOAT_S3_REGION=us-east-1 LIFEBOAT_S3_PATH_STYLE=true AWS_ACCESS_KEY_ID=k AWS_SECRET_ACCESS_KEY=s \
      LIFEBOAT_COMPRESSION="$c" LIFEBOAT_RETENTION=last=1 ${tun:+GLIBC_TUNABLES=$tun} \
      /usr/bin/time -f "%e s %M KiB" "$BIN/lifeboat-sidecar" backup-now 2>&1 \
      | grep -oE "peak_rss_mib=[0-9]+|^[0-9.]+ s [0-9]+ KiB" | tr '\n' ' ')
    echo "data=${DATA:-${SIZE_MIB:-1024} MiB random} tunables=[${tun}] compression=$c: $out"
  done
done
