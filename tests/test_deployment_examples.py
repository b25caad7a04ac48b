"""docs/deployment.md's systemd unit and nginx site, as the page shows them: the unit passes `systemd-analyze
verify` (skipped where systemd is missing) and its settings are ones the gateway takes; the site passes
`nginx -t` (Debian's nginx; required in CI), proxies to the address the unit serves on, from an address the
unit trusts."""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.settings import Settings
from tests.conftest import unavailable

DOC = Path(__file__).resolve().parents[1] / "docs" / "deployment.md"
VENV_PORTCULLIS = "/opt/portcullis/.venv/bin/portcullis"


def fenced(language: str) -> str:
    """The one ```language block of docs/deployment.md (a language the docs' example runner does not run: this
    module checks it instead)."""
    lines = DOC.read_text().splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.strip() == f"```{language}":
            end = lines.index("```", i + 1)
            found.append("\n".join(lines[i + 1 : end]) + "\n")
    assert len(found) == 1, f"expected one {language} block in {DOC.name}, found {len(found)}"
    return found[0]


def unit_settings(unit: str) -> dict[str, str]:
    return dict(m.groups() for m in re.finditer(r"^Environment=([A-Z_]+)=(\S+)$", unit, re.MULTILINE))


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here (the unit's other checks still run)")
    unit = fenced("ini")
    assert unit.startswith("# /etc/systemd/system/portcullis.service")
    assert VENV_PORTCULLIS in unit
    # verify checks that the programs exist: point it at this checkout's command
    local = str(Path(sys.executable).parent / "portcullis")
    path = tmp_path / "portcullis.service"
    path.write_text(unit.replace(VENV_PORTCULLIS, local))
    done = subprocess.run(
        [analyze, "verify", "--man=no", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    problems = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if "portcullis.service" in line and "not found" not in line.lower()
    ]
    assert done.returncode == 0, done.stderr
    assert problems == []


def test_the_units_settings_are_ones_the_gateway_takes(tmp_path: Path) -> None:
    unit = fenced("ini")
    values = unit_settings(unit)
    assert values["PORTCULLIS_ENV"] == "prod"
    key = tmp_path / "signing-key.pem"
    made = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "keys", "generate"], capture_output=True, text=True, check=True
    )
    key.write_text(made.stdout)
    fields = {name.removeprefix("PORTCULLIS_").lower(): value for name, value in values.items()}
    fields["signing_key_file"] = str(key)
    secrets = {name: "s" * 40 for name in ("api_key_pepper", "cookie_secret", "data_encryption_key", "metrics_token")}
    settings = Settings(_env_file=None, **fields, **secrets)  # type: ignore[arg-type]
    assert settings.is_prod
    serve = re.search(r"^ExecStart=\S+ serve --host (\S+) --port (\d+) --workers (\d+)$", unit, re.MULTILINE)
    assert serve is not None
    assert int(serve.group(3)) == 1 or not settings.database_url.startswith("sqlite")
    assert re.search(r"^ExecStartPre=\S+ migrate$", unit, re.MULTILINE)


def _certificate(directory: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway.example.com")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (directory / "fullchain.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "privkey.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def test_the_nginx_site_passes_nginx_t(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        unavailable("nginx is not installed (apt-get install nginx-light)")
        return
    site = fenced("nginx")
    assert site.startswith("# /etc/nginx/conf.d/portcullis.conf")
    certs = tmp_path / "certs"
    certs.mkdir()
    _certificate(certs)
    (tmp_path / "portcullis.conf").write_text(site.replace("/etc/ssl/portcullis/", f"{certs}/"))
    temp = "\n".join(
        f"    {kind}_temp_path {tmp_path}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n    access_log off;\n{temp}\n    include {tmp_path}/portcullis.conf;\n}}\n"
    )
    done = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "syntax is ok" in done.stderr


def test_nginx_proxies_to_the_units_address_from_a_trusted_proxy() -> None:
    unit, site = fenced("ini"), fenced("nginx")
    serve = re.search(r"serve --host (\S+) --port (\d+)", unit)
    assert serve is not None
    upstream = re.search(r"upstream portcullis \{\s*server ([\d.]+):(\d+);", site)
    assert upstream is not None
    assert upstream.groups() == serve.groups()
    trusted = [ipaddress.ip_network(n) for n in unit_settings(unit)["PORTCULLIS_TRUSTED_PROXIES"].split(",")]
    # nginx connects from the address it connects to, on one host: the gateway must trust it
    assert any(ipaddress.ip_address(upstream.group(1)) in network for network in trusted)
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in site
    assert re.search(r"location = /metrics \{\s*return 404;", site)
