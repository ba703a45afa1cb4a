//! The TLS handshake, driven over rustls' unbuffered API.
//!
//! The first bytes are inspected with the sans-IO ClientHello parser so the
//! listener can pick the `ServerConfig` (and with it the client-auth policy)
//! by SNI before rustls sees anything; rustls' verifier cannot see SNI. The
//! same bytes then go to a new `UnbufferedServerConnection`. Once the
//! handshake is done its secrets go to our record layer
//! ([`Established::into_session`]), which the userspace relay and the kernel
//! TLS handover continue from.

use std::io;
use std::sync::Arc;

use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, UnbufferedStatus};
use rustls::ServerConfig;

use crate::admit::{self, Verdict};
use crate::pool::Buffers;
use crate::tls::client_hello::{self, ClientHello, ClientHelloError};
use crate::tls::records::TlsOut;
use crate::tls::traffic::{Traffic, TrafficError};
use crate::tls::unbuffered::{drive, flush_alert, Progress};

/// Room for one maximal TLS record (2^14 plaintext plus up to 256 bytes of
/// expansion) and its header, plus the header of the next. A ClientHello
/// larger than this grows the buffer, up to the parser's bound.
pub const INCOMING_CAPACITY: usize = (1 << 14) + 256 + 2 * 5;

/// The answer to a plain HTTP request sent to a TLS port.
const PLAIN_HTTP_RESPONSE: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 50\r\nConnection: close\r\n\r\nThis port speaks TLS: use https:// (mutual TLS).\r\n";

/// Room for the server's first flight (certificate chains can be large).
const OUTGOING_CAPACITY: usize = 16 * 1024;

/// A completed handshake and everything the relay needs to continue it.
pub struct Established {
    /// The rustls connection, past the handshake.
    pub conn: UnbufferedServerConnection,
    /// What the client offered.
    pub hello: ClientHello,
    /// Ciphertext read but not yet processed (at most a partial record).
    pub incoming: Vec<u8>,
    /// Application data that arrived with the client's last handshake flight,
    /// already decrypted; it goes to the backend before anything else.
    pub early_plaintext: Vec<u8>,
    /// The client already sent close_notify.
    pub client_closed: bool,
    /// The throttle's verdict, when it was reached inside the handshake
    /// (a verified client certificate); see [`crate::admit`].
    pub verdict: Option<Verdict>,
}

impl Established {
    /// Hands the session to our record layer ([`Traffic`]): past this point
    /// rustls only derives new secrets.
    pub fn into_session(self) -> Result<ClientSession, TrafficError> {
        Ok(ClientSession {
            traffic: Traffic::from_rustls(self.conn)?,
            incoming: self.incoming,
            early_plaintext: self.early_plaintext,
            client_closed: self.client_closed,
        })
    }
}

/// An established client session in our record layer, as the relays and
/// the kernel handover continue it.
pub struct ClientSession {
    /// The record layer, with rustls' remaining state.
    pub traffic: Traffic<ServerConnectionData>,
    /// Ciphertext read but not yet opened (at most a partial record).
    pub incoming: Vec<u8>,
    /// Plaintext decrypted before the relay started; it goes to the
    /// backend first.
    pub early_plaintext: Vec<u8>,
    /// The client already sent close_notify.
    pub client_closed: bool,
}

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The first bytes were not a TLS ClientHello.
    #[error("{0}")]
    NotTls(#[from] ClientHelloError),
    /// rustls refused the handshake (the matching alert was sent).
    #[error("{0}")]
    Tls(#[from] rustls::Error),
    /// The client's throttling tier refused it (access_denied was sent).
    #[error("throttled: {0}")]
    Throttled(admit::Refusal),
    /// The client closed the connection before the handshake completed.
    #[error("client closed the connection during the handshake")]
    ClientGone,
    /// Reading from or writing to the client failed.
    #[error("client I/O: {0}")]
    Io(#[from] io::Error),
    /// No route serves the ClientHello (the refusal's alert was sent).
    #[error("{0}")]
    Refused(Refusal),
}

/// A ClientHello the listener refuses before any handshake: the alert to
/// send and the reason to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refusal {
    /// The fatal alert the client gets.
    pub alert: rustls::AlertDescription,
    /// Why, for the log.
    pub reason: String,
}

/// Runs the server side of the handshake on `stream`.
///
/// `select` picks the configuration for the offered ClientHello (by SNI),
/// or refuses it; it gets `None` for a ClientHello that does not parse,
/// which goes to rustls with any configuration for the alert rustls
/// chooses. The caller bounds the whole call with the handshake timeout.
pub async fn accept(
    stream: &mut TcpStream,
    buffers: &Buffers,
    select: impl FnOnce(Option<&ClientHello>) -> Result<Arc<ServerConfig>, Refusal>,
) -> Result<Established, HandshakeError> {
    let mut incoming = buffers.records.take();
    let hello = loop {
        let parsed = client_hello::parse(&incoming);
        match parsed {
            Ok(Some(hello)) => break Ok(hello),
            Ok(None) => {
                if read_more(stream, &mut incoming, client_hello::MAX_CLIENT_HELLO_BYTES).await?
                    == 0
                {
                    return Err(HandshakeError::ClientGone);
                }
            }
            Err(e) => break Err(e),
        }
    };

    let config = match select(hello.as_ref().ok()) {
        Ok(config) => config,
        Err(refusal) => {
            // A plaintext fatal alert: nothing is encrypted yet.
            let alert = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, u8::from(refusal.alert)];
            let mut out = TlsOut::from_vec(buffers.ciphertext.take_initialized(), alert.len());
            out.extend_from_slice(&alert);
            let _ = write_out(stream, &mut out).await;
            return Err(HandshakeError::Refused(refusal));
        }
    };
    let mut conn = UnbufferedServerConnection::new(config)?;
    let mut out = TlsOut::from_vec(buffers.ciphertext.take_initialized(), OUTGOING_CAPACITY);
    let mut early_plaintext = Vec::new();
    let mut client_closed = false;

    if let Err(e) = hello {
        if e.is_plaintext_http() {
            // A TLS alert would be unreadable to an http:// client; say it plainly.
            out.extend_from_slice(PLAIN_HTTP_RESPONSE);
            let _ = write_out(stream, &mut out).await;
            return Err(e.into());
        }
        let _ = drive(&mut conn, &mut incoming, &mut out, &mut early_plaintext);
        flush_alert(&mut conn, &mut incoming, &mut out);
        write_out(stream, &mut out).await?;
        return Err(e.into());
    }

    let mut verdict = None;
    loop {
        let progress = drive(&mut conn, &mut incoming, &mut out, &mut early_plaintext);
        // The verifier ran inside `drive`, if at all: collect its verdict
        // before any other connection on this thread can run.
        if let Some(v) = admit::take_handed_over() {
            verdict = Some(v);
        }
        match progress {
            Ok(Progress::Transmit) => write_out(stream, &mut out).await?,
            Ok(Progress::NeedInput) => {
                if read_more(stream, &mut incoming, client_hello::MAX_CLIENT_HELLO_BYTES).await?
                    == 0
                {
                    return Err(HandshakeError::ClientGone);
                }
            }
            Ok(Progress::Complete) => break,
            // A client may send its Finished, a request and close_notify in
            // one flight: the handshake is done and the request still counts.
            Ok(Progress::PeerClosed) if !conn.is_handshaking() => {
                client_closed = true;
                break;
            }
            Ok(Progress::PeerClosed) => return Err(HandshakeError::ClientGone),
            Err(e) => {
                flush_alert(&mut conn, &mut incoming, &mut out);
                let _ = write_out(stream, &mut out).await;
                return Err(match verdict {
                    Some(Verdict::Refused(refusal)) => HandshakeError::Throttled(refusal),
                    _ => e.into(),
                });
            }
        }
    }

    buffers.ciphertext.give(out.into_vec());
    Ok(Established {
        conn,
        hello: hello.unwrap_or_default(),
        incoming,
        early_plaintext,
        client_closed,
        verdict,
    })
}

/// Ends an established connection with close_notify, before any data was
/// relayed: a post-handshake refusal (no alert can be sent any more).
pub async fn close(stream: &mut TcpStream, established: &mut Established) -> io::Result<()> {
    let mut out = TlsOut::with_capacity(64);
    let UnbufferedStatus { state, .. } = established.conn.process_tls_records(&mut []);
    if let Ok(ConnectionState::WriteTraffic(mut w)) = state {
        out.close_notify(&mut w)
            .map_err(|e| io::Error::other(e.to_string()))?;
    }
    write_out(stream, &mut out).await
}

/// Appends what the peer sent to `incoming`, growing it up to `limit`
/// bytes; 0 means EOF.
pub(crate) async fn read_more(
    stream: &mut TcpStream,
    incoming: &mut Vec<u8>,
    limit: usize,
) -> io::Result<usize> {
    let len = incoming.len();
    if len == incoming.capacity() {
        if len >= limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "handshake message exceeds the input buffer",
            ));
        }
        incoming.reserve(INCOMING_CAPACITY);
    }
    let buf = std::mem::take(incoming).slice_mut(len..);
    let (res, buf) = stream.read(buf).await;
    *incoming = buf.into_inner();
    res
}

/// Writes everything in `out` to the peer.
pub(crate) async fn write_out(stream: &mut TcpStream, out: &mut TlsOut) -> io::Result<()> {
    use monoio::io::AsyncWriteRentExt;
    if out.is_empty() {
        return Ok(());
    }
    let (res, buf) = stream.write_all(out.take()).await;
    out.restore(buf);
    res.map(|_| ())
}
