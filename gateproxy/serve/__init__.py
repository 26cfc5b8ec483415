"""Serving: the request handler, the listeners, the WebSocket relay, live reload."""
