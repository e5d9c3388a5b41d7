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


