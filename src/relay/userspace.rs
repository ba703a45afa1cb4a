//! The userspace path: TLS records between the client and the backend,
//! sealed and opened by our record layer ([`Traffic`]).
//!
//! Two pumps run concurrently in the connection's task and share the record
//! layer through a `RefCell`, never holding the borrow across an await:
//! - client -> backend: read ciphertext, decrypt, write plaintext;
//! - backend -> client: read plaintext, encrypt, write ciphertext.
//!
//! Records owed while decrypting (a KeyUpdate answer) are queued and
//! written by the backend -> client pump ahead of its next data, which is
//! where TLS requires them. A watchdog ends the connection on idle timeout or
//! when the worker's drain runs out, by cancelling the pumps' pending I/O.
//!
//! With a [`Pause`] (the `ktls_offload` thresholds) the relay stops once a
//! threshold is reached and hands the session back for the kernel: only the
//! pumps' reads are cancelled, so a write in flight completes and a read that
//! completed anyway is still forwarded; see [`Relayed::Paused`].

use std::cell::{Cell, RefCell};
use std::io;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{
    CancelHandle, CancelableAsyncReadRent, CancelableAsyncWriteRentExt, Canceller, OwnedReadHalf,
    OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;
use rustls::server::ServerConnectionData;

use super::{pace, watchdog, RelayOutcome};
use crate::admit::{Direction, Pacer};
use crate::close::CloseReason;
use crate::handshake::{ClientSession, INCOMING_CAPACITY};
use crate::ktls::handover::bytes_to_record_boundary;
use crate::ktls::policy::{OffloadPolicy, OffloadTrigger};
use crate::pool::{BufferPool, Buffers, ElasticBuf};
use crate::relay::http_head::HeadRewriter;
use crate::tls::records::TlsOut;
use crate::tls::traffic::{Traffic, TrafficError};
use crate::trigger::Trigger;
use crate::upstream::leg::{self, BackendLeg, LegReader, LegWriter};

/// Largest plaintext read from the backend at once: four full TLS records.
/// Buffers are pooled and held only while a direction streams, so this
/// trades the busy connections' memory against operations per byte.
pub const BACKEND_READ: usize = 64 * 1024;
/// Ciphertext room for one backend read (64 bytes of record overhead per
/// record included).
pub const CLIENT_WRITE: usize = BACKEND_READ + BACKEND_READ / (1 << 14) * 64;
/// Client ciphertext read at once: four maximal records, so a streaming
/// client costs one read and one backend write per 64 KiB.
pub const CLIENT_READ: usize = 4 * INCOMING_CAPACITY;
/// Room for a read while its direction idles: most requests and answers
/// of request/response traffic fit, and an idle connection holds nothing
/// else (see [`ElasticBuf`]).
pub const IDLE_READ: usize = 2048;
/// How long the final close_notify or alert may take to leave.
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// State both pumps share.
struct Shared {
    session: RefCell<Session>,
    /// Last time bytes moved in either direction.
    activity: Cell<Instant>,
    /// The first failure seen; it becomes the connection's close reason.
    failure: RefCell<Option<CloseReason>>,
    canceller: RefCell<Canceller>,
    /// Cancels the pumps' reads only: [`Shared::fail`] cancels these too, a
    /// pause cancels nothing else.
    reads: RefCell<Canceller>,
    /// The offload thresholds, when the relay may pause for the kernel.
    pause: Option<PauseState>,
    /// Both pumps have returned.
    finished: Trigger,
    /// An HTTP response the client gets before the connection closes (a
    /// request head refused in header mode).
    reply: RefCell<Vec<u8>>,
    /// The client's byte budget (its throttling tier), if limited.
    pacer: Option<Pacer>,
}

struct Session {
    traffic: Traffic<ServerConnectionData>,
    /// Records owed while reading (a KeyUpdate answer, an alert), to send
    /// before more data.
    control: Vec<u8>,
    close_notify_sent: bool,
}

impl Shared {
    /// Records `reason` (unless one is already recorded) and stops both
    /// pumps by cancelling their pending reads and writes.
    fn fail(&self, reason: CloseReason) {
        self.failure.borrow_mut().get_or_insert(reason);
        for canceller in [&self.canceller, &self.reads] {
            let c = std::mem::take(&mut *canceller.borrow_mut());
            *canceller.borrow_mut() = c.cancel();
        }
    }

    fn touch(&self) {
        self.activity.set(Instant::now());
    }

    /// Counts `n` relayed bytes towards the byte threshold.
    fn progress(&self, n: u64) {
        if let Some(p) = &self.pause {
            p.relayed.set(p.relayed.get() + n);
            if let Some(trigger) = p.policy.due(p.relayed.get(), p.since.elapsed()) {
                self.request_pause(trigger);
            }
        }
    }

    /// Stops both pumps at their next read, once.
    fn request_pause(&self, trigger: OffloadTrigger) {
        let Some(p) = self
            .pause
            .as_ref()
            .filter(|p| p.stage.get() == Stage::Armed)
        else {
            return;
        };
        p.stage.set(Stage::Requested(trigger));
        let c = std::mem::take(&mut *self.reads.borrow_mut());
        *self.reads.borrow_mut() = c.cancel();
    }

    /// Whether a read that failed with `e` was stopped by a pause: then the
    /// pump returns without recording a failure, marking `side` paused.
    fn paused_at(&self, e: &io::Error, side: fn(&PauseState) -> &Cell<bool>) -> bool {
        match &self.pause {
            Some(p)
                if matches!(p.stage.get(), Stage::Requested(_))
                    && e.raw_os_error() == Some(libc::ECANCELED)
                    && self.failure.borrow().is_none() =>
            {
                side(p).set(true);
                true
            }
            _ => false,
        }
    }
}

/// Where a pausable relay stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Relaying; a threshold may still be reached.
    Armed,
    /// A threshold was reached: the pumps stop at their next read.
    Requested(OffloadTrigger),
    /// One direction ended on its own during the pause: the connection
    /// stays in userspace to its end.
    Abandoned,
}

struct PauseState {
    policy: OffloadPolicy,
    since: Instant,
    relayed: Cell<u64>,
    stage: Cell<Stage>,
    up_paused: Cell<bool>,
    down_paused: Cell<bool>,
}

/// Lets the userspace relay stop for the kernel once the policy says so.
#[derive(Debug, Clone, Copy)]
pub struct Pause {
    /// The thresholds (not [`OffloadPolicy::at_once`]).
    pub policy: OffloadPolicy,
    /// When the connection was accepted: the time threshold counts from here.
    pub since: Instant,
}

/// A relay stopped at a safe point: nothing is left to write to either
/// side, and the client's stream is consumed up to `session.incoming`
/// (at most a partial record), so `ktls::handover` can continue it.
pub struct Paused {
    /// The session, with the unprocessed partial record in `incoming`.
    pub session: ClientSession,
    /// The client connection.
    pub client: TcpStream,
    /// The backend connection.
    pub backend: TcpStream,
    /// Plaintext relayed so far, client -> backend.
    pub bytes_up: u64,
    /// Plaintext relayed so far, backend -> client.
    pub bytes_down: u64,
    /// Which threshold stopped the relay.
    pub trigger: OffloadTrigger,
}

/// How a userspace relay ended.
pub enum Relayed {
    /// The connection is over.
    Closed(RelayOutcome),
    /// The relay paused for the kernel; the connection goes on.
    Paused(Box<Paused>),
}

/// Relays between an established client session and a connected backend
/// until both directions are closed, one side fails, the connection idles
/// for `idle_timeout`, or `drain_expired` fires. With `heads`, the client's
/// plaintext goes through that request-head rewriter (header mode). With a
/// `pacer`, bytes wait for the client's byte budget before they are
/// forwarded. With `pause` (never together with `heads`: the rewriter's
/// state cannot move to the kernel), the relay pauses once a threshold is
/// reached.
#[allow(clippy::too_many_arguments)] // each is a distinct part of the connection
pub async fn run(
    session: ClientSession,
    client: TcpStream,
    backend: BackendLeg,
    heads: Option<HeadRewriter>,
    idle_timeout: Duration,
    drain_expired: &Trigger,
    buffers: &Buffers,
    pacer: Option<Pacer>,
    pause: Option<Pause>,
) -> Relayed {
    let ClientSession {
        traffic,
        incoming,
        early_plaintext,
        client_closed,
    } = session;
    // Every buffer starts small or lets go of its pooled memory when its
    // direction idles: the connection's steady state is waiting.
    let mut incoming = ElasticBuf::from_pooled(&buffers.records, incoming, IDLE_READ);
    incoming.shrink();
    let mut up_plain = ElasticBuf::new(&buffers.records, 0);
    if !early_plaintext.is_empty() {
        up_plain.grow();
        up_plain.vec().extend_from_slice(&early_plaintext);
    }
    let mut down_plain = ElasticBuf::new(&buffers.chunks, IDLE_READ);
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut backend_rd, mut backend_wr) = backend.into_split();

    let shared = Shared {
        session: RefCell::new(Session {
            traffic,
            control: Vec::new(),
            close_notify_sent: false,
        }),
        activity: Cell::new(Instant::now()),
        failure: RefCell::new(None),
        canceller: RefCell::new(Canceller::new()),
        reads: RefCell::new(Canceller::new()),
        pause: pause.map(|p| PauseState {
            policy: p.policy,
            since: p.since,
            relayed: Cell::new(0),
            stage: Cell::new(Stage::Armed),
            up_paused: Cell::new(false),
            down_paused: Cell::new(false),
        }),
        finished: Trigger::new(),
        reply: RefCell::new(Vec::new()),
        pacer,
    };
    let cancel = shared.canceller.borrow().handle();

    let both = async {
        let reads = shared.reads.borrow().handle();
        let (mut up, mut down) = monoio::join!(
            client_to_backend(
                &shared,
                &mut client_rd,
                &mut backend_wr,
                (&mut incoming, &mut up_plain),
                heads,
                client_closed,
                (cancel.clone(), reads.clone()),
            ),
            backend_to_client(
                &shared,
                &mut backend_rd,
                &mut client_wr,
                (&mut down_plain, &buffers.ciphertext),
                (cancel.clone(), reads),
            )
        );
        // One direction ended on its own while the other paused: the pause
        // is abandoned and the paused direction resumes, to the end.
        if let Some(p) = shared.pause.as_ref().filter(|p| {
            matches!(p.stage.get(), Stage::Requested(_))
                && p.up_paused.get() != p.down_paused.get()
                && shared.failure.borrow().is_none()
        }) {
            p.stage.set(Stage::Abandoned);
            let reads = shared.reads.borrow().handle();
            if p.up_paused.get() {
                let io = (&mut incoming, &mut up_plain);
                let handles = (cancel.clone(), reads);
                up += client_to_backend(
                    &shared,
                    &mut client_rd,
                    &mut backend_wr,
                    io,
                    None,
                    false,
                    handles,
                )
                .await;
            } else {
                let io = (&mut down_plain, &buffers.ciphertext);
                let handles = (cancel.clone(), reads);
                down +=
                    backend_to_client(&shared, &mut backend_rd, &mut client_wr, io, handles).await;
            }
        }
        shared.finished.fire();
        (up, down)
    };
    let watch = async {
        let idle = async {
            if let Some(reason) = watchdog(
                &shared.activity,
                idle_timeout,
                drain_expired,
                &shared.finished,
            )
            .await
            {
                shared.fail(reason);
            }
        };
        let deadline = shared
            .pause
            .as_ref()
            .and_then(|p| p.policy.deadline().map(|after| (p.since + after).into()));
        let timer = async {
            if let Some(deadline) = deadline {
                monoio::select! {
                    _ = shared.finished.wait() => {}
                    _ = monoio::time::sleep_until(deadline) => {
                        shared.request_pause(OffloadTrigger::Time);
                    }
                }
            }
        };
        monoio::join!(idle, timer);
    };
    let ((bytes_up, bytes_down), ()) = monoio::join!(both, watch);
    let stopped = shared.pause.as_ref().and_then(|p| match p.stage.get() {
        Stage::Requested(trigger) if p.up_paused.get() && p.down_paused.get() => Some(trigger),
        _ => None,
    });
    if let Some(trigger) = stopped {
        if shared.failure.borrow().is_none() {
            drop((up_plain, down_plain));
            let incoming = incoming.into_pooled();
            let session = shared.session.into_inner();
            let ended = paused(
                session,
                (client_rd, client_wr),
                (backend_rd, backend_wr),
                [bytes_up, bytes_down],
            )
            .await;
            return match ended {
                Ok((traffic, client, backend)) => Relayed::Paused(Box::new(Paused {
                    session: ClientSession {
                        traffic,
                        incoming,
                        early_plaintext: Vec::new(),
                        client_closed: false,
                    },
                    client,
                    backend,
                    bytes_up,
                    bytes_down,
                    trigger,
                })),
                Err(outcome) => Relayed::Closed(outcome),
            };
        }
    }
    drop((incoming, up_plain, down_plain));

    let reason = shared
        .failure
        .borrow_mut()
        .take()
        .unwrap_or(CloseReason::Done);
    // Whatever the client is still owed: a fatal alert queued, or a
    // close_notify when we end the connection ourselves.
    let mut out = TlsOut::with_capacity(0);
    let reply = std::mem::take(&mut *shared.reply.borrow_mut());
    let owes_close_notify = (!reply.is_empty()
        || matches!(reason, CloseReason::IdleTimeout | CloseReason::Shutdown))
        && !shared.session.borrow().close_notify_sent;
    // Queued control records go first; a failure here only means the
    // connection can no longer send anything.
    if !reply.is_empty() && !shared.session.borrow().close_notify_sent {
        let _ = encrypt(&shared, &reply, &mut out);
    }
    if owes_close_notify {
        let _ = encrypt(&shared, &[], &mut out);
    } else {
        out.extend_from_slice(&std::mem::take(&mut shared.session.borrow_mut().control));
    }
    if !out.is_empty() {
        let _ = monoio::time::timeout(FINAL_WRITE_TIMEOUT, async {
            let (res, _) =
                monoio::io::AsyncWriteRentExt::write_all(&mut client_wr, out.take()).await;
            res
        })
        .await;
    }
    Relayed::Closed(RelayOutcome {
        bytes_up,
        bytes_down,
        reason,
        path: "userspace",
    })
}

/// Finishes a pause: writes the control records still owed (a KeyUpdate
/// answer) and puts the connections back together.
async fn paused(
    mut session: Session,
    (client_rd, mut client_wr): (OwnedReadHalf<TcpStream>, OwnedWriteHalf<TcpStream>),
    (backend_rd, backend_wr): (LegReader, LegWriter),
    [bytes_up, bytes_down]: [u64; 2],
) -> Result<(Traffic<ServerConnectionData>, TcpStream, TcpStream), RelayOutcome> {
    if !session.control.is_empty() {
        let control = std::mem::take(&mut session.control);
        let (res, _) = monoio::io::AsyncWriteRentExt::write_all(&mut client_wr, control).await;
        if let Err(e) = res {
            return Err(RelayOutcome {
                bytes_up,
                bytes_down,
                reason: CloseReason::ClientError(format!("write: {e}")),
                path: "userspace",
            });
        }
    }
    // The halves came from these streams, so reuniting cannot fail.
    let (Ok(client), Some(backend)) = (
        client_rd.reunite(client_wr),
        leg::reunite(backend_rd, backend_wr),
    ) else {
        return Err(RelayOutcome {
            bytes_up,
            bytes_down,
            reason: CloseReason::Internal("split halves did not reunite".into()),
            path: "userspace",
        });
    };
    Ok((session.traffic, client, backend))
}

/// Client ciphertext -> backend plaintext. Returns plaintext bytes written.
async fn client_to_backend(
    shared: &Shared,
    client: &mut OwnedReadHalf<TcpStream>,
    backend: &mut LegWriter,
    (incoming, plain): (&mut ElasticBuf<'_>, &mut ElasticBuf<'_>),
    mut heads: Option<HeadRewriter>,
    client_closed: bool,
    (cancel, reads): (CancelHandle, CancelHandle),
) -> u64 {
    let mut rewritten = Vec::new();
    let mut total = 0u64;
    loop {
        if !incoming.vec().is_empty() {
            plain.grow();
        }
        let decrypted = decrypt(shared, incoming.vec(), plain.vec());
        let peer_closed = match decrypted {
            Ok(closed) => closed || client_closed,
            Err(e) => {
                shared.fail(CloseReason::ClientError(format!("TLS: {e}")));
                return total;
            }
        };
        let plain_vec = plain.vec();
        if let (Some(heads), false) = (heads.as_mut(), plain_vec.is_empty()) {
            rewritten.clear();
            let fed = heads.feed(plain_vec, &mut rewritten);
            std::mem::swap(plain_vec, &mut rewritten);
            if let Err(refused) = fed {
                // Nothing more reaches the backend: the client gets the
                // answer and the connection closes.
                *shared.reply.borrow_mut() = refused.response();
                shared.fail(CloseReason::ClientError(format!(
                    "request head refused: {refused}"
                )));
                return total;
            }
        }
        if !plain_vec.is_empty() {
            let n = plain_vec.len() as u64;
            pace(shared.pacer.as_ref(), Direction::Up, plain_vec.len()).await;
            let (res, buf) = backend
                .write_all(std::mem::take(plain_vec), cancel.clone())
                .await;
            *plain.vec() = buf;
            plain.vec().clear();
            if let Err(e) = res {
                shared.fail(stopped_or(&e, || {
                    CloseReason::BackendError(format!("write: {e}"))
                }));
                return total;
            }
            total += n;
            shared.touch();
            shared.progress(n);
        }
        if peer_closed {
            let _ = backend_shutdown(backend, &cancel).await;
            return total;
        }
        // What is left is at most a partial record: whether the rest of it
        // fits the small buffer decides where the next read goes.
        plain.shrink();
        let record = incoming.vec().len() + bytes_to_record_boundary(incoming.vec());
        if record <= IDLE_READ {
            incoming.shrink();
        } else {
            incoming.grow();
        }
        if incoming.vec().len() == incoming.vec().capacity() {
            if incoming.is_pooled() {
                shared.fail(CloseReason::ClientError(
                    "record larger than the input buffer".into(),
                ));
                return total;
            }
            incoming.grow();
        }
        let len = incoming.vec().len();
        let (res, buf) = client
            .cancelable_read(
                std::mem::take(incoming.vec()).slice_mut(len..),
                reads.clone(),
            )
            .await;
        *incoming.vec() = buf.into_inner();
        match res {
            Ok(0) => {
                // FIN without close_notify: pass the half-close on; the
                // access log still shows whether the client ended cleanly.
                let _ = backend_shutdown(backend, &cancel).await;
                return total;
            }
            Ok(_) => shared.touch(),
            Err(e) if shared.paused_at(&e, |p| &p.up_paused) => return total,
            Err(e) => {
                shared.fail(stopped_or(&e, || {
                    CloseReason::ClientError(format!("read: {e}"))
                }));
                return total;
            }
        }
    }
}

/// Decrypts every complete record in `incoming` into `plain`. Returns whether
/// the client sent close_notify.
fn decrypt(
    shared: &Shared,
    incoming: &mut Vec<u8>,
    plain: &mut Vec<u8>,
) -> Result<bool, TrafficError> {
    let mut s = shared.session.borrow_mut();
    let Session {
        traffic, control, ..
    } = &mut *s;
    traffic.open(incoming, plain, control)
}

/// Backend plaintext -> client ciphertext. Returns plaintext bytes relayed.
async fn backend_to_client(
    shared: &Shared,
    backend: &mut LegReader,
    client: &mut OwnedWriteHalf<TcpStream>,
    (plain, ciphertext): (&mut ElasticBuf<'_>, &BufferPool),
    (cancel, reads): (CancelHandle, CancelHandle),
) -> u64 {
    let mut total = 0u64;
    loop {
        plain.vec().clear();
        let (res, buf) = backend
            .cancelable_read(std::mem::take(plain.vec()), reads.clone())
            .await;
        *plain.vec() = buf;
        let n = match res {
            Ok(n) => n,
            Err(e) if shared.paused_at(&e, |p| &p.down_paused) => return total,
            Err(e) => {
                shared.fail(stopped_or(&e, || {
                    CloseReason::BackendError(format!("read: {e}"))
                }));
                return total;
            }
        };
        if n > 0 {
            shared.touch();
            pace(shared.pacer.as_ref(), Direction::Down, n).await;
        }
        let mut out = TlsOut::from_vec(ciphertext.take_initialized(), CLIENT_WRITE);
        if let Err(e) = encrypt(shared, &plain.vec()[..n], &mut out) {
            shared.fail(CloseReason::ClientError(format!("TLS: {e}")));
            return total;
        }
        let (res, buf) = client.write_all(out.take(), cancel.clone()).await;
        out.restore(buf);
        ciphertext.give(out.into_vec());
        if let Err(e) = res {
            shared.fail(stopped_or(&e, || {
                CloseReason::ClientError(format!("write: {e}"))
            }));
            return total;
        }
        if n == 0 {
            // The backend finished: close_notify went out above; half-close
            // TCP too so clients waiting for EOF see it.
            let _ =
                monoio::io::CancelableAsyncWriteRent::cancelable_shutdown(client, cancel.clone())
                    .await;
            return total;
        }
        // A read that filled its buffer means the backend is streaming: the
        // next read gets the pooled buffer's room. A short one means it
        // paused, and the connection waits holding the small buffer only;
        // so does a small read that came out full with nothing queued after
        // it (a burst that ended exactly there).
        let filled = n == plain.vec().capacity();
        let streaming = filled && (plain.is_pooled() || backend.more_ready());
        plain.vec().clear();
        if streaming {
            plain.grow();
        } else {
            plain.shrink();
        }
        total += n as u64;
        shared.touch();
        shared.progress(n as u64);
    }
}

/// Appends to `out` the queued control records, then `plain` sealed
/// straight into it (or, when empty, a close_notify, once).
fn encrypt(shared: &Shared, plain: &[u8], out: &mut TlsOut) -> Result<(), TrafficError> {
    let mut s = shared.session.borrow_mut();
    let Session {
        traffic,
        control,
        close_notify_sent,
    } = &mut *s;
    out.extend_from_slice(control);
    control.clear();
    if !plain.is_empty() {
        let room = traffic.sealed_len(plain.len());
        out.append_with(room, |buf| traffic.seal_into(plain, buf))
    } else if !*close_notify_sent {
        *close_notify_sent = true;
        let room = traffic.sealed_len(0);
        out.append_with(room, |buf| traffic.close_notify_into(buf))
    } else {
        Ok(())
    }
}

async fn backend_shutdown(backend: &mut LegWriter, cancel: &CancelHandle) -> io::Result<()> {
    backend.cancelable_shutdown(cancel.clone()).await
}

/// A cancelled operation means another part already recorded why; anything
/// else is this side's failure.
fn stopped_or(e: &io::Error, reason: impl FnOnce() -> CloseReason) -> CloseReason {
    if e.raw_os_error() == Some(libc::ECANCELED) {
        CloseReason::Done
    } else {
        reason()
    }
}
