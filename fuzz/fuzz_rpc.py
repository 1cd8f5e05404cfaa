"""atheris entry point for long fuzzing runs of the pure NFS layers (CI fuzzes with hypothesis).

    pip install atheris && python fuzz/fuzz_rpc.py -max_total_time=3600

Stream bytes go through record marking, the RPC call decoder, and every NFSv3 argument decoder.
The only acceptable outcomes are a decoded message or one of the decoders' own errors (which the
server turns into GARBAGE_ARGS, a rejection, or a closed connection); anything else — another
exception, a hang, an allocation beyond the record size — is a bug.
"""

from __future__ import annotations

import contextlib
import inspect
import sys

from liverecovery.nfs import nfs3_codec as n3
from liverecovery.nfs.rpc import CallRejected, RecordReader, RpcError, decode_call
from liverecovery.nfs.xdr import Unpacker, XdrError

MAX_RECORD = 1 << 20
ARG_TYPES = [
    cls
    for name, cls in inspect.getmembers(n3, inspect.isclass)
    if name.endswith("Args") and hasattr(cls, "unpack")
]


def one_input(data: bytes) -> None:
    reader = RecordReader(MAX_RECORD)
    try:
        reader.feed(data)
        while (record := reader.next_record()) is not None:
            try:
                call = decode_call(record)
            except (CallRejected, RpcError):
                continue
            body = bytes(record)
            for cls in ARG_TYPES:
                with contextlib.suppress(XdrError, ValueError):
                    cls.unpack(Unpacker(body))
            del call
    except RpcError:
        return


def main() -> None:
    import atheris  # type: ignore[import-not-found]

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
