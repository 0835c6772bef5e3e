"""Backends: where a cluster runs — `local` (subprocesses on loopback) or `docker`."""

from harness.cluster import Backend, Cluster, ClusterStartError, NodeHandle, backend_for

__all__ = ["Backend", "Cluster", "ClusterStartError", "NodeHandle", "backend_for"]
