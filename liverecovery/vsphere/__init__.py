"""vSphere backends: ``pyvmomi_client`` talks to real vCenter Server or ESXi."""
