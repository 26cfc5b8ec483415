"""The monitor: one probe loop per dependency, its HTTP and gRPC probes, and the
probe's signature.
"""
