"""HTTPS: `kuryr server --tls-cert --tls-key` with a CA and a server certificate made here
(python `cryptography`, which openstacksdk already needs), and the real openstack CLI,
trusting the server through OS_CACERT and refusing it without."""

import datetime
import ipaddress
import os
import shutil
import subprocess
import tempfile

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloud import OPENSTACK_BIN, Creds, Server, osc, unique


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


def make_pki(d):
    """A CA, and a certificate it signs for 127.0.0.1 and localhost; their PEM paths."""
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder()
          .subject_name(_name("kuryr test CA")).issuer_name(_name("kuryr test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(_name("kuryr server")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return (
        _write(os.path.join(d, "ca.pem"), ca.public_bytes(pem)),
        _write(os.path.join(d, "server.pem"), cert.public_bytes(pem)),
        _write(os.path.join(d, "server.key"), key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())),
    )


@pytest.fixture(scope="module")
def tls_server():
    d = tempfile.mkdtemp(prefix="kuryr-tls-")
    ca, cert, key = make_pki(d)
    s = Server("--tls-cert", cert, "--tls-key", key, cacert=ca)
    yield s
    s.stop()
    shutil.rmtree(d, ignore_errors=True)


def test_openstack_cli_over_https_trusts_os_cacert_only(tls_server):
    admin = Creds(tls_server, "admin", tls_server.admin_password, "admin")
    assert tls_server.url.startswith("https://")
    # The catalog and the links name the https endpoint.
    catalog = osc(admin, "catalog", "show", "network")
    urls = [e["url"] for e in catalog["endpoints"]]
    assert urls and all(u.startswith(tls_server.url) for u in urls), urls
    name = unique("tls-net")
    created = osc(admin, "network", "create", name)
    listed = osc(admin, "network", "list", "--name", name)
    assert [n["ID"] for n in listed] == [created["id"]]

    # The same command without OS_CACERT: the CLI's own trust store does not know the CA.
    env = admin.env()
    del env["OS_CACERT"]
    p = subprocess.run([OPENSTACK_BIN, "network", "list", "-f", "json"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0, p.stdout
    assert "CERTIFICATE_VERIFY_FAILED" in p.stderr, p.stderr
