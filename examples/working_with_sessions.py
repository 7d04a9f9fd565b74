"""Different ways of working with sessions (the Volue Mesh SDK example, on MQTT).

A session is a persistent MQTT session on the broker, and its id is the MQTT client id. While a
session is open its lifetime is extended in the background (keep-alive, reconnects); close() ends
it on the broker too, so it stops holding the broker's resources.
Run: python examples/working_with_sessions.py [--broker HOST:PORT]
"""

import uuid

from _common import broker, parse_args

from mqttsession import Connection, SessionNotFoundError


def main(address: str) -> None:
    """Showing different ways of working with sessions."""

    # For production, connect with TLS (and a client certificate if the broker wants one):
    # connection = Connection.with_tls(address, "ca.pem", "client.pem", "client.key")
    connection = Connection.insecure(address)

    # 1. Create a session, open and close it.
    session = connection.create_session()
    session.open()
    print(f"1. You now have a new open session: {session.session_id}")
    session.close()  # ends the session on the broker too

    # 2. Create a session using the with statement.
    # The session is created, opened and closed (ended) within the 'with' statement's scope.
    with connection.create_session() as session:
        print(f"2. You now have a new open session: {session.session_id}")

    # 3. Connecting to an existing session by its id.
    # Leave a session without ending it, as a lost connection or a crashed process would:
    session = connection.create_session()
    session.open()
    session.subscribe("example/sessions/inbox", 1)
    session_id = session.session_id
    session.close(end_session=False)  # the broker keeps the session and queues for it
    with connection.create_session() as other:
        other.publish("example/sessions/inbox", "sent while you were away")
        other.flush(10)

    session = connection.connect_to_session(session_id)  # returned open
    print(f"3. Attached to {session.session_id}; the broker still had it: "
          f"{session.session_present}")
    msg = session.receive(10)
    assert msg is not None, "the queued message did not arrive"
    print(f"3. It kept this for you: {msg.message.decode()!r}")
    session.close()

    # A session id that is no longer valid results in an error ...
    try:
        connection.connect_to_session(session_id)
    except SessionNotFoundError as exc:
        print(f"3. As expected: {exc}")
    else:
        raise AssertionError("an ended session was found again")

    # ... unless you accept a new session under that id.
    wanted = uuid.UUID("123e4567-e89b-12d3-a456-556642440000")
    session = connection.connect_to_session(wanted, must_exist=False)
    print(f"3. Session {session.session_id}: the broker had it already: "
          f"{session.session_present}")
    session.close()


if __name__ == "__main__":
    args = parse_args(__doc__ or "")
    with broker(args) as (host, port):
        main(f"{host}:{port}")
