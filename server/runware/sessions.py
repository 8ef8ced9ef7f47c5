"""Connection sessions: a WebSocket client that reconnects with its connectionSessionUUID gets
the frames produced while it was away.

A session outlives its socket by RESUME_WINDOW_S; frames for it in that window are buffered
(bounded) and flushed on resume. Frames are plain dicts; the socket side serialises them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

RESUME_WINDOW_S = 120.0
MAX_BUFFERED_FRAMES = 1000

Sender = Callable[[dict[str, Any]], None]  # queues one frame on a live socket


@dataclass
class Session:
    session_id: str
    owner: str
    sender: Sender | None = None  # None while no socket is attached
    detached_at: float = 0.0
    buffered: list[dict[str, Any]] = field(default_factory=list)

    def send(self, frame: dict[str, Any]) -> None:
        """Deliver now if a socket is attached, else keep it for a resume."""
        if self.sender is not None:
            self.sender(frame)
        elif len(self.buffered) < MAX_BUFFERED_FRAMES:
            self.buffered.append(frame)


class SessionRegistry:
    def __init__(self, resume_window_s: float = RESUME_WINDOW_S) -> None:
        self.resume_window_s = resume_window_s
        self._sessions: dict[str, Session] = {}

    def open(self, owner: str, sender: Sender, resume_id: Any = None) -> Session:
        """Attach a socket: to the session it names if that is alive and the key's own,
        else to a new session. Buffered frames are flushed to the socket."""
        self._expire()
        session = self._sessions.get(resume_id) if isinstance(resume_id, str) else None
        if session is None or session.owner != owner:
            session = Session(str(uuid.uuid4()), owner)
            self._sessions[session.session_id] = session
        elif session.sender is not None:
            session.sender = None  # the old socket is gone or superseded
        session.sender = sender
        pending, session.buffered = session.buffered, []
        for frame in pending:
            sender(frame)
        return session

    def detach(self, session: Session, sender: Sender) -> None:
        if session.sender == sender:  # not `is`: each `conn.send` is a new bound method
            session.sender = None
            session.detached_at = time.monotonic()
        self._expire()

    def keep(self, session: Session, frames: list[dict[str, Any]]) -> None:
        """Frames a dying socket could not send: first in line for the next resume."""
        session.buffered[:0] = frames[: MAX_BUFFERED_FRAMES - len(session.buffered)]

    def _expire(self) -> None:
        now = time.monotonic()
        for session_id, session in list(self._sessions.items()):
            if session.sender is None and now - session.detached_at > self.resume_window_s:
                del self._sessions[session_id]

    def __len__(self) -> int:
        return len(self._sessions)
