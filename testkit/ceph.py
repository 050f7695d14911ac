"""A one-node Ceph cluster with a RADOS Gateway: a real S3 server for tests and benchmarks.

:class:`RadosGateway` starts, in a temporary directory of its own, one monitor, one OSD
(``memstore``: objects live in the OSD's memory, nothing touches a disk) and ``radosgw``
with the ``beast`` frontend on 127.0.0.1 at a free port, then makes an S3 user with
``radosgw-admin user create``. Everything is stopped and removed by :meth:`stop`.

What it takes to make this quick and reliable (found setting it up):

- ``auth_*_required = none`` and no keyrings; radosgw still needs ``ms mon client mode =
  crc secure`` or it retries its monitor session forever with ``-13``.
- ``paxos propose interval = 0.01``: start-up takes ~2 s instead of ~10.
- Short ``rgw gc`` periods, so deleted objects give their memory back soon.
- One OSD, so pools have size 1 and CRUSH picks among OSDs, not hosts.
- ``mon data avail crit = 0``: the monitor refuses to start when its disk has less than
  5 % free (``error: monitor data filesystem reached concerning levels``), which a large
  build machine's disk often has; the memstore OSD keeps no data there.

The tools come from Debian's ``ceph-mon``, ``ceph-osd``, ``radosgw`` and ``ceph-common``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .registries import free_port
from .tools import DEBIAN_PACKAGE, require_tool

__all__ = ["BUCKET", "RadosGateway", "S3Credentials"]

DEBIAN_PACKAGE.update({
    "ceph-mon": "ceph-mon",
    "monmaptool": "ceph-mon",
    "ceph-osd": "ceph-osd",
    "radosgw": "radosgw",
    "radosgw-admin": "radosgw",
    "ceph": "ceph-common",
})

_CONF = """\
[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
mon initial members = a
mon data avail crit = 0
mon data avail warn = 0
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc secure
paxos propose interval = 0.01
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
osd objectstore = memstore
memstore device bytes = {memstore_bytes}
run dir = {dir}/run
admin socket = {dir}/run/$name.asok
log file = {dir}/log/$name.log
pid file = {dir}/run/$name.pid
mon data = {dir}/mon/$name
osd data = {dir}/osd/$cluster-$id
keyring = /dev/null
mon cluster log file = {dir}/log/cluster.log
[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port} tcp_nodelay=1
rgw dns name = 127.0.0.1
rgw gc obj min wait = 2
rgw gc processor period = 2
rgw gc processor max time = 2
rgw enable usage log = false
rgw thread pool size = 64
"""


# The bucket the tests share (tests/conftest.py makes it); each test works under a prefix.
BUCKET = "pybuild-tests"


@dataclass(frozen=True, slots=True)
class S3Credentials:
    """Where the gateway listens and the keys of its user."""

    endpoint: str  # http://127.0.0.1:PORT
    access_key: str
    secret_key: str
    region: str = "us-east-1"


class RadosGateway:
    """A private Ceph cluster (mon + memstore OSD) and radosgw, started by :meth:`start`."""

    def __init__(self, memstore_bytes: int = 4 << 30) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ceph-"))
        self.memstore_bytes = memstore_bytes
        self.mon_port = free_port()
        self.rgw_port = free_port()
        self.conf = self.dir / "ceph.conf"
        self._procs: list[subprocess.Popen[bytes]] = []
        self.credentials: S3Credentials | None = None

    def _run(self, *args: str, timeout: float = 60) -> str:
        out = subprocess.run([*args, "-c", str(self.conf)], capture_output=True, timeout=timeout)
        if out.returncode:
            raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}): {out.stderr.decode()[-2000:]}")
        return out.stdout.decode()

    def _spawn(self, *args: str) -> None:
        with open(self.dir / "log" / f"{Path(args[0]).name}.{len(self._procs)}.out", "wb") as log:
            self._procs.append(subprocess.Popen([*args, "-c", str(self.conf), "-f"],
                                                stdout=log, stderr=subprocess.STDOUT))

    def start(self) -> S3Credentials:
        """Start the cluster and the gateway; return its endpoint and the keys of a fresh
        user. On failure everything started is stopped again."""
        tools = {n: require_tool(n) for n in ("ceph-mon", "monmaptool", "ceph-osd", "radosgw",
                                              "radosgw-admin", "ceph")}
        try:
            return self._start(tools)
        except BaseException:
            self.stop()
            raise

    def _start(self, tools: dict[str, str]) -> S3Credentials:
        fsid = str(uuid.uuid4())
        for sub in ("run", "log", "mon", "osd/ceph-0"):
            (self.dir / sub).mkdir(parents=True)
        self.conf.write_text(_CONF.format(fsid=fsid, mon_port=self.mon_port, rgw_port=self.rgw_port,
                                          dir=self.dir, memstore_bytes=self.memstore_bytes))
        monmap = self.dir / "monmap"
        subprocess.run([tools["monmaptool"], "--create", "--fsid", fsid, "--addv", "a",
                        f"[v2:127.0.0.1:{self.mon_port}]", str(monmap)],
                       check=True, capture_output=True)
        self._run(tools["ceph-mon"], "--mkfs", "-i", "a", "--monmap", str(monmap))
        self._spawn(tools["ceph-mon"], "-i", "a")
        osd_uuid = str(uuid.uuid4())
        osd_id = self._run(tools["ceph"], "osd", "new", osd_uuid).strip()
        self._run(tools["ceph-osd"], "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid)
        self._spawn(tools["ceph-osd"], "-i", osd_id)
        self._spawn(tools["radosgw"], "-n", "client.rgw")
        self._wait_for_gateway()
        access, secret = uuid.uuid4().hex[:20].upper(), uuid.uuid4().hex + uuid.uuid4().hex[:8]
        self._run(tools["radosgw-admin"], "user", "create", "--uid", "pybuild", "--display-name",
                  "pybuild tests", "--access-key", access, "--secret-key", secret)
        self.credentials = S3Credentials(f"http://127.0.0.1:{self.rgw_port}", access, secret)
        return self.credentials

    def _wait_for_gateway(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.rgw_port}/"
        while time.monotonic() < deadline:
            for p in self._procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited with {p.returncode}; logs in {self.dir / 'log'}")
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # it answers (403 for anonymous is fine)
            except (TimeoutError, urllib.error.URLError, OSError):
                time.sleep(0.1)
        raise RuntimeError(f"radosgw did not answer on {url} within {timeout:.0f} s; logs in {self.dir / 'log'}")

    def stop(self) -> None:
        """Stop every daemon (gateway first) and remove the directory."""
        # One after the other, each while the daemons it talks to still answer: signalled
        # all at once, the gateway spends ~5 s waiting for a monitor that is gone.
        for p in reversed(self._procs):
            if p.poll() is None:
                p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self._procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def client(self) -> Any:
        """A boto3 S3 client for this gateway's user: the tests' independent view of the
        bucket (the code under test uses its own client)."""
        import boto3

        c = self.credentials
        assert c is not None, "start() first"
        return boto3.client("s3", endpoint_url=c.endpoint, aws_access_key_id=c.access_key,
                            aws_secret_access_key=c.secret_key, region_name=c.region)

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def __enter__(self) -> S3Credentials:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
