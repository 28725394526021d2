"""Source databases: the seam between regionvault and the databases it backs up."""

from regionvault.sources.base import DumpInfo, Source
from regionvault.sources.kinds import open_source

__all__ = ["DumpInfo", "Source", "open_source"]
