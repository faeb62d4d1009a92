# cython: language_level=3
"""Layer-2 delay line: forwards every frame between two interfaces, each direction after its own fixed delay.

A frame leaves no earlier than its kernel arrival time plus the delay, unaltered (MACs included) and in order;
GRO/GSO super-packets pass whole (PACKET_VNET_HDR). Frames are dropped only when a ring is full or a send fails,
each drop counted by reason.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport memset, memcpy, strerror
from libc.errno cimport errno, EAGAIN, EINTR, ENOBUFS
from posix.unistd cimport close, write
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC, CLOCK_REALTIME
from posix.uio cimport iovec
from posix.mman cimport mmap, munmap, madvise, PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS, MAP_FAILED, MADV_HUGEPAGE

import threading


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t
    struct sockaddr:
        sa_family_t sa_family
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    cmsghdr *CMSG_FIRSTHDR(msghdr *msg)
    cmsghdr *CMSG_NXTHDR(msghdr *msg, cmsghdr *cmsg)
    unsigned char *CMSG_DATA(cmsghdr *cmsg)
    size_t CMSG_SPACE(size_t len)
    int SO_TIMESTAMPNS, SCM_TIMESTAMPNS
    int AF_PACKET, SOCK_RAW, SOCK_CLOEXEC, SOL_SOCKET, SO_RCVBUFFORCE, SO_SNDBUFFORCE
    int MSG_DONTWAIT, MSG_TRUNC
    int socket(int domain, int type, int protocol)
    int bind(int fd, const sockaddr *addr, socklen_t len)
    int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
    int getsockopt(int fd, int level, int name, void *val, socklen_t *len)
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    ssize_t recvmsg(int fd, msghdr *msg, int flags)
    int sendmmsg(int fd, mmsghdr *vec, unsigned int vlen, int flags)

cdef extern from "<arpa/inet.h>" nogil:
    uint16_t htons(uint16_t)

cdef extern from "<net/if.h>" nogil:
    unsigned int if_nametoindex(const char *name)

cdef extern from "<linux/if_ether.h>" nogil:
    int ETH_P_ALL

cdef extern from "<linux/if_packet.h>" nogil:
    struct sockaddr_ll:
        unsigned short sll_family
        uint16_t sll_protocol
        int sll_ifindex
        unsigned short sll_hatype
        unsigned char sll_pkttype
        unsigned char sll_halen
        unsigned char sll_addr[8]
    struct tpacket_stats:
        unsigned int tp_packets
        unsigned int tp_drops
    int SOL_PACKET, PACKET_VNET_HDR, PACKET_IGNORE_OUTGOING, PACKET_STATISTICS

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    short POLLIN, POLLOUT
    int ppoll(pollfd *fds, unsigned long nfds, const timespec *tmo, const void *sigmask)

cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    int EFD_CLOEXEC, EFD_NONBLOCK

cdef extern from "<sys/prctl.h>" nogil:
    int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5)
    int PR_SET_TIMERSLACK


cdef enum:
    # virtio_net_hdr that PACKET_VNET_HDR puts before (receive) and expects before (send) each frame
    VNET_HDR_LEN = 10
    RECORD_ALIGN = 64
    # a GRO/GSO super-packet is at most 64 KB of IP plus Ethernet and VLAN headers;
    # a multiple of RECORD_ALIGN, so a record's stride never exceeds what reserve() found free
    MAX_RECORD = (VNET_HDR_LEN + 65536 + 14 + 4 + RECORD_ALIGN - 1) // RECORD_ALIGN * RECORD_ALIGN
    BATCH = 64
    # frames read per wakeup before the due ones are sent again, so that a flood
    # on the input does not hold back frames that are already due
    RX_BURST = 128
    TX_BURST = 512
    CONTROL_LEN = 64
    # While frames are queued, arrivals do not wake the thread (their kernel
    # timestamps keep their due times exact); this bounds how long they wait
    # in the socket, at most ~1 MB at 10 Gbit/s.
    LAZY_RX_NS = 1000000
    # Timer slack: how late a due frame may go out so that the kernel can
    # serve several due times with one wakeup.
    TIMER_SLACK_NS = 5000


ctypedef struct Desc:
    uint64_t due_ns
    uint32_t off
    uint32_t len            # vnet header + frame


ctypedef struct Direction:
    int rx_fd
    int tx_fd
    int stop_fd
    uint64_t delay_ns
    # Frame bytes live in one byte ring (buf/cap, written at wr); the
    # descriptor ring (desc/mask, head/count) keeps their order and due times.
    char *buf
    size_t cap
    size_t wr
    Desc *desc
    uint32_t mask
    uint32_t head
    uint32_t count
    uint64_t queued_bytes
    char *scratch          # receives frames that are dropped because the ring is full
    mmsghdr *mm
    iovec *iov
    msghdr rx_msg
    iovec rx_iov
    char rx_control[CONTROL_LEN]
    # statistics, written only by the direction's thread; every frame read
    # (rx_frames) is sent (tx_frames), dropped by one reason, or still queued (count)
    uint64_t rx_frames
    uint64_t rx_bytes
    uint64_t tx_frames
    uint64_t tx_bytes
    uint64_t gso_frames
    uint64_t max_frame
    uint64_t max_queue_frames
    uint64_t max_queue_bytes
    uint64_t drop_ring_full
    uint64_t drop_truncated
    uint64_t drop_send_nobufs
    uint64_t drop_send_error
    uint64_t rx_errors
    uint64_t send_blocked
    uint64_t late_ns_sum        # how long after its due time each frame went out
    uint64_t late_ns_max
    uint64_t rx_lag_ns_max      # kernel arrival to our read
    uint64_t rx_local_stamps    # frames without a usable kernel timestamp: our clock at read time
    int last_send_errno
    int last_rx_errno
    # read by stats() from Python: PACKET_STATISTICS resets on each read
    uint64_t socket_rx_drops


cdef inline uint64_t clock_ns(int clk) noexcept nogil:
    cdef timespec ts
    clock_gettime(clk, &ts)
    return <uint64_t>ts.tv_sec * 1000000000ULL + <uint64_t>ts.tv_nsec


cdef inline uint64_t mono_ns() noexcept nogil:
    return clock_ns(CLOCK_MONOTONIC)


cdef inline char *reserve(Direction *d) noexcept nogil:
    """MAX_RECORD contiguous free bytes at the write offset (wrapping to 0 if needed), or NULL when full."""
    cdef size_t h
    if d.count == 0:
        d.wr = 0
        return d.buf
    if d.count > d.mask:
        return NULL
    h = d.desc[d.head].off
    if d.wr > h:
        # live bytes are [h, wr): free space is the tail end, then [0, h)
        if d.cap - d.wr >= MAX_RECORD:
            return d.buf + d.wr
        if h >= MAX_RECORD:
            d.wr = 0
            return d.buf
        return NULL
    # wrapped: live bytes are [h, cap) and [0, wr), free is [wr, h)
    if h - d.wr >= MAX_RECORD:
        return d.buf + d.wr
    return NULL


cdef inline void push(Direction *d, uint32_t length, uint64_t due) noexcept nogil:
    cdef Desc *e = &d.desc[(d.head + d.count) & d.mask]
    e.due_ns = due
    e.off = <uint32_t>d.wr
    e.len = length
    d.wr += (length + RECORD_ALIGN - 1) & ~<size_t>(RECORD_ALIGN - 1)
    d.count += 1
    d.queued_bytes += length
    if d.count > d.max_queue_frames:
        d.max_queue_frames = d.count
    if d.queued_bytes > d.max_queue_bytes:
        d.max_queue_bytes = d.queued_bytes


cdef inline void pop(Direction *d, bint sent) noexcept nogil:
    cdef Desc *e = &d.desc[d.head]
    if sent:
        d.tx_frames += 1
        d.tx_bytes += e.len - VNET_HDR_LEN
    d.queued_bytes -= e.len
    d.head = (d.head + 1) & d.mask
    d.count -= 1


cdef inline uint64_t arrival_ns(Direction *d, uint64_t now, int64_t real_minus_mono) noexcept nogil:
    """The frame's kernel receive time on the monotonic clock (its SCM_TIMESTAMPNS), never after now."""
    cdef cmsghdr *c = CMSG_FIRSTHDR(&d.rx_msg)
    cdef timespec ts
    cdef int64_t t
    while c != NULL:
        if c.cmsg_level == SOL_SOCKET and c.cmsg_type == SCM_TIMESTAMPNS:
            memcpy(&ts, CMSG_DATA(c), sizeof(ts))
            t = <int64_t>ts.tv_sec * 1000000000LL + <int64_t>ts.tv_nsec - real_minus_mono
            if t <= 0:
                break
            if <uint64_t>t > now:
                # arrived during this burst, or the realtime clock was stepped:
                # never earlier than it can really have arrived
                now = mono_ns()
                if <uint64_t>t > now:
                    break
                return <uint64_t>t
            if now - <uint64_t>t > d.rx_lag_ns_max:
                d.rx_lag_ns_max = now - <uint64_t>t
            return <uint64_t>t
        c = CMSG_NXTHDR(&d.rx_msg, c)
    d.rx_local_stamps += 1
    return now


cdef int recv_burst(Direction *d) noexcept nogil:
    """Moves up to RX_BURST frames from the socket into the ring; returns 1 if the socket may hold more."""
    cdef int i
    cdef char *p
    cdef ssize_t n
    cdef uint64_t now, arrival
    cdef int64_t real_minus_mono
    cdef uint8_t gso_type
    # Sampled once per burst to convert the realtime kernel timestamps.
    # Realtime read first, so the offset errs toward later due times.
    real_minus_mono = <int64_t>clock_ns(CLOCK_REALTIME)
    now = mono_ns()
    real_minus_mono -= <int64_t>now
    for i in range(RX_BURST):
        p = reserve(d)
        if p == NULL:
            # tail drop, like a full queue; the frame must still be read or poll() would spin
            n = recv(d.rx_fd, d.scratch, MAX_RECORD, MSG_DONTWAIT | MSG_TRUNC)
            if n < 0:
                return 0
            if n > VNET_HDR_LEN:
                d.rx_frames += 1
                d.rx_bytes += <uint64_t>(n - VNET_HDR_LEN)
                d.drop_ring_full += 1
            continue
        d.rx_iov.iov_base = p
        d.rx_iov.iov_len = MAX_RECORD
        d.rx_msg.msg_controllen = CONTROL_LEN
        d.rx_msg.msg_flags = 0
        n = recvmsg(d.rx_fd, &d.rx_msg, MSG_DONTWAIT | MSG_TRUNC)
        if n < 0:
            if errno != EAGAIN and errno != EINTR:
                d.rx_errors += 1
                d.last_rx_errno = errno
            return 0
        if n <= VNET_HDR_LEN:
            continue
        d.rx_frames += 1
        d.rx_bytes += <uint64_t>(n - VNET_HDR_LEN)
        if n > MAX_RECORD:
            d.drop_truncated += 1
            continue
        arrival = arrival_ns(d, now, real_minus_mono)
        if <uint64_t>(n - VNET_HDR_LEN) > d.max_frame:
            d.max_frame = <uint64_t>(n - VNET_HDR_LEN)
        gso_type = <uint8_t>p[1]
        if gso_type != 0:
            d.gso_frames += 1
        push(d, <uint32_t>n, arrival + d.delay_ns)
    return 1


cdef int send_due(Direction *d, uint64_t now) noexcept nogil:
    """Sends the frames whose time has come; returns 1 if the socket would block (wait for POLLOUT)."""
    cdef uint32_t k, i, idx
    cdef int r, total = 0
    cdef uint64_t late
    cdef Desc *e
    while d.count > 0 and total < TX_BURST:
        k = 0
        idx = d.head
        while k < BATCH and k < d.count:
            e = &d.desc[idx]
            if e.due_ns > now:
                break
            d.iov[k].iov_base = d.buf + e.off
            d.iov[k].iov_len = e.len
            k += 1
            idx = (idx + 1) & d.mask
        if k == 0:
            return 0
        r = sendmmsg(d.tx_fd, d.mm, k, MSG_DONTWAIT)
        if r > 0:
            for i in range(<uint32_t>r):
                late = now - d.desc[d.head].due_ns
                d.late_ns_sum += late
                if late > d.late_ns_max:
                    d.late_ns_max = late
                pop(d, True)
            total += r
            # A shortfall means the next frame failed; the next call reports
            # why (the kernel keeps that error for it, or it is EAGAIN again).
            continue
        if errno == EINTR:
            continue
        if errno == EAGAIN:
            d.send_blocked += 1
            return 1
        if errno == ENOBUFS:
            # typically a full qdisc (tbf) on the output device: that is the bottleneck dropping
            d.drop_send_nobufs += 1
        else:
            d.drop_send_error += 1
            d.last_send_errno = errno
        pop(d, False)
        total += 1
    return 0


cdef void run_direction(Direction *d) noexcept nogil:
    cdef pollfd fds[3]
    cdef timespec ts
    cdef const timespec *tmo
    cdef int blocked = 0, more, nfds
    cdef int64_t wait_ns
    cdef uint64_t now
    prctl(PR_SET_TIMERSLACK, TIMER_SLACK_NS, 0, 0, 0)
    # fds[0] is the stop eventfd, always watched
    fds[0].fd = d.stop_fd
    fds[0].events = POLLIN
    d.rx_msg.msg_iov = &d.rx_iov
    d.rx_msg.msg_iovlen = 1
    d.rx_msg.msg_control = d.rx_control
    while True:
        if d.count > 0:
            blocked = send_due(d, mono_ns())
        more = recv_burst(d)
        if more:
            continue
        now = mono_ns()
        nfds = 1
        tmo = NULL
        if blocked:
            fds[nfds].fd = d.tx_fd
            fds[nfds].events = POLLOUT
            nfds += 1
        if d.count == 0:
            fds[nfds].fd = d.rx_fd
            fds[nfds].events = POLLIN
            nfds += 1
        elif not blocked:
            wait_ns = <int64_t>(d.desc[d.head].due_ns - now)
            if wait_ns <= 0:
                continue
            if wait_ns > LAZY_RX_NS:
                wait_ns = LAZY_RX_NS
            ts.tv_sec = wait_ns // 1000000000
            ts.tv_nsec = wait_ns % 1000000000
            tmo = &ts
        elif d.count > 0:
            # blocked on a full send buffer: still read arrivals now and then
            ts.tv_sec = 0
            ts.tv_nsec = LAZY_RX_NS
            tmo = &ts
        fds[0].revents = 0
        if ppoll(fds, nfds, tmo, NULL) < 0 and errno != EINTR:
            break
        if fds[0].revents:
            break


cdef int open_packet_socket(unsigned int ifindex, bint rx, int bufsize) except -1:
    cdef int one = 1
    cdef int fd
    cdef sockaddr_ll sll
    # protocol 0 at creation: an ETH_P_ALL socket would queue frames from every
    # interface until bind() narrows it to ours
    fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0)
    if fd < 0:
        raise OSError(errno, strerror(errno).decode())
    try:
        if setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof(one)) < 0:
            raise OSError(errno, "PACKET_VNET_HDR: " + strerror(errno).decode())
        if rx:
            # without this it would also read what the other direction sends out of the same interface
            if setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof(one)) < 0:
                raise OSError(errno, "PACKET_IGNORE_OUTGOING: " + strerror(errno).decode())
            if setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bufsize, sizeof(bufsize)) < 0:
                raise OSError(errno, "SO_RCVBUFFORCE: " + strerror(errno).decode())
            # the kernel's receive time, so that time spent in the socket queue counts toward the delay
            if setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one)) < 0:
                raise OSError(errno, "SO_TIMESTAMPNS: " + strerror(errno).decode())
        else:
            # room for what sits in a qdisc (tbf) on the output: a full qdisc
            # should drop (ENOBUFS), not stall the line on socket memory
            if setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bufsize, sizeof(bufsize)) < 0:
                raise OSError(errno, "SO_SNDBUFFORCE: " + strerror(errno).decode())
        memset(&sll, 0, sizeof(sll))
        sll.sll_family = AF_PACKET
        sll.sll_ifindex = <int>ifindex
        # the send socket binds protocol 0 so that it receives nothing
        sll.sll_protocol = htons(ETH_P_ALL) if rx else 0
        if bind(fd, <sockaddr *>&sll, sizeof(sll)) < 0:
            raise OSError(errno, "bind: " + strerror(errno).decode())
    except BaseException:
        close(fd)
        raise
    return fd


cdef unsigned int lookup_ifindex(str name) except 0:
    cdef bytes b = name.encode()
    cdef unsigned int idx = if_nametoindex(b)
    if idx == 0:
        raise LookupError(f"no interface {name!r} in this network namespace")
    return idx


cdef class DelayLine:
    """Forwards frames a -> b after delay_ms and b -> a after delay_back_ms (default: delay_ms), one thread each.

    Construction opens and binds the sockets (OSError without privilege,
    LookupError for an unknown interface); start() forwards; stop() ends it.
    """

    cdef Direction dirs[2]
    cdef readonly str a
    cdef readonly str b
    cdef readonly double delay_ms
    cdef readonly double delay_back_ms
    cdef readonly size_t ring_bytes
    cdef object _threads

    def __cinit__(self):
        cdef int i
        memset(self.dirs, 0, sizeof(self.dirs))
        for i in range(2):
            self.dirs[i].rx_fd = -1
            self.dirs[i].tx_fd = -1
            self.dirs[i].stop_fd = -1
        self._threads = []

    def __init__(self, str a not None, str b not None, double delay_ms=0.0, delay_back_ms=None,
                 size_t ring_bytes=64 << 20, int rx_buf_bytes=16 << 20, int tx_buf_bytes=64 << 20):
        cdef unsigned int ia, ib
        cdef int i
        if delay_back_ms is None:
            delay_back_ms = delay_ms
        if delay_ms < 0 or delay_back_ms < 0:
            raise ValueError("delays must be >= 0")
        if ring_bytes < 4 * MAX_RECORD or ring_bytes > 0xFFFF0000:
            raise ValueError(f"ring_bytes must be between {4 * MAX_RECORD} and 4 GiB")
        if a == b:
            raise ValueError("a and b must be two different interfaces")
        self.a, self.b = a, b
        self.delay_ms, self.delay_back_ms = delay_ms, delay_back_ms
        self.ring_bytes = ring_bytes
        ia = lookup_ifindex(a)
        ib = lookup_ifindex(b)
        self._setup(0, ia, ib, <uint64_t>(delay_ms * 1e6 + 0.5), rx_buf_bytes, tx_buf_bytes)
        self._setup(1, ib, ia, <uint64_t>(float(delay_back_ms) * 1e6 + 0.5), rx_buf_bytes, tx_buf_bytes)

    cdef _setup(self, int i, unsigned int in_idx, unsigned int out_idx, uint64_t delay_ns, int rx_buf, int tx_buf):
        cdef Direction *d = &self.dirs[i]
        cdef uint32_t ndesc = 1024
        cdef int k
        cdef void *mem
        d.delay_ns = delay_ns
        d.rx_fd = open_packet_socket(in_idx, True, rx_buf)
        d.tx_fd = open_packet_socket(out_idx, False, tx_buf)
        d.stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
        if d.stop_fd < 0:
            raise OSError(errno, "eventfd: " + strerror(errno).decode())
        # one descriptor per 512 ring bytes: enough for a ring full of small ACKs
        while ndesc < self.ring_bytes // 512:
            ndesc <<= 1
        d.mask = ndesc - 1
        d.cap = self.ring_bytes
        # untouched pages of a large ring cost nothing until traffic needs them
        mem = mmap(NULL, d.cap + MAX_RECORD + ndesc * sizeof(Desc), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if mem == MAP_FAILED:
            raise MemoryError("cannot map the delay ring")
        d.buf = <char *>mem
        # fewer TLB misses in the two copies per frame (a hint: fine if THP is off)
        madvise(mem, d.cap, MADV_HUGEPAGE)
        d.scratch = d.buf + d.cap
        d.desc = <Desc *>(d.scratch + MAX_RECORD)
        mem = mmap(NULL, BATCH * (sizeof(mmsghdr) + sizeof(iovec)), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if mem == MAP_FAILED:
            raise MemoryError("cannot map the send batch")
        d.mm = <mmsghdr *>mem
        d.iov = <iovec *>(d.mm + BATCH)
        for k in range(BATCH):
            d.mm[k].msg_hdr.msg_iov = &d.iov[k]
            d.mm[k].msg_hdr.msg_iovlen = 1

    def _run(self, int i):
        with nogil:
            run_direction(&self.dirs[i])

    def start(self):
        """Starts both directions (each its own thread, GIL released while forwarding)."""
        if self._threads:
            raise RuntimeError("already started")
        for i, name in ((0, f"{self.a}->{self.b}"), (1, f"{self.b}->{self.a}")):
            t = threading.Thread(target=self._run, args=(i,), name=f"delayline {name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout=5.0):
        """Stops both directions; frames still held in the rings are discarded (counted as in_flight)."""
        cdef uint64_t one = 1
        cdef int i
        for i in range(2):
            if self.dirs[i].stop_fd >= 0:
                write(self.dirs[i].stop_fd, &one, sizeof(one))
        for t in self._threads:
            t.join(timeout)
        if any(t.is_alive() for t in self._threads):
            raise RuntimeError("delay line threads did not stop")

    def running(self):
        return any(t.is_alive() for t in self._threads)

    def stats(self):
        """Per-direction counters as a dict {'a_to_b': {...}, 'b_to_a': {...}}; safe while running."""
        return {"a_to_b": self._dir_stats(0), "b_to_a": self._dir_stats(1)}

    cdef dict _dir_stats(self, int i):
        cdef Direction *d = &self.dirs[i]
        cdef tpacket_stats st
        cdef socklen_t sl = sizeof(st)
        if d.rx_fd >= 0 and getsockopt(d.rx_fd, SOL_PACKET, PACKET_STATISTICS, &st, &sl) == 0:
            d.socket_rx_drops += st.tp_drops
        return {
            "delay_ms": d.delay_ns / 1e6,
            "frames": d.tx_frames,
            "bytes": d.tx_bytes,
            "rx_frames": d.rx_frames,
            "rx_bytes": d.rx_bytes,
            "gso_frames": d.gso_frames,
            "max_frame_bytes": d.max_frame,
            "max_queue_frames": d.max_queue_frames,
            "max_queue_bytes": d.max_queue_bytes,
            "in_flight_frames": d.count,
            "drops": {
                "ring_full": d.drop_ring_full,
                "truncated": d.drop_truncated,
                "send_nobufs": d.drop_send_nobufs,
                "send_error": d.drop_send_error,
                "socket_rx": d.socket_rx_drops,
            },
            "send_blocked": d.send_blocked,
            "late_us_avg": round(d.late_ns_sum / d.tx_frames / 1e3, 1) if d.tx_frames else 0.0,
            "late_us_max": round(d.late_ns_max / 1e3, 1),
            "rx_lag_us_max": round(d.rx_lag_ns_max / 1e3, 1),
            "rx_local_stamps": d.rx_local_stamps,
            "rx_errors": d.rx_errors,
            "last_send_errno": d.last_send_errno,
            "last_rx_errno": d.last_rx_errno,
        }

    def close(self):
        """Stops if running and releases sockets and memory (also done on garbage collection)."""
        if self.running():
            self.stop()
        self._release()

    cdef _release(self):
        cdef int i
        cdef Direction *d
        for i in range(2):
            d = &self.dirs[i]
            if d.rx_fd >= 0:
                close(d.rx_fd)
                d.rx_fd = -1
            if d.tx_fd >= 0:
                close(d.tx_fd)
                d.tx_fd = -1
            if d.stop_fd >= 0:
                close(d.stop_fd)
                d.stop_fd = -1
            if d.buf != NULL:
                munmap(d.buf, d.cap + MAX_RECORD + (d.mask + 1) * sizeof(Desc))
                d.buf = NULL
            if d.mm != NULL:
                munmap(d.mm, BATCH * (sizeof(mmsghdr) + sizeof(iovec)))
                d.mm = NULL

    def __dealloc__(self):
        # threads hold a reference to self through _run, so none is running here
        self._release()
