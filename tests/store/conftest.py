"""Fixtures for the store tests: real servers on loopback, and a clean environment.

Every test here runs with HOME pointing at an empty folder and no AWS settings, so neither
this machine's ~/.ssh nor its AWS profile can make a test pass (or reach the network:
botocore's instance-metadata lookup is switched off).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.store.servers import FlakyProxy, S3Server, SftpServer, s3_server, sftp_server


@pytest.fixture(autouse=True)
def clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "FEDREMA_STORAGE_OPTIONS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(home / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return home


@pytest.fixture
def sftp(tmp_path: Path) -> Iterator[SftpServer]:
    with sftp_server(tmp_path) as server:
        yield server


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


@pytest.fixture
def s3(s3_endpoint: S3Server) -> tuple[S3Server, str]:
    """The S3 server and a new, empty bucket of this test's own."""
    bucket = f"fedrema-{uuid.uuid4().hex[:12]}"
    s3_endpoint.client().create_bucket(Bucket=bucket)
    return s3_endpoint, bucket


@pytest.fixture
def proxy_to() -> Iterator[type[FlakyProxy]]:
    """Make FlakyProxy(port) instances, closed after the test."""
    made: list[FlakyProxy] = []

    class Tracked(FlakyProxy):
        def __init__(self, target_port: int) -> None:
            super().__init__(target_port)
            made.append(self)

    yield Tracked
    for p in made:
        p.close()
