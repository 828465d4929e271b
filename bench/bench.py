#!/usr/bin/env python3
"""lifeboat against what users do today: `tar -cf - | zstd -T0 -3` and
`tar -czf` for backup, `zstd -dc | tar -xf -` for restore.

Generates a deterministic data set (notebooks as JSON text ~40%,
incompressible model blobs ~40%, a deep tree of 4-16 KB files ~20%, a few
symlinks), then times each command alternately, several times, and prints
a Markdown table: median wall time, ratio to each peer, MB/s, peak RSS,
artifact size. A second data set of 200,000 files of 1 KB measures per-file
overhead. With --shapes it measures instead the shapes of data whose
bookkeeping could grow with the data (1,000,000 files in one folder,
200,000 files with two hard links each): peak RSS of backup and restore.
Run it with bench/run.sh (builds the release binaries first).
"""

import argparse
import gzip
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time

MiB = 1024 * 1024


def parse_size(text):
    units = {"K": 1024, "M": MiB, "G": 1024 * MiB}
    t = text.strip().upper().rstrip("B").rstrip("I")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


# --- data sets ---------------------------------------------------------------

WORDS = (
    "import numpy pandas model train loss epoch accuracy plot figure data frame "
    "value index column mean std learning rate batch tensor layer dense relu "
    "softmax optimizer adam gradient validation test split print return def "
    "class self for in range len the a of and to is that with as on by"
).split()


def notebook(rng, target):
    """One .ipynb-like JSON document of about `target` bytes."""
    cells = []
    size = 0
    n = 0
    while size < target:
        lines = [" ".join(rng.choices(WORDS, k=rng.randint(4, 14))) + "\n" for _ in range(rng.randint(3, 30))]
        out = [f"{rng.random():.6f} {rng.randint(0, 10**6)}\n" for _ in range(rng.randint(0, 20))]
        cell = {
            "cell_type": "code",
            "execution_count": n,
            "metadata": {},
            "source": lines,
            "outputs": [{"output_type": "stream", "name": "stdout", "text": out}],
        }
        n += 1
        size += sum(map(len, lines)) + sum(map(len, out)) + 120
        cells.append(cell)
    doc = {"cells": cells, "metadata": {"kernelspec": {"name": "python3"}}, "nbformat": 4, "nbformat_minor": 5}
    return json.dumps(doc, indent=1).encode()


def write_random(path, size, rng):
    """A file of `size` random bytes (packed model weights), in 4 MiB writes."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 * MiB)
            f.write(rng.randbytes(n))
            left -= n


def write_mixed(root, total, seed):
    rng = random.Random(seed)
    made = 0
    # ~40% notebooks, 64 KiB .. 2 MiB each
    nb_dir = os.path.join(root, "notebooks")
    os.makedirs(nb_dir)
    budget = total * 40 // 100
    i = 0
    while budget > 0:
        size = min(budget, rng.randint(64 * 1024, 2 * MiB))
        data = notebook(rng, size)
        with open(os.path.join(nb_dir, f"analysis-{i:04d}.ipynb"), "wb") as f:
            f.write(data)
        budget -= len(data)
        made += len(data)
        i += 1
    # ~40% incompressible blobs, 8 .. 64 MiB each
    blob_dir = os.path.join(root, "models")
    os.makedirs(blob_dir)
    budget = total * 40 // 100
    i = 0
    while budget > 0:
        size = min(budget, rng.randint(8 * MiB, 64 * MiB))
        write_random(os.path.join(blob_dir, f"weights-{i:03d}.bin"), size, rng)
        budget -= size
        made += size
        i += 1
    # ~20% a deep tree of 4 .. 16 KiB files, half text, half random
    budget = total - made
    i = 0
    while budget > 0:
        depth = rng.randint(3, 7)
        d = os.path.join(root, "tree", *[f"d{rng.randint(0, 7)}" for _ in range(depth)])
        os.makedirs(d, exist_ok=True)
        size = min(budget, rng.randint(4 * 1024, 16 * 1024))
        if i % 2:
            data = rng.randbytes(size)
        else:
            data = (" ".join(rng.choices(WORDS, k=size // 5)) + "\n").encode()[:size]
        with open(os.path.join(d, f"f{i:06d}.txt"), "wb") as f:
            f.write(data)
        budget -= len(data)
        i += 1
    # a few symlinks
    os.symlink("notebooks/analysis-0000.ipynb", os.path.join(root, "latest.ipynb"))
    os.symlink("../models", os.path.join(root, "notebooks", "models"))
    os.symlink("does-not-exist", os.path.join(root, "dangling"))


def write_incompressible(root, total, seed):
    """What will not shrink: packed model weights and archives (random
    bytes, 8 .. 64 MiB, ~70%), gzip-compressed logs (~20%, real deflate
    streams of text), and small random files (4 .. 16 KiB, ~10%)."""
    rng = random.Random(seed)
    made = 0
    blob_dir = os.path.join(root, "models")
    os.makedirs(blob_dir)
    budget = total * 70 // 100
    i = 0
    while budget > 0:
        size = min(budget, rng.randint(8 * MiB, 64 * MiB))
        write_random(os.path.join(blob_dir, f"weights-{i:03d}.safetensors"), size, rng)
        budget -= size
        made += size
        i += 1
    logs = os.path.join(root, "logs")
    os.makedirs(logs)
    budget = total * 20 // 100
    i = 0
    while budget > 0:
        text = (" ".join(rng.choices(WORDS, k=rng.randint(400_000, 1_600_000))) + "\n").encode()
        # Random words compress ~3:1; the .gz is what lands on the volume.
        packed = gzip.compress(text + rng.randbytes(len(text) // 3), compresslevel=6)[:budget]
        with open(os.path.join(logs, f"app-{i:03d}.log.gz"), "wb") as f:
            f.write(packed)
        budget -= len(packed)
        made += len(packed)
        i += 1
    budget = total - made
    i = 0
    while budget > 0:
        d = os.path.join(root, "thumbs", f"d{i // 500:03d}")
        os.makedirs(d, exist_ok=True)
        size = min(budget, rng.randint(4 * 1024, 16 * 1024))
        with open(os.path.join(d, f"t{i:06d}.jpg"), "wb") as f:
            f.write(rng.randbytes(size))
        budget -= size
        i += 1


def write_text(root, total, seed):
    """What compresses well: notebooks (~60%), JSON records (~25%) and a
    tree of 4 .. 16 KiB text files (~15%)."""
    rng = random.Random(seed)
    made = 0
    nb_dir = os.path.join(root, "notebooks")
    os.makedirs(nb_dir)
    budget = total * 60 // 100
    i = 0
    while budget > 0:
        data = notebook(rng, min(budget, rng.randint(64 * 1024, 2 * MiB)))
        with open(os.path.join(nb_dir, f"analysis-{i:04d}.ipynb"), "wb") as f:
            f.write(data)
        budget -= len(data)
        made += len(data)
        i += 1
    js = os.path.join(root, "records")
    os.makedirs(js)
    budget = total * 25 // 100
    i = 0
    while budget > 0:
        rows = [
            {"id": rng.randint(0, 1 << 40), "name": " ".join(rng.choices(WORDS, k=3)),
             "score": rng.random(), "tags": rng.choices(WORDS, k=rng.randint(0, 5))}
            for _ in range(rng.randint(2_000, 20_000))
        ]
        data = "\n".join(json.dumps(r) for r in rows).encode()[:budget]
        with open(os.path.join(js, f"part-{i:04d}.jsonl"), "wb") as f:
            f.write(data)
        budget -= len(data)
        made += len(data)
        i += 1
    budget = total - made
    i = 0
    while budget > 0:
        d = os.path.join(root, "tree", *[f"d{rng.randint(0, 7)}" for _ in range(rng.randint(2, 5))])
        os.makedirs(d, exist_ok=True)
        size = min(budget, rng.randint(4 * 1024, 16 * 1024))
        data = (" ".join(rng.choices(WORDS, k=size // 5)) + "\n").encode()[:size]
        with open(os.path.join(d, f"f{i:06d}.txt"), "wb") as f:
            f.write(data)
        budget -= len(data)
        i += 1


DATA_SETS = {"mixed": write_mixed, "incompressible": write_incompressible, "text": write_text}


def write_tiny(root, count, seed):
    rng = random.Random(seed)
    for i in range(count):
        d = os.path.join(root, f"d{i // 1000:03d}")
        if i % 1000 == 0:
            os.makedirs(d)
        with open(os.path.join(d, f"f{i:06d}"), "wb") as f:
            f.write((" ".join(rng.choices(WORDS, k=200)) + "\n").encode()[:1024])


def tree_bytes(root):
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


# --- measuring ---------------------------------------------------------------


def measure(cmd, env=None):
    """Runs `cmd` (a shell line) under /usr/bin/time -v; returns wall
    seconds, the peak RSS in MiB of its largest process, and the CPU
    seconds (user + system) of all its processes."""
    full = ["/usr/bin/time", "-v", "bash", "-c", cmd]
    t0 = time.monotonic()
    p = subprocess.run(full, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        sys.exit(f"bench: command failed ({p.returncode}): {cmd}\n{p.stdout}\n{p.stderr}")
    rss = cpu = 0
    for line in p.stderr.splitlines():
        if "Maximum resident set size" in line:
            rss = int(line.split(":")[1]) / 1024
        elif "User time (seconds)" in line or "System time (seconds)" in line:
            cpu += float(line.split(":")[1])
    return wall, rss, cpu


class Case:
    def __init__(self, name, run, prepare=None, size=None):
        self.name = name
        self.run = run  # () -> shell line
        self.prepare = prepare  # untimed, before each run
        self.size = size  # () -> artifact bytes
        self.walls = []
        self.rss = []
        self.cpu = []
        self.artifact = None


def drop_page_cache():
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as e:
        sys.exit(f"bench: --cold drops the page cache through /proc/sys/vm/drop_caches, which needs root: {e}")


def run_cases(cases, runs, cold=False):
    for r in range(runs):
        for c in cases:
            if c.prepare:
                c.prepare()
            # Every command starts with nothing dirty in the page cache: the
            # previous one's writeback must not be billed to the next.
            os.sync()
            if cold:
                drop_page_cache()
            wall, rss, cpu = measure(c.run())
            c.walls.append(wall)
            c.rss.append(rss)
            c.cpu.append(cpu)
            if c.size:
                c.artifact = c.size()
            print(f"  run {r + 1}/{runs} {c.name}: {wall:.2f} s, {cpu:.2f} CPU s, {rss:.0f} MiB", file=sys.stderr)


def table(title, cases, data_bytes, ours):
    mine = statistics.median(ours.walls)
    peers = [c for c in cases if c is not ours]
    def cell(text):
        return text.replace("|", "\\|")

    my_cpu = statistics.median(ours.cpu)
    head = (
        "| command | median s | "
        + " | ".join(f"lifeboat ÷ {cell(p.name)}" for p in peers)
        + " | CPU s | "
        + " | ".join(f"CPU ÷ {cell(p.name)}" for p in peers)
        + " | MB/s | peak RSS MiB | artifact MB |"
    )
    columns = 6 + 2 * len(peers)
    lines = [f"**{title}**", "", head, "|" + "---|" * columns]
    for c in cases:
        med = statistics.median(c.walls)
        cpu = statistics.median(c.cpu)
        ratios = " | ".join(f"{mine / statistics.median(p.walls):.2f}" if c is ours else "" for p in peers)
        cpu_ratios = " | ".join(
            f"{my_cpu / max(statistics.median(p.cpu), 1e-9):.2f}" if c is ours else "" for p in peers
        )
        art = f"{c.artifact / 1e6:.1f}" if c.artifact else ""
        lines.append(
            f"| {cell(c.name)} | {med:.2f} | {ratios} | {cpu:.2f} | {cpu_ratios} | {data_bytes / 1e6 / med:.0f} | {max(c.rss):.0f} | {art} |"
        )
    return "\n".join(lines)


def warm(path, cold):
    """Reads an artifact once before a warm restore, so every restore starts
    with its artifact in the page cache: lifeboat writes its artifacts past
    the cache (O_DIRECT) and `zstd -o` through it, which would otherwise
    leave lifeboat reading from disk and its peer from memory. With --cold
    both read from disk."""
    if cold:
        return
    with open(path, "rb") as f:
        while f.read(8 * MiB):
            pass


class Fresh:
    """A new empty folder under `parent` for every run. Deleting the last
    run's tree first would bill the next run for it: ext4 without a journal
    skips inodes deleted in the last minutes when it allocates new ones
    (`recently_deleted` in the kernel), which made restores slower run
    after run. Real restores go to an empty volume."""

    def __init__(self, parent, name):
        self.parent, self.name, self.n, self.path = parent, name, 0, None

    def prepare(self):
        self.n += 1
        self.path = os.path.join(self.parent, f"{self.name}-{self.n}")
        os.makedirs(self.path)


def newest_artifact(backup):
    found = []
    for dirpath, _, files in os.walk(backup):
        for f in files:
            if ".tar." in f and not f.startswith("."):
                found.append(os.path.join(dirpath, f))
    return max(found, key=os.path.getmtime)


def bench_dataset(args, label, data, work, ours_bin, with_gzip, with_restore, baseline=None):
    data_bytes = tree_bytes(data)
    parent, base = os.path.split(data)
    backup = os.path.join(work, "backup")
    out_zst = os.path.join(work, "peer.tar.zst")
    out_gz = os.path.join(work, "peer.tar.gz")
    env_line = (
        f"LIFEBOAT_PATHS={data} LIFEBOAT_TARGETS=file://{backup} LIFEBOAT_NAME=bench "
        "LIFEBOAT_LISTEN=off LIFEBOAT_LOG=warn LIFEBOAT_ANNOTATIONS_FILE=/nonexistent "
        # every run is kept: retention must not delete while we measure
        "LIFEBOAT_RETENTION=last=1000"
    )

    def clean_backup():
        shutil.rmtree(backup, ignore_errors=True)
        os.makedirs(backup)

    ours = Case(
        "lifeboat backup",
        lambda: f"{env_line} {ours_bin}/lifeboat-sidecar backup-now",
        prepare=clean_backup,
        size=lambda: os.path.getsize(newest_artifact(backup)),
    )
    tz = Case(
        "tar | zstd -T0 -3",
        lambda: f"tar -cf - -C {parent} {base} | zstd -T0 -3 -q -f -o {out_zst}",
        size=lambda: os.path.getsize(out_zst),
    )
    cases = [ours, tz]
    if baseline:
        # Another build of lifeboat (e.g. main before a change), in the same
        # alternation, so a change is judged against the same disk weather.
        cases.append(
            Case(
                "lifeboat backup (baseline)",
                lambda: f"{env_line} {baseline}/lifeboat-sidecar backup-now",
                prepare=clean_backup,
                size=lambda: os.path.getsize(newest_artifact(backup)),
            )
        )
    if with_gzip:
        cases.append(
            Case(
                "tar -czf",
                lambda: f"tar -czf {out_gz} -C {parent} {base}",
                size=lambda: os.path.getsize(out_gz),
            )
        )
    print(f"bench: {label}: backup, {args.runs} runs each, alternating", file=sys.stderr)
    run_cases(cases, args.runs, args.cold)
    out = [table(f"Backup: {label}, {data_bytes / 1e6:.0f} MB", cases, data_bytes, ours)]

    if with_restore:
        restored = os.path.join(work, "restored")

        def restore_case(name, key, command, artifact):
            """A restore into a new folder every run (`Fresh`), `command`
            given that folder, its artifact read once before (`warm`)."""
            d = Fresh(restored, key)
            return Case(
                name,
                lambda: command(d.path),
                prepare=lambda: (d.prepare(), warm(artifact(), args.cold)),
            )

        ours_artifact = lambda: newest_artifact(backup)
        r_ours = restore_case(
            "lifeboat restore (verified)",
            "ours",
            lambda p: f"{env_line} {ours_bin}/lifeboat-sidecar restore --to {p}/x",
            ours_artifact,
        )
        restores = [
            r_ours,
            restore_case(
                "zstd -dc | tar -xf -",
                "peer",
                lambda p: f"zstd -dc {out_zst} | tar -xf - -C {p}",
                lambda: out_zst,
            ),
            # lifeboat's restore ends with its files on disk (syncfs) before
            # it says done; tar leaves them dirty in the page cache. The same
            # pipeline followed by `sync -f` is the like-for-like peer.
            restore_case(
                "zstd -dc | tar -xf - && sync -f",
                "peer-synced",
                lambda p: f"zstd -dc {out_zst} | tar -xf - -C {p} && sync -f {p}",
                lambda: out_zst,
            ),
        ]
        if baseline:
            restores.append(
                restore_case(
                    "lifeboat restore (baseline)",
                    "baseline",
                    lambda p: f"{env_line} {baseline}/lifeboat-sidecar restore --to {p}/x",
                    ours_artifact,
                )
            )
        print(f"bench: {label}: restore, {args.runs} runs each, alternating", file=sys.stderr)
        run_cases(restores, args.runs, args.cold)
        out.append(table(f"Restore: {label}", restores, data_bytes, r_ours))
        shutil.rmtree(restored, ignore_errors=True)
    for f in (out_zst, out_gz):
        if os.path.exists(f):
            os.remove(f)
    shutil.rmtree(backup, ignore_errors=True)
    return "\n\n".join(out)


# --- incremental chains ---------------------------------------------------------


def files_under(root):
    out = []
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                out.append(p)
    return out


def change_some(root, fraction, seed):
    """Rewrites `fraction` of the files (each keeps its size, its bytes
    change), and deletes and renames three others. Returns (files changed,
    bytes of those files).

    The sample is spread over file sizes: one file at random out of each
    run of 1/fraction files in size order. A plain random sample of 1 % of
    a mixed volume's files holds anywhere from 0.3 % to 8 % of its bytes,
    by whether it happens to hit one of the few 64 MiB blobs; then the
    figure measures the seed's luck, not the link."""
    rng = random.Random(seed)
    files = files_under(root)
    by_size = sorted(files, key=lambda p: (os.path.getsize(p), p))
    step = max(1, round(1 / fraction))
    picked = [rng.choice(by_size[i:i + step]) for i in range(0, len(by_size) - step + 1, step)] or [rng.choice(files)]
    changed = 0
    for p in picked:
        size = os.path.getsize(p)
        with open(p, "r+b") as f:
            at = rng.randint(0, max(0, size - 4096))
            f.seek(at)
            f.write(rng.randbytes(min(4096, size)))
        changed += size
    chosen = set(picked)
    rest = [p for p in files if p not in chosen]
    for p in rng.sample(rest, 6)[:3]:
        os.remove(p)
    for p in rng.sample([p for p in rest if os.path.exists(p)], 3):
        os.rename(p, p + ".renamed")
    return len(picked), changed


def stored_bytes(history, ids):
    """Artifact plus state bytes of the given ids in a history folder."""
    total = 0
    for name in os.listdir(history):
        if any(name.startswith(i) for i in ids) and (".tar" in name or name.endswith(".state.zst")):
            total += os.path.getsize(os.path.join(history, name))
    return total


def bench_incremental(args, work, ours_bin):
    """Full backups against incremental links (LIFEBOAT_FULL_EVERY), side
    by side: a link after 1% of a mixed volume changed, a link of many
    unchanged small files, and the restore of a full + 23 links against
    one full artifact of the same final tree."""
    size = parse_size(args.size)
    out = []

    def env_line(backup, chain):
        every = "1000" if chain else "off"
        return (
            f"LIFEBOAT_TARGETS=file://{backup} LIFEBOAT_NAME=bench LIFEBOAT_LISTEN=off "
            "LIFEBOAT_LOG=warn LIFEBOAT_ANNOTATIONS_FILE=/nonexistent LIFEBOAT_RETENTION=last=1000 "
            f"LIFEBOAT_FULL_EVERY={every}"
        )

    def history(backup):
        return os.path.join(backup, "default", "bench")

    def ids(backup):
        return sorted(n[: -len(".manifest.json")] for n in os.listdir(history(backup)) if n.endswith(".manifest.json"))

    def one_link_against_full(label, data, change):
        """The chain's first link of the data as it is, then `change`,
        then, timed and alternating: a full backup of the changed data
        and the next link (each run from a hard-linked copy of the chain
        with only its first link: the store never rewrites a file)."""
        base = os.path.join(work, "chain-base")
        shutil.rmtree(base, ignore_errors=True)
        os.makedirs(base)
        subprocess.run(f"LIFEBOAT_PATHS={data} {env_line(base, True)} {ours_bin}/lifeboat-sidecar backup-now",
                       shell=True, check=True, capture_output=True)
        what = change()
        full_dir, link_dir = os.path.join(work, "full"), os.path.join(work, "link")

        def fresh_full():
            shutil.rmtree(full_dir, ignore_errors=True)
            os.makedirs(full_dir)

        def fresh_link():
            shutil.rmtree(link_dir, ignore_errors=True)
            subprocess.run(["cp", "-al", base, link_dir], check=True)

        first = ids(base)
        full = Case("full backup", lambda: f"LIFEBOAT_PATHS={data} {env_line(full_dir, False)} {ours_bin}/lifeboat-sidecar backup-now",
                    prepare=fresh_full, size=lambda: stored_bytes(history(full_dir), ids(full_dir)))
        link = Case("incremental link", lambda: f"LIFEBOAT_PATHS={data} {env_line(link_dir, True)} {ours_bin}/lifeboat-sidecar backup-now",
                    prepare=fresh_link, size=lambda: stored_bytes(history(link_dir), [i for i in ids(link_dir) if i not in first]))
        print(f"bench: incremental, {label}: {args.runs} runs each, alternating", file=sys.stderr)
        run_cases([full, link], args.runs, args.cold)
        wall = statistics.median(link.walls) / statistics.median(full.walls)
        lines = [f"**Incremental: {label}**", "", what, "",
                 "| backup | median s | peak RSS MiB | stored MB (artifact + state) |", "|---|---|---|---|"]
        for c in (full, link):
            lines.append(f"| {c.name} | {statistics.median(c.walls):.2f} | {max(c.rss):.0f} | {c.artifact / 1e6:.2f} |")
        lines += ["", f"link ÷ full: {wall:.3f}× the wall time, {link.artifact / full.artifact * 100:.2f} % of the stored bytes"]
        for d in (base, full_dir, link_dir):
            shutil.rmtree(d, ignore_errors=True)
        return "\n".join(lines)

    data = os.path.join(work, "inc-mixed")
    os.makedirs(data)
    write_mixed(data, size, seed=1)

    def one_percent():
        n, b = change_some(data, 0.01, seed=7)
        return (f"{tree_bytes(data) / 1e6:.0f} MB mixed; changed: {n} files (1 %, spread over file sizes) holding "
                f"{b / 1e6:.1f} MB, plus 3 deleted and 3 renamed")

    out.append(one_link_against_full("1 % of a mixed volume changed", data, one_percent))

    # A full + 23 links, against one full artifact of the same final tree.
    chain_dir, full_dir = os.path.join(work, "chain23"), os.path.join(work, "full23")
    for d in (chain_dir, full_dir):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    back = lambda d, chain: subprocess.run(
        f"LIFEBOAT_PATHS={data} {env_line(d, chain)} {ours_bin}/lifeboat-sidecar backup-now",
        shell=True, check=True, capture_output=True)
    back(chain_dir, True)
    for k in range(23):
        change_some(data, 0.01, seed=100 + k)
        back(chain_dir, True)
    back(full_dir, False)
    restored = os.path.join(work, "restored")

    d_chain, d_full = Fresh(restored, "chain"), Fresh(restored, "full")
    r_chain = Case("restore of a full + 23 links", lambda: f"LIFEBOAT_PATHS={data} {env_line(chain_dir, True)} {ours_bin}/lifeboat-sidecar restore --to {d_chain.path}/x", prepare=d_chain.prepare)
    r_full = Case("restore of one full artifact", lambda: f"LIFEBOAT_PATHS={data} {env_line(full_dir, False)} {ours_bin}/lifeboat-sidecar restore --to {d_full.path}/x", prepare=d_full.prepare)
    print("bench: incremental, restore of a chain: runs alternating", file=sys.stderr)
    run_cases([r_chain, r_full], args.runs, args.cold)
    for d in (d_chain, d_full):
        got = os.path.join(d.path, "x", data.lstrip("/"))
        check_restored(data, got)
        # And the bytes: GNU diff, which does not follow links.
        subprocess.run(["diff", "-r", "-q", "--no-dereference", "-x", ".lifeboat-restored", data, got], check=True)
    chain_bytes = stored_bytes(history(chain_dir), ids(chain_dir))
    full_bytes = stored_bytes(history(full_dir), ids(full_dir))
    lines = ["**Incremental: restore of a chain**", "",
             f"24 backups, 1 % of the files changed before each; the chain stores {chain_bytes / 1e6:.0f} MB, "
             f"one full artifact of the final tree {full_bytes / 1e6:.0f} MB (both restored trees checked equal to the volume)", "",
             "| restore | median s | peak RSS MiB |", "|---|---|---|"]
    for c in (r_chain, r_full):
        lines.append(f"| {c.name} | {statistics.median(c.walls):.2f} | {max(c.rss):.0f} |")
    lines += ["", f"chain ÷ full: {statistics.median(r_chain.walls) / statistics.median(r_full.walls):.2f}× the wall time"]
    out.append("\n".join(lines))
    for d in (chain_dir, full_dir, restored, data):
        shutil.rmtree(d, ignore_errors=True)

    if args.tiny:
        tiny = os.path.join(work, "inc-tiny")
        os.makedirs(tiny)
        write_tiny(tiny, args.tiny, seed=2)
        out.append(one_link_against_full(f"{args.tiny} small files, none changed", tiny,
                                         lambda: f"{args.tiny} files of 1 KB; nothing changed"))
        shutil.rmtree(tiny, ignore_errors=True)
    return "\n\n".join(out)


# --- shapes: memory with many names -------------------------------------------


def write_one_folder(root, count):
    """`count` files of a few bytes in one folder: img-0000000.dat, ...
    Names and contents are fixed, so the data set is the same every time."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    d = os.path.join(root, "one-folder")
    os.makedirs(d)
    for i in range(count):
        fd = os.open(os.path.join(d, f"img-{i:07d}.dat"), flags, 0o644)
        os.write(fd, b"%07d\n" % i)
        os.close(fd)


def write_hard_links(root, count):
    """`count` files of 100 bytes under a/, each with a second name under
    b/ (1,000 per folder). The walk meets every first name before any second
    one: all `count` inodes wait for their other name at once."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for i in range(count):
        sub = f"d{i // 1000:03d}"
        a = os.path.join(root, "a", sub)
        b = os.path.join(root, "b", sub)
        if i % 1000 == 0:
            os.makedirs(a)
            os.makedirs(b)
        first = os.path.join(a, f"f{i:06d}")
        fd = os.open(first, flags, 0o644)
        os.write(fd, (b"%06d " % i) * 14 + b"\n\n")
        os.close(fd)
        os.link(first, os.path.join(b, f"f{i:06d}"))


def count_names(root):
    n = 0
    for _, dirs, files in os.walk(root):
        n += len(dirs) + len(files)
    return n + 1


def bench_shapes(args, work, ours_bin, baseline):
    """Backup and restore of each shape under /usr/bin/time: peak RSS and
    wall time, medians of --runs runs, for this build (and --baseline)."""
    shapes = [
        (f"{args.shape_files:,} files in one folder", "one-folder", write_one_folder, args.shape_files),
        (f"{args.shape_links:,} inodes × 2 hard links", "hard-links", write_hard_links, args.shape_links),
    ]
    builds = [("lifeboat", ours_bin)] + ([("baseline", baseline)] if baseline else [])
    rows = []
    for label, name, write, count in shapes:
        if not count:
            continue
        data = os.path.join(work, name)
        os.makedirs(data)
        t = time.monotonic()
        write(data, count)
        files = count_names(data)
        print(f"bench: {label}: generated {files:,} names in {time.monotonic() - t:.0f} s", file=sys.stderr)
        backup = os.path.join(work, "backup")
        restored = os.path.join(work, "restored")
        for build, bin_dir in builds:
            env_line = (
                f"LIFEBOAT_PATHS={data} LIFEBOAT_TARGETS=file://{backup} LIFEBOAT_NAME=shape "
                "LIFEBOAT_LISTEN=off LIFEBOAT_LOG=warn LIFEBOAT_ANNOTATIONS_FILE=/nonexistent"
            )
            b_wall, b_rss, r_wall, r_rss = [], [], [], []
            for r in range(args.runs):
                shutil.rmtree(backup, ignore_errors=True)
                os.makedirs(backup)
                os.sync()
                wall, rss, _ = measure(f"{env_line} {bin_dir}/lifeboat-sidecar backup-now")
                b_wall.append(wall)
                b_rss.append(rss)
                shutil.rmtree(restored, ignore_errors=True)
                os.makedirs(restored)
                os.sync()
                wall2, rss2, _ = measure(f"{env_line} {bin_dir}/lifeboat-sidecar restore --to {restored}/x")
                r_wall.append(wall2)
                r_rss.append(rss2)
                print(
                    f"  run {r + 1}/{args.runs} {build} {name}: backup {wall:.1f} s {rss:.0f} MiB, "
                    f"restore {wall2:.1f} s {rss2:.0f} MiB",
                    file=sys.stderr,
                )
                if r == 0:
                    check_restored(data, os.path.join(restored, "x", data.lstrip("/")))
            shutil.rmtree(restored, ignore_errors=True)
            rows.append(
                f"| {label} | {build} | {files:,} | {max(b_rss):.0f} | {max(r_rss):.0f} "
                f"| {statistics.median(b_wall):.1f} | {statistics.median(r_wall):.1f} |"
            )
        shutil.rmtree(backup, ignore_errors=True)
        shutil.rmtree(data)
    head = [
        "**Shapes: peak RSS of backup-now and restore --to** "
        f"(largest of {args.runs} run(s); wall: median)",
        "",
        "| shape | build | names | backup peak RSS MiB | restore peak RSS MiB | backup wall s | restore wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    return "\n".join(head + rows)


def check_restored(data, restored):
    """The restore holds the same names, and hard links share an inode as
    in the original (a cheap check; tests/memory_shapes.rs compares all)."""
    def walk(root):
        seen, groups = set(), {}
        for dirpath, dirs, files in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            # The restore's own marker (.lifeboat-restored) is not data.
            files = [f for f in files if not f.startswith(".lifeboat-")]
            for f in files:
                st = os.lstat(os.path.join(dirpath, f))
                seen.add(os.path.join(rel, f))
                if st.st_nlink > 1:
                    groups.setdefault(st.st_ino, []).append(os.path.join(rel, f))
            seen.update(os.path.join(rel, d) for d in dirs)
        return seen, sorted(sorted(g) for g in groups.values())

    if walk(data) != walk(restored):
        sys.exit(f"bench: the restore of {data} in {restored} differs from it")


def idle_rss(ours_bin, work):
    """RSS of a sidecar waiting for its schedule, after it settled."""
    data = os.path.join(work, "idle-data")
    os.makedirs(data, exist_ok=True)
    env = dict(
        PATH=os.environ["PATH"],
        LIFEBOAT_PATHS=data,
        LIFEBOAT_TARGETS=f"file://{work}/idle-backup",
        LIFEBOAT_NAME="idle",
        LIFEBOAT_LISTEN="127.0.0.1:0",
        LIFEBOAT_LOG="warn",
        LIFEBOAT_ANNOTATIONS_FILE="/nonexistent",
    )
    os.makedirs(f"{work}/idle-backup", exist_ok=True)
    p = subprocess.Popen([f"{ours_bin}/lifeboat-sidecar", "run"], env=env)
    time.sleep(3)
    rss = 0
    with open(f"/proc/{p.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    p.terminate()
    p.wait()
    return rss


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    zstd = subprocess.run(["zstd", "--version"], capture_output=True, text=True).stdout.strip()
    tar = subprocess.run(["tar", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {platform.system()} {platform.release()}; {tar}; {zstd}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G", help="size of each data set of --sets (default 1G)")
    ap.add_argument(
        "--sets",
        default="mixed",
        help="comma list of data sets, each backed up and restored: mixed (notebooks, incompressible "
        "model files, a tree of small files), incompressible (packed models, .gz logs, small random "
        "files), text (notebooks, JSON lines, small text files); default mixed",
    )
    ap.add_argument("--runs", type=int, default=3, help="runs of each command (default 3)")
    ap.add_argument("--tiny", type=int, default=200_000, help="files in the 1 KB data set (0: skip)")
    ap.add_argument("--no-gzip", action="store_true", help="skip tar -czf (slow)")
    ap.add_argument("--work", default="/var/tmp/lifeboat-bench", help="scratch folder (on a real disk)")
    ap.add_argument("--bin", default="target/x86_64-unknown-linux-gnu/release", help="folder with the release binaries")
    ap.add_argument("--baseline", help="folder with another build of the binaries to compare in the same runs")
    ap.add_argument("--skip-mixed", action="store_true", help="no --sets, only the tiny-files data set")
    ap.add_argument(
        "--cold",
        action="store_true",
        help="drop the page cache before every command (root): files come from the disk, "
        "as on a volume the app has not read lately",
    )
    ap.add_argument(
        "--shapes",
        action="store_true",
        help="only the memory shapes: one folder of --shape-files files, --shape-links files with two hard links each",
    )
    ap.add_argument(
        "--incremental",
        action="store_true",
        help="only incremental chains (LIFEBOAT_FULL_EVERY): a link after 1%% of --size changed, "
        "a link of --tiny unchanged files, and a full + 23 links restored against one full",
    )
    ap.add_argument("--shape-files", type=int, default=1_000_000, help="files in the one-folder shape (default 1,000,000)")
    ap.add_argument("--shape-links", type=int, default=200_000, help="inodes in the hard-link shape (default 200,000)")
    args = ap.parse_args()
    ours_bin = os.path.abspath(args.bin)
    baseline = os.path.abspath(args.baseline) if args.baseline else None
    if not os.access(os.path.join(ours_bin, "lifeboat-sidecar"), os.X_OK):
        sys.exit(f"bench: {ours_bin}/lifeboat-sidecar is missing; run bench/run.sh (it builds the release binaries)")
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    size = parse_size(args.size)
    report = [f"Machine: {machine()}", ""]
    if args.cold:
        report += ["Cold page cache: dropped before every command.", ""]
    if args.incremental:
        report.append(bench_incremental(args, args.work, ours_bin))
        shutil.rmtree(args.work, ignore_errors=True)
        print("\n".join(report))
        return
    if args.shapes:
        report.append(bench_shapes(args, args.work, ours_bin, baseline))
        shutil.rmtree(args.work, ignore_errors=True)
        print("\n".join(report))
        return

    sets = [] if args.skip_mixed else [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = [s for s in sets if s not in DATA_SETS]
    if unknown:
        sys.exit(f"bench: --sets {','.join(unknown)}: unknown; accepted: {', '.join(DATA_SETS)}")
    for n, name in enumerate(sets):
        data = os.path.join(args.work, name)
        os.makedirs(data)
        t = time.monotonic()
        DATA_SETS[name](data, size, seed=1)
        print(f"bench: generated {tree_bytes(data) / 1e6:.0f} MB {name} data in {time.monotonic() - t:.0f} s", file=sys.stderr)
        if n:
            report.append("")
        report.append(bench_dataset(args, name, data, args.work, ours_bin, not args.no_gzip, True, baseline))
        shutil.rmtree(data)

    if args.tiny:
        data = os.path.join(args.work, "tiny")
        os.makedirs(data)
        write_tiny(data, args.tiny, seed=2)
        report.append("")
        report.append(bench_dataset(args, f"{args.tiny} files of 1 KB", data, args.work, ours_bin, False, False, baseline))
        shutil.rmtree(data)

    report.append("")
    report.append(f"Idle sidecar RSS: {idle_rss(ours_bin, args.work):.1f} MiB")
    shutil.rmtree(args.work, ignore_errors=True)
    print("\n".join(report))


if __name__ == "__main__":
    main()
