"""The atheris entry point stays runnable: hypothesis feeds it the same kind of input."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

_spec = importlib.util.spec_from_file_location(
    "fuzz_rpc", Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_rpc.py"
)
assert _spec and _spec.loader
fuzz_rpc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz_rpc)


@settings(max_examples=300)
@given(st.binary(max_size=4096))
def test_random_streams_only_raise_decoder_errors(data: bytes) -> None:
    fuzz_rpc.one_input(data)


@settings(max_examples=300)
@given(st.binary(min_size=4, max_size=2048))
def test_framed_records_only_raise_decoder_errors(body: bytes) -> None:
    header = (0x80000000 | len(body)).to_bytes(4, "big")
    fuzz_rpc.one_input(header + body)


def test_every_nfs3_argument_decoder_is_covered() -> None:
    assert len(fuzz_rpc.ARG_TYPES) >= 15
