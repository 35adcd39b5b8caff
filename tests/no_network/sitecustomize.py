"""Loaded into a subprocess via PYTHONPATH: refuse and record every network connection attempt."""

import os
import socket

_log = os.environ.get("SCODER_TEST_NETWORK_LOG")
_real_connect = socket.socket.connect


def _refuse(self, address, *args, **kwargs):
    if self.family == getattr(socket, "AF_UNIX", None):
        return _real_connect(self, address, *args, **kwargs)
    if _log:
        with open(_log, "a") as fh:
            fh.write(f"{address!r}\n")
    raise OSError(f"network access attempted: {address!r}")


socket.socket.connect = _refuse
socket.socket.connect_ex = lambda self, address: _refuse(self, address)
