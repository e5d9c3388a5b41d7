"""An S3 bucket as the fleet tier uses it: objects written once under a name nobody else uses
or created with If-None-Match (docs/fleet.md, section 2), read whole or by byte range, listed
by prefix. CPython only.

The client is obstore (docs/decisions.md, "The fleet tier's S3 client"). Credentials come
from the caller (the config file or the environment), never from a command line."""
from datetime import timedelta

import obstore
from obstore import exceptions as oe
from obstore.store import S3Store


class ObjectStoreError(Exception):
    """The store could not be reached or refused a request; the text says which and why."""


class ObjectMissing(ObjectStoreError):
    """A range read of an object that is not there (deleted by garbage collection, or never
    written whole)."""


class S3Objects:
    def __init__(self, bucket, endpoint, access_key, secret_key, region="us-east-1", prefix="",
                 timeout=30.0, retries=2):
        self.where = "%s/%s" % (endpoint.rstrip("/"), bucket)
        self.prefix = prefix
        self.store = S3Store(
            bucket, endpoint=endpoint, access_key_id=access_key, secret_access_key=secret_key,
            region=region, virtual_hosted_style_request=False,
            client_options={"allow_http": endpoint.startswith("http://"),
                            "connect_timeout": timedelta(seconds=min(timeout, 10.0)),
                            "timeout": timedelta(seconds=timeout)},
            retry_config={"max_retries": retries, "retry_timeout": timedelta(seconds=timeout),
                          "backoff": {"init_backoff": timedelta(milliseconds=100),
                                      "max_backoff": timedelta(seconds=2), "base": 2}})

    def _fail(self, what, key, e):
        text = str(e).split("\n")[0]
        return ObjectStoreError("%s %s at %s: %s" % (what, key, self.where, text[:300]))

    def put_once(self, key, data):
        """Create `key` with `data` unless it exists (If-None-Match: *): True if this call
        created it, False if it was there (whoever wrote it first wins, whole)."""
        try:
            # any buffer as it is (a pack is a 16 MiB bytearray: no copy of it here)
            obstore.put(self.store, self.prefix + key, data if isinstance(data, (bytes, bytearray, memoryview))
                        else bytes(data), mode="create")
            return True
        except (oe.AlreadyExistsError, oe.PreconditionError):
            return False
        except Exception as e:
            raise self._fail("cannot create", key, e)

    def get(self, key):
        """The object's bytes, or None if there is no such object."""
        try:
            return bytes(obstore.get(self.store, self.prefix + key).bytes())
        except (FileNotFoundError, oe.NotFoundError):
            return None
        except Exception as e:
            raise self._fail("cannot read", key, e)

    def get_range(self, key, start, end):
        """Bytes [start, end) of the object; ObjectStoreError if it has not that many."""
        try:
            got = bytes(obstore.get_range(self.store, self.prefix + key, start=start, end=end))
        except (FileNotFoundError, oe.NotFoundError) as e:
            raise ObjectMissing("no object %s at %s (%s)" % (key, self.where, str(e).split("\n")[0][:200]))
        except Exception as e:
            raise self._fail("cannot read bytes %d-%d of" % (start, end), key, e)
        if len(got) != end - start:
            raise ObjectStoreError("read %d bytes of %s at %s, wanted %d" % (len(got), key, self.where, end - start))
        return got

    def size(self, key):
        """The object's length, or None if there is no such object."""
        try:
            return obstore.head(self.store, self.prefix + key)["size"]
        except (FileNotFoundError, oe.NotFoundError):
            return None
        except Exception as e:
            raise self._fail("cannot look at", key, e)

    def _list(self, prefix):
        n = len(self.prefix)
        try:
            return [(o["path"][n:], o) for batch in obstore.list(self.store, prefix=self.prefix + prefix)
                    for o in batch]
        except Exception as e:
            raise self._fail("cannot list", prefix, e)

    def list(self, prefix):
        """[(key, size)] of the objects whose key starts with prefix, in key order."""
        return sorted((key, o["size"]) for key, o in self._list(prefix))

    def list_meta(self, prefix):
        """[(key, size, last modified)] of the objects whose key starts with prefix, in key
        order; last modified as Unix time by the store's own clock (what garbage collection
        goes by, fleet/gc.py: an anchor's clock may be off, the store's is one for all)."""
        return sorted((key, o["size"], o["last_modified"].timestamp()) for key, o in self._list(prefix))

    def delete(self, key):
        try:
            obstore.delete(self.store, self.prefix + key)
        except (FileNotFoundError, oe.NotFoundError):
            pass
        except Exception as e:
            raise self._fail("cannot delete", key, e)
