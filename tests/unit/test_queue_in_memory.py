"""``QueueInMemory`` holds for a ``publish_many`` batch as for single publishes: a batch that
would take the never-sent messages in memory past it goes to the disk queue (a mutation
hunt: the batch's own size was not counted, and such a batch stayed in memory whole)."""

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
