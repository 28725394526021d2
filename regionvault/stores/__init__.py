"""Object stores: the seam between regionvault and S3, GCS and Cloud Files (see
``base.ObjectStore``)."""

from regionvault.stores.base import ObjectInfo, ObjectStore

__all__ = ["ObjectInfo", "ObjectStore"]
