//! One sans-IO layer over both ends of rustls' unbuffered API.
//!
//! rustls implements `process_tls_records` separately for the server
//! (`UnbufferedServerConnection`, the client's leg) and the client
//! (`UnbufferedClientConnection`, the backend leg with upstream TLS). The
//! [`Unbuffered`] trait names what both share, so the handshake driver and
//! the hand-off to our record layer ([`crate::tls::traffic`]) are written
//! once for both legs.

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, UnbufferedStatus};
use rustls::{CommonState, ExtractedSecrets};

use super::records::TlsOut;

/// A rustls unbuffered connection, server or client side.
pub trait Unbuffered {
    /// rustls' side-specific state (`ServerConnectionData` or `ClientConnectionData`).
    type Data;

    /// Processes the records in `incoming` until rustls needs something.
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;

    /// What both sides share: the negotiated version and suite.
    fn common(&self) -> &CommonState;

    /// Gives the traffic secrets to the caller's record layer (kernel TLS),
    /// keeping rustls' state for key updates and session tickets.
    fn into_kernel(self)
        -> Result<(ExtractedSecrets, KernelConnection<Self::Data>), rustls::Error>;
}

macro_rules! unbuffered_side {
    ($conn:ty, $data:ty) => {
        impl Unbuffered for $conn {
            type Data = $data;

            fn process<'c, 'i>(
                &'c mut self,
                incoming: &'i mut [u8],
            ) -> UnbufferedStatus<'c, 'i, $data> {
                self.process_tls_records(incoming)
            }

            fn common(&self) -> &CommonState {
                self
            }

            fn into_kernel(
                self,
            ) -> Result<(ExtractedSecrets, KernelConnection<$data>), rustls::Error> {
                self.dangerous_into_kernel_connection()
            }
        }
    };
}

unbuffered_side!(UnbufferedServerConnection, ServerConnectionData);
unbuffered_side!(UnbufferedClientConnection, ClientConnectionData);

/// What a connection in its handshake needs next.
pub enum Progress {
    /// `out` holds records that must reach the peer now.
    Transmit,
    /// More bytes from the peer are needed.
    NeedInput,
    /// The handshake is done and nothing is left to send.
    Complete,
    /// The peer sent close_notify.
    PeerClosed,
}

/// Advances the connection over the buffered input without I/O.
pub fn drive<C: Unbuffered>(
    conn: &mut C,
    incoming: &mut Vec<u8>,
    out: &mut TlsOut,
    plaintext: &mut Vec<u8>,
) -> Result<Progress, rustls::Error> {
    loop {
        let UnbufferedStatus { discard, state } = conn.process(incoming);
        let state = match state {
            Ok(state) => state,
            Err(e) => {
                // The discard still applies: rustls' deframer expects the
                // buffer without those bytes on the next call.
                incoming.drain(..discard);
                return Err(e);
            }
        };
        let progress = match state {
            ConnectionState::EncodeTlsData(mut e) => {
                out.encode(&mut e)
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
                None
            }
            ConnectionState::TransmitTlsData(t) => {
                // The caller writes `out` before driving again.
                t.done();
                Some(Progress::Transmit)
            }
            ConnectionState::ReadTraffic(mut r) => {
                while let Some(record) = r.next_record() {
                    plaintext.extend_from_slice(record?.payload);
                }
                None
            }
            ConnectionState::BlockedHandshake => Some(Progress::NeedInput),
            ConnectionState::WriteTraffic(_) => Some(Progress::Complete),
            ConnectionState::PeerClosed | ConnectionState::Closed => Some(Progress::PeerClosed),
            // Early data is disabled in every configuration we build.
            _ => Some(Progress::NeedInput),
        };
        incoming.drain(..discard);
        if let Some(p) = progress {
            return Ok(p);
        }
    }
}

/// Collects the alert rustls queued when it failed the connection.
///
/// One call is enough and the only safe one: rustls hands out queued
/// records before it deframes anything, whereas a second call would parse
/// more input in a failed state (and could queue a second fatal alert).
/// `incoming` is the failing call's buffer, its discard already applied.
pub fn flush_alert<C: Unbuffered>(conn: &mut C, incoming: &mut [u8], out: &mut TlsOut) {
    let UnbufferedStatus { state, .. } = conn.process(incoming);
    if let Ok(ConnectionState::EncodeTlsData(mut e)) = state {
        let _ = out.encode(&mut e);
    }
}
