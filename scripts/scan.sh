#!/bin/sh
# Checks a TLS server against Mozilla's server-side TLS configuration with sslyze: the offline answer
# to the tutorial's "test it with SSL Labs".
#
#   scripts/scan.sh HOST:PORT [--profile intermediate|modern] [--ca FILE]
#
# Prints the protocols, cipher suites, key exchange groups, certificate and known-vulnerability checks,
# then a verdict. Exit status: 0 compliant, 1 not compliant, 2 usage error or the scan could not run
# (server unreachable, a scan command failed, sslyze could not be installed).
#
# A failure is anything sslyze's Mozilla checker flags (protocol versions, TLS 1.2 cipher suites, TLS
# 1.3 cipher suites, groups, ECDH/DH sizes, certificate key type, curve, RSA size, signature, lifespan,
# and trust) plus any known vulnerability: Heartbleed, ROBOT (weak or strong oracle), OpenSSL CCS
# injection, no secure renegotiation, client-initiated renegotiation accepted, TLS compression, no
# TLS_FALLBACK_SCSV, no extended master secret. Certificate trust is never waived: a self-signed
# certificate passes only with --ca naming it (or the CA that issued it). That validation also checks
# that the certificate names HOST (a DNS name or an IP address SAN), as a client would.
#
# sslyze is pinned and installed from PyPI into a private virtualenv on first use, outside the repo:
# /var/cache/securesock-venv for root, ${XDG_CACHE_HOME:-~/.cache}/securesock-venv otherwise, or
# $SECURESOCK_VENV_DIR when set. The Mozilla profile data is the one that sslyze version ships.
set -eu

SSLYZE_VERSION=6.3.1

usage() {
    sed -n '5p' "$0" | sed 's/^#  *//' >&2
}

target=""
profile=intermediate
ca=""
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) [ $# -ge 2 ] || { usage; exit 2; }; profile=$2; shift 2 ;;
        --ca) [ $# -ge 2 ] || { usage; exit 2; }; ca=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "scan.sh: unknown option '$1'" >&2; usage; exit 2 ;;
        *) [ -z "$target" ] || { echo "scan.sh: one HOST:PORT only" >&2; exit 2; }; target=$1; shift ;;
    esac
done
[ -n "$target" ] || { usage; exit 2; }
case "$profile" in
    intermediate|modern) ;;
    *) echo "scan.sh: --profile must be intermediate or modern, got '$profile'" >&2; exit 2 ;;
esac
if [ -n "$ca" ] && [ ! -r "$ca" ]; then
    echo "scan.sh: cannot read CA file '$ca'" >&2
    exit 2
fi

# shellcheck source=scripts/common.sh
. "$(dirname "$0")/common.sh"

# The check also catches a venv whose sslyze is not the pinned version.
need_venv "sslyze-$SSLYZE_VERSION" \
    "import sys, sslyze.__version__ as v; sys.exit(v.__version__ != '$SSLYZE_VERSION')" \
    "sslyze==$SSLYZE_VERSION" || exit 2

# sslyze's bundled trust stores trigger deprecation warnings from cryptography on every run; they say
# nothing about the server being scanned.
PYTHONWARNINGS=ignore exec "$venv/bin/python" - "$target" "$profile" "$ca" <<'PYTHON'
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from sslyze import (
    CertificateInfoExtraArgument,
    RobotScanResultEnum,
    ScanCommandAttemptStatusEnum,
    ScanCommandsExtraArguments,
    Scanner,
    ServerConnectivityStatusEnum,
    ServerNetworkLocation,
    ServerScanRequest,
)
from sslyze.__version__ import __version__ as sslyze_version
from sslyze.mozilla_tls_profile.tls_config_checker import (
    SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
    MozillaTlsConfiguration,
    ServerNotCompliantWithTlsConfiguration,
    TlsConfigurationEnum,
    check_server_against_tls_configuration,
)

target, profile, ca = sys.argv[1], sys.argv[2], sys.argv[3]


def die(message):
    print(f"scan.sh: {message}", file=sys.stderr)
    sys.exit(2)


# HOST:PORT, with IPv6 addresses in brackets: [::1]:12345.
host, sep, port_text = target.rpartition(":")
if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
    die(f"expected HOST:PORT, got '{target}'")
host = host[1:-1] if host.startswith("[") and host.endswith("]") else host

extra = ScanCommandsExtraArguments()
if ca:
    extra = ScanCommandsExtraArguments(certificate_info=CertificateInfoExtraArgument(custom_ca_file=Path(ca)))
scanner = Scanner()
scanner.queue_scans(
    [
        ServerScanRequest(
            server_location=ServerNetworkLocation(hostname=host, port=int(port_text)),
            scan_commands=SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
            scan_commands_extra_arguments=extra,
        )
    ]
)
result = next(iter(scanner.get_results()))
if result.connectivity_status != ServerConnectivityStatusEnum.COMPLETED:
    error = result.connectivity_error_trace
    die(f"cannot scan {target}: {error.exc_type.__name__ + ': ' + str(error) if error else 'no TLS connection'}")
scan = result.scan_result
for command in sorted(SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER, key=lambda c: c.value):
    attempt = getattr(scan, command.value)
    if attempt.status != ScanCommandAttemptStatusEnum.COMPLETED:
        reason = attempt.error_reason.value if attempt.error_reason else attempt.status.value
        trace = "".join(attempt.error_trace.format_exception_only()).strip() if attempt.error_trace else ""
        die(f"the {command.value} scan did not complete ({reason}) {trace}")

config = MozillaTlsConfiguration.get(TlsConfigurationEnum(profile))
try:
    check_server_against_tls_configuration(result, config)
    issues = {}
except ServerNotCompliantWithTlsConfiguration as e:
    issues = dict(e.issues)

# Known vulnerabilities the Mozilla checker lets pass: any ROBOT oracle, and accepting client-initiated
# renegotiation (a cheap way to make the server do expensive handshakes over one connection).
robot = scan.robot.result.robot_result
if robot == RobotScanResultEnum.VULNERABLE_WEAK_ORACLE:
    issues["tls_vulnerability_robot"] = "Server is vulnerable to the ROBOT attack (weak oracle)."
reneg = scan.session_renegotiation.result
if reneg.is_vulnerable_to_client_renegotiation_dos:
    issues["tls_vulnerability_client_renegotiation"] = "Server accepts client-initiated renegotiation (DoS)."


def mark(*prefixes):
    bad = [k for k in issues if k.startswith(prefixes)]
    return "FAIL" if bad else "ok"


print(f"sslyze {sslyze_version}: {target} against Mozilla '{profile}' (profile data shipped with sslyze)")

versions = [
    ("SSLv2", scan.ssl_2_0_cipher_suites),
    ("SSLv3", scan.ssl_3_0_cipher_suites),
    ("TLSv1.0", scan.tls_1_0_cipher_suites),
    ("TLSv1.1", scan.tls_1_1_cipher_suites),
    ("TLSv1.2", scan.tls_1_2_cipher_suites),
    ("TLSv1.3", scan.tls_1_3_cipher_suites),
]
accepted = [name for name, attempt in versions if attempt.result.is_tls_version_supported]
refused = [name for name, attempt in versions if not attempt.result.is_tls_version_supported]
print(f"\nprotocols [{mark('tls_versions')}]")
print(f"  accepted: {', '.join(accepted) or 'none'}")
print(f"  refused:  {', '.join(refused) or 'none'}")

print(f"\ncipher suites [{mark('ciphers', 'ciphersuites')}]")
for name, attempt in versions:
    for suite in attempt.result.accepted_cipher_suites:
        key = suite.ephemeral_key
        kex = f"  {getattr(key, 'curve_name', '') or getattr(key, 'type_name', '')} {key.size} bits" if key else ""
        print(f"  {name:8} {suite.cipher_suite.openssl_name:30} {suite.cipher_suite.name:46}{kex}".rstrip())

curves = scan.elliptic_curves.result
supported = [c.name for c in curves.supported_curves or []]
print(f"\nkey exchange groups [{mark('tls_curves', 'ecdh_param_size', 'dh_param_size')}]")
print(f"  accepted: {', '.join(supported) or 'none'}")
print(f"  refused:  {len(curves.rejected_curves or [])} others tested (sslyze cannot offer X25519MLKEM768)")

print(f"\ncertificate [{mark('certificate', 'rsa_key_size', 'maximum_certificate_lifespan')}]")
for deployment in scan.certificate_info.result.certificate_deployments:
    leaf = deployment.received_certificate_chain[0]
    key = leaf.public_key()
    if isinstance(key, EllipticCurvePublicKey):
        key_text = f"ECDSA {key.curve.name}"
    elif isinstance(key, RSAPublicKey):
        key_text = f"RSA {key.key_size} bits"
    else:
        key_text = type(key).__name__
    lifespan = (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days
    trusted_by = [p.trust_store.name for p in deployment.path_validation_results if p.was_validation_successful]
    print(f"  subject:   {leaf.subject.rfc4514_string()} (issuer {leaf.issuer.rfc4514_string()})")
    print(f"  key:       {key_text}, signed {leaf.signature_hash_algorithm.name if leaf.signature_hash_algorithm else '?'}")
    print(f"  validity:  {lifespan} days, until {leaf.not_valid_after_utc:%Y-%m-%d} (profile maximum {config.maximum_certificate_lifespan})")
    if trusted_by:
        print(f"  trust:     trusted for {host} by {', '.join(trusted_by)}")
    else:
        supplied = [p for p in deployment.path_validation_results if p.trust_store.name.startswith("Supplied")]
        why = (supplied or deployment.path_validation_results)[0].validation_error
        hint = "" if ca else " (self-signed? pass --ca FILE)"
        print(f"  trust:     NOT trusted for {host}{hint}: {why}")

ROBOT_TEXT = {
    RobotScanResultEnum.NOT_VULNERABLE_RSA_NOT_SUPPORTED: "not vulnerable (no RSA key exchange)",
    RobotScanResultEnum.NOT_VULNERABLE_NO_ORACLE: "not vulnerable (RSA key exchange, no oracle)",
    RobotScanResultEnum.UNKNOWN_INCONSISTENT_RESULTS: "unknown (inconsistent results)",
}
vulns = [
    ("Heartbleed", not scan.heartbleed.result.is_vulnerable_to_heartbleed, "not vulnerable", "VULNERABLE"),
    ("ROBOT", not robot.value.startswith("VULNERABLE"), ROBOT_TEXT.get(robot, robot.value), robot.value),
    ("OpenSSL CCS injection", not scan.openssl_ccs_injection.result.is_vulnerable_to_ccs_injection, "not vulnerable", "VULNERABLE"),
    ("secure renegotiation", reneg.supports_secure_renegotiation, "supported", "NOT supported"),
    ("client renegotiation", not reneg.is_vulnerable_to_client_renegotiation_dos, "refused", "ACCEPTED (DoS)"),
    ("TLS compression", not scan.tls_compression.result.supports_compression, "disabled", "ENABLED (CRIME)"),
    ("TLS_FALLBACK_SCSV", scan.tls_fallback_scsv.result.supports_fallback_scsv, "supported", "NOT supported"),
    ("extended master secret", scan.tls_extended_master_secret.result.supports_ems_extension, "supported", "NOT supported"),
]
print(f"\nknown vulnerabilities [{mark('tls_vulnerability')}]")
for name, good, good_text, bad_text in vulns:
    print(f"  {name + ':':24} {good_text if good else bad_text}")

print()
if issues:
    print(f"verdict: NOT COMPLIANT with Mozilla '{profile}' ({len(issues)} problem(s)):")
    for key, text in issues.items():
        print(f"  - {key}: {text}")
    sys.exit(1)
print(f"verdict: COMPLIANT with Mozilla '{profile}'")
PYTHON
