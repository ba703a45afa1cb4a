//! Handing a finished rustls session to the kernel, on either leg: the
//! client's (rustls server side) or a backend's (rustls client side).
//!
//! The kernel must start decrypting exactly at a record boundary with the
//! right sequence number, and must not be asked to send anything already
//! sealed. So: read the peer's stream up to the end of any partial record
//! held in userspace, open it with our record layer (that plaintext goes
//! to the backend first), send what is owed, then install the record
//! layer's current secrets. The same path serves a session fresh from its
//! handshake and one that relayed in userspace first.

use std::io;
use std::os::fd::AsRawFd;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRentExt, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{CipherSuite, ProtocolVersion};

use super::crypto_info::{
    self, Direction, CIPHER_AES_GCM_128, CIPHER_AES_GCM_256, CIPHER_CHACHA20_POLY1305,
};
use super::probe::Capabilities;
use super::socket::{enable_ulp, set_crypto, Way};
use crate::config;
use crate::handshake::ClientSession;
use crate::tls::server_config::cipher_family;
use crate::tls::traffic::{PostHandshake, Traffic, TrafficError};
use crate::upstream::Upstream;

/// A session the kernel now encrypts and decrypts: the client's (rustls
/// server side) by default, or a backend's ([`BackendKernel`]).
pub struct KernelSession<Data = ServerConnectionData> {
    /// rustls' remaining state: new secrets on KeyUpdate, session tickets.
    pub kernel: KernelConnection<Data>,
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
    Userspace(Box<ClientSession>, String),
}

/// The handover failed after rustls gave up its secrets: the connection
/// cannot continue on either path.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// Reading the rest of a record or writing what was owed failed.
    #[error("I/O during handover: {0}")]
    Io(#[from] io::Error),
    /// The buffered records could not be finished.
    #[error("TLS during handover: {0}")]
    Tls(#[from] TrafficError),
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

/// Whether this kernel can take a session of `traffic`'s version and
/// suite: both (the suite as the kernel's cipher type), or why not.
pub fn kernel_can_take<Data>(
    traffic: &Traffic<Data>,
    caps: &Capabilities,
) -> Result<(ProtocolVersion, u16), String>
where
    KernelConnection<Data>: PostHandshake,
{
    let (version, suite) = (traffic.version(), traffic.suite().suite());
    kernel_cipher(suite)
        .filter(|c| caps.supports(version, *c))
        .map(|cipher| (version, cipher))
        .ok_or_else(|| format!("kernel has no TLS offload for {version:?} {suite:?}"))
}

/// Where [`move_to_kernel`] left a session.
enum Moved<Data> {
    Kernel(Box<KernelSession<Data>>),
    /// Still in userspace, for the reason given; `true` when the peer closed.
    Userspace(Box<Traffic<Data>>, String, bool),
}

/// Moves `traffic` to the kernel on `stream`: reads the peer's stream
/// exactly to the end of the partial record in `incoming`, opens it (into
/// `plaintext`, which the session takes) and sends what is owed (a
/// KeyUpdate answer), then installs the secrets. Either side: server
/// toward clients, client toward backends.
async fn move_to_kernel<Data>(
    mut traffic: Traffic<Data>,
    incoming: &mut Vec<u8>,
    plaintext: &mut Vec<u8>,
    stream: &mut TcpStream,
    caps: &Capabilities,
) -> Result<Moved<Data>, HandoverError>
where
    KernelConnection<Data>: PostHandshake,
{
    let (version, cipher) = match kernel_can_take(&traffic, caps) {
        Ok(both) => both,
        Err(why) => return Ok(Moved::Userspace(Box::new(traffic), why, false)),
    };
    if let Err(e) = ulp_fault().map_or_else(|| enable_ulp(stream.as_raw_fd()), Err) {
        return Ok(Moved::Userspace(
            Box::new(traffic),
            format!("TCP_ULP tls: {e}"),
            false,
        ));
    }

    // Finish the partial record, reading exactly to its end so nothing past
    // the boundary leaves the kernel's queue.
    let mut owed = Vec::new();
    loop {
        let opened = traffic.open(incoming, plaintext, &mut owed);
        if !owed.is_empty() {
            // Until the keys are installed the socket still sends as is.
            let (res, _) = stream.write_all(std::mem::take(&mut owed)).await;
            res?;
        }
        if opened? {
            let why = "peer closed during handover".to_string();
            return Ok(Moved::Userspace(Box::new(traffic), why, true));
        }
        let need = bytes_to_record_boundary(incoming);
        if need == 0 {
            break;
        }
        let buf = std::mem::take(incoming);
        let len = buf.len();
        let (res, buf) = stream.read_exact(buf.slice_mut(len..len + need)).await;
        *incoming = buf.into_inner();
        res?;
    }

    let (secrets, kernel) = traffic.into_secrets();
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
    Ok(Moved::Kernel(Box::new(KernelSession {
        kernel,
        early_plaintext: std::mem::take(plaintext),
        version,
        cipher,
    })))
}

/// Moves the client's session to the kernel if this kernel can take it.
pub async fn handover(
    session: ClientSession,
    stream: &mut TcpStream,
    caps: &Capabilities,
) -> Result<Handover, HandoverError> {
    if session.client_closed {
        return Ok(Handover::Userspace(
            Box::new(session),
            "client already closed".into(),
        ));
    }
    let ClientSession {
        traffic,
        mut incoming,
        mut early_plaintext,
        client_closed,
    } = session;
    let moved = move_to_kernel(traffic, &mut incoming, &mut early_plaintext, stream, caps).await?;
    Ok(match moved {
        Moved::Kernel(session) => Handover::Kernel(session),
        Moved::Userspace(traffic, why, closed) => Handover::Userspace(
            Box::new(ClientSession {
                traffic: *traffic,
                incoming,
                early_plaintext,
                client_closed: client_closed || closed,
            }),
            why.replace("peer closed", "client closed"),
        ),
    })
}

/// The backend leg of a connection, when its TLS session went to the
/// kernel; rustls' state takes the backend's session tickets.
pub type BackendKernel = KernelSession<ClientConnectionData>;

/// Outcome of an attempted backend handover.
pub enum BackendHandover {
    /// The kernel has the backend's session.
    Kernel(Box<BackendKernel>),
    /// The session stays in userspace, for the reason given.
    Userspace(Box<Upstream>, String),
}

/// Moves the session with a backend to the kernel if this kernel can take it.
pub async fn handover_backend(
    upstream: Upstream,
    stream: &mut TcpStream,
    caps: &Capabilities,
) -> Result<BackendHandover, HandoverError> {
    let Upstream {
        traffic,
        mut incoming,
        mut early_plaintext,
        resumed,
    } = upstream;
    let moved = move_to_kernel(traffic, &mut incoming, &mut early_plaintext, stream, caps).await?;
    Ok(match moved {
        Moved::Kernel(session) => BackendHandover::Kernel(session),
        Moved::Userspace(traffic, why, _) => BackendHandover::Userspace(
            Box::new(Upstream {
                traffic: *traffic,
                incoming,
                early_plaintext,
                resumed,
            }),
            why.replace("peer closed", "backend closed"),
        ),
    })
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
