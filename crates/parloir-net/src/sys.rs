//! The FFI edge shared by the backends: socket options, socket addresses and control messages
//! (cmsgs) as raw bytes. Everything here works on plain byte slices so that the io_uring
//! backend, which gets its control data inside a provided buffer, parses it the same way as
//! `recvmsg`.

#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::time::{Duration, SystemTime};

use crate::{Ecn, RecvMeta};

/// Room for every control message a receive may carry (PKTINFO, TOS/TCLASS, GRO, timestamp).
pub(crate) const RECV_CONTROL: usize = 128;
/// Room for the one control message a send carries (UDP_SEGMENT).
pub(crate) const SEND_CONTROL: usize = 32;

/// Control-message space with the alignment `cmsghdr` needs.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub(crate) struct Control<const N: usize>(pub [u8; N]);

impl<const N: usize> Default for Control<N> {
    fn default() -> Self {
        Self([0; N])
    }
}

/// Sets an integer socket option.
pub(crate) fn set_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` lives for the call and its size is passed; the kernel validates `fd`,
    // `level` and `name` and reports unknown ones as errors.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Writes `addr` into `out` and returns its length, as `msg_name` wants it.
pub(crate) fn write_sockaddr(addr: SocketAddr, out: &mut libc::sockaddr_storage) -> u32 {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for every sockaddr type;
            // the write stays inside `out`.
            unsafe { std::ptr::write((out as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>() as u32
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((out as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>() as u32
        }
    }
}

/// Reads a socket address the kernel wrote (`msg_name`). `None` for other families or a
/// short buffer.
pub(crate) fn read_sockaddr(bytes: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(bytes.get(..2)?.try_into().ok()?);
    match i32::from(family) {
        libc::AF_INET if bytes.len() >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the length was checked; read_unaligned copes with any alignment and
            // every bit pattern is a valid sockaddr_in.
            let sin: libc::sockaddr_in = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if bytes.len() >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6: libc::sockaddr_in6 =
                unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// What the control messages of one received datagram said.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Received {
    pub destination: Option<IpAddr>,
    pub ecn: Ecn,
    /// GRO segment size, when the kernel coalesced datagrams.
    pub segment: Option<usize>,
    pub timestamp: Option<SystemTime>,
}

/// Parses the control messages of a receive. Unknown messages are skipped, a malformed one
/// ends the parse: control data comes from our own kernel, but nothing here may panic.
pub(crate) fn parse_control(control: &[u8]) -> Received {
    let mut out = Received::default();
    let header = size_of::<libc::cmsghdr>();
    let mut at = 0;
    while at + header <= control.len() {
        // SAFETY: `header` bytes are in bounds; read_unaligned copes with any alignment.
        let cmsg: libc::cmsghdr =
            unsafe { std::ptr::read_unaligned(control[at..].as_ptr().cast()) };
        let len = cmsg.cmsg_len as usize;
        if len < header || at + len > control.len() {
            break;
        }
        let data = &control[at + header..at + len];
        match (cmsg.cmsg_level, cmsg.cmsg_type) {
            (libc::IPPROTO_IP, libc::IP_PKTINFO) if data.len() >= size_of::<libc::in_pktinfo>() => {
                // SAFETY: length checked above.
                let info: libc::in_pktinfo =
                    unsafe { std::ptr::read_unaligned(data.as_ptr().cast()) };
                out.destination = Some(IpAddr::V4(Ipv4Addr::from(
                    info.ipi_addr.s_addr.to_ne_bytes(),
                )));
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO)
                if data.len() >= size_of::<libc::in6_pktinfo>() =>
            {
                // SAFETY: length checked above.
                let info: libc::in6_pktinfo =
                    unsafe { std::ptr::read_unaligned(data.as_ptr().cast()) };
                let ip = Ipv6Addr::from(info.ipi6_addr.s6_addr);
                // A dual-stack socket reports IPv4 destinations as mapped addresses.
                out.destination = Some(match ip.to_ipv4_mapped() {
                    Some(v4) => IpAddr::V4(v4),
                    None => IpAddr::V6(ip),
                });
            }
            // IP_TOS arrives as one byte; IPV6_TCLASS as an int.
            (libc::IPPROTO_IP, libc::IP_TOS) if !data.is_empty() => {
                out.ecn = Ecn::from_bits(data[0]);
            }
            (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) if data.len() >= 4 => {
                let tclass = i32::from_ne_bytes([data[0], data[1], data[2], data[3]]);
                out.ecn = Ecn::from_bits(tclass as u8);
            }
            (libc::SOL_UDP, libc::UDP_GRO) if data.len() >= 4 => {
                let size = i32::from_ne_bytes([data[0], data[1], data[2], data[3]]);
                out.segment = usize::try_from(size).ok().filter(|&s| s > 0);
            }
            (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS)
                if data.len() >= size_of::<libc::timespec>() =>
            {
                // SAFETY: length checked above.
                let ts: libc::timespec = unsafe { std::ptr::read_unaligned(data.as_ptr().cast()) };
                if let (Ok(secs), Ok(nanos)) = (u64::try_from(ts.tv_sec), u32::try_from(ts.tv_nsec))
                {
                    out.timestamp = SystemTime::UNIX_EPOCH
                        .checked_add(Duration::new(secs, nanos.min(999_999_999)));
                }
            }
            _ => {}
        }
        // Each message is padded to the alignment of size_t (CMSG_ALIGN).
        at += len.next_multiple_of(size_of::<usize>());
    }
    out
}

/// The metadata of one received datagram from its raw parts: the `msg_name` bytes, the
/// control bytes, the `msg_flags`, the byte count received and the slot's size. `None` when
/// the source is not an IP address.
pub(crate) fn recv_meta(
    name: &[u8],
    control: &[u8],
    flags: i32,
    received: usize,
    slot: usize,
) -> Option<RecvMeta> {
    let source = read_sockaddr(name)?;
    let r = parse_control(control);
    let len = received.min(slot);
    Some(RecvMeta {
        source,
        destination: r.destination,
        len,
        stride: r.segment.map_or(len, |s| s.min(len.max(1))),
        ecn: r.ecn,
        timestamp: r.timestamp,
        truncated: flags & libc::MSG_TRUNC != 0 || received > slot,
    })
}

/// One `recvmsg(2)` on `fd` into `buf` with `flags`: the datagram's metadata, `Ok(None)` when
/// its source is not an IP address, or the call's error (`WouldBlock` when nothing is queued
/// on a non-blocking socket or with `MSG_DONTWAIT`).
pub(crate) fn recv_one(fd: RawFd, buf: &mut [u8], flags: i32) -> io::Result<Option<RecvMeta>> {
    let mut name = sockaddr_storage();
    let mut control = Control::<RECV_CONTROL>::default();
    let slot = buf.len();
    let mut iov = iovec(buf);
    let mut msg = msghdr(
        &mut name,
        size_of::<libc::sockaddr_storage>() as u32,
        &mut iov,
        control.0.as_mut_ptr(),
        RECV_CONTROL,
    );
    // SAFETY: every pointer in `msg` refers to a local or to `buf`, all alive and exclusively
    // borrowed for the call, with their lengths.
    let rc = unsafe { libc::recvmsg(fd, &mut msg, flags) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let control_len = control_len(&msg, RECV_CONTROL);
    Ok(recv_meta(
        name_bytes(&name, msg.msg_namelen),
        &control.0[..control_len],
        msg.msg_flags,
        rc as usize,
        slot,
    ))
}

/// The control bytes the kernel filled (`msg_controllen` is `size_t` on glibc, `socklen_t`
/// on musl), capped at `capacity`.
#[allow(
    clippy::unnecessary_cast,
    reason = "the field's type differs between C libraries"
)]
pub(crate) fn control_len(msg: &libc::msghdr, capacity: usize) -> usize {
    (msg.msg_controllen as usize).min(capacity)
}

/// The bytes of `name` the kernel filled.
pub(crate) fn name_bytes(name: &libc::sockaddr_storage, len: u32) -> &[u8] {
    let len = (len as usize).min(size_of::<libc::sockaddr_storage>());
    // SAFETY: `name` is a live sockaddr_storage and `len` is capped at its size; every byte
    // of it is initialised (it was zeroed before the kernel wrote into it).
    unsafe { std::slice::from_raw_parts((name as *const libc::sockaddr_storage).cast(), len) }
}

/// Writes a UDP_SEGMENT control message for `segment`-byte GSO segments into `control`;
/// returns the control length to give the kernel.
pub(crate) fn write_segment(control: &mut Control<SEND_CONTROL>, segment: u16) -> usize {
    // SAFETY: CMSG_SPACE and CMSG_LEN are pure arithmetic.
    let (space, len) = unsafe {
        (
            libc::CMSG_SPACE(size_of::<u16>() as u32) as usize,
            libc::CMSG_LEN(size_of::<u16>() as u32) as usize,
        )
    };
    debug_assert!(space <= SEND_CONTROL);
    // SAFETY: an all-zero cmsghdr is valid.
    let mut cmsg: libc::cmsghdr = unsafe { zeroed() };
    cmsg.cmsg_len = len as _;
    cmsg.cmsg_level = libc::SOL_UDP;
    cmsg.cmsg_type = libc::UDP_SEGMENT;
    let header = size_of::<libc::cmsghdr>();
    // SAFETY: `control` is 8-aligned and at least `space` >= `header` bytes long.
    unsafe { std::ptr::write(control.0.as_mut_ptr().cast(), cmsg) };
    control.0[header..header + 2].copy_from_slice(&segment.to_ne_bytes());
    space
}

/// Asks the kernel for the receive metadata the backends report: the destination address,
/// ECN bits, and optionally GRO and timestamps. Returns which of GRO and timestamps took.
pub(crate) fn enable_receive_metadata(
    fd: RawFd,
    ipv6: bool,
    gro: bool,
    timestamps: bool,
) -> (bool, bool) {
    if ipv6 {
        let _ = set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1);
        let _ = set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, 1);
        // Dual-stack sockets also see IPv4 traffic; these may fail on IPv6-only sockets.
        let _ = set_int(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1);
        let _ = set_int(fd, libc::IPPROTO_IP, libc::IP_RECVTOS, 1);
    } else {
        let _ = set_int(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1);
        let _ = set_int(fd, libc::IPPROTO_IP, libc::IP_RECVTOS, 1);
    }
    let gro = gro && set_int(fd, libc::SOL_UDP, libc::UDP_GRO, 1).is_ok();
    let timestamps = timestamps && set_int(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1).is_ok();
    (gro, timestamps)
}

/// Whether this kernel accepts UDP_SEGMENT on a UDP socket of the family of `fd`.
pub(crate) fn gso_supported(fd: RawFd) -> bool {
    set_int(fd, libc::SOL_UDP, libc::UDP_SEGMENT, 0).is_ok()
}

/// Builds the `msghdr` of one datagram: `name` and `control` may be empty.
pub(crate) fn msghdr(
    name: *mut libc::sockaddr_storage,
    name_len: u32,
    iov: *mut libc::iovec,
    control: *mut u8,
    control_len: usize,
) -> libc::msghdr {
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = name.cast();
    msg.msg_namelen = name_len;
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    if control_len > 0 {
        msg.msg_control = control.cast();
        msg.msg_controllen = control_len as _;
    }
    msg
}

/// What the batched backends keep to build a batch of send messages: each message's address,
/// control data (UDP_SEGMENT), iovec, and (datagrams, whether a GSO group). Allocated once;
/// the pointers are rebuilt for every batch.
pub(crate) struct SendScratch {
    names: Vec<libc::sockaddr_storage>,
    controls: Vec<Control<SEND_CONTROL>>,
    iovs: Vec<libc::iovec>,
    pub counts: Vec<(usize, bool)>,
}

impl SendScratch {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            names: vec![sockaddr_storage(); capacity],
            controls: vec![Control::default(); capacity],
            iovs: Vec::with_capacity(capacity),
            counts: Vec::with_capacity(capacity),
        }
    }

    /// Adds `unit` and returns its message header, whose iovec is set by [`Self::patch`]
    /// once the batch stops growing.
    pub(crate) fn prepare(&mut self, unit: &crate::Unit<'_>) -> libc::msghdr {
        let k = self.counts.len();
        let name_len = write_sockaddr(unit.destination, &mut self.names[k]);
        // The kernel only reads send buffers; iovec has no const variant.
        self.iovs.push(libc::iovec {
            iov_base: unit.contents.as_ptr() as *mut libc::c_void,
            iov_len: unit.contents.len(),
        });
        let control_len = match unit.segment {
            Some(segment) => write_segment(&mut self.controls[k], segment),
            None => 0,
        };
        self.counts.push((unit.datagrams, unit.segment.is_some()));
        msghdr(
            &mut self.names[k],
            name_len,
            std::ptr::null_mut(),
            self.controls[k].0.as_mut_ptr(),
            control_len,
        )
    }

    /// Points each header at its iovec (in the order they were prepared).
    pub(crate) fn patch<'a>(&mut self, headers: impl Iterator<Item = &'a mut libc::msghdr>) {
        for (h, iov) in headers.zip(self.iovs.iter_mut()) {
            h.msg_iov = iov;
        }
    }

    pub(crate) fn clear(&mut self) {
        self.iovs.clear();
        self.counts.clear();
    }

    /// Datagrams in messages `from..`.
    pub(crate) fn datagrams_from(&self, from: usize) -> usize {
        self.counts[from.min(self.counts.len())..]
            .iter()
            .map(|c| c.0)
            .sum()
    }
}

/// An all-zero `sockaddr_storage`.
pub(crate) fn sockaddr_storage() -> libc::sockaddr_storage {
    // SAFETY: an all-zero sockaddr_storage is valid (family AF_UNSPEC).
    unsafe { zeroed() }
}

/// An `iovec` over `buf`.
pub(crate) fn iovec(buf: &mut [u8]) -> libc::iovec {
    libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }
}

/// Maps a negative errno (io_uring results) or -1 + errno to an `io::Error`.
pub(crate) fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_round_trip() {
        for addr in ["127.0.0.1:5000", "[::1]:6000", "[fe80::1%2]:7"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut storage = sockaddr_storage();
            let len = write_sockaddr(addr, &mut storage);
            // SAFETY: the storage is a live, initialised value and `len` is within it.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    (&storage as *const libc::sockaddr_storage).cast(),
                    len as usize,
                )
            };
            assert_eq!(read_sockaddr(bytes), Some(addr));
        }
        assert_eq!(read_sockaddr(&[]), None);
        assert_eq!(read_sockaddr(&[2, 0, 1]), None, "short IPv4 address");
    }

    #[test]
    fn malformed_control_data_is_ignored() {
        assert_eq!(parse_control(&[]).destination, None);
        // A header claiming more bytes than there are.
        let mut control = [0u8; 24];
        control[..8].copy_from_slice(&1000u64.to_ne_bytes());
        assert_eq!(parse_control(&control).segment, None);
        // A zero length must not loop forever.
        assert_eq!(parse_control(&[0u8; 64]).segment, None);
    }

    #[test]
    fn segment_control_parses_back_as_gro() {
        // UDP_SEGMENT and UDP_GRO share the level; a GRO message has an int payload.
        let mut control = Control::<SEND_CONTROL>::default();
        let len = write_segment(&mut control, 1200);
        assert!(len >= size_of::<libc::cmsghdr>() + 2);
        // SAFETY: `control` is 8-aligned and holds the header just written.
        let cmsg: libc::cmsghdr = unsafe { std::ptr::read_unaligned(control.0.as_ptr().cast()) };
        assert_eq!(cmsg.cmsg_type, libc::UDP_SEGMENT);
    }
}
