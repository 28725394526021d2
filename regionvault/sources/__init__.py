"""Source databases: the seam between regionvault and the databases it backs up."""

from regionvault.sources.base import Source, open_source

__all__ = ["Source", "open_source"]
