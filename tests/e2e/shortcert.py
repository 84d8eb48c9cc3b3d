#!/usr/bin/env python3
"""Signs a client certificate with the cluster CA for an existing key, with a chosen life:
`shortcert.py CA.crt CA.key KEY USER GROUP LIFE-SECONDS DUE-IN-SECONDS > CERT`.

The certificate is valid for LIFE seconds and reaches 80% of its life (when a node renews
it) DUE-IN seconds from now (negative: already past). Tests use it to make a node's
certificate near its renewal without waiting a year.
"""
import datetime, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ca_crt, ca_key, key_file, user, group, life, due_in = sys.argv[1:8]
life, due_in = float(life), float(due_in)
ca = x509.load_pem_x509_certificate(open(ca_crt, "rb").read())
signer = serialization.load_pem_private_key(open(ca_key, "rb").read(), password=None)
key = serialization.load_pem_private_key(open(key_file, "rb").read(), password=None)
now = datetime.datetime.now(datetime.timezone.utc)
not_before = now + datetime.timedelta(seconds=due_in - 0.8 * life)
cert = (
    x509.CertificateBuilder()
    .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, group), x509.NameAttribute(NameOID.COMMON_NAME, user)]))
    .issuer_name(ca.subject)
    .public_key(key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(not_before)
    .not_valid_after(not_before + datetime.timedelta(seconds=life))
    .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    .sign(signer, hashes.SHA256())
)
sys.stdout.write(cert.public_bytes(serialization.Encoding.PEM).decode())
