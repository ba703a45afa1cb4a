//! Handing a finished rustls session to the kernel.
//!
//! The kernel must start decrypting exactly at a record boundary with the
//! right sequence number, and must not be asked to send anything rustls
//! already encoded. So: read the client's stream up to the end of any
//! partial record rustls holds, let rustls decrypt it (that plaintext goes
//! to the backend first), send what rustls still has to send (TLS 1.3
//! session tickets are already out: the handshake only completes once they
//! are written), then take the secrets and install them.

use std::io;
use std::os::fd::AsRawFd;

use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRentExt;
use monoio::net::TcpStream;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{CipherSuite, ProtocolVersion};

use super::crypto_info::{
    self, Direction, CIPHER_AES_GCM_128, CIPHER_AES_GCM_256, CIPHER_CHACHA20_POLY1305,
};
use super::probe::Capabilities;
use super::socket::{enable_ulp, set_crypto, Way};
use crate::config;
use crate::handshake::{write_out, Established};
use crate::tls::records::TlsOut;
use crate::tls::server_config::cipher_family;
use crate::tls::unbuffered::{drive, Progress};

/// A session the kernel now encrypts and decrypts.
pub struct KernelSession {
    /// rustls' remaining state: derives new secrets on KeyUpdate.
    pub kernel: KernelConnection<ServerConnectionData>,
    /// Plaintext decrypted in userspace before the switch; goes first.
    pub early_plaintext: Vec<u8>,
    /// Negotiated version.
    pub version: ProtocolVersion,
    /// Kernel cipher type.
    pub cipher: u16,
}

/// Outcome of an attempted handover.
pub enum Handover {
    /// The kernel has the session.
    Kernel(Box<KernelSession>),
    /// The session stays in userspace, for the reason given.
    Userspace(Box<Established>, String),
}

/// The handover failed after rustls gave up its secrets: the connection
/// cannot continue on either path.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// Reading the rest of a record or writing rustls' output failed.
    #[error("client I/O during handover: {0}")]
    Io(#[from] io::Error),
    /// rustls failed while finishing the buffered records.
    #[error("TLS during handover: {0}")]
    Tls(#[from] rustls::Error),
    /// The kernel refused the keys.
    #[error("kernel refused {way:?} keys: {source}")]
    Kernel {
        /// TX or RX.
        way: Way,
        /// What setsockopt said.
        source: io::Error,
    },
    /// rustls secrets could not be laid out for the kernel.
    #[error("{0}")]
    CryptoInfo(#[from] crypto_info::CryptoInfoError),
}

/// Fault injection for tests: with `TLSPLICE_FAULT_KTLS_ULP=1` in the
/// environment, attaching the ULP fails on every connection, which must
/// leave each connection on the userspace path, intact.
fn ulp_fault() -> Option<io::Error> {
    static FAULT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    FAULT
        .get_or_init(|| std::env::var_os("TLSPLICE_FAULT_KTLS_ULP").is_some_and(|v| v == "1"))
        .then(|| io::Error::other("injected fault (TLSPLICE_FAULT_KTLS_ULP)"))
}

/// The kernel cipher type for a rustls suite, if it has one.
pub fn kernel_cipher(suite: CipherSuite) -> Option<u16> {
    cipher_family(suite).map(|c| match c {
        config::CipherSuite::Aes128Gcm => CIPHER_AES_GCM_128,
        config::CipherSuite::Aes256Gcm => CIPHER_AES_GCM_256,
        config::CipherSuite::Chacha20Poly1305 => CIPHER_CHACHA20_POLY1305,
    })
}

/// How many more bytes complete the record that starts `buf` (0 when `buf`
/// is empty or holds whole records only up to its first record).
pub fn bytes_to_record_boundary(buf: &[u8]) -> usize {
    if buf.is_empty() {
        0
    } else if buf.len() < 5 {
        5 - buf.len()
    } else {
        let len = 5 + u16::from_be_bytes([buf[3], buf[4]]) as usize;
        len.saturating_sub(buf.len())
    }
}

/// Moves the session to the kernel if this kernel can take it.
pub async fn handover(
    mut established: Established,
    stream: &mut TcpStream,
    caps: &Capabilities,
) -> Result<Handover, HandoverError> {
    let conn = &established.conn;
    let (Some(version), Some(suite)) = (conn.protocol_version(), conn.negotiated_cipher_suite())
    else {
        return Ok(Handover::Userspace(
            Box::new(established),
            "handshake incomplete".into(),
        ));
    };
    let Some(cipher) = kernel_cipher(suite.suite()).filter(|c| caps.supports(version, *c)) else {
        return Ok(Handover::Userspace(
            Box::new(established),
            format!(
                "kernel has no TLS offload for {version:?} {:?}",
                suite.suite()
            ),
        ));
    };
    if established.client_closed {
        return Ok(Handover::Userspace(
            Box::new(established),
            "client already closed".into(),
        ));
    }
    if let Err(e) = ulp_fault().map_or_else(|| enable_ulp(stream.as_raw_fd()), Err) {
        return Ok(Handover::Userspace(
            Box::new(established),
            format!("TCP_ULP tls: {e}"),
        ));
    }

    // Finish the partial record rustls holds, reading exactly to its end so
    // nothing past the boundary leaves the kernel's queue.
    let mut out = TlsOut::with_capacity(256);
    loop {
        let need = bytes_to_record_boundary(&established.incoming);
        if need == 0 && established.incoming.is_empty() && out.is_empty() {
            break;
        }
        if need > 0 {
            let incoming = std::mem::take(&mut established.incoming);
            let len = incoming.len();
            let (res, buf) = stream.read_exact(incoming.slice_mut(len..len + need)).await;
            established.incoming = buf.into_inner();
            res?;
        }
        match drive(
            &mut established.conn,
            &mut established.incoming,
            &mut out,
            &mut established.early_plaintext,
        )? {
            Progress::Transmit => write_out(stream, &mut out).await?,
            Progress::PeerClosed => {
                established.client_closed = true;
                write_out(stream, &mut out).await?;
                return Ok(Handover::Userspace(
                    Box::new(established),
                    "client closed during handover".into(),
                ));
            }
            Progress::Complete | Progress::NeedInput => {}
        }
    }

    let Established {
        conn,
        early_plaintext,
        ..
    } = established;
    let (secrets, kernel) = conn.dangerous_into_kernel_connection()?;
    let fd = stream.as_raw_fd();
    let tx = crypto_info::build(version, secrets.tx.0, &secrets.tx.1, Direction::Tx)?;
    let rx = crypto_info::build(version, secrets.rx.0, &secrets.rx.1, Direction::Rx)?;
    drop(secrets);
    set_crypto(fd, Way::Tx, &tx).map_err(|source| HandoverError::Kernel {
        way: Way::Tx,
        source,
    })?;
    set_crypto(fd, Way::Rx, &rx).map_err(|source| HandoverError::Kernel {
        way: Way::Rx,
        source,
    })?;
    Ok(Handover::Kernel(Box::new(KernelSession {
        kernel,
        early_plaintext,
        version,
        cipher,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_boundary() {
        assert_eq!(bytes_to_record_boundary(&[]), 0);
        assert_eq!(bytes_to_record_boundary(&[23, 3]), 3);
        assert_eq!(bytes_to_record_boundary(&[23, 3, 3, 0, 10]), 10);
        assert_eq!(bytes_to_record_boundary(&[23, 3, 3, 0, 2, 1]), 1);
        assert_eq!(bytes_to_record_boundary(&[23, 3, 3, 0, 1, 9]), 0);
    }

    #[test]
    fn every_offered_suite_has_a_kernel_cipher() {
        for suite in rustls::crypto::aws_lc_rs::default_provider().cipher_suites {
            assert!(
                kernel_cipher(suite.suite()).is_some(),
                "{:?}",
                suite.suite()
            );
        }
    }
}
