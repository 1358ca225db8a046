#!/usr/bin/python3
"""Bounded connection probes for the firewall test; prints one JSON line.

ports HOST PORT[,PORT...] TIMEOUT   which ports accept a connection
burst HOST PORT COUNT WAIT          COUNT connections at once, counted after WAIT s
paced HOST PORT COUNT INTERVAL      COUNT connections, one every INTERVAL s
"""

import errno
import json
import selectors
import socket
import sys
import time


def connect(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def ports(host: str, port_list: str, timeout: str) -> dict:
    selector = selectors.DefaultSelector()
    pending = {}
    for port in map(int, port_list.split(",")):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex((host, port))
        selector.register(sock, selectors.EVENT_WRITE, port)
        pending[port] = sock
    result = {port: False for port in pending}
    deadline = time.monotonic() + float(timeout)
    while pending and time.monotonic() < deadline:
        for key, _ in selector.select(max(0.0, deadline - time.monotonic())):
            port = key.data
            result[port] = key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
            selector.unregister(key.fileobj)
            pending.pop(port).close()
    for sock in pending.values():
        sock.close()
    return {
        "open": sorted(p for p, ok in result.items() if ok),
        "closed": sorted(p for p, ok in result.items() if not ok),
    }


def burst(host: str, port: str, count: str, wait: str) -> dict:
    sockets = []
    for _ in range(int(count)):
        sock = socket.socket()
        sock.setblocking(False)
        code = sock.connect_ex((host, int(port)))
        assert code in (0, errno.EINPROGRESS), code
        sockets.append(sock)
    # Less than the first SYN retransmission (1 s): each socket had one try.
    time.sleep(float(wait))
    connected = sum(
        1
        for sock in sockets
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 and _is_connected(sock)
    )
    for sock in sockets:
        sock.close()
    return {"attempted": int(count), "connected": connected, "dropped": int(count) - connected}


def _is_connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
        return True
    except OSError:
        return False


def paced(host: str, port: str, count: str, interval: str) -> dict:
    connected = 0
    for _ in range(int(count)):
        connected += connect(host, int(port), 1.0)
        time.sleep(float(interval))
    return {"attempted": int(count), "connected": connected, "dropped": int(count) - connected}


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    print(json.dumps({"ports": ports, "burst": burst, "paced": paced}[mode](*args)))
