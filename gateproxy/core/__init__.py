"""The pure core: path normal form, the dependency state machine, history, backoff,
the gate, the live runtime, answer bytes, who may change state. No I/O, no aiohttp.
"""
