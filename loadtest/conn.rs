//! One TLS client connection over a monoio TCP stream: the thin I/O shell
//! around [`Engine`].
//!
//! The stream is split so a write and a read can be in flight together:
//! an echo or a bulk transfer larger than the socket buffers would deadlock
//! if the client only read after writing everything.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use monoio::buf::IoBufMut;
use monoio::io::{
    AsyncReadRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent, Canceller,
    OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use crate::stats::ErrorKind;
use crate::tls::{Engine, Step};
use tlsplice::tls::records::TlsOut;

/// Room kept free for reading: one maximal TLS record plus its header.
const RECORD_ROOM: usize = (1 << 14) + 512;

/// Why an operation failed.
#[derive(Debug)]
pub struct OpError {
    /// The category it is counted under.
    pub kind: ErrorKind,
    /// A human-readable detail, kept for the first error of each kind.
    pub detail: String,
}

impl OpError {
    /// An error of `kind` with `detail`.
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    fn io(e: io::Error) -> Self {
        let kind = match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => ErrorKind::Closed,
            _ => ErrorKind::Io,
        };
        Self::new(kind, e.to_string())
    }

    fn eof(during: &str) -> Self {
        Self::new(
            ErrorKind::Closed,
            format!("server closed the connection {during}"),
        )
    }
}

impl From<rustls::Error> for OpError {
    fn from(e: rustls::Error) -> Self {
        let kind = match e {
            rustls::Error::AlertReceived(_) => ErrorKind::Alert,
            _ => ErrorKind::Tls,
        };
        Self::new(kind, e.to_string())
    }
}

/// Buffer sizes for a connection.
#[derive(Debug, Clone, Copy)]
pub struct BufSizes {
    /// Ciphertext read buffer.
    pub incoming: usize,
    /// Ciphertext write buffer (grows if a write needs more).
    pub outgoing: usize,
}

/// An established TLS client connection.
pub struct TlsConn {
    rd: OwnedReadHalf<TcpStream>,
    wr: OwnedWriteHalf<TcpStream>,
    engine: Engine,
    incoming: Vec<u8>,
    out: TlsOut,
}

/// How a receive ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvEnd {
    /// The sink said it has what it wanted.
    Done,
    /// The server sent close_notify first.
    CloseNotify,
    /// The server closed the TCP connection first, without close_notify.
    Eof,
}

impl RecvEnd {
    /// Whether the server closed before the sink was satisfied.
    pub fn is_closed(self) -> bool {
        self != Self::Done
    }
}

impl TlsConn {
    /// Connects to `addr` over TCP (no Nagle delay) and completes the handshake.
    pub async fn connect(
        addr: SocketAddr,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        sizes: BufSizes,
    ) -> Result<Self, OpError> {
        let stream = TcpStream::connect_addr(addr)
            .await
            .map_err(|e| OpError::new(ErrorKind::Connect, e.to_string()))?;
        // Small requests must not wait for an ACK of the previous segment.
        stream
            .set_nodelay(true)
            .map_err(|e| OpError::new(ErrorKind::Connect, e.to_string()))?;
        let (rd, wr) = stream.into_split();
        let mut conn = Self {
            rd,
            wr,
            engine: Engine::new(config, name)?,
            incoming: Vec::with_capacity(sizes.incoming.max(2 * RECORD_ROOM)),
            out: TlsOut::with_capacity(sizes.outgoing.max(4096)),
        };
        loop {
            let step = conn
                .engine
                .advance(&mut conn.incoming, &mut conn.out, |_| {})?;
            conn.flush().await?;
            match step {
                Step::Open => return Ok(conn),
                Step::Handshaking => {
                    if conn.fill().await? == 0 {
                        return Err(OpError::eof("during the handshake"));
                    }
                }
                Step::PeerClosed => return Err(OpError::eof("during the handshake")),
            }
        }
    }

    /// The TLS engine (negotiated parameters, handshake kind).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Sends `request` while receiving; `sink` gets every plaintext chunk
    /// and returns true once the response is complete.
    pub async fn exchange(
        &mut self,
        request: &[u8],
        mut sink: impl FnMut(&[u8]) -> bool,
    ) -> Result<RecvEnd, OpError> {
        if !request.is_empty() {
            self.engine
                .encrypt(&mut self.incoming, &mut self.out, request)?;
        }
        let Self {
            rd,
            wr,
            engine,
            incoming,
            out,
        } = self;
        let pending = (!out.is_empty()).then(|| out.take());
        let write = async {
            match pending {
                Some(slice) => Some(wr.write_all(slice).await),
                None => None,
            }
        };
        let read = receive(rd, engine, incoming, &mut sink, None);
        let (written, received) = monoio::join!(write, read);
        if let Some((res, slice)) = written {
            out.restore(slice);
            res.map_err(OpError::io)?;
        }
        let (end, control) = received?;
        // Records rustls produced while reading (a KeyUpdate answer) go out now.
        if let Some(control) = control {
            self.send_raw(control).await?;
        }
        Ok(end)
    }

    /// Writes `chunk` (if any) while taking whatever arrives meanwhile into
    /// `sink`; returns when the write is done. For bulk transfers: the read
    /// side never blocks the write side.
    pub async fn pump(&mut self, chunk: &[u8], mut sink: impl FnMut(&[u8])) -> Result<(), OpError> {
        if !chunk.is_empty() {
            self.engine
                .encrypt(&mut self.incoming, &mut self.out, chunk)?;
        }
        let Self {
            rd,
            wr,
            engine,
            incoming,
            out,
        } = self;
        let pending = (!out.is_empty()).then(|| out.take());
        let canceller = Canceller::new();
        let handle = canceller.handle();
        let write = async {
            let result = match pending {
                Some(slice) => Some(wr.write_all(slice).await),
                None => None,
            };
            // The write is done: stop the read that waits beside it. A read
            // that already completed still returns its bytes.
            canceller.cancel();
            result
        };
        let mut take_all = |p: &[u8]| {
            sink(p);
            false
        };
        let read = receive(rd, engine, incoming, &mut take_all, Some(handle));
        let (written, received) = monoio::join!(write, read);
        if let Some((res, slice)) = written {
            out.restore(slice);
            res.map_err(OpError::io)?;
        }
        let (end, control) = received?;
        if let Some(control) = control {
            self.send_raw(control).await?;
        }
        if end.is_closed() {
            return Err(OpError::eof("during the transfer"));
        }
        Ok(())
    }

    /// Receives until `sink` is satisfied or the server closes; sends nothing.
    pub async fn recv(&mut self, mut sink: impl FnMut(&[u8]) -> bool) -> Result<RecvEnd, OpError> {
        let (end, control) = receive(
            &mut self.rd,
            &mut self.engine,
            &mut self.incoming,
            &mut sink,
            None,
        )
        .await?;
        if let Some(control) = control {
            self.send_raw(control).await?;
        }
        Ok(end)
    }

    /// Closes cleanly: sends close_notify, then reads until the server's
    /// close_notify or EOF. Reading to the end processes the TLS 1.3
    /// session tickets (they arrive after the client's last flight) and
    /// surfaces a late refusal of the client certificate as an alert.
    /// Returns whether the server answered with close_notify: a server that
    /// refuses a certificate by just closing (nginx stream) does not.
    pub async fn close(mut self) -> Result<bool, OpError> {
        self.engine
            .close_notify(&mut self.incoming, &mut self.out)?;
        self.flush().await?;
        let end = self.recv(|_| false).await;
        // The write half's drop shuts the socket down; the server closed first.
        match end {
            Ok(end) => Ok(end == RecvEnd::CloseNotify),
            // A server that resets after close_notify has still accepted us.
            Err(e) if e.kind == ErrorKind::Closed => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Writes whatever the engine queued.
    async fn flush(&mut self) -> Result<(), OpError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let (res, slice) = self.wr.write_all(self.out.take()).await;
        self.out.restore(slice);
        res.map(|_| ()).map_err(OpError::io)
    }

    async fn send_raw(&mut self, bytes: Vec<u8>) -> Result<(), OpError> {
        let (res, _) = self.wr.write_all(bytes).await;
        res.map(|_| ()).map_err(OpError::io)
    }

    /// Reads more ciphertext; 0 means EOF.
    async fn fill(&mut self) -> Result<usize, OpError> {
        read_more(&mut self.rd, &mut self.incoming, None)
            .await
            .map_err(OpError::io)
    }
}

/// Reads and decrypts until `sink` returns true, the server closes, or (with
/// a cancel handle) the read is cancelled. Returns how it ended and any
/// records rustls queued for sending meanwhile.
async fn receive(
    rd: &mut OwnedReadHalf<TcpStream>,
    engine: &mut Engine,
    incoming: &mut Vec<u8>,
    sink: &mut impl FnMut(&[u8]) -> bool,
    cancel: Option<CancelHandle>,
) -> Result<(RecvEnd, Option<Vec<u8>>), OpError> {
    // Rare: only KeyUpdate answers; allocates only when they happen.
    let mut control = TlsOut::with_capacity(0);
    let end = loop {
        let mut done = false;
        let step = engine.advance(incoming, &mut control, |p| {
            if sink(p) {
                done = true;
            }
        })?;
        if done {
            break RecvEnd::Done;
        }
        if matches!(step, Step::PeerClosed) {
            break RecvEnd::CloseNotify;
        }
        match read_more(rd, incoming, cancel.clone()).await {
            Ok(0) => break RecvEnd::Eof,
            Ok(_) => {}
            Err(e) if cancel.is_some() && e.raw_os_error() == Some(libc::ECANCELED) => {
                break RecvEnd::Done;
            }
            Err(e) => return Err(OpError::io(e)),
        }
    };
    let control = (!control.is_empty()).then(|| control.pending().to_vec());
    Ok((end, control))
}

/// Appends ciphertext to `incoming`, keeping room for a full record.
async fn read_more(
    rd: &mut OwnedReadHalf<TcpStream>,
    incoming: &mut Vec<u8>,
    cancel: Option<CancelHandle>,
) -> io::Result<usize> {
    let len = incoming.len();
    if incoming.capacity() - len < RECORD_ROOM {
        // Only when a partial record sits at the end of a small buffer.
        incoming.reserve(RECORD_ROOM);
    }
    let buf = std::mem::take(incoming).slice_mut(len..);
    let (res, buf) = match cancel {
        Some(handle) => rd.cancelable_read(buf, handle).await,
        None => rd.read(buf).await,
    };
    *incoming = buf.into_inner();
    res
}
