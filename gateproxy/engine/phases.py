"""The phases of a client connection as one table, without I/O (the model: h11's
`_state.py`).

A connection is in one phase at a time; an event moves it to the next one through
`step`, and an event a phase has no row for is a bug, not a state. Each phase names the
clock that runs in it (`CLOCK`): the connection arms one timer for that clock and
nothing else. Requests pipelined behind the one being answered are parsed as they come
and wait their turn; the phase is the connection's as a whole.
"""

from __future__ import annotations

from typing import Final

# Plain strings, not enum members: the table is read a few times per request, and a
# string's hash is cached where an enum member's is computed in Python each time.


class Phase:
    IDLE: Final = "idle"  # between requests: nothing of the next one has come
    HEAD: Final = "head"  # bytes of a request head have come, not all of it
    BODY: Final = "body"  # the head is in, its body is arriving
    ANSWER: Final = "answer"  # every request read is being answered (upstream, writing)
    TUNNEL: Final = "tunnel"  # after a 101: bytes relayed both ways
    CLOSING: Final = "closing"  # a last answer is out; input is discarded until the close
    ALL: Final = (IDLE, HEAD, BODY, ANSWER, TUNNEL, CLOSING)


class Event:
    BYTES: Final = "bytes"  # the first bytes of a request head
    HEAD: Final = "head"  # a head is complete and a body follows
    MESSAGE: Final = "message"  # a request is complete (its head, and its body if any)
    ANSWERED: Final = "answered"  # the last request read has been answered
    UPGRADED: Final = "upgraded"  # the upstream switched protocols
    CLOSE: Final = "close"  # the connection is to end after what is written


class Clock:
    KEEPALIVE: Final = "keepalive"  # limits.keepalive_timeout_ms: an idle connection closes
    HEAD: Final = "head"  # limits.header_timeout_ms: a slow head gets a 408
    BODY: Final = "body"  # limits.header_timeout_ms of silence, then a minimum rate: aborted
    LINGER: Final = "linger"  # a closing connection is kept a moment so its answer is read
    NONE: Final = "none"  # the upstream's read timeout runs instead, or nothing does


_P, _E = Phase, Event
TABLE: Final[dict[tuple[str, str], str]] = {
    (_P.IDLE, _E.BYTES): _P.HEAD,
    (_P.HEAD, _E.HEAD): _P.BODY,
    (_P.HEAD, _E.MESSAGE): _P.ANSWER,
    (_P.BODY, _E.MESSAGE): _P.ANSWER,
    # An answer may be written before its request's body has all come (the gate's 503):
    # the rest of the body is read and dropped, and the connection stays in BODY.
    (_P.BODY, _E.ANSWERED): _P.BODY,
    (_P.HEAD, _E.ANSWERED): _P.HEAD,  # a pipelined head is arriving
    (_P.ANSWER, _E.ANSWERED): _P.IDLE,
    (_P.ANSWER, _E.BYTES): _P.HEAD,  # pipelined behind the request being answered
    (_P.ANSWER, _E.HEAD): _P.BODY,
    (_P.ANSWER, _E.MESSAGE): _P.ANSWER,
    (_P.ANSWER, _E.UPGRADED): _P.TUNNEL,
    **{(phase, _E.CLOSE): _P.CLOSING for phase in _P.ALL},
}

CLOCK: Final[dict[str, str]] = {
    Phase.IDLE: Clock.KEEPALIVE,
    Phase.HEAD: Clock.HEAD,
    Phase.BODY: Clock.BODY,
    Phase.ANSWER: Clock.NONE,
    Phase.TUNNEL: Clock.NONE,
    Phase.CLOSING: Clock.LINGER,
}


class BadStep(RuntimeError):
    """An event the phase has no row for."""


def step(phase: str, event: str) -> str:
    """The phase after `event` in `phase`."""
    try:
        return TABLE[phase, event]
    except KeyError:
        raise BadStep(f"{event} in phase {phase}") from None
