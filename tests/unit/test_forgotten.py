"""``forgotten.Forgotten``: the client ids a gateway forgot, kept until a clean start of each
is accepted; a damaged file is kept aside, a symlink refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mqttsession.errors import StateError
from mqttsession.forgotten import FORGOTTEN_NAME, Forgotten


def test_ids_are_kept_across_opens_until_discarded(tmp_path: Path) -> None:
    f = Forgotten(str(tmp_path))
    assert f.ids == frozenset() and not (tmp_path / FORGOTTEN_NAME).exists()
    f.add("a")
    f.add("b/ü")
    f.add("a")
    assert Forgotten(str(tmp_path)).ids == {"a", "b/ü"}
    f.discard("a")
    f.discard("never")
    again = Forgotten(str(tmp_path))
    assert again.ids == {"b/ü"}
    assert json.loads((tmp_path / FORGOTTEN_NAME).read_text()) == ["b/ü"]
    assert oct(os.stat(tmp_path / FORGOTTEN_NAME).st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("junk", [b"", b"{", b'{"a": 1}', b"[1, 2]", b"\xff\xfe", b"[" * 100_000])
def test_a_damaged_file_is_kept_aside_never_read_as_ids(tmp_path: Path, junk: bytes) -> None:
    (tmp_path / FORGOTTEN_NAME).write_bytes(junk)
    f = Forgotten(str(tmp_path))
    assert f.ids == frozenset()
    aside = list(tmp_path.glob(f"{FORGOTTEN_NAME}.damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == junk
    f.add("x")
    assert Forgotten(str(tmp_path)).ids == {"x"}


def test_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_text('["a"]')
    os.symlink(tmp_path / "elsewhere", tmp_path / FORGOTTEN_NAME)
    with pytest.raises(StateError):
        Forgotten(str(tmp_path))
    assert (tmp_path / "elsewhere").read_text() == '["a"]'
