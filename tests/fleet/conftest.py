"""One SeaweedFS for the fleet tests (per test process); each test under its own key prefix."""
import pytest

from tests.support.seaweed import SeaweedS3


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    # a session-wide store: started once per test process
    s = SeaweedS3(str(tmp_path_factory.mktemp("seaweed")))
    yield s
    s.stop()


@pytest.fixture
def objects(s3, request):
    # each test its own prefix: tests share one store, never each other's keys
    return s3.objects(prefix="t-%s/" % request.node.name)




class FleetSetup:
    """The files and flags that make `anchor serve` a member of one test's fleet: its own
    fleet key (so its own prefix in the shared bucket) and the store's credentials in a file."""

    def __init__(self, s3, d):
        import os
        from anchor.fleet import keys
        from tests.support.seaweed import ACCESS_KEY, BUCKET, SECRET_KEY
        os.makedirs(d, exist_ok=True)
        self.s3 = s3
        self.key_file = os.path.join(d, "fleet.key")
        keys.write_key_file(self.key_file, keys.new_key())
        self.keys = keys.FleetKeys(keys.read_key_file(self.key_file))
        self.cred_file = os.path.join(d, "store.toml")
        with open(self.cred_file, "w") as f:
            f.write('access_key = "%s"\nsecret_key = "%s"\n' % (ACCESS_KEY, SECRET_KEY))
        self.bucket = BUCKET

    def args(self, endpoint=None):
        return ["--fleet", "s3://" + self.bucket, "--fleet-endpoint", endpoint or self.s3.endpoint,
                "--fleet-key-file", self.key_file, "--fleet-credentials-file", self.cred_file]

    def objects(self):
        """The fleet's objects as the anchors see them (under the fleet's prefix)."""
        return self.s3.objects(prefix=self.keys.prefix())


@pytest.fixture
def fleet(s3, tmp_path):
    return FleetSetup(s3, str(tmp_path / "fleet"))
