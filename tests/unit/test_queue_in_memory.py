"""The disk queue and the queue's limits, two rules a mutation hunt found no test held: a
``publish_many`` batch that would take the never-sent messages in memory past
``QueueInMemory`` goes to the disk queue (the batch's own size was not counted: it stayed in
memory whole), and ``drop-oldest`` makes room from the disk queue too."""

from __future__ import annotations

from pathlib import Path

from mqttsession import Client


def test_a_batch_that_crosses_queue_in_memory_goes_to_the_disk_queue(tmp_path: Path) -> None:
    c = Client(client_id="c", clean_session=False)
    c.config(f"SessionStateFile={tmp_path / 's'}")
    c.config("QueueInMemory=10")
    try:
        for i in range(8):
            c.publish_data("t", 1, b"m%d" % i)
        c.publish_many([("t", 1, b"b%d" % i) for i in range(5)])
        st = c._engine.state  # noqa: SLF001
        assert (len(st.outgoing), st.spooled) == (8, 5)
        assert [m.message for m in c.outgoing_messages] == (
            [b"m%d" % i for i in range(8)] + [b"b%d" % i for i in range(5)])
    finally:
        c.close()


def test_drop_oldest_makes_room_from_the_disk_queue_too(tmp_path: Path) -> None:
    """``QueueFullPolicy=drop-oldest`` with most of the held messages in the disk queue: a
    batch that needs more room than the messages in memory give takes the disk queue's
    oldest too (read back and dropped), instead of refusing the batch."""
    c = Client(client_id="c", clean_session=False)
    c.config(f"SessionStateFile={tmp_path / 's'}")
    for setting in ("QueueInMemory=2", "MaxQueuedMessages=5", "QueueFullPolicy=drop-oldest"):
        c.config(setting)
    dropped: list[tuple[int, str]] = []
    c.on_message_dropped = lambda e: dropped.append((e.seq, e.reason))
    try:
        for i in range(5):  # 2 in memory, 3 in the disk queue
            c.publish_data("t", 1, b"m%d" % i)
        c.publish_many([("t", 1, b"b%d" % i) for i in range(4)])
        assert dropped == [(seq, "queue-full") for seq in (1, 2, 3, 4)]  # (m0-m3)
        assert [m.message for m in c.outgoing_messages] == [b"m4", b"b0", b"b1", b"b2", b"b3"]
    finally:
        c.close()
