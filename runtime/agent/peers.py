"""Who is on the other end of a loopback TCP connection: the owner (uid) of the peer's socket, asked of the kernel.

The Runtime API listens on 127.0.0.1, which every process on the host can reach; a sandbox must be served only to
its own runtime, so the agent checks that the connecting socket belongs to the sandbox's uid. The kernel answers
with one NETLINK_SOCK_DIAG request for the exact socket (~10 µs; `ss` uses the same interface). The message layouts
are the kernel's ABI (linux/inet_diag.h); packing them with `struct` avoids a netlink library for one query.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_MESSAGE = struct.Struct("=BBBB")  # inet_diag_msg: family, state, timer, retrans (then the sockid, ...)
_SOCKID_SIZE = 48
_UID_OFFSET = _MESSAGE.size + _SOCKID_SIZE + 12  # after expires, rqueue, wqueue


def _address(host: str, family: int) -> bytes:
    packed = ipaddress.ip_address(host).packed
    return packed.ljust(16, b"\0") if family == socket.AF_INET else packed


def socket_owner(local: tuple[str, int], remote: tuple[str, int], family: int = socket.AF_INET) -> int | None:
    """The uid owning the TCP socket bound to `local` and connected to `remote`; None if the kernel does not say."""
    # inet_diag_req_v2 (family, protocol, ext, pad, states) + inet_diag_sockid (sport and dport big-endian,
    # src[16], dst[16], interface, cookie[2]: "no cookie" asks for the socket by its addresses)
    sockid = struct.pack(
        ">HH16s16s", local[1], remote[1], _address(local[0], family), _address(remote[0], family)
    ) + struct.pack("=III", 0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)
    body = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    message = _HEADER.pack(_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0) + body
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(1.0)
            nl.sendto(message, (0, 0))
            reply = nl.recv(8192)
    except OSError:
        return None
    if len(reply) < _HEADER.size:
        return None
    _, kind, _, _, _ = _HEADER.unpack_from(reply)
    payload = reply[_HEADER.size :]
    if kind == NLMSG_ERROR or len(payload) < _UID_OFFSET + 4:
        return None
    (uid,) = struct.unpack_from("=I", payload, _UID_OFFSET)
    return int(uid)


def peer_uid(sock: socket.socket) -> int | None:
    """The uid owning the other end of an accepted loopback connection."""
    try:
        ours = sock.getsockname()
        theirs = sock.getpeername()
    except OSError:
        return None
    # The peer's socket is bound to its address and connected to ours.
    return socket_owner((theirs[0], theirs[1]), (ours[0], ours[1]), sock.family)
