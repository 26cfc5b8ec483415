"""The phases of a client connection as one table, without I/O (the model: h11's
`_state.py`).

A connection is in one phase at a time; an event moves it to the next one through
`step`, and an event a phase has no row for is a bug, not a state. Each phase names the
clock that runs in it (`CLOCK`): the connection arms one timer for that clock and
nothing else. Requests pipelined behind the one being answered are parsed as they come
and wait their turn; the phase is the connection's as a whole.
"""

from __future__ import annotations

import enum
from typing import Final


class Phase(enum.Enum):
    IDLE = "idle"  # between requests: nothing of the next one has come
    HEAD = "head"  # bytes of a request head have come, not all of it
    BODY = "body"  # the head is in, its body is arriving
    ANSWER = "answer"  # every request read is being answered (waiting on the upstream, writing)
    TUNNEL = "tunnel"  # after a 101: bytes relayed both ways
    CLOSING = "closing"  # a last answer is out; input is discarded until the client closes


class Event(enum.Enum):
    BYTES = "bytes"  # the first bytes of a request head
    HEAD = "head"  # a head is complete and a body follows
    MESSAGE = "message"  # a request is complete (its head, and its body if any)
    ANSWERED = "answered"  # the last request read has been answered
    UPGRADED = "upgraded"  # the upstream switched protocols
    CLOSE = "close"  # the connection is to end after what is written


class Clock(enum.Enum):
    KEEPALIVE = "keepalive"  # limits.keepalive_timeout_ms: an idle connection is closed
    HEAD = "head"  # limits.header_timeout_ms: a slow head gets a 408
    BODY = "body"  # limits.header_timeout_ms of silence, then a minimum rate: aborted
    LINGER = "linger"  # a closing connection is kept a moment so its answer is read
    NONE = "none"  # the upstream's read timeout runs instead, or nothing does


_P, _E = Phase, Event
TABLE: Final[dict[tuple[Phase, Event], Phase]] = {
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
    **{(phase, _E.CLOSE): _P.CLOSING for phase in Phase},
}

CLOCK: Final[dict[Phase, Clock]] = {
    Phase.IDLE: Clock.KEEPALIVE,
    Phase.HEAD: Clock.HEAD,
    Phase.BODY: Clock.BODY,
    Phase.ANSWER: Clock.NONE,
    Phase.TUNNEL: Clock.NONE,
    Phase.CLOSING: Clock.LINGER,
}


class BadStep(RuntimeError):
    """An event the phase has no row for."""


def step(phase: Phase, event: Event) -> Phase:
    """The phase after `event` in `phase`."""
    try:
        return TABLE[phase, event]
    except KeyError:
        raise BadStep(f"{event.value} in phase {phase.value}") from None
