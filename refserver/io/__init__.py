"""HStream IO in the reference server: connector RPCs and the connector task runtime."""

from refserver.io.catalog import CatalogError, ConnectorCatalog, ConnectorLaunch
from refserver.io.service import ConnectorService

__all__ = ["CatalogError", "ConnectorCatalog", "ConnectorLaunch", "ConnectorService"]
