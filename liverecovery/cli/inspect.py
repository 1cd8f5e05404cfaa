"""``liverecovery inspect PATH``: what a backup root, VM folder or OVA holds.

Lists each VM's restore points with their disks: virtual size, allocated bytes (from the
allocation map, no data read), VMDK format, media kind and archived flag.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from liverecovery.backends import CatalogReader, RunKind
from liverecovery.catalog.opening import open_catalog
from liverecovery.catalog.vmdk import VmdkDisk
from liverecovery.errors import CatalogError

__all__ = ["inspect_path", "register", "run"]


def register(sub: Any) -> None:
    """Add the ``inspect`` subcommand."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "inspect", help="list the VMs, restore points and disks of a backup"
    )
    parser.add_argument(
        "path", help="a backup root, one VM folder, an .ova file, or s3://bucket/prefix"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(handler=run)


async def inspect_path(path: str) -> dict[str, Any]:
    """The inventory of ``path`` as plain data. :raises CatalogError: malformed backup."""
    catalog = open_catalog(path)
    vms: list[dict[str, Any]] = []
    for name in await catalog.vm_names():
        try:
            vms.append({"name": name, "restore_points": await _points(catalog, name)})
        except CatalogError as exc:  # one broken VM does not hide the others
            vms.append({"name": name, "error": str(exc)})
    return {"path": path, "vms": vms}


async def _points(catalog: CatalogReader, name: str) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = []
    for point in await catalog.restore_points(name):
        disks = []
        for disk in point.disks:
            reader = await catalog.open_disk(point, disk)
            try:
                runs = await reader.allocation()
                allocated = sum(r.length for r in runs if r.kind is RunKind.DATA)
                fmt = reader.create_type if isinstance(reader, VmdkDisk) else ""
            finally:
                await reader.aclose()
            disks.append(
                {
                    "key": disk.key,
                    "file": disk.file_name,
                    "adapter": disk.adapter,
                    "virtual_bytes": disk.capacity_bytes,
                    "allocated_bytes": allocated,
                    "format": fmt,
                }
            )
        points.append(
            {
                "id": point.point_id,
                "created": point.created.isoformat() if point.created else None,
                "media": point.media.value,
                "archived": point.archived,
                "passkey_required": point.passkey_required,
                "config": point.vmx_name,
                "guest_os": point.guest_os,
                "memory_mb": point.memory_mb,
                "num_cpus": point.num_cpus,
                "disks": disks,
                "warnings": list(point.warnings),
            }
        )
    return points


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


NO_VMS = (
    "no VMs found: looked for VM folders holding a .vmx, dated restore-point folders "
    "(YYYY-MM-DD...) or .ova files"
)


async def run(args: argparse.Namespace) -> int:
    """Print the inventory of ``args.path``; exit code 1 if no VM was found or one could not be
    read. Errors and warnings go to stderr, once each; the inventory to stdout."""
    report = await inspect_path(args.path)
    broken = [vm for vm in report["vms"] if "error" in vm]
    for vm in broken:
        print(f"liverecovery: error: VM {vm['name']}: {vm['error']}", file=sys.stderr)
    for vm in report["vms"]:
        for p in vm.get("restore_points", []):
            for warning in p["warnings"]:
                where = f"{vm['name']} {p['id']} {p['config']}"
                print(f"liverecovery: warning: {where}: {warning}", file=sys.stderr)
    if not report["vms"]:
        print(f"liverecovery: error: {args.path}: {NO_VMS}", file=sys.stderr)
    code = 1 if broken or not report["vms"] else 0
    if args.json:
        print(json.dumps(report, indent=2))
        return code
    for vm in report["vms"]:
        print(f"{vm['name']}" + ("  (unreadable: see the error above)" if "error" in vm else ""))
        for p in vm.get("restore_points", []):
            flags = [p["media"]] + (["archived"] if p["archived"] else [])
            flags += ["passkey"] if p["passkey_required"] else []
            print(
                f"  {p['id']}  created {p['created'] or '?'}  [{', '.join(flags)}]  "
                f"{p['guest_os'] or '?'}, {p['num_cpus']} CPU, {p['memory_mb']} MiB"
            )
            for d in p["disks"]:
                print(
                    f"    {d['key']:10} {d['file']}  {_size(d['virtual_bytes'])} virtual, "
                    f"{_size(d['allocated_bytes'])} allocated, {d['format']}, {d['adapter']}"
                )
    return code
