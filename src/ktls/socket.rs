//! Kernel TLS socket calls: the ULP, crypto state, and control records.
//!
//! Thin wrappers over `setsockopt`, `sendmsg` and `recvmsg`; constants from
//! `include/uapi/linux/tls.h` (not all are in the `libc` crate).

use std::io;
use std::mem;
use std::os::fd::RawFd;

use super::crypto_info::CryptoInfo;

/// `SOL_TLS`.
const SOL_TLS: libc::c_int = 282;
/// `TLS_TX` socket option.
const TLS_TX: libc::c_int = 1;
/// `TLS_RX` socket option.
const TLS_RX: libc::c_int = 2;
/// cmsg type carrying the record type of a sent record.
const TLS_SET_RECORD_TYPE: libc::c_int = 1;
/// cmsg type carrying the record type of a received record.
const TLS_GET_RECORD_TYPE: libc::c_int = 2;

/// TLS record content type: alert.
pub const RECORD_ALERT: u8 = 21;
/// TLS record content type: handshake.
pub const RECORD_HANDSHAKE: u8 = 22;
/// TLS record content type: application data.
pub const RECORD_APPLICATION_DATA: u8 = 23;

/// Which direction a crypto state is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// `TLS_TX`.
    Tx,
    /// `TLS_RX`.
    Rx,
}

/// Attaches the `tls` upper-layer protocol; until a crypto state is set it
/// passes bytes through unchanged.
pub fn enable_ulp(fd: RawFd) -> io::Result<()> {
    let name = b"tls";
    // SAFETY: `name` outlives the call; the length matches.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_TCP,
            libc::TCP_ULP,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Installs the crypto state for one direction.
pub fn set_crypto(fd: RawFd, way: Way, info: &CryptoInfo) -> io::Result<()> {
    let opt = match way {
        Way::Tx => TLS_TX,
        Way::Rx => TLS_RX,
    };
    let bytes = info.as_bytes();
    // SAFETY: `bytes` outlives the call; the length matches.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            SOL_TLS,
            opt,
            bytes.as_ptr().cast(),
            bytes.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Room for one `cmsghdr` carrying one byte, 8-aligned.
#[repr(C, align(8))]
struct CmsgSpace([u8; 32]);

/// Sends one record of `record_type` (an alert, say) through the kernel,
/// which encrypts it. Never blocks.
pub fn send_record(fd: RawFd, record_type: u8, payload: &[u8]) -> io::Result<usize> {
    let mut control = CmsgSpace([0; 32]);
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: a zeroed msghdr is valid; every pointer set below points to
    // memory that outlives the sendmsg call, and the cmsg fits in `control`.
    unsafe {
        let mut msg: libc::msghdr = mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(1) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = SOL_TLS;
        (*cmsg).cmsg_type = TLS_SET_RECORD_TYPE;
        (*cmsg).cmsg_len = libc::CMSG_LEN(1) as _;
        *libc::CMSG_DATA(cmsg) = record_type;
        let n = libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL);
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

/// Receives the next record's plaintext (or part of it) with its record
/// type. Never blocks: `WouldBlock` when nothing complete is queued.
pub fn recv_record(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, u8)> {
    let mut control = CmsgSpace([0; 32]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: as in `send_record`; the kernel writes at most msg_controllen
    // bytes of control data and at most buf.len() bytes of payload.
    unsafe {
        let mut msg: libc::msghdr = mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = control.0.len() as _;
        let n = libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut record_type = RECORD_APPLICATION_DATA;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == SOL_TLS && (*cmsg).cmsg_type == TLS_GET_RECORD_TYPE {
                record_type = *libc::CMSG_DATA(cmsg);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Ok((n as usize, record_type))
    }
}
