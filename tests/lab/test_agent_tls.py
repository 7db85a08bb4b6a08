"""The agent over HTTPS: a lab whose `kuryr server` serves TLS with a certificate from a CA
made here (python `cryptography`, which openstacksdk already needs); the agent trusts it
through OS_CACERT and refuses it with a CA bundle that did not sign it."""

import datetime
import ipaddress
import os
import shutil
import tempfile
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lab import UNDERLAY, Lab


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn, start, end):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def make_pki(d, ip):
    """PEM files: a CA, a server certificate it signs for `ip`, its key, and a second CA
    that signed nothing here."""
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
    ca, ca_key = _ca("kuryr lab CA", start, end)
    other, _ = _ca("some other CA", start, end)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(_name("kuryr server")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    files = {"ca": ca.public_bytes(pem), "other_ca": other.public_bytes(pem),
             "cert": cert.public_bytes(pem),
             "key": key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())}
    paths = {}
    for k, data in files.items():
        paths[k] = os.path.join(d, f"{k}.pem")
        with open(paths[k], "wb") as f:
            f.write(data)
    return paths


@pytest.fixture
def tls_lab():
    if os.geteuid() != 0:
        pytest.fail("the lab needs root (network namespaces)")
    d = tempfile.mkdtemp(prefix="kuryr-lab-tls-")
    pki = make_pki(d, f"{UNDERLAY}.1")
    lab = Lab(hosts=1, server_args=["--tls-cert", pki["cert"], "--tls-key", pki["key"]],
              cacert=pki["ca"])
    try:
        yield lab, pki
    finally:
        lab.close()
        shutil.rmtree(d, ignore_errors=True)


def alive(lab):
    return {a["Host"]: a["Alive"] for a in lab.openstack("network", "agent", "list")}


def test_agent_trusts_the_server_through_its_ca_only(tls_lab):
    lab, pki = tls_lab
    assert lab.url.startswith("https://")
    # Registered over HTTPS (Lab waited for it to sync its host view); the CLI too.
    assert alive(lab) == {"h1": True}
    # And it realizes a port: the bind reports it ACTIVE through the server.
    tag = uuid.uuid4().hex[:6]
    net, _ = lab.network(f"t-net-{tag}", f"10.{100 + int(tag, 16) % 100}.7.0/24")
    port = lab.port(net)
    lab.add_container(f"t-c-{tag}")
    lab.bind("h1", port, f"t-c-{tag}")
    lab.wait_for(lambda: lab.api("GET", f"/ports/{port['id']}")[1]["port"]["status"] == "ACTIVE",
                 30, "the port to be ACTIVE", lab.agents["h1"])

    # Restarted with a CA bundle that did not sign the server's certificate (--os-cacert
    # overrides OS_CACERT): it cannot log in, and the server sees it go down.
    assert lab.agents["h1"].stop(timeout=10)
    with open(lab.agents["h1"].log_path, errors="replace") as f:
        before = len(f.read())

    def since_restart():
        with open(lab.agents["h1"].log_path, errors="replace") as f:
            return f.read()[before:]

    agent = lab.start_agent("h1", "--os-cacert", pki["other_ca"])
    lab.wait_for(lambda: "UnknownIssuer" in since_restart(), 30,
                 "the agent to refuse the server's certificate", agent)
    lab.wait_for(lambda: alive(lab) == {"h1": False}, 30, "h1 to be shown dead")

    # Back with the right CA: alive again.
    assert agent.stop(timeout=10)
    lab.start_agent("h1")
    lab.wait_agent_ready("h1")
    lab.wait_for(lambda: alive(lab) == {"h1": True}, 30, "h1 to be alive again")
