#!/usr/bin/env python3
"""Continuous WAL archiving (README, "Continuous WAL (PostgreSQL)") measured
side by side in one run, on a PostgreSQL 15 cluster of the script's own:

1. pgbench TPS with the sidecar off and archiving, alternated (off, on, on,
   off, ...: a linear drift of the cluster, such as table bloat, falls on
   both sides alike); the ratio of the medians.
2. The sidecar's peak RSS while archiving (VmHWM just before it is stopped).
3. The archive lag under load: `lifeboat_wal_lag_seconds` sampled once a
   second during the "on" runs; max and p95.
4. WAL objects (and what they would cost as S3 requests) per hour, idle and
   under load, counted as `wal-*.manifest.json` files in the file target.
5. Replay: the archive restored by `lifeboat-restore` into a wiped PGDATA,
   the server started, the time until it has promoted, the WAL it replayed,
   and the time one hour of the load's WAL would take; the restored
   pgbench_history row count must equal the original's.

Prints a Markdown table on stdout, progress on stderr. Run it with
`bench/run.sh --wal [--quick]` (builds the release binaries first).
"""

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

PG_BIN = "/usr/lib/postgresql/15/bin"
PASSWORD = "lifeboat-bench-pw"
MiB = 1024 * 1024
MB = 1e6

# S3 cost of one stored blob, as lifeboat/src/store/s3.rs uploads it: a blob
# smaller than one part is a single PutObject; from one part on it is a
# multipart upload (CreateMultipartUpload, UploadPart per part of
# PART_SIZE_MIN = 6 MiB, the size of the first 1,000 parts; the README's
# limits table says the same, CompleteMultipartUpload). Before each object
# the store is asked whether the name exists (HeadObject, a GET-class
# request), and the manifest is one more PutObject after the artifact.
S3_PART_SIZE = 6 * MiB
S3_RULE = (
    "per WAL object: HeadObject (existence check) + PutObject of the manifest + the artifact: "
    "one PutObject below 6 MiB stored, else CreateMultipartUpload + ceil(size / 6 MiB) UploadPart "
    "+ CompleteMultipartUpload (PART_SIZE_MIN in lifeboat/src/store/s3.rs); "
    "PUT-class = every request but the HEAD"
)


def say(msg):
    print(f"wal-bench: {msg}", file=sys.stderr, flush=True)


def lsn(text):
    """PostgreSQL's `X/Y` as a byte position."""
    hi, lo = text.strip().split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def p95(values):
    """Nearest-rank 95th percentile."""
    v = sorted(values)
    return v[max(0, -(-95 * len(v) // 100) - 1)]


def vm_hwm_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


# --- the PostgreSQL cluster --------------------------------------------------


class Cluster:
    """A cluster in `root` (owned by `postgres`: initdb refuses root),
    listening on 127.0.0.1:`port` and on a socket in `root`, as
    tests/support/postgres_server.rs makes one."""

    def __init__(self, root):
        self.root = root
        self.data = os.path.join(root, "data")
        self.pwfile = os.path.join(root, "pw")
        self.port = free_port()
        self.log = os.path.join(root, "server.log")
        self.running = False

    def as_postgres(self, *args, **kw):
        return subprocess.run(["runuser", "-u", "postgres", "--", *args], **kw)

    def initdb(self):
        os.makedirs(self.root)
        shutil.chown(self.root, "postgres", "postgres")
        with open(self.pwfile, "w") as f:
            f.write(PASSWORD)
        shutil.chown(self.pwfile, "postgres", "postgres")
        # The sidecar connects over TCP with the password (as in a pod);
        # our own clients use the socket with trust.
        self.as_postgres(
            f"{PG_BIN}/initdb", "-D", self.data, "-U", "postgres", "--auth-local=trust",
            "--auth-host=scram-sha-256", f"--pwfile={self.pwfile}",
            check=True, stdout=subprocess.DEVNULL,
        )

    def pg_ctl_start(self, log, wait=True):
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}"
        args = [f"{PG_BIN}/pg_ctl", "-D", self.data, "-l", log, "-o", opts]
        args += ["-w", "-t", "120", "start"] if wait else ["-W", "start"]
        p = self.as_postgres(*args, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"wal-bench: the server did not start:\n{open(log).read()}")
        self.running = True

    def start(self):
        self.pg_ctl_start(self.log)

    def stop(self, mode="fast"):
        self.as_postgres(f"{PG_BIN}/pg_ctl", "-D", self.data, "-w", "-m", mode, "stop",
                         check=True, stdout=subprocess.DEVNULL)
        self.running = False

    def client_env(self):
        return dict(PATH=os.environ["PATH"], PGHOST=self.root, PGPORT=str(self.port),
                    PGUSER="postgres", PGDATABASE="postgres")

    def sql(self, query):
        p = subprocess.run([f"{PG_BIN}/psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", query],
                           env=self.client_env(), capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"psql {query!r}: {p.stderr.strip()}")
        return p.stdout.strip()

    def flush_lsn(self):
        return lsn(self.sql("SELECT pg_current_wal_flush_lsn()"))

    def insert_lsn(self):
        return lsn(self.sql("SELECT pg_current_wal_lsn()"))

    def pgbench(self, *args):
        return subprocess.Popen([f"{PG_BIN}/pgbench", *args], env=self.client_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# --- the sidecar and its archive ---------------------------------------------


class Archive:
    """The file target's history folder, read the way tests/wal_archive.rs
    reads it: WAL objects are `wal-*.manifest.json`, anything else with a
    manifest is a base backup."""

    def __init__(self, target):
        self.target = target

    def history(self):
        # <target>/<namespace>/<name>: one history, whatever it is called.
        for ns in sorted(os.listdir(self.target)):
            if not os.path.isdir(os.path.join(self.target, ns)):
                continue
            for name in sorted(os.listdir(os.path.join(self.target, ns))):
                if os.path.isdir(os.path.join(self.target, ns, name)):
                    return os.path.join(self.target, ns, name)
        return None

    def manifests(self):
        h = self.history()
        if not h:
            return {}
        names = [n for n in os.listdir(h) if n.endswith(".manifest.json")]
        return {n: os.path.join(h, n) for n in names}

    def wal_objects(self):
        """{name: manifest} of the WAL objects, read once each."""
        out = {}
        for n, p in sorted(self.manifests().items()):
            if n.startswith("wal-"):
                with open(p) as f:
                    out[n] = json.load(f)
        return out

    def bases(self):
        out = []
        for n, p in sorted(self.manifests().items()):
            if not n.startswith("wal-"):
                with open(p) as f:
                    out.append(json.load(f))
        return out


class Sidecar:
    """`lifeboat-sidecar run` with the environment tests/wal_archive.rs
    (`wal_env`) and tests/support (`PgServer::env_with`, `lifeboat`,
    `RunningSidecar::start`) give it, but WAL every `interval`."""

    def __init__(self, bin_dir, cluster, target, interval, quiet_max, log):
        self.port = free_port()
        self.interval = interval_seconds(interval)
        self.log = log
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(
            PATH=os.environ["PATH"],
            LIFEBOAT_ANNOTATIONS_FILE="/nonexistent/annotations",
            LIFEBOAT_LOG="info",
            LIFEBOAT_LISTEN=f"127.0.0.1:{self.port}",
            LIFEBOAT_SOURCE="postgres",
            LIFEBOAT_PATHS=cluster.data,
            LIFEBOAT_TARGETS=f"file://{target}",
            HOSTNAME="wal-0",
            PGHOST="127.0.0.1",
            PGPORT=str(cluster.port),
            PGUSER="postgres",
            PGPASSWORD_FILE=cluster.pwfile,
            LIFEBOAT_POSTGRES_WAL="on",
            LIFEBOAT_WAL_INTERVAL=interval,
            LIFEBOAT_WAL_QUIET_MAX=quiet_max,
            # A schedule that does not fire: the archiver asks for the
            # base backup its new slot needs.
            LIFEBOAT_SCHEDULE="0 0 1 1 *",
        )
        # No proxy for our loopback scrapes, whatever the environment says.
        self.http = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self.proc = subprocess.Popen([os.path.join(bin_dir, "lifeboat-sidecar"), "run"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=open(log, "w"))
        self.wait_until("its endpoint answers", 60, lambda: self.get("/healthz") is not None)

    def get(self, path):
        try:
            with self.http.open(self.url + path, timeout=5) as r:
                return r.read().decode()
        except OSError:
            return None

    def metrics(self):
        """Unlabelled samples of /metrics: {name: value}."""
        out = {}
        for line in (self.get("/metrics") or "").splitlines():
            parts = line.split()
            if len(parts) == 2 and not line.startswith("#") and "{" not in parts[0]:
                out[parts[0]] = float(parts[1])
        return out

    def wait_until(self, what, secs, ready, step=0.2):
        deadline = time.monotonic() + secs
        while not ready():
            if self.proc.poll() is not None:
                sys.exit(f"wal-bench: the sidecar exited ({self.proc.returncode}) waiting for {what}:\n"
                         + open(self.log).read()[-4000:])
            if time.monotonic() > deadline:
                sys.exit(f"wal-bench: waited {secs} s for {what}; sidecar log:\n" + open(self.log).read()[-4000:])
            time.sleep(step)

    def wait_caught_up(self, cluster, secs):
        """Until the archive reaches what the server has flushed now, or a
        pass that began after now found nothing behind it that must be
        archived (WAL without a commit waits: LIFEBOAT_WAL_QUIET_MAX);
        returns how long that took."""
        since = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=self.interval)
        flushed = cluster.flush_lsn()
        t = time.monotonic()
        self.wait_until("the archive to reach the server's flush", secs,
                        lambda: self.metrics().get("lifeboat_wal_archived_lsn", -1) >= flushed
                        or self.caught_up_since(since))
        return time.monotonic() - t

    def caught_up_since(self, t):
        """Whether /status says a pass caught up after `t` (UTC)."""
        try:
            at = (json.loads(self.get("/status") or "{}").get("wal") or {}).get("caught_up_at")
        except ValueError:
            return False
        return at is not None and datetime.datetime.fromisoformat(at.replace("Z", "+00:00")) > t

    def stop(self):
        """SIGTERM; the peak RSS (MiB) it had just before."""
        hwm = vm_hwm_mib(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return hwm


# --- S3 cost of the objects --------------------------------------------------


def s3_requests(stored_size):
    """(PUT-class requests, HEAD requests) for one WAL object of this many
    stored bytes; see S3_RULE."""
    if stored_size < S3_PART_SIZE:
        artifact = 1
    else:
        artifact = 2 + -(-stored_size // S3_PART_SIZE)
    return artifact + 1, 1


def window_cost(objects, seconds):
    """Objects, PUT-class and HEAD requests and stored MB, each per hour,
    of the objects committed during `seconds`."""
    scale = 3600 / seconds
    puts = heads = stored = 0
    for m in objects:
        p, h = s3_requests(m["size"])
        puts, heads, stored = puts + p, heads + h, stored + m["size"]
    return dict(objects=len(objects) * scale, puts=puts * scale, heads=heads * scale,
                stored_mb=stored / MB * scale, count=len(objects), largest=max((m["size"] for m in objects), default=0))


# --- the phases ----------------------------------------------------------------


class Bench:
    def __init__(self, args, work):
        self.args = args
        self.work = work
        self.bin = args.bin
        self.cluster = Cluster(os.path.join(work, "pg"))
        self.target = os.path.join(work, "backup")
        self.archive = Archive(self.target)
        self.sidecars = 0
        self.sidecar = None
        self.logs = []
        # Filled in by the phases, read by the report.
        self.runs = []  # dicts: mode, tps, wall, wal_bytes
        self.lag = []
        self.hwm_archiving = []
        self.hwm_base = None
        self.load_objects = []
        self.load_seconds = 0.0
        self.idle = None
        self.replay = {}

    def start_sidecar(self):
        self.sidecars += 1
        log = os.path.join(self.work, f"sidecar-{self.sidecars}.log")
        self.logs.append(log)
        self.sidecar = Sidecar(self.bin, self.cluster, self.target, self.args.interval,
                               self.args.quiet_max, log)
        return self.sidecar

    def stop_sidecar(self):
        hwm = self.sidecar.stop()
        self.sidecar = None
        return hwm

    def catch_up_timeout(self):
        return 10 * interval_seconds(self.args.interval) + 120

    def setup(self):
        os.makedirs(self.target)
        say(f"initdb in {self.cluster.root}, port {self.cluster.port}")
        self.cluster.initdb()
        self.cluster.start()
        say(f"pgbench -i -s {self.args.scale}")
        p = self.cluster.pgbench("-i", "-q", "-s", str(self.args.scale))
        out, _ = p.communicate()
        if p.returncode != 0:
            sys.exit(f"wal-bench: pgbench -i failed:\n{out}")

    def base_backup(self):
        """The first sidecar makes its slot and takes the base backup the
        slot asks for; its peak RSS includes that backup, so it is kept
        apart from the archiving-only figure."""
        say("sidecar: slot and base backup")
        t = time.monotonic()
        sc = self.start_sidecar()
        sc.wait_until("the base backup the new slot asks for", 1800, lambda: self.archive.bases(), step=0.5)
        say(f"  base backup committed after {time.monotonic() - t:.0f} s")
        sc.wait_caught_up(self.cluster, self.catch_up_timeout())
        self.hwm_base = self.stop_sidecar()

    def one_run(self, n, mode):
        """One pgbench run, `mode` "off" (no sidecar) or "on" (archiving,
        started and caught up first so its backlog is not billed to the run)."""
        self.settle()
        if mode == "on":
            self.start_sidecar().wait_caught_up(self.cluster, self.catch_up_timeout())
            before = set(self.archive.wal_objects())
        wal0 = self.cluster.insert_lsn()
        t = time.monotonic()
        p = self.cluster.pgbench("-n", "-T", str(self.args.seconds), "-c", "4", "-j", "2")
        lags = self.sample_lag(p) if mode == "on" else []
        out, _ = p.communicate()
        wall = time.monotonic() - t
        if p.returncode != 0:
            sys.exit(f"wal-bench: pgbench failed:\n{out}")
        wal_bytes = self.cluster.insert_lsn() - wal0
        tps = float(re.search(r"^tps = ([0-9.]+)", out, re.M).group(1))
        self.runs.append(dict(mode=mode, tps=tps, wall=wall, wal_bytes=wal_bytes))
        line = f"  run {n} {mode:>3}: {tps:.0f} TPS, {wal_bytes / MB / wall:.1f} MB/s WAL"
        if mode == "on":
            objects = self.archive.wal_objects()
            self.load_objects += [m for k, m in objects.items() if k not in before]
            self.load_seconds += wall
            self.lag += lags
            caught = self.sidecar.wait_caught_up(self.cluster, self.catch_up_timeout())
            hwm = self.stop_sidecar()
            self.hwm_archiving.append(hwm)
            line += (f", lag max {max(lags, default=0):.1f} s, {len(objects) - len(before)} objects, "
                     f"caught up {caught:.1f} s after, VmHWM {hwm:.1f} MiB")
        say(line)

    def settle(self):
        """The same start for every run. A vacuum of all four tables now
        (pgbench's own, before its clock starts, leaves out the large
        accounts table): an autovacuum of it inside one run, with its
        full-page writes, would slow that run alone. Then a checkpoint:
        full-page writes follow one, and would otherwise favour whichever
        side ran later."""
        self.cluster.sql("VACUUM pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history")
        self.cluster.sql("CHECKPOINT")

    def sample_lag(self, p):
        """`lifeboat_wal_lag_seconds` once a second until pgbench ends."""
        lags = []
        tick = time.monotonic()
        while p.poll() is None:
            lag = self.sidecar.metrics().get("lifeboat_wal_lag_seconds")
            if lag is not None:
                lags.append(lag)
            tick += 1
            time.sleep(max(0, tick - time.monotonic()))
        return lags

    def load(self):
        # An untimed first run: the first one after `pgbench -i` is slower
        # (cold cache, hint bits), a step that alternation does not cancel.
        warm = min(self.args.seconds, 30)
        say(f"  warm-up: {warm} s, not counted")
        self.settle()
        p = self.cluster.pgbench("-n", "-T", str(warm), "-c", "4", "-j", "2")
        out, _ = p.communicate()
        if p.returncode != 0:
            sys.exit(f"wal-bench: pgbench failed:\n{out}")
        # off, on, on, off, off, on, ...: each pair's order flips, so a
        # steady drift (bloat, a filling disk) favours neither side.
        order = []
        for i in range(self.args.runs):
            order += ["off", "on"] if i % 2 == 0 else ["on", "off"]
        for n, mode in enumerate(order, 1):
            self.one_run(n, mode)

    def idle_window(self):
        """A quiet server after the load, the sidecar running: what it
        commits then (autovacuum, a timed checkpoint: PostgreSQL's own
        WAL; an idle server with none should cause no upload)."""
        say(f"idle window: {self.args.idle} s")
        sc = self.start_sidecar()
        sc.wait_caught_up(self.cluster, self.catch_up_timeout())
        before = set(self.archive.wal_objects())
        wal0 = self.cluster.insert_lsn()
        time.sleep(self.args.idle)
        objects = [m for k, m in self.archive.wal_objects().items() if k not in before]
        self.idle = dict(objects=objects, wal_bytes=self.cluster.insert_lsn() - wal0)
        say(f"  {len(objects)} objects, {self.idle['wal_bytes']} bytes of WAL written")

    def restore_and_replay(self):
        """The pod lost once the archive holds everything, then restored
        with its WAL (tests/wal_archive.rs `lose_and_restore`), timed."""
        rows = int(self.cluster.sql("SELECT count(*) FROM pgbench_history"))
        self.sidecar.wait_caught_up(self.cluster, self.catch_up_timeout())
        self.hwm_archiving.append(self.stop_sidecar())
        self.cluster.stop("immediate")
        shutil.rmtree(self.cluster.data)

        say("lifeboat-restore")
        env = dict(
            PATH=os.environ["PATH"],
            LIFEBOAT_ANNOTATIONS_FILE="/nonexistent/annotations",
            LIFEBOAT_LOG="info",
            LIFEBOAT_LISTEN="off",
            LIFEBOAT_SOURCE="postgres",
            LIFEBOAT_PATHS=self.cluster.data,
            LIFEBOAT_TARGETS=f"file://{self.target}",
            HOSTNAME="wal-0",
            PGHOST="127.0.0.1",
            PGPORT=str(self.cluster.port),
            PGUSER="postgres",
            PGPASSWORD_FILE=self.cluster.pwfile,
            LIFEBOAT_POSTGRES_WAL="on",
        )
        t = time.monotonic()
        p = subprocess.run([os.path.join(self.bin, "lifeboat-restore")], env=env, capture_output=True, text=True)
        restore_s = time.monotonic() - t
        log = os.path.join(self.work, "restore.log")
        with open(log, "w") as f:
            f.write(p.stderr)
        self.logs.append(log)
        if p.returncode != 0 or "archived WAL staged" not in p.stderr:
            sys.exit(f"wal-bench: lifeboat-restore failed ({p.returncode}):\n{p.stderr}")

        say("server start, replay, promotion")
        plog = os.path.join(self.cluster.root, "server-restored.log")
        t = time.monotonic()
        self.cluster.pg_ctl_start(plog, wait=False)
        promoted = wait_for_promotion(plog, 3600)
        replay_s = time.monotonic() - t
        if self.cluster.sql("SELECT pg_is_in_recovery()") != "f":
            sys.exit("wal-bench: the server logged it was ready but is still in recovery")
        restored_rows = int(self.cluster.sql("SELECT count(*) FROM pgbench_history"))
        self.replay = dict(restore_s=restore_s, replay_s=replay_s, rows=rows, restored_rows=restored_rows,
                           **promoted, **self.archived_range())
        say(f"  restore {restore_s:.1f} s, start to promoted {replay_s:.1f} s, rows {restored_rows} of {rows}")

    def archived_range(self):
        """What recovery had to replay according to the store: from the
        base backup's start (its checkpoint's redo) to the archive's end."""
        base = self.archive.bases()[-1]["source_meta"]
        objects = list(self.archive.wal_objects().values())
        end = max(lsn(m["wal"]["to"]) for m in objects)
        return dict(archive_bytes=end - lsn(base["start_lsn"]), objects_total=len(objects))

    def sidecar_complaints(self):
        """WARN and ERROR lines of every sidecar and restore log."""
        out = []
        for log in self.logs:
            with open(log) as f:
                for line in f:
                    if re.search(r"\s(WARN|ERROR)\s", line):
                        out.append(f"{os.path.basename(log)}: {line.rstrip()}")
        return out


def interval_seconds(text):
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip()
    return int(t[:-1]) * units[t[-1]] if t[-1] in units else int(t)


def wait_for_promotion(log, secs):
    """Polls the server log until it has promoted; the redo range and
    time the server logged."""
    deadline = time.monotonic() + secs
    text = ""
    while "database system is ready to accept connections" not in text:
        if time.monotonic() > deadline:
            sys.exit(f"wal-bench: the restored server did not promote within {secs} s:\n{text[-4000:]}")
        time.sleep(0.05)
        try:
            with open(log) as f:
                text = f.read()
        except OSError:
            pass
    out = {}
    start = re.search(r"redo starts at ([0-9A-F]+/[0-9A-F]+)", text)
    done = re.search(r"redo done at ([0-9A-F]+/[0-9A-F]+).*elapsed: ([0-9.]+) s", text)
    if start and done:
        out = dict(redo_bytes=lsn(done.group(1)) - lsn(start.group(1)), redo_s=float(done.group(2)))
    return out


# --- the report ----------------------------------------------------------------


def machine():
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM"


def verdict(ok):
    return "ok" if ok else "**missed**"


def report(b, args):
    a = args
    off = [r["tps"] for r in b.runs if r["mode"] == "off"]
    on = [r["tps"] for r in b.runs if r["mode"] == "on"]
    ratio = statistics.median(on) / statistics.median(off)
    on_runs = [r for r in b.runs if r["mode"] == "on"]
    wal_rate = sum(r["wal_bytes"] for r in on_runs) / sum(r["wall"] for r in on_runs)
    hwm = max(b.hwm_archiving)
    lag_limit = interval_seconds(a.interval) + 5
    lag_max, lag_p95 = (max(b.lag), p95(b.lag)) if b.lag else (float("nan"), float("nan"))
    idle = window_cost(b.idle["objects"], a.idle)
    load = window_cost(b.load_objects, b.load_seconds)
    r = b.replay
    # The WAL the server replayed, as it logged it; the store's view as a fallback.
    replayed = r.get("redo_bytes", r["archive_bytes"])
    replay_rate = replayed / r["replay_s"]
    hour_s = wal_rate * 3600 / replay_rate if replay_rate else float("nan")
    # Start to promoted also holds fixed costs (PostgreSQL fsyncs the
    # restored PGDATA before recovery, and ends it with a checkpoint), which
    # a short run's few MB of WAL cannot spread: the redo alone, as the
    # server logged it, gives the other bound.
    redo_rate = r["redo_bytes"] / r["redo_s"] if r.get("redo_s") else float("nan")
    redo_hour_s = wal_rate * 3600 / redo_rate
    rows = [
        ("pgbench TPS, sidecar off (median)", f"{statistics.median(off):.0f}  ({', '.join(f'{t:.0f}' for t in off)})", "", ""),
        ("pgbench TPS, archiving on (median)", f"{statistics.median(on):.0f}  ({', '.join(f'{t:.0f}' for t in on)})", "", ""),
        ("on / off", f"{ratio:.3f}", "≥ 0.95", verdict(ratio >= 0.95)),
        ("sidecar peak RSS while archiving (VmHWM, max of "
         f"{len(b.hwm_archiving)} processes)", f"{hwm:.1f} MiB", "≤ 48 MiB", verdict(hwm <= 48)),
        ("sidecar peak RSS, first process (includes the base backup)", f"{b.hwm_base:.1f} MiB", "", ""),
        (f"archive lag under load, max / p95 ({len(b.lag)} samples)",
         f"{lag_max:.1f} s / {lag_p95:.1f} s", f"≤ {lag_limit} s", verdict(lag_max <= lag_limit)),
        ("WAL written under load", f"{wal_rate / MB:.2f} MB/s", "", ""),
        (f"WAL objects/h idle ({idle['count']} in {a.idle} s; {b.idle['wal_bytes']} B WAL written)",
         f"{idle['objects']:.0f}", "", ""),
        ("S3 requests/h idle, PUT-class + HEAD", f"{idle['puts']:.0f} + {idle['heads']:.0f}", "", ""),
        # Each object carries the current segment again, so a trickle of
        # WAL still stores a segment's worth of compressed bytes per object.
        ("stored idle", f"{idle['stored_mb']:.0f} MB/h", "", ""),
        (f"WAL objects/h under load ({load['count']} in {b.load_seconds:.0f} s; "
         f"largest {load['largest'] / MiB:.2f} MiB stored)", f"{load['objects']:.0f}", "", ""),
        ("S3 requests/h under load, PUT-class + HEAD", f"{load['puts']:.0f} + {load['heads']:.0f}", "", ""),
        ("stored under load", f"{load['stored_mb']:.0f} MB/h", "", ""),
        ("lifeboat-restore (base + WAL staged)", f"{r['restore_s']:.1f} s", "", ""),
        (f"replay: server start to promoted ({r['objects_total']} objects in the archive)",
         f"{r['replay_s']:.1f} s for {replayed / MB:.0f} MB", "", ""),
        ("replay rate (start to promoted)", f"{replay_rate / MB:.1f} MB/s", "", ""),
        ("of which redo, as the server logged it", f"{r.get('redo_s', float('nan')):.2f} s: {redo_rate / MB:.0f} MB/s", "", ""),
        ("one hour of this load's WAL replays in: at the start-to-promoted rate / at the redo rate",
         f"{hour_s / 60:.1f} min / {redo_hour_s / 60:.1f} min", "", ""),
        ("pgbench_history rows restored / original", f"{r['restored_rows']} / {r['rows']}", "equal",
         verdict(r["restored_rows"] == r["rows"])),
    ]
    pg = subprocess.run([f"{PG_BIN}/postgres", "--version"], capture_output=True, text=True).stdout.strip()
    out = [
        f"Machine: {machine()}",
        f"PostgreSQL: {pg}, default settings",
        f"Load: pgbench -s {a.scale}, -T {a.seconds} -c 4 -j 2, {a.runs} run(s) each side alternated; "
        f"LIFEBOAT_WAL_INTERVAL={a.interval}, LIFEBOAT_WAL_QUIET_MAX={a.quiet_max}; file target",
        "",
        "| measure | value | target | |",
        "|---|---|---|---|",
    ]
    out += [f"| {m} | {v} | {t} | {ok} |" for m, v, t, ok in rows]
    out += ["", f"S3 rule: {S3_RULE}."]
    out.append(f"WAL replayed: {replayed / MB:.0f} MB from the server's redo range "
               f"(the store's view, base start to archive end: {r['archive_bytes'] / MB:.0f} MB).")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/x86_64-unknown-linux-gnu/release", help="folder with the release binaries")
    ap.add_argument("--scale", type=int, default=20, help="pgbench -s (default 20)")
    ap.add_argument("--seconds", type=int, default=60, help="seconds per pgbench run (default 60)")
    ap.add_argument("--runs", type=int, default=2, help="runs with the sidecar off, and as many on (default 2)")
    ap.add_argument("--interval", default="10s", help="LIFEBOAT_WAL_INTERVAL (default 10s)")
    ap.add_argument("--quiet-max", default="10m",
                    help="LIFEBOAT_WAL_QUIET_MAX (default 10m, the sidecar's default)")
    ap.add_argument("--idle", type=int, default=300, help="seconds of the idle window (default 300)")
    ap.add_argument("--quick", action="store_true", help="smoke run: scale 2, 10 s runs, 1 run each, idle 30 s")
    ap.add_argument("--work", default="/var/tmp", help="where the temporary folder goes (a real disk)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, archive)")
    args = ap.parse_args()
    if args.quick:
        args.scale, args.seconds, args.runs, args.idle = 2, 10, 1, 30
    args.bin = os.path.abspath(args.bin)
    for name in ("lifeboat-sidecar", "lifeboat-restore"):
        if not os.access(os.path.join(args.bin, name), os.X_OK):
            sys.exit(f"wal-bench: {args.bin}/{name} is missing; run bench/run.sh --wal (it builds them)")
    if not os.access(f"{PG_BIN}/pgbench", os.X_OK):
        sys.exit(f"wal-bench: PostgreSQL 15 is not in {PG_BIN} (scripts/setup.sh installs it)")

    work = tempfile.mkdtemp(prefix="lifeboat-wal-bench-", dir=args.work)
    # The server runs as `postgres`, which must reach its folder.
    os.chmod(work, 0o755)
    b = Bench(args, work)
    try:
        b.setup()
        b.base_backup()
        b.load()
        b.idle_window()
        b.restore_and_replay()
        complaints = b.sidecar_complaints()
        print(report(b, args))
        if complaints:
            print(f"\nWARN/ERROR lines in the sidecar and restore logs ({len(complaints)}):")
            print("\n".join(f"    {c}" for c in complaints))
    finally:
        if b.sidecar:
            b.sidecar.proc.kill()
            b.sidecar.proc.wait()
        if b.cluster.running:
            b.cluster.as_postgres(f"{PG_BIN}/pg_ctl", "-D", b.cluster.data, "-m", "immediate", "stop",
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
