"""Blocking inventory lookups for the pyvmomi backend: find hosts, datastores, pools, folders.

Every function here makes SOAP calls: the client runs them in worker threads. Objects are found
by name through the property collector, one round trip per lookup where possible, so a busy
vCenter (and concurrent jobs mounting and unmounting) cannot change the inventory mid-read.
"""

from __future__ import annotations

from typing import Any

from pyVmomi import vim, vmodl

from liverecovery.errors import VSphereError
from liverecovery.vsphere.vmomi import new

__all__ = ["DEFAULT_NFS_MAX_VOLUMES", "VSphereInventory"]

DEFAULT_NFS_MAX_VOLUMES = 8
"""ESXi's default for the ``NFS.MaxVolumes`` advanced option (NFSv3 mounts per host).

Used when the host does not report the option at all: the govmomi simulator, for one, has no
``NFS.*`` options, and an ESXi host that lists none runs with its default.
"""


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
        options = host.configManager.advancedOption
        if options is None:
            return DEFAULT_NFS_MAX_VOLUMES
        try:
            values = options.QueryView("NFS.MaxVolumes")
        except vim.fault.InvalidName:
            # Not reported (the govmomi simulator has no NFS.* options): ESXi's default applies.
            return DEFAULT_NFS_MAX_VOLUMES
        for value in values:
            if value.key == "NFS.MaxVolumes" and isinstance(value.value, int | str):
                try:
                    return int(value.value)
                except ValueError:
                    break
        return DEFAULT_NFS_MAX_VOLUMES

    def mounted_nfs(self, host: vim.HostSystem) -> list[str]:
        """Names of the NFSv3 datastores ``host`` mounts."""
        # "NFS" is NFSv3, which NFS.MaxVolumes limits ("NFS41" has a limit of its own).
        return [name for _ds, name, kind in self.datastores_of(host) if kind == "NFS"]
