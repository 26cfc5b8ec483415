"""Views that only read state: /health, the admin endpoints and status page, metrics,
the access log.
"""
