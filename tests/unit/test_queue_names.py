"""A gateway session's disk-queue directory name (``hosting.queue_name``): one id, one name.
Before: a long id's cut name (``~`` and a hash) was itself a valid id whose name it was, so
two sessions shared one queue (the second moved the first's aside as orphaned)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mqttsession.hosting import queue_name

_IDS = st.text(min_size=1, max_size=400) | st.text("ab~!%-_.", min_size=150, max_size=260)


def test_a_cut_name_is_no_other_ids_name() -> None:
    long_id = "d" * 300
    cut = queue_name(long_id)
    assert len(cut) <= 200 and cut != long_id
    assert queue_name(cut) != cut  # the cut name, as an id, names another directory
    assert queue_name("~".join(cut.split("!"))) != cut


@given(_IDS, _IDS)
def test_different_ids_have_different_names(a: str, b: str) -> None:
    if a != b:
        assert queue_name(a) != queue_name(b)
    assert len(queue_name(a).encode()) <= 255 - len(".queue")


def test_a_name_is_one_directory_entry_and_200_characters_are_kept_whole() -> None:
    """An id's name is a single file name: no ``/`` (it would name a subdirectory, or climb
    out with ``../``; ``.`` and ``..`` alone are safe, ``.queue`` is added); an encoded id of
    exactly 200 characters is kept whole (the cut starts past it)."""
    for cid in ("a/b", "../up", "/abs"):
        assert "/" not in queue_name(cid), cid
    assert queue_name("x" * 200) == "x" * 200
    assert queue_name("x" * 201) != "x" * 201
