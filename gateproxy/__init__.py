"""gateproxy: a health-gate sidecar proxy in front of the agyn platform-server."""

__version__ = "0.1.0"
