"""A userspace link between two network namespaces, with delay, rate and counters.

The test kernel has no `tc netem` (nor tbf or fq), so a shaped link is made
of two TUN devices, one in each namespace, joined by this emulator: every IP
packet the kernel sends into one device is read here and written into the
other after the link's delay, no faster than its rate, and counted.

    link = LinkEmulator("tp-site", "tp-isp", ifname="tplink0", delay=0.02, rate=250_000)
    link.start()            # devices exist (down, no address) once this returns
    ...configure both ends with `ip`, run programs...
    link.counts()           # {"a_to_b": (packets, bytes), "b_to_a": (...)}
    link.cut_after(n)       # a radio link lost: once a to b carried n bytes, nothing passes
    link.set_down(False)    # ...until it is mended
    link.close()            # devices vanish with their file descriptors

Model: a packet of n bytes occupies the sender's side for n / rate seconds
(after the packets before it), then arrives `delay` seconds later.  Nothing
is dropped; the queue is unbounded (the tests send little).

Needs root (CAP_NET_ADMIN) and /dev/net/tun.  The devices are created from a
helper thread that enters each namespace with setns(2), so the rest of the
process stays where it was.  Linux only; test support, not used by tidepost.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import select
import struct
import threading
import time
from collections import deque

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
MAX_PACKET = 65536


def _setns(path: str) -> None:
    """Move the calling thread into the network namespace at `path`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns {path}: {os.strerror(error)}")
    finally:
        os.close(fd)


def open_tun(ifname: str) -> int:
    """Create TUN device `ifname` (IP packets, no header) in this thread's namespace."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", ifname.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def tun_in_namespaces(ifname: str, *namespaces: str) -> list[int]:
    """One TUN device named `ifname` in each named namespace (ip netns), as fds."""
    result: list[int] = []
    failure: list[BaseException] = []

    def work() -> None:
        # This thread never returns to the original namespace: it simply ends.
        try:
            for name in namespaces:
                _setns(f"/run/netns/{name}")
                result.append(open_tun(ifname))
        except BaseException as error:  # reported to the caller below
            failure.append(error)

    thread = threading.Thread(target=work, name="linkemu-setns")
    thread.start()
    thread.join()
    if failure:
        for fd in result:
            os.close(fd)
        raise failure[0]
    return result


class _Direction:
    """Packets from one TUN fd to the other: queue, timing and counters."""

    def __init__(self, source: int, sink: int, delay: float, rate: float):
        self.source, self.sink = source, sink
        self.delay, self.rate = delay, rate
        self.queue: deque[tuple[float, bytes]] = deque()
        self.link_free = 0.0   # monotonic time the sender's side is free again
        self.packets = 0
        self.bytes = 0
        self.dropped = 0       # packets lost while the link was cut

    def take(self, packet: bytes, now: float, down: bool = False) -> None:
        """Count a packet read from the source and schedule its arrival (lost if `down`)."""
        if down:  # not counted as carried: it never reaches the far end
            self.dropped += 1
            return
        self.packets += 1
        self.bytes += len(packet)
        sent = max(now, self.link_free) + (len(packet) / self.rate if self.rate else 0.0)
        self.link_free = sent
        self.queue.append((sent + self.delay, packet))

    def deliver_due(self, now: float) -> float | None:
        """Write every packet due by `now`; seconds until the next one, or None."""
        while self.queue and self.queue[0][0] <= now:
            _, packet = self.queue.popleft()
            try:
                os.write(self.sink, packet)
            except OSError:
                pass  # the far device is down: the packet is lost, as on a wire
        return self.queue[0][0] - now if self.queue else None


class LinkEmulator:
    """Two TUN devices in two namespaces, joined with delay and rate."""

    def __init__(self, netns_a: str, netns_b: str, *, ifname: str = "tplink0",
                 delay: float = 0.0, rate: float = 0.0):
        self.netns_a, self.netns_b, self.ifname = netns_a, netns_b, ifname
        self.delay = delay          # seconds, each way
        self.rate = rate            # bytes per second, each way; 0: unlimited
        self._fds: list[int] = []
        self._directions: dict[str, _Direction] = {}
        self._stop_r, self._stop_w = -1, -1
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._down = False
        self._cut_at: int | None = None   # a_to_b bytes after which the link goes down

    def start(self) -> LinkEmulator:
        """Create both devices and start forwarding."""
        self._fds = tun_in_namespaces(self.ifname, self.netns_a, self.netns_b)
        a, b = self._fds
        self._directions = {"a_to_b": _Direction(a, b, self.delay, self.rate),
                            "b_to_a": _Direction(b, a, self.delay, self.rate)}
        self._stop_r, self._stop_w = os.pipe()
        for name, direction in self._directions.items():
            thread = threading.Thread(target=self._forward, args=(direction,),
                                      name=f"linkemu-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def counts(self) -> dict[str, tuple[int, int]]:
        """(packets, bytes) carried so far from each side: "a_to_b", "b_to_a" (not the lost)."""
        with self._lock:
            return {name: (d.packets, d.bytes) for name, d in self._directions.items()}

    def set_delay(self, delay: float) -> None:
        """Change the one-way delay for the packets sent from now on."""
        with self._lock:
            self.delay = delay
            for direction in self._directions.values():
                direction.delay = delay

    def cut_after(self, a_to_b_bytes: int) -> None:
        """Cut the link (both ways, every packet lost) once a to b has carried this much."""
        with self._lock:
            self._cut_at = a_to_b_bytes

    def set_down(self, down: bool) -> None:
        """Cut the link (True: packets in flight arrive, later ones are lost) or mend it."""
        with self._lock:
            self._down, self._cut_at = down, None

    @property
    def down(self) -> bool:
        """True while the link is cut."""
        with self._lock:
            return self._down

    def close(self) -> None:
        """Stop forwarding and remove both devices."""
        if self._stop_w >= 0:
            os.write(self._stop_w, b"x")
        for thread in self._threads:
            thread.join(5)
        for fd in (*self._fds, self._stop_r, self._stop_w):
            if fd >= 0:
                os.close(fd)
        self._fds, self._threads, self._stop_r, self._stop_w = [], [], -1, -1

    def _forward(self, direction: _Direction) -> None:
        """Thread: read packets from the source, write them out when due."""
        wait: float | None = None
        while True:
            ready, _, _ = select.select([direction.source, self._stop_r], [], [], wait)
            if self._stop_r in ready:
                return
            now = time.monotonic()
            if direction.source in ready:
                try:
                    packet = os.read(direction.source, MAX_PACKET)
                except OSError:
                    return
                with self._lock:
                    forward = self._directions["a_to_b"]
                    if self._cut_at is not None and forward.bytes >= self._cut_at:
                        self._down, self._cut_at = True, None
                    direction.take(packet, now, self._down)
            wait = direction.deliver_due(time.monotonic())
