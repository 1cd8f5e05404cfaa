"""Blocking inventory lookups for the pyvmomi backend: find hosts, datastores, pools, folders.

Every function here makes SOAP calls: the client runs them in worker threads. Objects are found
by name through the property collector, one round trip per lookup where possible, so a busy
vCenter (and concurrent jobs mounting and unmounting) cannot change the inventory mid-read.
"""

from __future__ import annotations

import contextlib
from typing import Any

from pyVmomi import vim, vmodl

from liverecovery.backends import (
    DEFAULT_MAX_CONN_PER_IP,
    DEFAULT_NFS_MAX_VOLUMES,
    DatastoreFacts,
    HostFacts,
    Target,
    TargetFacts,
    TargetQuery,
)
from liverecovery.errors import VSphereError
from liverecovery.vsphere.vmomi import new

__all__ = ["DEFAULT_NFS_MAX_VOLUMES", "VSphereInventory"]

_HOST_PROPS = [
    "name",
    "runtime.connectionState",
    "runtime.inMaintenanceMode",
    "summary.hardware",
    "summary.quickStats",
]
_DATASTORE_PROPS = ["name", "summary", "host"]


def _free_capacity(props: dict[str, Any]) -> tuple[int | None, int | None]:
    """Free memory (bytes) and CPU (MHz) from the host's hardware summary and quick stats
    (a plan's least-loaded placement); None where the host does not report them."""
    hardware, stats = props.get("summary.hardware"), props.get("summary.quickStats")
    memory = getattr(hardware, "memorySize", None)
    mhz, cores = getattr(hardware, "cpuMhz", None), getattr(hardware, "numCpuCores", None)
    used_mb = getattr(stats, "overallMemoryUsage", None)
    used_mhz = getattr(stats, "overallCpuUsage", None)
    free_memory = (
        max(0, int(memory) - int(used_mb) * (1 << 20))
        if memory is not None and used_mb is not None
        else None
    )
    free_cpu = (
        max(0, int(mhz) * int(cores) - int(used_mhz))
        if mhz is not None and cores is not None and used_mhz is not None
        else None
    )
    return free_memory, free_cpu


class VSphereInventory:
    """Lookups by name in one vCenter's or ESXi host's inventory (blocking calls)."""

    def __init__(self, content: vim.ServiceInstanceContent, server: str) -> None:
        self.content = content
        self.server = server

    def entities_named(self, vimtype: type[vim.ManagedEntity], name: str) -> list[Any]:
        """Every inventory object of ``vimtype`` called ``name``, in one property collection."""
        content = self.content
        if content.viewManager is None:
            raise VSphereError(f"{self.server} has no view manager", fault="NotSupported")
        view = content.viewManager.CreateContainerView(content.rootFolder, [vimtype], True)
        try:
            pc = vmodl.query.PropertyCollector
            traversal = new(pc.TraversalSpec)
            traversal.name = "view"
            traversal.path = "view"
            traversal.skip = False
            traversal.type = vim.view.ContainerView
            obj_spec = new(pc.ObjectSpec)
            obj_spec.obj = view
            obj_spec.skip = True
            obj_spec.selectSet = [traversal]
            prop_spec = new(pc.PropertySpec)
            prop_spec.type = vimtype
            prop_spec.pathSet = ["name"]
            filter_spec = new(pc.FilterSpec)
            filter_spec.objectSet = [obj_spec]
            filter_spec.propSet = [prop_spec]
            contents = content.propertyCollector.RetrieveContents([filter_spec])
        finally:
            view.Destroy()
        return [
            oc.obj for oc in contents if any(p.name == "name" and p.val == name for p in oc.propSet)
        ]

    def find_one(self, vimtype: type[vim.ManagedEntity], name: str, kind: str) -> Any:
        """The one object of ``vimtype`` called ``name``. :raises VSphereError: none or several."""
        found = self.entities_named(vimtype, name)
        if not found:
            raise VSphereError(
                f"no {kind} named {name!r} on {self.server}",
                operation=f"vsphere.find_{kind.replace(' ', '_')}",
                fault="NotFound",
            )
        if len(found) > 1:
            raise VSphereError(
                f"{len(found)} {kind}s are named {name!r} on {self.server}; names must be unique",
                operation=f"vsphere.find_{kind.replace(' ', '_')}",
                fault="DuplicateName",
            )
        return found[0]

    def host(self, name: str) -> vim.HostSystem:
        """The host called ``name``. :raises VSphereError: none or several."""
        host: vim.HostSystem = self.find_one(vim.HostSystem, name, "host")
        return host

    def datastores_of(self, host: vim.HostSystem) -> list[tuple[vim.Datastore, str, str]]:
        """(datastore, name, type) of each datastore ``host`` mounts, read in one call.

        One property collection rather than a read per datastore: another job may unmount a
        datastore meanwhile, and reading a vanished datastore's name would fail.
        """
        pc = vmodl.query.PropertyCollector
        traversal = new(pc.TraversalSpec)
        traversal.name = "datastores"
        traversal.path = "datastore"
        traversal.skip = False
        traversal.type = vim.HostSystem
        obj_spec = new(pc.ObjectSpec)
        obj_spec.obj = host
        obj_spec.skip = True
        obj_spec.selectSet = [traversal]
        prop_spec = new(pc.PropertySpec)
        prop_spec.type = vim.Datastore
        prop_spec.pathSet = ["name", "summary.type"]
        filter_spec = new(pc.FilterSpec)
        filter_spec.objectSet = [obj_spec]
        filter_spec.propSet = [prop_spec]
        found = []
        for content in self.content.propertyCollector.RetrieveContents([filter_spec]):
            props = {p.name: p.val for p in content.propSet}
            if isinstance(content.obj, vim.Datastore) and isinstance(props.get("name"), str):
                found.append((content.obj, str(props["name"]), str(props.get("summary.type", ""))))
        return found

    def host_datastore(self, host: vim.HostSystem, name: str) -> vim.Datastore:
        """The datastore ``name`` as ``host`` mounts it. :raises VSphereError: ``NotFound``."""
        for datastore, ds_name, _type in self.datastores_of(host):
            if ds_name == name:
                return datastore
        raise VSphereError(
            f"host {host.name} has no datastore named {name!r}",
            operation="vsphere.find_datastore",
            fault="NotFound",
        )

    def datacenter(self, entity: vim.ManagedEntity) -> vim.Datacenter:
        """The datacenter ``entity`` belongs to."""
        current: vim.ManagedEntity | None = entity
        while current is not None:
            if isinstance(current, vim.Datacenter):
                return current
            current = current.parent
        raise VSphereError(
            f"{entity._moId} is in no datacenter", operation="vsphere.find_datacenter"
        )

    def pool_for(self, host: vim.HostSystem, resource_pool: str | None) -> vim.ResourcePool:
        """The pool called ``resource_pool``, or the root pool of ``host``'s compute resource."""
        if resource_pool is not None:
            pool: vim.ResourcePool = self.find_one(vim.ResourcePool, resource_pool, "resource pool")
            return pool
        parent = host.parent
        if not isinstance(parent, vim.ComputeResource):
            raise VSphereError(
                f"host {host.name} belongs to no cluster or compute resource",
                operation="vsphere.find_resource_pool",
                fault="NotFound",
            )
        if parent.resourcePool is None:
            raise VSphereError(
                f"compute resource {parent.name} of host {host.name} has no resource pool",
                operation="vsphere.find_resource_pool",
                fault="NotFound",
            )
        return parent.resourcePool

    def folder_for(self, host: vim.HostSystem, vm_folder: str | None) -> vim.Folder:
        """The folder called ``vm_folder``, or the VM folder of ``host``'s datacenter."""
        if vm_folder is not None:
            folder: vim.Folder = self.find_one(vim.Folder, vm_folder, "folder")
            return folder
        return self.datacenter(host).vmFolder

    def nfs_max_volumes(self, host: vim.HostSystem) -> int:
        """The host's ``NFS.MaxVolumes``; ESXi's default when the host does not report it."""
        return self.int_option(host, "NFS.MaxVolumes", DEFAULT_NFS_MAX_VOLUMES)

    def max_conn_per_ip(self, host: vim.HostSystem) -> int:
        """The host's ``SunRPC.MaxConnPerIP``; ESXi's limit when the host does not report it."""
        return self.int_option(host, "SunRPC.MaxConnPerIP", DEFAULT_MAX_CONN_PER_IP)

    def int_option(self, host: vim.HostSystem, key: str, default: int) -> int:
        """An integer advanced option of the host; ``default`` when the host does not report
        it."""
        options = host.configManager.advancedOption
        if options is None:
            return default
        try:
            values = options.QueryView(key)
        except vim.fault.InvalidName:
            # Not reported (the govmomi simulator has no NFS.* options): ESXi's default applies.
            return default
        for value in values:
            if value.key == key and isinstance(value.value, int | str):
                try:
                    return int(value.value)
                except ValueError:
                    break
        return default

    def mounted_nfs(self, host: vim.HostSystem) -> list[str]:
        """Names of the NFSv3 datastores ``host`` mounts."""
        # "NFS" is NFSv3, which NFS.MaxVolumes limits ("NFS41" has a limit of its own).
        return [name for _ds, name, kind in self.datastores_of(host) if kind == "NFS"]

    # -- preflight facts ---------------------------------------------------------------------------

    def _host_view(self, host: vim.HostSystem) -> tuple[dict[str, Any], list[Any], list[Any]]:
        """The host's properties, and (object, properties) of its datastores and networks, in
        one property collection."""
        pc = vmodl.query.PropertyCollector
        selects = []
        for name, path in (("datastores", "datastore"), ("networks", "network")):
            traversal = new(pc.TraversalSpec)
            traversal.name = name
            traversal.path = path
            traversal.skip = False
            traversal.type = vim.HostSystem
            selects.append(traversal)
        obj_spec = new(pc.ObjectSpec)
        obj_spec.obj = host
        obj_spec.skip = False
        obj_spec.selectSet = selects
        specs = []
        for vimtype, paths in (
            (vim.HostSystem, _HOST_PROPS),
            (vim.Datastore, _DATASTORE_PROPS),
            (vim.Network, ["name"]),
        ):
            prop_spec = new(pc.PropertySpec)
            prop_spec.type = vimtype
            prop_spec.pathSet = paths
            specs.append(prop_spec)
        filter_spec = new(pc.FilterSpec)
        filter_spec.objectSet = [obj_spec]
        filter_spec.propSet = specs
        host_props: dict[str, Any] = {}
        datastores: list[Any] = []
        networks: list[Any] = []
        for content in self.content.propertyCollector.RetrieveContents([filter_spec]):
            props = {p.name: p.val for p in content.propSet}
            if isinstance(content.obj, vim.HostSystem):
                host_props = props
            elif isinstance(content.obj, vim.Datastore):
                datastores.append((content.obj, props))
            elif isinstance(content.obj, vim.Network):
                networks.append((content.obj, props))
        return host_props, datastores, networks

    @staticmethod
    def _datastore_facts(host: vim.HostSystem, name: str, props: dict[str, Any]) -> DatastoreFacts:
        summary = props.get("summary")
        mount = next(
            (
                m.mountInfo
                for m in props.get("host") or ()
                if getattr(m.key, "_moId", None) == host._moId
            ),
            None,
        )
        mounted = True if mount is None or mount.mounted is None else bool(mount.mounted)
        accessible = bool(getattr(summary, "accessible", True))
        if mount is not None and mount.accessible is not None:
            accessible = accessible and bool(mount.accessible)
        writable = mount is None or mount.accessMode != "readOnly"
        return DatastoreFacts(
            name,
            mounted=mounted,
            accessible=accessible,
            writable=writable,
            maintenance=str(getattr(summary, "maintenanceMode", None) or "normal"),
            free_bytes=int(getattr(summary, "freeSpace", 0) or 0),
            capacity_bytes=int(getattr(summary, "capacity", 0) or 0),
            type=str(getattr(summary, "type", "") or ""),
        )

    def describe(
        self, query: TargetQuery, vm_folder: str | None, resource_pool: str | None
    ) -> TargetFacts:
        """The facts for ``query``: the host and what it mounts and connects to in one property
        collection, then lookups by name for the rest, then one privilege query.
        ``vm_folder``/``resource_pool``: the client's defaults when the query names none."""
        hosts = self.entities_named(vim.HostSystem, query.host)
        if len(hosts) != 1:
            return TargetFacts(host=HostFacts(query.host, found=False))
        host = hosts[0]
        host_props, datastores, networks = self._host_view(host)
        mounted = {str(props.get("name")): (ds, props) for ds, props in datastores}
        nets = {str(props.get("name")): net for net, props in networks}
        memory_free, cpu_free = _free_capacity(host_props)
        facts = HostFacts(
            query.host,
            connection_state=str(host_props.get("runtime.connectionState") or "connected"),
            maintenance=bool(host_props.get("runtime.inMaintenanceMode")),
            nfs_datastores=tuple(
                sorted(
                    n
                    for n, (_ds, p) in mounted.items()
                    if getattr(p.get("summary"), "type", "") == "NFS"
                )
            ),
            nfs_max_volumes=self.nfs_max_volumes(host),
            max_conn_per_ip=self.max_conn_per_ip(host),
            networks=tuple(sorted(nets)),
            memory_free_bytes=memory_free,
            cpu_free_mhz=cpu_free,
        )
        ds_facts: dict[str, DatastoreFacts] = {}
        entities: dict[Target, Any] = {Target("host", query.host): host}
        for name in query.datastores:
            if name in mounted:
                ds, props = mounted[name]
                ds_facts[name] = self._datastore_facts(host, name, props)
                entities[Target("datastore", name)] = ds
            else:
                exists = bool(self.entities_named(vim.Datastore, name))
                ds_facts[name] = DatastoreFacts(name, exists=exists, mounted=False)
        for name in query.networks:
            if name in nets:
                entities[Target("network", name)] = nets[name]
        folder_found = pool_found = None
        if query.folder is not None:
            folders = self.entities_named(vim.Folder, query.folder)
            folder_found = bool(folders)
            if folders:
                entities[Target("folder", query.folder)] = folders[0]
        else:
            with contextlib.suppress(VSphereError):
                entities[Target("folder", "")] = self.folder_for(host, vm_folder)
        if query.resource_pool is not None:
            pools = self.entities_named(vim.ResourcePool, query.resource_pool)
            pool_found = bool(pools)
            if pools:
                entities[Target("resource pool", query.resource_pool)] = pools[0]
        else:
            with contextlib.suppress(VSphereError):
                entities[Target("resource pool", "")] = self.pool_for(host, resource_pool)
        taken = bool(query.vm_name) and bool(self.entities_named(vim.VirtualMachine, query.vm_name))
        return TargetFacts(
            host=facts,
            datastores=ds_facts,
            vm_name_taken=taken,
            folder_found=folder_found,
            resource_pool_found=pool_found,
            granted=self.granted(query, entities),
        )

    def granted(
        self, query: TargetQuery, entities: dict[Target, Any]
    ) -> dict[Target, frozenset[str]] | None:
        """Per target found, the privileges of ``query`` the session holds on it
        (``AuthorizationManager.HasPrivilegeOnEntities``); None when the server cannot say."""
        asked = {t: p for t, p in query.privileges.items() if t in entities and p}
        manager = self.content.authorizationManager
        session = (
            self.content.sessionManager.currentSession if self.content.sessionManager else None
        )
        if not asked or manager is None or session is None:
            return None
        privileges = sorted({p for wanted in asked.values() for p in wanted})
        targets = list(asked)
        try:
            answers = manager.HasPrivilegeOnEntities(
                [entities[t] for t in targets], session.key, privileges
            )
        except vmodl.MethodFault:
            return None  # an older server, or one that does not let the session ask
        by_entity = {
            a.entity._moId: {p.privId for p in a.privAvailability or () if p.isGranted}
            for a in answers or ()
        }
        return {
            t: frozenset(p for p in asked[t] if p in by_entity.get(entities[t]._moId, set()))
            for t in targets
        }
