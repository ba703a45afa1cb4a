//! The backend leg of the userspace relay: plain TCP, or TLS around it.
//!
//! The relay reads plaintext from and writes plaintext to the backend
//! through [`LegReader`] and [`LegWriter`], whichever the leg is. With
//! upstream TLS both halves share the session's record layer (never
//! borrowed across an await): the reader opens, the writer seals. Records
//! owed while reading (a KeyUpdate answer) are queued and sent by the
//! writer ahead of its next data, as on the client leg.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;

use monoio::buf::IoBufMut;
use monoio::io::{
    CancelHandle, CancelableAsyncReadRent, CancelableAsyncWriteRent, CancelableAsyncWriteRentExt,
    OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;
use monoio::BufResult;
use rustls::client::ClientConnectionData;

use super::Upstream;
use crate::handshake::INCOMING_CAPACITY;
use crate::tls::traffic::{Traffic, TrafficError};

/// The connection to a backend, as the relay receives it.
pub enum BackendLeg {
    /// Plaintext TCP.
    Plain(TcpStream),
    /// TLS to the backend, its handshake done.
    Tls(TcpStream, Box<Upstream>),
}

struct TlsState {
    traffic: Traffic<ClientConnectionData>,
    /// Records owed while reading (a KeyUpdate answer, an alert), to send
    /// before more data.
    control: Vec<u8>,
}

/// The reading side's TLS state.
struct TlsReader {
    state: Rc<RefCell<TlsState>>,
    /// Ciphertext read but not yet decrypted (at most a partial record).
    incoming: Vec<u8>,
    /// Plaintext decrypted but not yet handed out, from `pending_at` on.
    pending: Vec<u8>,
    pending_at: usize,
    /// The backend sent close_notify: once `pending` is handed out, reads
    /// return 0 (rustls reports the close only once).
    closed: bool,
}

/// Reads plaintext from the backend.
pub struct LegReader {
    rd: OwnedReadHalf<TcpStream>,
    /// The socket, for asking how much is queued without reading it.
    fd: RawFd,
    tls: Option<TlsReader>,
}

/// Writes plaintext to the backend.
pub struct LegWriter {
    wr: OwnedWriteHalf<TcpStream>,
    tls: Option<(Rc<RefCell<TlsState>>, Vec<u8>)>,
}

impl BackendLeg {
    /// Splits the leg into its reading and writing halves.
    pub fn into_split(self) -> (LegReader, LegWriter) {
        match self {
            BackendLeg::Plain(stream) => {
                let fd = stream.as_raw_fd();
                let (rd, wr) = stream.into_split();
                (LegReader { rd, fd, tls: None }, LegWriter { wr, tls: None })
            }
            BackendLeg::Tls(stream, upstream) => {
                let Upstream {
                    traffic,
                    mut incoming,
                    early_plaintext,
                    ..
                } = *upstream;
                if incoming.capacity() < INCOMING_CAPACITY {
                    incoming.reserve(INCOMING_CAPACITY - incoming.len());
                }
                let state = Rc::new(RefCell::new(TlsState {
                    traffic,
                    control: Vec::new(),
                }));
                let fd = stream.as_raw_fd();
                let (rd, wr) = stream.into_split();
                let reader = TlsReader {
                    state: state.clone(),
                    incoming,
                    pending: early_plaintext,
                    pending_at: 0,
                    closed: false,
                };
                (
                    LegReader {
                        rd,
                        fd,
                        tls: Some(reader),
                    },
                    LegWriter {
                        wr,
                        tls: Some((state, Vec::new())),
                    },
                )
            }
        }
    }

    /// Whether the backend is spoken to in TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, BackendLeg::Tls(..))
    }
}

/// Puts a plaintext leg's halves back together (for the kernel TLS
/// handover after a pause); `None` for a TLS leg or halves of two streams.
pub fn reunite(reader: LegReader, writer: LegWriter) -> Option<TcpStream> {
    if reader.tls.is_some() || writer.tls.is_some() {
        return None;
    }
    reader.rd.reunite(writer.wr).ok()
}

/// Bytes in `fd`'s receive queue (FIONREAD); 0 when unknown.
fn bytes_queued(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which is valid
    // for the call; a failed call leaves it 0.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    if rc == 0 {
        usize::try_from(n).unwrap_or(0)
    } else {
        0
    }
}

fn tls_error(e: TrafficError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("backend TLS: {e}"))
}

impl LegReader {
    /// Whether more is ready to read right now: decrypted plaintext not yet
    /// handed out, or bytes in the socket's receive queue. Decides whether
    /// the next read needs a large buffer, without waiting for one.
    pub fn more_ready(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|t| t.pending_at < t.pending.len())
            || bytes_queued(self.fd) > 0
    }

    /// Reads plaintext into `buf`, at most its capacity, as a socket read
    /// would (its content is replaced). 0 means the backend finished
    /// sending.
    pub async fn cancelable_read(
        &mut self,
        mut buf: Vec<u8>,
        cancel: CancelHandle,
    ) -> BufResult<usize, Vec<u8>> {
        let Some(tls) = &mut self.tls else {
            return self.rd.cancelable_read(buf, cancel).await;
        };
        buf.clear();
        if buf.capacity() == 0 {
            buf.reserve(INCOMING_CAPACITY);
        }
        loop {
            if tls.pending_at < tls.pending.len() {
                let rest = &tls.pending[tls.pending_at..];
                let n = rest.len().min(buf.capacity());
                buf.extend_from_slice(&rest[..n]);
                tls.pending_at += n;
                return (Ok(n), buf);
            }
            if tls.closed {
                return (Ok(0), buf);
            }
            tls.pending.clear();
            tls.pending_at = 0;
            tls.closed = {
                let mut s = tls.state.borrow_mut();
                let TlsState { traffic, control } = &mut *s;
                match traffic.open(&mut tls.incoming, &mut tls.pending, control) {
                    Ok(closed) => closed,
                    Err(e) => return (Err(tls_error(e)), buf),
                }
            };
            if !tls.pending.is_empty() || tls.closed {
                continue;
            }
            if tls.incoming.len() == tls.incoming.capacity() {
                let e = io::Error::new(
                    io::ErrorKind::InvalidData,
                    "backend TLS: record larger than the input buffer",
                );
                return (Err(e), buf);
            }
            let len = tls.incoming.len();
            let (res, read) = self
                .rd
                .cancelable_read(
                    std::mem::take(&mut tls.incoming).slice_mut(len..),
                    cancel.clone(),
                )
                .await;
            tls.incoming = read.into_inner();
            match res {
                // EOF without close_notify: the backend is done all the same.
                Ok(0) => return (Ok(0), buf),
                Ok(_) => {}
                Err(e) => return (Err(e), buf),
            }
        }
    }
}

impl LegWriter {
    /// Writes all of `buf` (plaintext) to the backend.
    pub async fn write_all(
        &mut self,
        buf: Vec<u8>,
        cancel: CancelHandle,
    ) -> BufResult<usize, Vec<u8>> {
        let Some((state, out)) = &mut self.tls else {
            return self.wr.write_all(buf, cancel).await;
        };
        if let Err(e) = seal(state, &buf, out) {
            return (Err(e), buf);
        }
        let (res, written) = self.wr.write_all(std::mem::take(out), cancel).await;
        *out = written;
        (res.map(|_| buf.len()), buf)
    }

    /// Ends the sending direction: close_notify (with TLS), then FIN.
    pub async fn cancelable_shutdown(&mut self, cancel: CancelHandle) -> io::Result<()> {
        if let Some((state, out)) = &mut self.tls {
            seal(state, &[], out)?;
            let (res, written) = self.wr.write_all(std::mem::take(out), cancel.clone()).await;
            *out = written;
            res?;
        }
        self.wr.cancelable_shutdown(cancel).await
    }
}

/// Replaces `out` with the queued control records, then `plain` sealed (a
/// close_notify when empty).
fn seal(state: &RefCell<TlsState>, plain: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let mut s = state.borrow_mut();
    let TlsState { traffic, control } = &mut *s;
    out.clear();
    out.append(control);
    if plain.is_empty() {
        traffic.close_notify(out)
    } else {
        traffic.seal(plain, out)
    }
    .map_err(tls_error)
}
