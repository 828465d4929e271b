#!/usr/bin/env bash
# The main job on the local disk, no cloud account: builds lifeboat, makes a
# sample Jupyter-like volume, backs it up to a local "backup PVC" folder,
# wipes the volume, restores it with the init container's binary, and shows
# that the result is identical (names, contents, modes, owners, mtimes, links).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --bins --locked
bin="$PWD/target/release"

work="$PWD/demo-work"
rm -rf "$work"
vol="$work/volume/home/jovyan"
mkdir -p "$vol/projects/2026/q4" "$vol/data" "$vol/empty folder"

# A sample volume: notebooks in nested folders, data, a link, odd names.
for i in 1 2 3; do
  cat > "$vol/projects/2026/q4/analysis-$i.ipynb" <<NB
{"cells": [{"cell_type": "code", "execution_count": $i, "id": "c$i", "metadata": {}, "outputs": [], "source": "print($i)"}],
 "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
NB
done
printf '# Notes\nBacked up by lifeboat.\n' > "$vol/projects/README.md"
head -c 20000000 /dev/urandom > "$vol/data/model.bin"
seq 1 200000 > "$vol/data/numbers.csv"
ln -s projects/README.md "$vol/readme-link"
printf 'latin-1 name\n' > "$vol/$(printf 'caf\351.txt')"
chmod 0600 "$vol/data/model.bin"
chown -R 1000:100 "$vol" 2>/dev/null || true

export LIFEBOAT_PATHS="$vol"
export LIFEBOAT_TARGETS="file://$work/backup"
export LIFEBOAT_NAME=demo-0
export LIFEBOAT_ANNOTATIONS_FILE=/nonexistent

echo "== 1. back up $vol"
"$bin/lifeboat-sidecar" backup-now
echo "== 2. list and verify the backups"
"$bin/lifeboat-sidecar" list
"$bin/lifeboat-sidecar" verify

meta() { (cd "$1" && find . -path ./.lifeboat-restored -prune -o -printf '%p %y %m %U %G %Ts %s %l\n' | LC_ALL=C sort); }
sums() { (cd "$1" && find . -type f ! -name .lifeboat-restored -print0 | LC_ALL=C sort -z | xargs -0 sha256sum); }
meta "$vol" > "$work/before.meta"
sums "$vol" > "$work/before.sums"

echo "== 3. wipe the volume (the cluster died)"
rm -rf "$vol"

echo "== 4. restore with the init container's binary"
"$bin/lifeboat-restore"

echo "== 5. compare"
meta "$vol" > "$work/after.meta"
sums "$vol" > "$work/after.sums"
if diff -u "$work/before.meta" "$work/after.meta" && diff -u "$work/before.sums" "$work/after.sums"; then
  echo "IDENTICAL: $(wc -l < "$work/after.meta") entries and $(wc -l < "$work/after.sums") files match in name, content, type, mode, owner, mtime and link target."
else
  echo "DIFFERENT: the restore does not match the original (see above)" >&2
  exit 1
fi
art=$(ls "$work"/backup/default/demo-0/*.tar.zst | head -1)
echo
echo "By hand, with nothing but standard tools:"
echo "  sha256sum $art   # equals \"sha256\" in ${art%.tar.zst}.manifest.json"
echo "  zstd -dc $art | tar -xpf - -C /"
