"""The S3 adapter against a stand-in for the boto3 client (the outside world is mocked, nothing else)."""

import hashlib
import io
import os
from types import SimpleNamespace

import pytest

from evaluation import upload_storage
from evaluation.upload_storage import S3ChunkStore


class FakeS3Client:
    """Just enough of boto3's S3 client, with S3's own rule that parts but the last are at least 5 MiB."""

    MIN_PART = 5 * 1024 * 1024

    def __init__(self):
        self.objects: dict[str, bytes] = {}
        self.multipart: dict[str, dict] = {}
        self.aborted: list[str] = []

    def create_multipart_upload(self, Bucket, Key):
        upload_id = f"mp-{len(self.multipart)}"
        self.multipart[upload_id] = {"key": Key, "parts": {}}
        return {"UploadId": upload_id}

    def upload_part(self, Bucket, Key, UploadId, PartNumber, Body):
        self.multipart[UploadId]["parts"][PartNumber] = bytes(Body)
        return {"ETag": hashlib.md5(Body).hexdigest()}

    def complete_multipart_upload(self, Bucket, Key, UploadId, MultipartUpload):
        parts = self.multipart.pop(UploadId)["parts"]
        numbers = [p["PartNumber"] for p in MultipartUpload["Parts"]]
        assert numbers == sorted(parts) == list(range(1, len(parts) + 1))
        assert all(len(parts[n]) >= self.MIN_PART for n in numbers[:-1]), "EntityTooSmall"
        self.objects[Key] = b"".join(parts[n] for n in numbers)

    def abort_multipart_upload(self, Bucket, Key, UploadId):
        self.multipart.pop(UploadId, None)
        self.aborted.append(UploadId)

    def put_object(self, Bucket, Key, Body):
        self.objects[Key] = bytes(Body)

    def get_object(self, Bucket, Key):
        return {"Body": io.BytesIO(self.objects[Key])}

    def delete_object(self, Bucket, Key):
        self.objects.pop(Key, None)


@pytest.fixture
def store():
    client = FakeS3Client()
    storage = SimpleNamespace(
        connection=SimpleNamespace(meta=SimpleNamespace(client=client)),
        bucket_name="bucket",
        _normalize_name=lambda name: name,
    )
    return S3ChunkStore(storage), client


def send(store, name, state, offset, length, data, pieces=3):
    appender = store.appender(name, state, offset, length)
    step = max(1, len(data) // pieces)
    for i in range(0, len(data), step):
        appender.write(data[i : i + step])
    return appender


def test_small_tus_chunks_become_valid_multipart_parts(store, tmp_path):
    store, client = store
    data = os.urandom(21 * 1024 * 1024 + 77)
    state = store.begin("uploads/1/x")
    offset = 0
    for size in (3 * 1024 * 1024, 1024 * 1024, 9 * 1024 * 1024, 5, len(data)):
        chunk = data[offset : offset + size]
        if not chunk:
            break
        state = send(store, "uploads/1/x", state, offset, len(data), chunk).commit()
        offset += len(chunk)
        if offset < len(data):
            # Everything not yet in a part is in the tail object: nothing is kept in memory between requests.
            assert len(client.objects["uploads/1/x.tail"]) == state["tail_bytes"] < upload_storage.S3_PART_BYTES
    assert state["complete"] and client.objects["uploads/1/x"] == data
    assert "uploads/1/x.tail" not in client.objects
    with store.local_copy("uploads/1/x", tmp_path) as path:
        assert path.read_bytes() == data


def test_rolled_back_chunk_leaves_nothing(store):
    store, client = store
    state = store.begin("k")
    state = send(store, "k", state, 0, 100, b"a" * 40).commit()
    send(store, "k", state, 40, 100, b"b" * 60).rollback()
    state = send(store, "k", state, 40, 100, b"c" * 60).commit()
    assert client.objects["k"] == b"a" * 40 + b"c" * 60


def test_delete_aborts_the_multipart_upload(store):
    store, client = store
    state = store.begin("k")
    state = send(store, "k", state, 0, 100, b"a" * 40).commit()
    store.delete("k", state)
    assert client.aborted == [state["upload_id"]] and client.objects == {}


def test_chunk_store_picks_the_adapter_from_the_default_storage(settings, tmp_path):
    assert isinstance(upload_storage.chunk_store(), upload_storage.LocalChunkStore)
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {"bucket_name": "b", "region_name": "us-east-1", "access_key": "x", "secret_key": "y"},
        },
    }
    assert isinstance(upload_storage.chunk_store(), S3ChunkStore)
