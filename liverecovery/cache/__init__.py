"""The circular block cache (the seed's 3DFS cache): blocks on disk, a persistent index, LRU
pruning that keeps a minimum free percentage of the filesystem, and job space reservations."""

from liverecovery.cache.block_cache import CacheStats, DiskBlockCache
from liverecovery.cache.space import CapacityProbe, FsUsage, SpaceProbe, StatvfsProbe

__all__ = ["CacheStats", "CapacityProbe", "DiskBlockCache", "FsUsage", "SpaceProbe", "StatvfsProbe"]
