//! Outgoing TLS bytes: a reusable buffer that rustls' unbuffered API encodes
//! handshake records and encrypts application data into, on either side of
//! a connection (server toward clients, client toward backends).

use rustls::unbuffered::{
    EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError, WriteTraffic,
};

/// Ciphertext waiting to be written to the peer.
///
/// The backing vector is kept fully initialised (`len == capacity`) and only
/// `filled` bytes are meaningful, so encrypting a record never re-zeroes or
/// reallocates once the buffer has reached its working size.
#[derive(Debug)]
pub struct TlsOut {
    buf: Vec<u8>,
    filled: usize,
}

impl TlsOut {
    /// A buffer with room for `capacity` bytes of ciphertext.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: vec![0; capacity],
            filled: 0,
        }
    }

    /// A buffer reusing `buf`'s allocation (its content is ignored), with
    /// room for at least `capacity` bytes. Only the part of `buf` not yet
    /// initialised is zeroed.
    pub fn from_vec(mut buf: Vec<u8>, capacity: usize) -> Self {
        let room = capacity.max(buf.capacity());
        if buf.len() < room {
            buf.resize(room, 0);
        }
        Self { buf, filled: 0 }
    }

    /// The allocation, for a buffer pool.
    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }

    /// Bytes waiting to be written.
    pub fn pending(&self) -> &[u8] {
        &self.buf[..self.filled]
    }

    /// Whether nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// Appends a handshake or control record rustls asks to send.
    pub fn encode<Data>(&mut self, state: &mut EncodeTlsData<'_, Data>) -> Result<(), EncodeError> {
        self.fill(
            |buf| state.encode(buf),
            |e| match e {
                EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
                    Some(*required_size)
                }
                _ => None,
            },
        )
    }

    /// Appends a close_notify alert.
    pub fn close_notify<Data>(
        &mut self,
        state: &mut WriteTraffic<'_, Data>,
    ) -> Result<(), EncryptError> {
        self.fill(|buf| state.queue_close_notify(buf), encrypt_room)
    }

    /// Runs `write` on the free space, growing it to the size `too_small`
    /// extracts from the error until the write fits.
    fn fill<E>(
        &mut self,
        mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
        too_small: impl Fn(&E) -> Option<usize>,
    ) -> Result<(), E> {
        loop {
            match write(&mut self.buf[self.filled..]) {
                Ok(n) => {
                    self.filled += n;
                    return Ok(());
                }
                Err(e) => match too_small(&e) {
                    Some(required) => self.grow(required),
                    None => return Err(e),
                },
            }
        }
    }

    /// Appends what `write` puts at the front of the free space, which
    /// has at least `room` bytes; `write` returns how many it wrote.
    pub fn append_with<E>(
        &mut self,
        room: usize,
        write: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<(), E> {
        if self.buf.len() - self.filled < room {
            self.grow(room);
        }
        self.filled += write(&mut self.buf[self.filled..])?;
        Ok(())
    }

    /// Discards what waits to be written.
    pub fn clear(&mut self) {
        self.filled = 0;
    }

    /// Appends bytes as they are: records already sealed, or bytes that
    /// are not TLS at all (a plain HTTP error answer).
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        if self.buf.len() - self.filled < bytes.len() {
            self.grow(bytes.len());
        }
        self.buf[self.filled..self.filled + bytes.len()].copy_from_slice(bytes);
        self.filled += bytes.len();
    }

    /// Moves the bytes of `other` to the end of this buffer.
    pub fn append(&mut self, other: &mut TlsOut) {
        self.extend_from_slice(other.pending());
        other.filled = 0;
    }

    /// Takes the buffer for an owned-buffer write; give it back with
    /// [`TlsOut::restore`] so its allocation is reused.
    pub fn take(&mut self) -> monoio::buf::Slice<Vec<u8>> {
        use monoio::buf::IoBuf;
        let filled = std::mem::replace(&mut self.filled, 0);
        std::mem::take(&mut self.buf).slice(..filled)
    }

    /// Returns the buffer after a write; its content is discarded.
    pub fn restore(&mut self, slice: monoio::buf::Slice<Vec<u8>>) {
        self.buf = slice.into_inner();
        self.filled = 0;
    }

    fn grow(&mut self, free_needed: usize) {
        let want = self.filled + free_needed;
        if self.buf.len() < want {
            self.buf.resize(want.next_power_of_two(), 0);
        }
    }
}

/// The room an encryption asked for, if that was its only problem.
fn encrypt_room(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    }
}
