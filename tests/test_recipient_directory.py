"""Bounded threads: a recipient's actor lives only while a certificate of it is in
flight (actors/recipient.py ``RecipientDirectory``)."""

from __future__ import annotations

from typing import Any

import pykka

from actors.messages import AllocatePosition
from actors.recipient import RecipientDirectory
from stamp.domain import CertificateKey


class Recorder(pykka.ThreadingActor):
    use_daemon_thread = True

    def __init__(self, received: list[object]) -> None:
        super().__init__()
        self.received = received

    def on_receive(self, message: object) -> None:
        self.received.append(message)


def _request(n: int) -> AllocatePosition:
    return AllocatePosition(CertificateKey("Narnia", f"cert-{n}"), 0, reply_to=None)  # type: ignore[arg-type]


def test_a_recipient_actor_lives_while_one_of_its_certificates_is_in_flight() -> None:
    started: list[pykka.ActorRef[Any]] = []
    received: dict[str, list[object]] = {}

    def start(recipient_id: str) -> pykka.ActorRef[Any]:
        ref = Recorder.start(received.setdefault(recipient_id, []))
        started.append(ref)
        return ref

    directory = RecipientDirectory(start)
    directory.allocate("r1", _request(1))
    directory.allocate("r1", _request(2))
    directory.allocate("r2", _request(3))
    assert len(started) == 2 and len(directory) == 2  # one actor per recipient, however many ask
    first = started[0]

    directory.release("r1")
    assert first.is_alive() and len(directory) == 2  # another certificate of r1 still waits
    directory.release("r1")
    first.actor_stopped.wait(5)
    assert not first.is_alive() and len(directory) == 1  # the last one out stopped it
    asked = [m.key.certificate_id for m in received["r1"] if isinstance(m, AllocatePosition)]
    assert asked == ["cert-1", "cert-2"]  # in order, directly, not through the supervisor

    directory.allocate("r1", _request(4))
    assert len(started) == 3 and started[2].is_alive()  # a new certificate starts a new one
    directory.stop_all()
    for ref in started:
        ref.actor_stopped.wait(5)
    assert len(directory) == 0 and not any(ref.is_alive() for ref in started)


def test_releasing_an_unknown_recipient_changes_nothing() -> None:
    directory = RecipientDirectory(lambda _id: Recorder.start([]))
    directory.release("nobody")
    assert len(directory) == 0
