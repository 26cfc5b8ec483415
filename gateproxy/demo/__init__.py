"""The demo: stand-ins for the platform-server and docker-runner, and `gateproxy demo`."""
