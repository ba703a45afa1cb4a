//! The kernel path: the client socket does TLS in the kernel, and bytes move
//! client -> pipe -> backend and backend -> pipe -> client with `splice(2)`
//! through io_uring, never entering userspace.
//!
//! A record that is not application data stops a splice from the client
//! with EINVAL; it is then read with `recvmsg` and its record-type cmsg:
//! close_notify half-closes toward the backend, other alerts end the
//! connection, a KeyUpdate ends it cleanly (the kernels this runs on before
//! Linux 6.14 cannot re-key). Backend EOF sends close_notify as a control
//! record. Each direction counts its records against the cipher's
//! confidentiality limit and closes before reaching it.
//!
//! With TLS to the backend (`backend_tls`) the backend socket does TLS in
//! the kernel too: its control records are read the same way (session
//! tickets go to rustls for later resumption, close_notify ends the
//! download like EOF), and the client's end sends close_notify to it.
//!
//! In header mode (`client_cert_header`) request heads are read into
//! userspace (with TLS_RX a plain read returns the decrypted bytes) and
//! rewritten; only what the rewriter passes untouched (bodies of known
//! length, chunk data, an upgraded stream) is spliced, in exact counts.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use monoio::io::splice::{SpliceDestination, SpliceSource};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::unix::Pipe;
use monoio::net::TcpStream;

use super::{pace, paced_len, spent, watchdog, RelayOutcome};
use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;

use crate::admit::{Direction, Pacer};
use crate::close::CloseReason;
use crate::ktls::crypto_info::CIPHER_CHACHA20_POLY1305;
use crate::ktls::handover::{BackendKernel, KernelSession};
use crate::ktls::socket::{
    recv_record, send_record, RECORD_ALERT, RECORD_APPLICATION_DATA, RECORD_HANDSHAKE,
};
use crate::pool::PipePool;
use crate::relay::http_head::HeadRewriter;
use crate::tls::traffic::{handshake_messages, HANDSHAKE_KEY_UPDATE, HANDSHAKE_NEW_SESSION_TICKET};
use crate::trigger::Trigger;

/// Bytes asked of one splice; a pipe holds 64 KiB.
const SPLICE_CHUNK: u32 = 64 * 1024;
/// Largest TLS record plaintext.
const MAX_RECORD: u64 = 16 * 1024;
/// Records per key before closing: under AES-GCM's limit of 2^24.5
/// (RFC 8446 §5.5) with margin; ChaCha20-Poly1305 has no practical limit.
const AES_GCM_RECORD_LIMIT: u64 = 1 << 24;
/// close_notify alert body: warning, close_notify.
const CLOSE_NOTIFY: [u8; 2] = [1, 0];
/// How long a final close_notify may wait for send-buffer room.
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

struct Shared {
    activity: Cell<Instant>,
    failure: RefCell<Option<CloseReason>>,
    stop: Trigger,
    up: Cell<u64>,
    down: Cell<u64>,
    close_notify_sent: Cell<bool>,
    /// An HTTP response the client gets before the connection closes (a
    /// request head refused in header mode).
    reply: RefCell<Vec<u8>>,
    /// The client's byte budget (its throttling tier), if limited.
    pacer: Option<Pacer>,
}

impl Shared {
    fn fail(&self, reason: CloseReason) {
        self.failure.borrow_mut().get_or_insert(reason);
        self.stop.fire();
    }

    fn touch(&self) {
        self.activity.set(Instant::now());
    }
}

/// Records one key may protect before the connection must close.
fn record_limit(cipher: u16) -> u64 {
    if cipher == CIPHER_CHACHA20_POLY1305 {
        u64::MAX
    } else {
        AES_GCM_RECORD_LIMIT
    }
}

/// Relays a kernel TLS session until both directions close, one side
/// fails, the connection idles for `idle_timeout`, or `drain_expired` fires.
/// With `backend_tls`, the backend socket is a kernel TLS session too. With
/// `heads`, the client's request heads go through that rewriter. With a
/// `pacer`, each splice is capped to the client's byte budget.
#[allow(clippy::too_many_arguments)] // each is a distinct part of the connection
pub async fn run(
    session: KernelSession,
    client: TcpStream,
    backend: TcpStream,
    backend_tls: Option<BackendKernel>,
    mut heads: Option<HeadRewriter>,
    idle_timeout: Duration,
    drain_expired: &Trigger,
    pipes: &PipePool,
    pacer: Option<Pacer>,
) -> RelayOutcome {
    let client_fd = client.as_raw_fd();
    // Both legs' records move together, so the stricter key limit applies.
    let record_limit = record_limit(session.cipher).min(
        backend_tls
            .as_ref()
            .map_or(u64::MAX, |b| record_limit(b.cipher)),
    );
    let backend_fd = backend.as_raw_fd();
    let (backend_kernel, backend_early) = match backend_tls {
        Some(b) => (Some(RefCell::new(b.kernel)), b.early_plaintext),
        None => (None, Vec::new()),
    };
    let backend_side = BackendSide {
        fd: backend_fd,
        kernel: backend_kernel.as_ref(),
    };
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut backend_rd, mut backend_wr) = backend.into_split();
    let shared = Shared {
        activity: Cell::new(Instant::now()),
        failure: RefCell::new(None),
        stop: Trigger::new(),
        up: Cell::new(0),
        down: Cell::new(0),
        close_notify_sent: Cell::new(false),
        reply: RefCell::new(Vec::new()),
        pacer,
    };

    let pumps = async {
        if !session.early_plaintext.is_empty()
            && !forward(
                &shared,
                &mut backend_wr,
                &mut heads,
                &session.early_plaintext,
            )
            .await
        {
            return;
        }
        if !backend_early.is_empty() {
            pace(shared.pacer.as_ref(), Direction::Down, backend_early.len()).await;
            if !write_counted(&shared, Direction::Down, &mut client_wr, backend_early).await {
                return;
            }
        }
        let finished = Trigger::new();
        let both = async {
            monoio::join!(
                client_to_backend(
                    &shared,
                    client_fd,
                    &mut client_rd,
                    (&mut backend_wr, &backend_side),
                    record_limit,
                    pipes,
                    heads,
                ),
                backend_to_client(
                    &shared,
                    client_fd,
                    (&mut backend_rd, &backend_side),
                    &mut client_wr,
                    record_limit,
                    pipes,
                ),
            );
            finished.fire();
        };
        let watch = async {
            if let Some(reason) =
                watchdog(&shared.activity, idle_timeout, drain_expired, &finished).await
            {
                shared.fail(reason);
            }
        };
        monoio::join!(both, watch);
    };
    // A failure anywhere stops both pumps: dropping them cancels their
    // in-flight splices.
    monoio::select! {
        _ = pumps => {}
        _ = shared.stop.wait() => {}
    }

    let reason = shared
        .failure
        .borrow_mut()
        .take()
        .unwrap_or(CloseReason::Done);
    let reply = std::mem::take(&mut *shared.reply.borrow_mut());
    if !reply.is_empty() && !shared.close_notify_sent.get() {
        // The kernel encrypts it as application data, like any write.
        let _ = send_final(client_fd, RECORD_APPLICATION_DATA, &reply).await;
    }
    if (!reply.is_empty() || matches!(reason, CloseReason::IdleTimeout | CloseReason::Shutdown))
        && !shared.close_notify_sent.get()
    {
        let _ = send_final(client_fd, RECORD_ALERT, &CLOSE_NOTIFY).await;
    }
    RelayOutcome {
        bytes_up: shared.up.get(),
        bytes_down: shared.down.get(),
        reason,
        path: "ktls",
    }
}

/// Client (kernel-decrypted) -> pipe -> backend.
async fn client_to_backend(
    shared: &Shared,
    client_fd: RawFd,
    client: &mut OwnedReadHalf<TcpStream>,
    (backend, backend_side): (&mut OwnedWriteHalf<TcpStream>, &BackendSide<'_>),
    record_limit: u64,
    pipes: &PipePool,
    mut heads: Option<HeadRewriter>,
) {
    let (mut pipe_rd, mut pipe_wr) = match pipes.take() {
        Ok(p) => p,
        Err(e) => return shared.fail(CloseReason::ClientError(format!("pipe: {e}"))),
    };
    let mut records = 0u64;
    let mut control = vec![0u8; MAX_RECORD as usize];
    let mut head = Vec::new();
    loop {
        let verbatim = heads
            .as_ref()
            .map_or(u64::from(SPLICE_CHUNK), HeadRewriter::verbatim);
        let moved = if verbatim == 0 {
            // Header mode, at a request head: read it in userspace. Without
            // room for a cmsg, a record that is not data fails the read
            // with EIO and stays queued for `typed_record`.
            if head.capacity() < MAX_RECORD as usize {
                head.reserve(MAX_RECORD as usize);
            }
            head.clear();
            let (res, buf) = client.read(std::mem::take(&mut head)).await;
            head = buf;
            match res {
                Ok(n) if n > 0 => {
                    if !forward(shared, backend, &mut heads, &head[..n]).await {
                        return;
                    }
                    Ok(Some((n as u64).div_ceil(MAX_RECORD)))
                }
                Ok(_) => Ok(None),
                Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(None),
                Err(e) => Err(e),
            }
        } else {
            let want = u32::try_from(verbatim.min(u64::from(SPLICE_CHUNK))).unwrap_or(SPLICE_CHUNK);
            let want = paced_len(shared.pacer.as_ref(), Direction::Up, want).await;
            match client.splice_to_pipe(&mut pipe_wr, want).await {
                Ok(n) if n > 0 => {
                    spent(shared.pacer.as_ref(), Direction::Up, n);
                    if !drain_pipe(shared, &mut pipe_rd, backend, n).await {
                        return;
                    }
                    if let Some(h) = heads.as_mut() {
                        h.skip(u64::from(n));
                    }
                    shared.up.set(shared.up.get() + u64::from(n));
                    shared.touch();
                    Ok(Some(1))
                }
                // EOF, or a zero-length data record: recvmsg tells which.
                Ok(_) => Ok(None),
                // The next record is not data: read it with its type.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
                Err(e) => Err(e),
            }
        };
        match moved {
            Ok(Some(n)) => {
                records += n;
                if records >= record_limit {
                    return shared.fail(CloseReason::ClientError(
                        "receive key reached its confidentiality limit".into(),
                    ));
                }
            }
            Ok(None) => {
                match typed_record(shared, client_fd, &mut control, backend, &mut heads).await {
                    Next::Go => {}
                    Next::End => break,
                    Next::Failed => return,
                }
            }
            Err(e) => return shared.fail(CloseReason::ClientError(format!("read: {e}"))),
        }
    }
    // Every splice into the pipe was drained out of it: reusable.
    pipes.give((pipe_rd, pipe_wr));
    // close_notify or FIN: pass the half-close on (a TLS backend gets its
    // own close_notify first).
    if backend_side.kernel.is_some() {
        if let Err(e) = send_final(backend_side.fd, RECORD_ALERT, &CLOSE_NOTIFY).await {
            return shared.fail(CloseReason::BackendError(format!("close_notify: {e}")));
        }
    }
    let _ = backend.shutdown().await;
}

/// The backend socket as the pumps see it.
struct BackendSide<'k> {
    fd: RawFd,
    /// With TLS to the backend in the kernel: rustls' client state, for the
    /// backend's session tickets.
    kernel: Option<&'k RefCell<KernelConnection<ClientConnectionData>>>,
}

/// What the client -> backend pump does after [`typed_record`].
enum Next {
    /// Keep reading.
    Go,
    /// The client finished sending (EOF or close_notify).
    End,
    /// The connection failed; the reason is recorded.
    Failed,
}

/// Reads the next record with its type (after a splice or read stopped on
/// it, or returned 0) and acts on it: data goes to the backend, a control
/// record to [`on_control`].
async fn typed_record(
    shared: &Shared,
    client_fd: RawFd,
    control: &mut [u8],
    backend: &mut OwnedWriteHalf<TcpStream>,
    heads: &mut Option<HeadRewriter>,
) -> Next {
    match recv_record(client_fd, control) {
        Ok((0, _)) => Next::End,
        Ok((n, RECORD_APPLICATION_DATA)) => {
            if forward(shared, backend, heads, &control[..n]).await {
                Next::Go
            } else {
                Next::Failed
            }
        }
        Ok((n, kind)) if on_control(shared, kind, &control[..n]) => Next::Go,
        Ok(_) => Next::End,
        // Nothing complete queued yet: the next splice or read waits for it.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Next::Go,
        Err(e) => {
            shared.fail(CloseReason::ClientError(format!("control record: {e}")));
            Next::Failed
        }
    }
}

/// Handles a control record from the client. Returns whether reading
/// continues (false: the client finished sending).
fn on_control(shared: &Shared, kind: u8, body: &[u8]) -> bool {
    match (kind, body) {
        (RECORD_ALERT, [_, 0]) => false,
        (RECORD_ALERT, [level, desc]) => {
            shared.fail(CloseReason::ClientError(format!(
                "client sent alert {desc} (level {level})"
            )));
            false
        }
        (RECORD_HANDSHAKE, [24, ..]) => {
            // The kernel keeps decrypting with the old key and would fail on
            // the next record; end the connection while it is still clean.
            shared.fail(CloseReason::ClientError(
                "client sent KeyUpdate; this kernel cannot re-key TLS 1.3 (Linux < 6.14)".into(),
            ));
            false
        }
        (kind, _) => {
            shared.fail(CloseReason::ClientError(format!(
                "unexpected record type {kind} after the handshake"
            )));
            false
        }
    }
}

/// Writes plaintext read in userspace (early data, a record recvmsg
/// returned, a request head) to the backend; in header mode through the
/// rewriter, whose refusal ends the connection with its response.
async fn forward(
    shared: &Shared,
    backend: &mut OwnedWriteHalf<TcpStream>,
    heads: &mut Option<HeadRewriter>,
    data: &[u8],
) -> bool {
    pace(shared.pacer.as_ref(), Direction::Up, data.len()).await;
    let out = match heads {
        None => data.to_vec(),
        Some(h) => {
            let mut out = Vec::with_capacity(data.len() + 1024);
            if let Err(refused) = h.feed(data, &mut out) {
                *shared.reply.borrow_mut() = refused.response();
                shared.fail(CloseReason::ClientError(format!(
                    "request head refused: {refused}"
                )));
                return false;
            }
            if out.is_empty() {
                return true;
            }
            out
        }
    };
    write_counted(shared, Direction::Up, backend, out).await
}

/// Moves `n` bytes from the pipe to `dest`.
async fn drain_pipe<D: SpliceDestination>(
    shared: &Shared,
    pipe: &mut Pipe,
    dest: &mut D,
    mut n: u32,
) -> bool {
    while n > 0 {
        match dest.splice_from_pipe(pipe, n).await {
            Ok(0) => {
                shared.fail(CloseReason::BackendError("write: peer closed".into()));
                return false;
            }
            Ok(m) => n -= m,
            Err(e) => {
                shared.fail(CloseReason::BackendError(format!("write: {e}")));
                return false;
            }
        }
    }
    true
}

/// Backend -> pipe -> client (kernel-encrypted).
async fn backend_to_client(
    shared: &Shared,
    client_fd: RawFd,
    (backend, backend_side): (&mut OwnedReadHalf<TcpStream>, &BackendSide<'_>),
    client: &mut OwnedWriteHalf<TcpStream>,
    record_limit: u64,
    pipes: &PipePool,
) {
    let (mut pipe_rd, mut pipe_wr) = match pipes.take() {
        Ok(p) => p,
        Err(e) => return shared.fail(CloseReason::BackendError(format!("pipe: {e}"))),
    };
    let mut records = 0u64;
    let mut control = Vec::new();
    loop {
        let len = paced_len(shared.pacer.as_ref(), Direction::Down, SPLICE_CHUNK).await;
        let spliced = match backend.splice_to_pipe(&mut pipe_wr, len).await {
            // From a TLS backend, a record that is not data stops the splice.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && backend_side.kernel.is_some() => {
                Ok(0)
            }
            other => other,
        };
        match spliced {
            Ok(0) if backend_side.kernel.is_none() => break,
            // EOF, a zero-length record or a control record: recvmsg tells
            // which.
            Ok(0) => match backend_record(shared, backend_side, &mut control, client).await {
                Next::Go => {}
                Next::End => break,
                Next::Failed => return,
            },
            Ok(mut n) => {
                spent(shared.pacer.as_ref(), Direction::Down, n);
                shared.touch();
                while n > 0 {
                    match client.splice_from_pipe(&mut pipe_rd, n).await {
                        Ok(0) => {
                            return shared.fail(CloseReason::ClientError("write: closed".into()))
                        }
                        Ok(m) => {
                            // Each splice into a kTLS socket closes its last record.
                            records += u64::from(m).div_ceil(MAX_RECORD);
                            shared.down.set(shared.down.get() + u64::from(m));
                            n -= m;
                        }
                        Err(e) => {
                            return shared.fail(CloseReason::ClientError(format!("write: {e}")))
                        }
                    }
                }
                if records >= record_limit {
                    return shared.fail(CloseReason::ClientError(
                        "send key reached its confidentiality limit".into(),
                    ));
                }
            }
            Err(e) => return shared.fail(CloseReason::BackendError(format!("read: {e}"))),
        }
    }
    pipes.give((pipe_rd, pipe_wr));
    // Backend EOF (or close_notify): close_notify, then FIN.
    if let Err(e) = send_final(client_fd, RECORD_ALERT, &CLOSE_NOTIFY).await {
        return shared.fail(CloseReason::ClientError(format!("close_notify: {e}")));
    }
    shared.close_notify_sent.set(true);
    let _ = client.shutdown().await;
}

/// Reads the TLS backend's next record with its type and acts on it: data
/// goes to the client, session tickets to rustls, close_notify ends the
/// download, anything else fails the connection.
async fn backend_record(
    shared: &Shared,
    backend: &BackendSide<'_>,
    control: &mut Vec<u8>,
    client: &mut OwnedWriteHalf<TcpStream>,
) -> Next {
    if control.len() < MAX_RECORD as usize {
        control.resize(MAX_RECORD as usize, 0);
    }
    let Some(kernel) = backend.kernel else {
        return Next::End;
    };
    match recv_record(backend.fd, control) {
        Ok((0, _)) => Next::End,
        Ok((n, RECORD_APPLICATION_DATA)) => {
            pace(shared.pacer.as_ref(), Direction::Down, n).await;
            if write_counted(shared, Direction::Down, client, control[..n].to_vec()).await {
                Next::Go
            } else {
                Next::Failed
            }
        }
        Ok((n, RECORD_ALERT)) if matches!(control[..n], [_, 0]) => Next::End,
        Ok((n, kind)) => match backend_control(&mut kernel.borrow_mut(), kind, &control[..n]) {
            Ok(()) => Next::Go,
            Err(why) => {
                shared.fail(CloseReason::BackendError(why));
                Next::Failed
            }
        },
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Next::Go,
        Err(e) => {
            shared.fail(CloseReason::BackendError(format!("control record: {e}")));
            Next::Failed
        }
    }
}

/// Handles a control record (not data, not close_notify) from a TLS
/// backend: its handshake messages may only be session tickets.
fn backend_control(
    kernel: &mut KernelConnection<ClientConnectionData>,
    kind: u8,
    body: &[u8],
) -> Result<(), String> {
    match (kind, body) {
        (RECORD_ALERT, [level, desc, ..]) => {
            Err(format!("backend sent alert {desc} (level {level})"))
        }
        (RECORD_HANDSHAKE, _) => {
            let messages =
                handshake_messages(body).map_err(|e| format!("from the backend: {e}"))?;
            for message in messages {
                match message {
                    (HANDSHAKE_NEW_SESSION_TICKET, payload) => kernel
                        .handle_new_session_ticket(payload)
                        .map_err(|e| format!("backend session ticket: {e}"))?,
                    (HANDSHAKE_KEY_UPDATE, _) => return Err(
                        "backend sent KeyUpdate; this kernel cannot re-key TLS 1.3 (Linux < 6.14)"
                            .into(),
                    ),
                    (other, _) => {
                        return Err(format!(
                            "backend sent handshake message {other} after the handshake"
                        ))
                    }
                }
            }
            Ok(())
        }
        (kind, _) => Err(format!("unexpected record type {kind} from the backend")),
    }
}

/// Writes plaintext read in userspace (already paced) toward `dir`'s
/// peer and counts it; a failed write fails the connection on that side.
async fn write_counted(
    shared: &Shared,
    dir: Direction,
    peer: &mut OwnedWriteHalf<TcpStream>,
    data: Vec<u8>,
) -> bool {
    let (res, _) = peer.write_all(data).await;
    let (moved, failure): (_, fn(String) -> CloseReason) = match dir {
        Direction::Up => (&shared.up, CloseReason::BackendError),
        Direction::Down => (&shared.down, CloseReason::ClientError),
    };
    match res {
        Ok(n) => {
            moved.set(moved.get() + n as u64);
            shared.touch();
            true
        }
        Err(e) => {
            shared.fail(failure(format!("write: {e}")));
            false
        }
    }
}

/// Sends one record (close_notify, or a refusal's response) through the
/// kernel, waiting briefly for buffer room.
async fn send_final(fd: RawFd, record_type: u8, payload: &[u8]) -> io::Result<()> {
    let deadline = Instant::now() + FINAL_WRITE_TIMEOUT;
    loop {
        match send_record(fd, record_type, payload) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                monoio::time::sleep(Duration::from_millis(5)).await;
            }
            other => return other.map(|_| ()),
        }
    }
}
