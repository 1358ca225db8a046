#!/usr/bin/python3
"""Accept and close connections on the given TCP ports (the firewall test's services)."""

import selectors
import socket
import sys

selector = selectors.DefaultSelector()
for port in sys.argv[1:]:
    server = socket.create_server(("", int(port)), backlog=256, reuse_port=True)
    server.setblocking(False)
    selector.register(server, selectors.EVENT_READ)
while True:
    for key, _ in selector.select():
        connection, _ = key.fileobj.accept()
        connection.close()
