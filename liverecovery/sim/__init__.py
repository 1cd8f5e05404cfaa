"""Simulated peers for the embedded environment, tests and the demo: never imported by the library.

``esx_host`` (a simulated ESX host that mounts our exports over real NFSv3/TCP, runs a guest and
storage-vMotions it), ``remote`` (the same host in another process), ``hard_mount`` (its NFS
client's retry rules) and ``embedded`` (the assembled recovery parts with a simulated host).
"""
