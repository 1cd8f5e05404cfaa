"""A real S3 store for tests and benchmarks: Ceph's RADOS Gateway, started by
``scripts/ceph-rgw.sh`` (one mon, one memstore OSD, the gateway on 127.0.0.1), and helpers to put
a backup folder into it and to take its objects' fingerprints.

``RadosGateway.start(dir)`` runs the script and reads back the endpoint and keys it printed;
``stop_gateway``/``start_gateway`` stop and restart the gateway process only (a store outage:
the cluster behind it keeps running); ``stop`` ends every process by the PIDs the script
recorded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import attrs
import obstore
from obstore.store import S3Store

__all__ = ["SCRIPT", "RadosGateway", "object_digests", "rgw_available", "upload_tree"]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ceph-rgw.sh"
_TOOLS = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "curl")


def rgw_available() -> bool:
    """Whether the Ceph packages the script needs are installed."""
    return SCRIPT.is_file() and all(shutil.which(t) for t in _TOOLS)


@attrs.frozen
class RadosGateway:
    """A running single-node Ceph cluster with its S3 gateway (see the module docstring)."""

    dir: Path
    env: Mapping[str, str]
    bucket: str = "backups"

    @classmethod
    def start(cls, dir: Path, *, timeout_s: float = 240.0) -> RadosGateway:
        """Start it in ``dir`` (about 15-30 s); a failed start (a port taken between its choice
        and its use, a loaded machine) is tried once more.

        :raises RuntimeError: with the script's output.
        """
        for attempt in (1, 2):
            done = subprocess.run(
                ["bash", str(SCRIPT), "start", str(dir)],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
            if done.returncode == 0:
                break
            if attempt == 2:
                raise RuntimeError(f"ceph-rgw.sh start failed:\n{done.stdout}\n{done.stderr}")
        env = {}
        for line in (dir / "env").read_text().splitlines():
            key, _, value = line.partition("=")
            env[key] = value.strip('"')
        return cls(dir, env, env.get("RGW_BUCKETS", "backups").split()[0])

    @property
    def endpoint(self) -> str:
        return self.env["AWS_ENDPOINT_URL"]

    def environ(self, **extra: str) -> dict[str, str]:
        """``os.environ`` with this store's endpoint and keys (the AWS variables)."""
        out = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        out.update({k: v for k, v in self.env.items() if k.startswith("AWS_")})
        out.update(extra)
        return out

    def store(self, bucket: str | None = None) -> S3Store:
        """An obstore client of ``bucket`` (default: the one the script made)."""
        return S3Store(
            bucket or self.bucket,
            config={
                "endpoint": self.endpoint,
                "access_key_id": self.env["AWS_ACCESS_KEY_ID"],
                "secret_access_key": self.env["AWS_SECRET_ACCESS_KEY"],
                "region": self.env.get("AWS_REGION", "us-east-1"),
            },
            client_options={"allow_http": True},
        )

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def _script(self, verb: str) -> None:
        subprocess.run(
            ["bash", str(SCRIPT), verb, str(self.dir)], check=True, capture_output=True, timeout=120
        )

    def stop_gateway(self) -> None:
        """Stop radosgw only: the store is unreachable until ``start_gateway``."""
        self._script("stop-rgw")

    def start_gateway(self) -> None:
        """Start radosgw again on the same port (returns once it answers)."""
        self._script("start-rgw")

    def stop(self) -> None:
        """Stop every process the script started, by its recorded PID."""
        self._script("stop")


def upload_tree(store: S3Store, folder: Path, prefix: str) -> list[str]:
    """Put every file under ``folder`` at ``prefix/<relative path>``; the keys, sorted."""
    keys = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = f"{prefix}/{path.relative_to(folder).as_posix()}".lstrip("/")
        obstore.put(store, key, path, chunk_size=8 << 20)
        keys.append(key)
    return keys


def object_digests(store: S3Store, prefix: str) -> dict[str, tuple[str, str]]:
    """Key -> (ETag, SHA-256 of the bytes) of every object under ``prefix``: equal before and
    after a recovery when nothing was written to the backup."""
    out = {}
    for batch in obstore.list(store, prefix=prefix + "/"):
        for meta in batch:
            data = obstore.get(store, meta["path"]).bytes()
            out[meta["path"]] = (meta.get("e_tag") or "", hashlib.sha256(data).hexdigest())
    return out
