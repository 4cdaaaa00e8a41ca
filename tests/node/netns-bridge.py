#!/usr/bin/env python3
"""Joins the test node's network namespace to the control plane on the host's
loopback without touching the host's network: no interface, route or rule is
added outside the node's namespaces.

  --forward ADDR:PORT=ADDR:PORT   listen inside the node namespace, connect on
                                  the host (the kubelet, kube-proxy, CoreDNS and
                                  pods reach the API server this way);
  --connect-proxy PATH            an HTTP CONNECT proxy on a Unix socket whose
                                  connections are made inside the node namespace
                                  (the API server's egress selector sends its
                                  kubelet, pod and service traffic through it).

A socket belongs to the network namespace its creating thread was in, and setns
only moves the calling thread, so each socket is made in the right namespace
without affecting the other threads.
"""

import argparse
import ctypes
import os
import socket
import sys
import threading
import time

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
HOST_NS = os.open("/proc/self/ns/net", os.O_RDONLY)
IDLE_SECS = 3600  # a connection with no traffic either way for this long is dropped


def setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def socket_in(ns_fd, family=socket.AF_INET):
    setns(ns_fd)
    try:
        return socket.socket(family, socket.SOCK_STREAM)
    finally:
        setns(HOST_NS)


def split_addr(text):
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def splice(a, b):
    for s in (a, b):
        s.settimeout(IDLE_SECS)
    threading.Thread(target=pump, args=(a, b), daemon=True).start()
    threading.Thread(target=pump, args=(b, a), daemon=True).start()


def listen_in(node_ns, listen):
    lsock = socket_in(node_ns)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(split_addr(listen))
    lsock.listen(128)
    return lsock


def handle_forward(conn, target):
    try:
        up = socket.create_connection(split_addr(target), timeout=10)
    except OSError:
        conn.close()
        return
    splice(conn, up)


def accept_loop(lsock, handler, *args):
    while True:
        try:
            conn, _ = lsock.accept()
        except OSError:  # e.g. out of descriptors: wait, do not die
            time.sleep(0.1)
            continue
        threading.Thread(target=handler, args=(conn, *args), daemon=True).start()


def read_head(conn):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(4096)
        if not chunk or len(buf) > 16384:
            raise OSError("bad CONNECT request")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


def handle_connect(conn, node_ns):
    try:
        conn.settimeout(10)
        head, rest = read_head(conn)
        method, target, _ = head.split("\r\n", 1)[0].split(" ", 2)
        if method != "CONNECT":
            raise OSError(f"not a CONNECT: {method}")
        host, port = split_addr(target)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        up = socket_in(node_ns, family)
        up.settimeout(10)
        up.connect((host, port))
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if rest:
            up.sendall(rest)
        splice(conn, up)
    except (OSError, ValueError) as e:
        try:
            conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\n\r\n" + str(e).encode()[:200])
        except OSError:
            pass
        conn.close()


def listen_unix(path):
    if os.path.exists(path):
        os.unlink(path)
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # root only, from the moment it exists
    try:
        lsock.bind(path)
    finally:
        os.umask(old)
    lsock.listen(128)
    return lsock




def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--netns", required=True, help="the node's network namespace file")
    p.add_argument("--forward", action="append", default=[], metavar="IN_NODE=ON_HOST")
    p.add_argument("--connect-proxy", metavar="PATH")
    a = p.parse_args()
    node_ns = os.open(a.netns, os.O_RDONLY)
    threads = []
    # Every listener is bound before "ready" is printed.
    for spec in a.forward:
        listen, _, target = spec.partition("=")
        lsock = listen_in(node_ns, listen)
        threads.append(threading.Thread(target=accept_loop, args=(lsock, handle_forward, target), daemon=True))
    if a.connect_proxy:
        lsock = listen_unix(a.connect_proxy)
        threads.append(threading.Thread(target=accept_loop, args=(lsock, handle_connect, node_ns), daemon=True))
    for t in threads:
        t.start()
    print("ready", flush=True)
    # Exit as soon as any listener dies, so that its absence shows.
    while all(t.is_alive() for t in threads):
        threads[0].join(timeout=1)
    sys.exit(1)


if __name__ == "__main__":
    main()
