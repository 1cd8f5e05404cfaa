"""Several serving nodes over one store: placement by rendezvous hashing, leases of the service
addresses with fencing, and the node state (handle key, export registry) kept in the shared
state (``docs/scale-out.md``)."""
