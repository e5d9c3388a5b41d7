"""How the anchor reaches its MQTT broker (CPython only): the address, TLS, a user name and
password. One object for both paho clients the anchor runs, the relay's publishes
(services/relay.py) and the MQTT rover links (links/mqtt_port.py).

`anchor serve --broker mqtts://HOST:PORT` speaks TLS and checks the broker's certificate and
host name against the system's CAs or `--broker-ca FILE`; `--broker-user NAME` and
`--broker-password-file FILE` log in (the password never on the command line).
"""
import os
import ssl

from anchor_core import linkurl


class Broker:
    def __init__(self, host, port, tls=False, ca=None, user=None, password=None):
        self.host = host
        self.port = port
        self.tls = tls
        self.ca = ca
        self.user = user
        self.password = password
        self.url = "%s://%s:%d" % ("mqtts" if tls else "mqtt", host, port)

    def __iter__(self):
        # (host, port) = broker, as callers that only need the address unpack it
        return iter((self.host, self.port))

    @classmethod
    def parse(cls, url, ca=None, user=None, password_file=None):
        """From `--broker` and its options; ValueError naming what is wrong."""
        tls = url.startswith("mqtts://")
        # The shared grammar (also the rover's) knows mqtt://; mqtts:// is the same address.
        try:
            host, port, _ = linkurl.host_port("mqtt://" + url[8:] if tls else url, "mqtt", False, "broker")
        except ValueError:
            raise ValueError("broker %r: expected mqtt://HOST:PORT or mqtts://HOST:PORT" % url)
        if ca is not None:
            if not tls:
                raise ValueError("--broker-ca needs a mqtts:// broker")
            _readable(ca, "broker CA file")
            # Load it now: a file that is not a certificate is an error at start, not at
            # the first connection.
            try:
                ssl.create_default_context(cafile=ca)
            except (ssl.SSLError, ValueError) as e:
                raise ValueError("broker CA file %s: not a PEM certificate (%s)" % (ca, e))
        password = None
        if password_file is not None:
            if user is None:
                raise ValueError("--broker-password-file needs --broker-user")
            _readable(password_file, "broker password file")
            with open(password_file) as f:
                password = f.readline().rstrip("\r\n")
            if not password:
                raise ValueError("broker password file %s: its first line is empty" % password_file)
        return cls(host, port, tls, ca, user, password)

    def client(self, client_id, **kw):
        """A paho client set up for this broker (not connected)."""
        import paho.mqtt.client as mqtt
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, **kw)
        if self.user is not None:
            c.username_pw_set(self.user, self.password)
        if self.tls:
            ctx = ssl.create_default_context(cafile=self.ca)     # verifies chain and host name
            c.tls_set_context(ctx)
        return c

    def explain(self, e):
        """What a connection error means, in the operator's words."""
        if isinstance(e, ssl.SSLCertVerificationError):
            return ("TLS: the broker's certificate was not accepted (%s)%s"
                    % (e.verify_message or e, "" if self.ca else "; --broker-ca names the CA that signed it"))
        if isinstance(e, ssl.SSLError):
            return "TLS: %s (is %s a TLS port?)" % (e.reason or e, self.url)
        return str(e) or type(e).__name__


def refusal(reason):
    """paho's CONNACK reason, said plainly."""
    text = str(reason)
    if "not authorized" in text.lower() or "bad user name" in text.lower():
        return "refused the connection: bad user name or password (%s)" % text
    return "refused the connection: %s" % text


def _readable(path, what):
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise ValueError("%s %s: cannot read it (%s)" % (what, path, e.strerror or e))
    if not os.path.isfile(path):
        raise ValueError("%s %s: not a file" % (what, path))
