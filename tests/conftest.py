"""Shared fixtures.

Sections:

* AWS environment -- set at import, before anything creates a boto3 client,
  so that no test can reach real AWS or read the developer's AWS config.
* moto server -- one moto S3/KMS server subprocess per test session.
* Stores -- fixtures parametrized over the store kinds (``local``, ``s3``),
  so that a test taking ``store`` (or ``store_spec``) runs once per kind,
  with ids ``test_x[local]`` and ``test_x[s3]``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sealfs.store import Store, open_store

# -- AWS environment -----------------------------------------------------------

_AWS_UNSET = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL_KMS",
    "AWS_REGION",
)
for _name in _AWS_UNSET:
    os.environ.pop(_name, None)
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        # No shared config or credentials files: nothing from ~/.aws.
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
)
# Loopback traffic must not go through a proxy.
for _name in ("NO_PROXY", "no_proxy"):
    os.environ[_name] = ",".join(filter(None, [os.environ.get(_name), "127.0.0.1", "localhost"]))

# -- moto server ---------------------------------------------------------------

MOTO_START_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers_http(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means the server is up
    except OSError:
        return False


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL (``http://127.0.0.1:PORT``) of a moto server (S3 and
    KMS) running in a subprocess for the whole session."""
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + MOTO_START_TIMEOUT
        while not _answers_http(url):
            if proc.poll() is not None:
                pytest.fail(f"moto server exited with {proc.returncode}:\n{log_path.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"moto server did not answer within {MOTO_START_TIMEOUT} s:\n{log_path.read_text()}")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def moto_s3(moto_server: str) -> Iterator[object]:
    """A plain boto3 S3 client of the moto server, for tests that look
    behind a store's back."""
    import boto3

    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    yield client
    client.close()


def _empty_and_delete_bucket(client, bucket: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    client.delete_bucket(Bucket=bucket)


@pytest.fixture
def make_bucket(moto_s3) -> Iterator[Callable[[], str]]:
    """A factory of fresh, uniquely named buckets on the moto server; they
    are emptied and deleted after the test (moto keeps objects in memory)."""
    made: list[str] = []

    def make() -> str:
        name = f"sealfs-test-{uuid.uuid4().hex[:16]}"
        moto_s3.create_bucket(Bucket=name)
        made.append(name)
        return name

    yield make
    for name in made:
        _empty_and_delete_bucket(moto_s3, name)


@pytest.fixture
def s3_bucket(make_bucket: Callable[[], str]) -> str:
    """The name of a fresh bucket on the moto server."""
    return make_bucket()


# -- stores --------------------------------------------------------------------

STORE_KINDS = ("local", "s3")


@dataclass(frozen=True)
class StoreSpec:
    """How to reach a test store: what a user would put on the command line."""

    kind: str
    url: str
    options: dict[str, str] = field(default_factory=dict)

    def open(self, *, create: bool = False) -> Store:
        return open_store(self.url, self.options, create=create)


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_store_spec(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[], StoreSpec]:
    """A factory of specs of fresh, empty stores of ``store_kind``: a new
    directory (not yet created) for ``local``, a new bucket with the prefix
    ``pfx`` on the moto server for ``s3``."""
    counter = iter(range(1_000_000))

    def make() -> StoreSpec:
        n = next(counter)
        if store_kind == "local":
            return StoreSpec("local", (tmp_path / f"store{n}").as_uri())
        bucket = request.getfixturevalue("make_bucket")()
        endpoint = request.getfixturevalue("moto_server")
        return StoreSpec("s3", f"s3://{bucket}/pfx", {"endpoint": endpoint, "path_style": "1"})

    return make


@pytest.fixture
def store_spec(make_store_spec: Callable[[], StoreSpec]) -> StoreSpec:
    """The spec of one fresh store of each kind."""
    return make_store_spec()


@pytest.fixture
def store(store_spec: StoreSpec) -> Iterator[Store]:
    """A fresh, empty store of each kind, opened (and for local, created)."""
    s = store_spec.open(create=True)
    yield s
    s.close()
