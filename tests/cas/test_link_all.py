"""``Store.link_all``: several links in one transaction, all or none."""

from __future__ import annotations

import pytest

from cas import BlobUnknown, Digest, Store


async def test_link_all_links_every_blob_or_none(tmp_path):
    async with await Store.open(tmp_path / "store") as store:
        a = (await store.put(b"a")).digest
        b = (await store.put(b"b", link="repo:x")).digest
        absent = Digest.of(b"never stored")
        with pytest.raises(BlobUnknown):
            await store.link_all("repo:x", [a, absent])
        assert not await store.is_linked("repo:x", a)  # nothing linked
        assert await store.link_all("repo:x", [a, b, a]) == [a]  # only the new link
        assert await store.is_linked("repo:x", a) and await store.is_linked("repo:x", b)
