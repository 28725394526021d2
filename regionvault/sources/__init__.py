"""Source databases: the seam between regionvault and the databases it backs up."""

from regionvault.sources.base import DumpInfo, Source, open_source

__all__ = ["DumpInfo", "Source", "open_source"]
