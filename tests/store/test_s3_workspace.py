"""A workspace in an S3-compatible bucket: moto's S3 server (real HTTP) started on loopback.

moto honours ``If-None-Match: *`` on PutObject (412 PreconditionFailed when the key exists),
as AWS S3 has since 2024, so write-once here is the server's refusal, not a prior check.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from pathlib import Path

import boto3
import botocore.exceptions
import pytest

from fedrema_cli.errors import StoreError, UnsafeFileError, WriteOnceError
from fedrema_cli.store.remote import Retry, S3Storage
from fedrema_cli.store.storage import STORAGE_OPTIONS_ENV, open_storage
from tests.cli.conftest import full_round, key_exchange, make_federation, run
from tests.store.servers import S3Server

FAST = Retry(attempts=2, first_delay=0.01)


def storage(s3: tuple[S3Server, str], prefix: str = "heart", **options: object) -> S3Storage:
    server, bucket = s3
    return S3Storage(f"s3://{bucket}/{prefix}", server.options(**options), retry=FAST)


def test_write_once_read_list_and_refusals(s3: tuple[S3Server, str], monkeypatch) -> None:
    server, bucket = s3
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, json.dumps(server.options()))
    store = open_storage(f"s3://{bucket}/heart")
    assert isinstance(store, S3Storage)
    assert store.write_once("rounds/0001/a.json", b"one")
    assert not store.write_once("rounds/0001/a.json", b"one")  # identical: a no-op
    with pytest.raises(WriteOnceError, match="different content"):
        store.write_once("rounds/0001/a.json", b"two")
    assert store.read_bytes("rounds/0001/a.json") == b"one"
    store.replace("state.json", b"v1")
    store.replace("state.json", b"v2")
    assert store.read_bytes("state.json") == b"v2"
    store.write_once("rounds/0001/empty.bin", b"")
    assert store.read_bytes("rounds/0001/empty.bin", max_bytes=10) == b""
    assert store.list("rounds/0001") == ["a.json", "empty.bin"]
    assert store.list("rounds") == ["0001"]
    assert store.list(".") == ["rounds", "state.json"]
    assert store.list("nowhere") == []
    assert store.list("rounds/0001/a.json") == []  # a file is not a folder
    assert store.exists("rounds/0001/a.json") and not store.exists("rounds/0001")
    with pytest.raises(StoreError, match="missing file"):
        store.read_bytes("rounds/0001/b.json")
    store.delete("rounds/0001/a.json")
    store.delete("rounds/0001/a.json")
    assert not store.exists("rounds/0001/a.json")
    keys = [o["Key"] for o in server.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(keys) == ["heart/rounds/0001/empty.bin", "heart/state.json"]


def test_the_server_refuses_a_second_writer(s3: tuple[S3Server, str]) -> None:
    server, bucket = s3
    client = server.client()
    client.put_object(Bucket=bucket, Key="heart/result.json", Body=b"first")
    # the server honours the condition itself
    with pytest.raises(botocore.exceptions.ClientError, match="PreconditionFailed"):
        client.put_object(Bucket=bucket, Key="heart/result.json", Body=b"x", IfNoneMatch="*")
    store = storage(s3)
    store._exists = lambda rel: False  # type: ignore[method-assign]  # a stale view changes nothing
    with pytest.raises(WriteOnceError):
        store.write_once("result.json", b"second")
    body = client.get_object(Bucket=bucket, Key="heart/result.json")["Body"].read()
    assert body == b"first"


def race(writers: dict[str, tuple[S3Storage, bytes]], path: str) -> dict[str, object]:
    """Start every writer's write_once of ``path`` at the same moment; what each got."""
    barrier = threading.Barrier(len(writers))
    outcome: dict[str, object] = {}

    def write(name: str, store: S3Storage, data: bytes) -> None:
        barrier.wait()
        try:
            outcome[name] = store.write_once(path, data)
        except WriteOnceError as exc:
            outcome[name] = exc

    threads = [threading.Thread(target=write, args=(n, *w)) for n, w in writers.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return outcome


def test_two_writers_racing_exactly_one_wins(s3: tuple[S3Server, str]) -> None:
    server, bucket = s3
    a, b = storage(s3), storage(s3)
    for trial in range(6):
        outcome = race({"a": (a, b"from a"), "b": (b, b"from b")}, f"race/{trial}.json")
        winners = [n for n, v in outcome.items() if v is True]
        assert len(winners) == 1, outcome
        assert isinstance(outcome["b" if winners == ["a"] else "a"], WriteOnceError)
        key = f"heart/race/{trial}.json"
        body = server.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        assert body == f"from {winners[0]}".encode()


def test_a_large_object_is_refused_after_one_bounded_range(
    s3: tuple[S3Server, str], proxy_to
) -> None:
    server, bucket = s3
    server.client().put_object(Bucket=bucket, Key="heart/big.bin", Body=b"\0" * (16 << 20))
    proxy = proxy_to(int(server.endpoint.rsplit(":", 1)[1]))
    store = storage(s3, endpoint=f"http://127.0.0.1:{proxy.port}")
    with pytest.raises(UnsafeFileError, match="more than the 1,048,576 bytes"):
        store.read_bytes("big.bin", max_bytes=1 << 20)
    assert proxy.requests == 1
    assert (1 << 20) < proxy.downloaded < (1 << 20) + 4096  # cap + 1 bytes, not 16 MB


def test_no_credentials_is_one_line(s3: tuple[S3Server, str]) -> None:
    server, bucket = s3
    store = S3Storage(f"s3://{bucket}/heart", {"endpoint_url": server.endpoint}, retry=FAST)
    with pytest.raises(StoreError, match="no S3 credentials") as caught:
        store.read_bytes("federation.json")
    assert "AWS_ACCESS_KEY_ID" in (caught.value.hint or "")


def test_a_missing_bucket_is_one_line(s3: tuple[S3Server, str], proxy_to) -> None:
    server, _ = s3
    proxy = proxy_to(int(server.endpoint.rsplit(":", 1)[1]))
    store = S3Storage(
        "s3://no-such-bucket-here/heart",
        server.options(endpoint=f"http://127.0.0.1:{proxy.port}"),
        retry=FAST,
    )
    with pytest.raises(StoreError, match="bucket 'no-such-bucket-here' does not exist"):
        store.write_once("federation.json", b"{}")
    assert proxy.requests == 1  # a permanent error: not retried


def test_access_denied_and_bad_keys_are_one_line(
    s3: tuple[S3Server, str], request: pytest.FixtureRequest
) -> None:
    server, bucket = s3
    iam = boto3.client(
        "iam",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=server.key,
        aws_secret_access_key=server.secret,
    )
    user = f"nobody-{bucket}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    server.require_auth(True)  # moto checks every request against IAM from now on
    request.addfinalizer(lambda: server.require_auth(False))
    denied = storage(s3, key=key["AccessKeyId"], secret=key["SecretAccessKey"])
    with pytest.raises(StoreError, match="access denied: cannot read"):
        denied.read_bytes("federation.json")
    stranger = storage(s3, key="AKIAUNKNOWN000000000", secret="x")
    with pytest.raises(StoreError, match=r"refused the S3 credentials \(InvalidAccessKeyId\)"):
        stranger.write_once("federation.json", b"{}")


def test_an_endpoint_that_is_down_fails_after_a_few_attempts(s3: tuple[S3Server, str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    store = storage(s3, endpoint=f"http://127.0.0.1:{port}")
    start = time.perf_counter()
    with pytest.raises(StoreError, match="gave up after 2 attempts") as caught:
        store.exists("federation.json")
    assert time.perf_counter() - start < 10
    assert "\n" not in str(caught.value)


def test_dropped_connections_are_retried(s3: tuple[S3Server, str], proxy_to) -> None:
    server, _ = s3
    proxy = proxy_to(int(server.endpoint.rsplit(":", 1)[1]))
    store = storage(s3, endpoint=f"http://127.0.0.1:{proxy.port}")
    store.retry = Retry(attempts=4, first_delay=0.01)
    proxy.drop_next = 2
    assert store.write_once("a.json", b"x")
    assert proxy.connections >= 3 and proxy.requests == 1  # two resets, then the PUT
    proxy.cut()
    assert store.read_bytes("a.json") == b"x"


def test_without_the_s3_extra_the_error_says_how_to_install_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "s3fs", None)  # import s3fs now fails
    with pytest.raises(StoreError, match="s3 extra") as caught:
        open_storage("s3://bucket/heart")
    assert "fedrema[s3]" in (caught.value.hint or "")


def test_a_whole_federation_with_the_workspace_on_s3(
    s3: tuple[S3Server, str], tmp_path: Path, monkeypatch
) -> None:
    server, bucket = s3
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, json.dumps(server.options()))
    fed = make_federation(tmp_path, "--rounds", "1", "--no-dp", workspace=f"s3://{bucket}/heart")
    key_exchange(fed)
    full_round(fed)
    assert run("status", "-s", fed.coordinator, "--json").json()["complete"]
    out = run("personalize", "-s", fed.site("va"), "--json").json()
    assert out["complete"] and out["metrics"]["n"] == 45
    client = server.client()
    client.head_object(Bucket=bucket, Key="heart/rounds/0001/result.json")
    client.head_object(Bucket=bucket, Key="heart/rounds/0001/submissions/va.masked.bin")
    # an object altered in the bucket is refused when read
    key = "heart/rounds/0002/model.params.safetensors"
    data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[-1] ^= 0x01
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data))
    out = run("personalize", "-s", fed.site("va"))
    assert out.exit_code == 3 and "does not match its signed hash" in out.stderr
