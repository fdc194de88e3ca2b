"""``python -m workloads.probe --server tcp://host:port``: exit 0 when the offload
server answers a ping over the real protocol (the chart's ``helm test``)."""
from __future__ import annotations

import argparse
import os
import sys

from .protocol import Message, ProtocolError
from .transport import Connection, ServerError, ServerGone, ServerTimeout


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workloads.probe", description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="address of the offload server, tcp://host:port")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the answer")
    parser.add_argument("--keys", default=os.environ.get("SPLITTEST_KEYS", ""),
                        help="folder of the run's CURVE keys (as the sources get it); empty: plaintext")
    args = parser.parse_args(argv)
    try:
        connection = Connection(args.server, args.timeout, keys=args.keys)
    except ValueError as exc:
        print(f"probe: {exc}", file=sys.stderr)
        return 1
    try:
        reply = connection.request(Message("ping", {})).reply
    except (ServerError, ServerTimeout, ServerGone, ProtocolError) as exc:
        print(f"probe: {exc}", file=sys.stderr)
        return 1
    finally:
        connection.close()
    print(f"probe: {args.server} answers: " + ", ".join(f"{k}={v}" for k, v in sorted(reply.fields.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
