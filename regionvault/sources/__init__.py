"""Source databases: the seam between regionvault and the databases it backs up."""

from regionvault.sources.base import DumpInfo, Source
from regionvault.sources.kinds import KINDS, open_source, restorer_for

__all__ = ["KINDS", "DumpInfo", "Source", "open_source", "restorer_for"]
