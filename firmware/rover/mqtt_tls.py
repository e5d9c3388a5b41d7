# TLS for the MicroPython rover's MQTT link (mqtts://): the broker's certificate checked
# against the CA file given with --mqtt-ca, and its host name. Loaded only while an mqtts
# link opens (rover/mqtt_port.py unloads it again): the wrapped socket is all that stays.
import binascii
import ssl

from rover.linkerror import LinkError


def _certificates(pem):
    """The DER certificates of a PEM file: mbedtls as MicroPython builds it reads DER only."""
    out = []
    cur = None
    for line in pem.split(b"\n"):
        line = line.strip()
        if line.startswith(b"-----BEGIN CERTIFICATE-----"):
            cur = []
        elif line.startswith(b"-----END CERTIFICATE-----") and cur is not None:
            try:
                out.append(binascii.a2b_base64(b"".join(cur)))
            except ValueError:
                pass
            cur = None
        elif cur is not None:
            cur.append(line)
    return out


def wrap(sock, host, ca, where):
    if not ca:
        raise LinkError("mqtts: give the broker's CA certificate with --mqtt-ca FILE "
                        "(MicroPython has no list of trusted certificates of its own)")
    try:
        with open(ca, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise LinkError("mqtts: cannot read the CA file %s: %s" % (ca, e))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    certs = _certificates(pem)
    pem = None
    try:
        if not certs:
            raise ValueError("no certificate in it")
        for c in certs:
            ctx.load_verify_locations(cadata=c)
    except ValueError as e:
        raise LinkError("mqtts: the CA file %s holds no PEM certificate the rover can use (%s)" % (ca, e))
    try:
        return ctx.wrap_socket(sock, server_hostname=host)
    except (OSError, ValueError) as e:
        raise LinkError("MQTT broker at %s: TLS failed (%s): is --mqtt-ca the CA that signed the "
                        "broker's certificate, and %s the name in it?" % (where, e, host))
