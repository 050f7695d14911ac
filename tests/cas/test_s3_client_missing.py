"""Packs in S3 without the S3 client installed: the error names what to install."""

from __future__ import annotations

import sys

import pytest

from cas.pack_select import _s3_packs
from cas.s3_location import S3Location, S3LocationError


def test_missing_s3_client_names_the_package_to_install(monkeypatch):
    # `pip install 'pybuild[s3]'` would fetch PyPI's unrelated `pybuild`: the message must
    # name the client package itself (and the extra as it installs from a checkout).
    monkeypatch.setitem(sys.modules, "obstore", None)  # import obstore -> ImportError
    monkeypatch.delitem(sys.modules, "cas.pack_s3", raising=False)
    location = S3Location.parse("s3://127.0.0.1:9/bucket/prefix", env={})
    with pytest.raises(S3LocationError) as caught:
        _s3_packs(location)
    message = str(caught.value)
    assert "pip install 'obstore>=0.12'" in message
    assert "'.[s3]'" in message
    assert "pybuild[s3]" not in message
