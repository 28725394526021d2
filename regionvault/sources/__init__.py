"""Source databases: the seam between regionvault and the databases it backs up."""

from regionvault.sources.base import DumpInfo, ScratchServer, Source
from regionvault.sources.kinds import (
    KINDS,
    kind_of_dsn,
    open_source,
    restorer_for,
    scratch_server_for,
)

__all__ = ["KINDS", "DumpInfo", "ScratchServer", "Source", "kind_of_dsn", "open_source",
           "restorer_for", "scratch_server_for"]
