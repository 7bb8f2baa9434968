"""The sandbox state machine, in one place.

A record stores `state` (what is), `desiredState` (what was asked) and `pending` (a
change is in progress). Clients see a derived transitional state while pending, as
Daytona's API reports it: started wanting stopped is `stopping`, stopped wanting started is
`starting`, anything wanting destroyed is `destroying`, ... A request that conflicts with a
change in progress is a 409; one that does not fit the current state is a 400.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from controlplane.errors import BadRequest, Conflict


class State(str, Enum):
    UNKNOWN = "unknown"  # stored while being created; reported as `creating`
    CREATING = "creating"
    STARTED = "started"
    STOPPED = "stopped"
    STARTING = "starting"
    STOPPING = "stopping"
    DESTROYING = "destroying"
    DESTROYED = "destroyed"
    ARCHIVED = "archived"
    ARCHIVING = "archiving"
    RESTORING = "restoring"
    RESIZING = "resizing"
    ERROR = "error"
    PENDING_BUILD = "pending_build"  # a create from an image, before its build started
    BUILDING_SNAPSHOT = "building_snapshot"
    BUILD_FAILED = "build_failed"


class Desired(str, Enum):
    STARTED = "started"
    STOPPED = "stopped"
    DESTROYED = "destroyed"
    ARCHIVED = "archived"
    RESIZED = "resized"


_TRANSITIONAL: dict[tuple[str, str], State] = {
    ("started", "stopped"): State.STOPPING,
    ("started", "destroyed"): State.DESTROYING,
    ("started", "resized"): State.RESIZING,
    ("stopped", "started"): State.STARTING,
    ("stopped", "destroyed"): State.DESTROYING,
    ("stopped", "archived"): State.ARCHIVING,
    ("stopped", "resized"): State.RESIZING,
    ("archived", "started"): State.RESTORING,
    ("archived", "destroyed"): State.DESTROYING,
    ("error", "destroyed"): State.DESTROYING,
    ("build_failed", "destroyed"): State.DESTROYING,
    ("error", "started"): State.STARTING,
    ("unknown", "started"): State.CREATING,
    ("unknown", "destroyed"): State.DESTROYING,
}


def reported(state: str, desired: str, pending: bool) -> str:
    """The state a client sees."""
    if state == State.UNKNOWN:
        return State.CREATING.value
    if pending:
        shown = _TRANSITIONAL.get((state, desired))
        if shown is not None:
            return shown.value
    return state


@dataclass(frozen=True)
class Transition:
    desired: Desired
    allowed_from: frozenset[State]
    done_in: frozenset[State] = frozenset()  # already there: answer without doing anything
    verb: str = ""


TRANSITIONS: dict[str, Transition] = {
    "start": Transition(Desired.STARTED, frozenset({State.STOPPED, State.ARCHIVED}),
                        frozenset({State.STARTED}), "start"),
    "stop": Transition(Desired.STOPPED, frozenset({State.STARTED}), frozenset(), "stop"),
    "destroy": Transition(Desired.DESTROYED,
                          frozenset({State.STARTED, State.STOPPED, State.ARCHIVED, State.ERROR,
                                     State.BUILD_FAILED}),
                          frozenset(), "delete"),
    "archive": Transition(Desired.ARCHIVED, frozenset({State.STOPPED}), frozenset({State.ARCHIVED}),
                          "archive"),
    "recover": Transition(Desired.STARTED, frozenset({State.ERROR}), frozenset({State.STARTED}), "recover"),
    "resize": Transition(Desired.RESIZED, frozenset({State.STARTED, State.STOPPED}), frozenset(), "resize"),
}


def check(action: str, sandbox_id: str, state: str, pending: bool) -> bool:
    """Raise unless `action` may begin now; False when there is nothing to do."""
    transition = TRANSITIONS[action]
    if pending or state == State.UNKNOWN:
        raise Conflict(f"Sandbox {sandbox_id} state change in progress; try again when it is done",
                       "STATE_CHANGE_IN_PROGRESS")
    if state in {s.value for s in transition.done_in}:
        return False
    if state not in {s.value for s in transition.allowed_from}:
        allowed = ", ".join(sorted(s.value for s in transition.allowed_from))
        raise BadRequest(f"Cannot {transition.verb} sandbox {sandbox_id} in state '{state}': "
                         f"it must be {allowed}", "INVALID_STATE")
    return True
