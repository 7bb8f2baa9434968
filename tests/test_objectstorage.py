"""The object storage's pieces without a main job: what is missing is said, an external
storage's configuration is checked, the local TLS files and per-organization buckets."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


def test_the_tls_files_are_private_kept_and_the_server_certificate_chains_to_the_ca(tmp_path: Path) -> None:
    from controlplane.objectstorage import tls

    first = tls.ensure(tmp_path / "tls")
    assert tls.ensure(tmp_path / "tls") == first  # kept across starts
    assert os.stat(tmp_path / "tls").st_mode & 0o777 == 0o700
    assert {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "tls").iterdir()} == dict.fromkeys(
        ["ca.key", "ca.pem", "keystore-password", "keystore.p12", "server.csr", "server.ext", "server.key",
         "server.pem"], 0o600)
    verified = subprocess.run(["openssl", "verify", "-CAfile", str(first.ca), str(tmp_path / "tls" / "server.pem")],
                              capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr
    names = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in",
                            str(tmp_path / "tls" / "server.pem")], capture_output=True, text=True).stdout
    assert "IP Address:127.0.0.1" in names and "DNS:localhost" in names
    assert first.password not in " ".join(os.listdir(tmp_path / "tls"))


def test_without_java_or_the_jar_push_access_is_a_400_naming_what_to_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import anyio

    from controlplane.errors import BadRequest
    from controlplane.objectstorage.service import ObjectStorage

    monkeypatch.setenv("CONTROLPLANE_S3PROXY_JAR", str(tmp_path / "missing.jar"))
    storage = ObjectStorage(tmp_path / "storage")
    with pytest.raises(BadRequest, match=r"has none: it needs the s3proxy 4\.1\.0 jar .*CONTROLPLANE_S3PROXY_JAR") as caught:
        anyio.run(storage.push_access, "org")
    assert caught.value.code == "OBJECT_STORAGE_UNAVAILABLE"
    assert "none: Image.add_local_file/add_local_dir need the s3proxy" in storage.describe()


def test_an_external_storage_is_configured_completely_and_over_https(monkeypatch: pytest.MonkeyPatch) -> None:
    import anyio

    from controlplane.objectstorage.access import ExternalS3

    monkeypatch.setenv("CONTROLPLANE_S3_ENDPOINT", "http://minio:9000")
    with pytest.raises(ValueError, match="CONTROLPLANE_S3_ACCESS_KEY, CONTROLPLANE_S3_SECRET_KEY, CONTROLPLANE_S3_BUCKET"):
        ExternalS3.from_env()
    for name, value in (("ACCESS_KEY", "ak"), ("SECRET_KEY", "sk"), ("BUCKET", "contexts")):
        monkeypatch.setenv(f"CONTROLPLANE_S3_{name}", value)
    with pytest.raises(ValueError, match="must be https://"):
        ExternalS3.from_env()
    monkeypatch.setenv("CONTROLPLANE_S3_ENDPOINT", "https://minio.example:9000/")
    external = ExternalS3.from_env()
    assert external is not None
    assert anyio.run(external.access, "org-1").dto() == {
        "accessKey": "ak", "secret": "sk", "sessionToken": "", "storageUrl": "https://minio.example:9000",
        "organizationId": "org-1", "bucket": "contexts", "region": "us-east-1"}


def test_a_wrong_external_configuration_is_said_at_push_access(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import anyio

    from controlplane.errors import BadRequest
    from controlplane.objectstorage.service import ObjectStorage

    monkeypatch.setenv("CONTROLPLANE_S3_ENDPOINT", "http://minio:9000")
    storage = ObjectStorage(tmp_path / "storage")  # the main job still starts
    with pytest.raises(BadRequest, match="CONTROLPLANE_S3_ENDPOINT is set but CONTROLPLANE_S3_ACCESS_KEY"):
        anyio.run(storage.push_access, "org")


def test_an_organizations_bucket_is_new_and_never_one_made_in_advance(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any key may create a bucket no organization claims yet (measured on s3proxy 4.1.0), so
    a bucket named after the organization could be made and filled before it first uploads.
    Names are random, and a name whose directory already exists is never taken."""
    from controlplane.objectstorage import local

    real = local.secrets.token_hex

    one, two = local.LocalS3(tmp_path / "one"), local.LocalS3(tmp_path / "two")
    first, second = one._tenant("org-a"), two._tenant("org-a")
    assert first.bucket != second.bucket and first.credential != second.credential
    assert one._tenant("org-a") == first  # kept
    assert os.stat(tmp_path / "one" / "tenants.json").st_mode & 0o777 == 0o600
    made_in_advance = "ctx-" + "ab" * 16
    (tmp_path / "one" / "data" / made_in_advance).mkdir()
    (tmp_path / "one" / "data" / made_in_advance / "planted").write_text("x")
    tokens = iter(["ab" * 16, "cd" * 16])
    monkeypatch.setattr(local.secrets, "token_hex", lambda n: next(tokens) if n == 16 else real(n))
    assert one._tenant("org-b").bucket == "ctx-" + "cd" * 16
    assert list((tmp_path / "one" / "data" / ("ctx-" + "cd" * 16)).iterdir()) == []
