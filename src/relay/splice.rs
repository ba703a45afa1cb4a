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

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use monoio::io::splice::{SpliceDestination, SpliceSource};
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::unix::Pipe;
use monoio::net::TcpStream;

use super::{pace, paced_len, spent, watchdog, RelayOutcome};
use crate::admit::{Direction, Pacer};
use crate::close::CloseReason;
use crate::ktls::crypto_info::CIPHER_CHACHA20_POLY1305;
use crate::ktls::handover::KernelSession;
use crate::ktls::socket::{
    recv_record, send_record, RECORD_ALERT, RECORD_APPLICATION_DATA, RECORD_HANDSHAKE,
};
use crate::pool::PipePool;
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

/// Relays a kernel TLS session until both directions close, one side
/// fails, the connection idles for `idle_timeout`, or `drain_expired` fires.
/// With a `pacer`, each splice is capped to the client's byte budget.
pub async fn run(
    session: KernelSession,
    client: TcpStream,
    backend: TcpStream,
    idle_timeout: Duration,
    drain_expired: &Trigger,
    pipes: &PipePool,
    pacer: Option<&Pacer>,
) -> RelayOutcome {
    let client_fd = client.as_raw_fd();
    let record_limit = if session.cipher == CIPHER_CHACHA20_POLY1305 {
        u64::MAX
    } else {
        AES_GCM_RECORD_LIMIT
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
    };

    let pumps = async {
        if !session.early_plaintext.is_empty() {
            let n = session.early_plaintext.len() as u64;
            let (res, _) = backend_wr.write_all(session.early_plaintext).await;
            if let Err(e) = res {
                shared.fail(CloseReason::BackendError(format!("write: {e}")));
                return;
            }
            shared.up.set(n);
        }
        let finished = Trigger::new();
        let both = async {
            monoio::join!(
                client_to_backend(
                    &shared,
                    client_fd,
                    &mut client_rd,
                    &mut backend_wr,
                    record_limit,
                    pipes,
                    pacer
                ),
                backend_to_client(
                    &shared,
                    client_fd,
                    &mut backend_rd,
                    &mut client_wr,
                    record_limit,
                    pipes,
                    pacer
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
    if matches!(reason, CloseReason::IdleTimeout | CloseReason::Shutdown)
        && !shared.close_notify_sent.get()
    {
        let _ = send_close_notify(client_fd).await;
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
    backend: &mut OwnedWriteHalf<TcpStream>,
    record_limit: u64,
    pipes: &PipePool,
    pacer: Option<&Pacer>,
) {
    let (mut pipe_rd, mut pipe_wr) = match pipes.take() {
        Ok(p) => p,
        Err(e) => return shared.fail(CloseReason::ClientError(format!("pipe: {e}"))),
    };
    let mut records = 0u64;
    let mut control = vec![0u8; MAX_RECORD as usize];
    loop {
        let len = paced_len(pacer, Direction::Up, SPLICE_CHUNK).await;
        match client.splice_to_pipe(&mut pipe_wr, len).await {
            Ok(0) => {
                // EOF, or a zero-length data record: recvmsg tells which.
                match recv_record(client_fd, &mut control) {
                    Ok((0, _)) => break,
                    Ok((n, RECORD_APPLICATION_DATA)) => {
                        pace(pacer, Direction::Up, n).await;
                        if !forward(shared, backend, &control[..n]).await {
                            return;
                        }
                    }
                    Ok((n, kind)) => {
                        if !on_control(shared, kind, &control[..n]) {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return shared.fail(CloseReason::ClientError(format!("read: {e}"))),
                }
            }
            Ok(n) => {
                spent(pacer, Direction::Up, n);
                records += 1;
                if !drain_pipe(shared, &mut pipe_rd, backend, n).await {
                    return;
                }
                shared.up.set(shared.up.get() + u64::from(n));
                shared.touch();
                if records >= record_limit {
                    return shared.fail(CloseReason::ClientError(
                        "receive key reached its confidentiality limit".into(),
                    ));
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // The next record is not data: read it with its type.
                match recv_record(client_fd, &mut control) {
                    Ok((n, RECORD_APPLICATION_DATA)) => {
                        if n == 0 {
                            break;
                        }
                        pace(pacer, Direction::Up, n).await;
                        if !forward(shared, backend, &control[..n]).await {
                            return;
                        }
                    }
                    Ok((n, kind)) => {
                        if !on_control(shared, kind, &control[..n]) {
                            break;
                        }
                    }
                    Err(e) => {
                        return shared
                            .fail(CloseReason::ClientError(format!("control record: {e}")))
                    }
                }
            }
            Err(e) => return shared.fail(CloseReason::ClientError(format!("read: {e}"))),
        }
    }
    // Every splice into the pipe was drained out of it: reusable.
    pipes.give((pipe_rd, pipe_wr));
    // close_notify or FIN: pass the half-close on.
    let _ = backend.shutdown().await;
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

/// Writes userspace-read plaintext (a record recvmsg returned) to the backend.
async fn forward(shared: &Shared, backend: &mut OwnedWriteHalf<TcpStream>, data: &[u8]) -> bool {
    let (res, _) = backend.write_all(data.to_vec()).await;
    match res {
        Ok(n) => {
            shared.up.set(shared.up.get() + n as u64);
            shared.touch();
            true
        }
        Err(e) => {
            shared.fail(CloseReason::BackendError(format!("write: {e}")));
            false
        }
    }
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
    backend: &mut OwnedReadHalf<TcpStream>,
    client: &mut OwnedWriteHalf<TcpStream>,
    record_limit: u64,
    pipes: &PipePool,
    pacer: Option<&Pacer>,
) {
    let (mut pipe_rd, mut pipe_wr) = match pipes.take() {
        Ok(p) => p,
        Err(e) => return shared.fail(CloseReason::BackendError(format!("pipe: {e}"))),
    };
    let mut records = 0u64;
    loop {
        let len = paced_len(pacer, Direction::Down, SPLICE_CHUNK).await;
        match backend.splice_to_pipe(&mut pipe_wr, len).await {
            Ok(0) => break,
            Ok(mut n) => {
                spent(pacer, Direction::Down, n);
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
    // Backend EOF: close_notify, then FIN.
    if let Err(e) = send_close_notify(client_fd).await {
        return shared.fail(CloseReason::ClientError(format!("close_notify: {e}")));
    }
    shared.close_notify_sent.set(true);
    let _ = client.shutdown().await;
}

/// Sends close_notify through the kernel, waiting briefly for buffer room.
async fn send_close_notify(fd: RawFd) -> io::Result<()> {
    let deadline = Instant::now() + FINAL_WRITE_TIMEOUT;
    loop {
        match send_record(fd, RECORD_ALERT, &CLOSE_NOTIFY) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                monoio::time::sleep(Duration::from_millis(5)).await;
            }
            other => return other.map(|_| ()),
        }
    }
}
