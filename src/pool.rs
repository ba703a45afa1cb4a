//! Per-worker free lists of I/O buffers.
//!
//! Connections take their buffers when they start and give them back when
//! they end, so a busy worker recycles a bounded set of allocations instead
//! of asking the allocator for ~70 KiB per connection. Single-threaded by
//! design: each worker owns its pools.

use std::cell::RefCell;
use std::io;

use monoio::net::unix::{new_pipe, Pipe};

/// A free list of byte buffers of one size class.
#[derive(Debug)]
pub struct BufferPool {
    free: RefCell<Vec<Vec<u8>>>,
    capacity: usize,
    keep: usize,
}

impl BufferPool {
    /// A pool handing out buffers of at least `capacity` bytes and keeping
    /// at most `keep` returned ones.
    pub fn new(capacity: usize, keep: usize) -> Self {
        Self {
            free: RefCell::new(Vec::new()),
            capacity,
            keep,
        }
    }

    /// An empty buffer with at least the pool's capacity.
    pub fn take(&self) -> Vec<u8> {
        let mut buf = self.pop();
        buf.clear();
        buf
    }

    /// A buffer whose whole capacity is initialised, contents unspecified:
    /// for encoders that write into `&mut [u8]`. A recycled buffer comes
    /// back as it was given, so it is zeroed once in its life, not per use.
    pub fn take_initialized(&self) -> Vec<u8> {
        let mut buf = self.pop();
        if buf.len() < buf.capacity() {
            buf.resize(buf.capacity(), 0);
        }
        buf
    }

    fn pop(&self) -> Vec<u8> {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.capacity))
    }

    /// Returns a buffer for reuse, contents and all. Buffers that shrank
    /// below the size class or exceed the bound are dropped; oversized ones
    /// (a large ClientHello) are dropped too, so the pool's memory stays
    /// predictable.
    pub fn give(&self, buf: Vec<u8>) {
        let mut free = self.free.borrow_mut();
        if free.len() < self.keep
            && buf.capacity() >= self.capacity
            && buf.capacity() <= 2 * self.capacity
        {
            free.push(buf);
        }
    }

    /// Buffers waiting for reuse.
    pub fn idle(&self) -> usize {
        self.free.borrow().len()
    }
}

/// A free list of pipes for the splice relay. A pipe goes back only when
/// the pump that used it ended with it empty; one that may hold bytes is
/// closed instead.
#[derive(Default)]
pub struct PipePool {
    free: RefCell<Vec<(Pipe, Pipe)>>,
    keep: usize,
}

impl PipePool {
    /// A pool keeping at most `keep` idle pipes.
    pub fn new(keep: usize) -> Self {
        Self {
            free: RefCell::new(Vec::new()),
            keep,
        }
    }

    /// A pipe (read end, write end), reused or new.
    pub fn take(&self) -> io::Result<(Pipe, Pipe)> {
        match self.free.borrow_mut().pop() {
            Some(pair) => Ok(pair),
            None => new_pipe(),
        }
    }

    /// Returns an empty pipe for reuse.
    pub fn give(&self, pair: (Pipe, Pipe)) {
        let mut free = self.free.borrow_mut();
        if free.len() < self.keep {
            free.push(pair);
        }
    }

    /// Pipes waiting for reuse.
    pub fn idle(&self) -> usize {
        self.free.borrow().len()
    }
}

impl std::fmt::Debug for PipePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipePool")
            .field("idle", &self.idle())
            .field("keep", &self.keep)
            .finish()
    }
}

/// A read buffer that is small while its direction idles and one of a
/// pool's while bytes flow.
///
/// With io_uring a pending read owns its buffer, so a connection waiting
/// for its peer would otherwise pin a full pooled buffer per direction;
/// thousands of idle connections would hold their worst case. Reads go to
/// the small buffer until one fills it ([`ElasticBuf::grow`]), and the
/// pooled buffer goes back once its content fits the small one again
/// ([`ElasticBuf::shrink`]). A small capacity of 0 means nothing is held
/// while idle. Dropping it returns the pooled buffer.
#[derive(Debug)]
pub struct ElasticBuf<'p> {
    buf: Vec<u8>,
    /// The small buffer, parked while `buf` is a pooled one.
    parked: Vec<u8>,
    small: usize,
    pooled: bool,
    pool: &'p BufferPool,
}

impl<'p> ElasticBuf<'p> {
    /// Starts small, with `small` bytes of room.
    pub fn new(pool: &'p BufferPool, small: usize) -> Self {
        Self {
            buf: Vec::with_capacity(small),
            parked: Vec::new(),
            small,
            pooled: false,
            pool,
        }
    }

    /// Starts with `buf`, a buffer taken from `pool` that may hold data.
    pub fn from_pooled(pool: &'p BufferPool, buf: Vec<u8>, small: usize) -> Self {
        Self {
            buf,
            parked: Vec::with_capacity(small),
            small,
            pooled: true,
            pool,
        }
    }

    /// The buffer reads and writes go to. Taking it out for an owned-buffer
    /// read and putting it back is fine; replacing it is not.
    pub fn vec(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Whether a pooled buffer is in use.
    pub fn is_pooled(&self) -> bool {
        self.pooled
    }

    /// Moves the content to a pooled buffer, for more room.
    pub fn grow(&mut self) {
        if !self.pooled {
            let mut big = self.pool.take();
            big.extend_from_slice(&self.buf);
            self.buf.clear();
            self.parked = std::mem::replace(&mut self.buf, big);
            self.pooled = true;
        }
    }

    /// Gives the pooled buffer back once its content fits the small one.
    pub fn shrink(&mut self) {
        if self.pooled && self.buf.len() <= self.small {
            let mut small = std::mem::take(&mut self.parked);
            small.extend_from_slice(&self.buf);
            self.pool.give(std::mem::replace(&mut self.buf, small));
            self.pooled = false;
        }
    }

    /// The content in a pooled buffer, for a connection that moves on
    /// (the kernel TLS handover) with it.
    pub fn into_pooled(mut self) -> Vec<u8> {
        self.grow();
        self.pooled = false;
        std::mem::take(&mut self.buf)
    }
}

impl Drop for ElasticBuf<'_> {
    fn drop(&mut self) {
        if self.pooled {
            self.pool.give(std::mem::take(&mut self.buf));
        }
    }
}

/// The buffers one worker recycles.
#[derive(Debug)]
pub struct Buffers {
    /// Ciphertext from clients and the plaintext decrypted from it: four
    /// maximal TLS records each.
    pub records: BufferPool,
    /// Backend reads.
    pub chunks: BufferPool,
    /// Ciphertext to send: kept initialised (see
    /// [`BufferPool::take_initialized`]), so never shared with read buffers,
    /// whose length a read leaves short.
    pub ciphertext: BufferPool,
    /// Pipes for splicing kernel TLS connections.
    pub pipes: PipePool,
}

impl Buffers {
    /// Pools for one worker, keeping at most `keep` idle buffers of each kind.
    pub fn new(keep: usize) -> Self {
        Self {
            records: BufferPool::new(crate::relay::userspace::CLIENT_READ, keep),
            chunks: BufferPool::new(crate::relay::userspace::BACKEND_READ, keep),
            ciphertext: BufferPool::new(crate::relay::userspace::CLIENT_WRITE, keep),
            pipes: PipePool::new(keep),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_are_reused_up_to_the_bound() {
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .build()
            .unwrap();
        rt.block_on(async {
            let pool = PipePool::new(1);
            let a = pool.take().unwrap();
            let b = pool.take().unwrap();
            pool.give(a);
            pool.give(b);
            assert_eq!(pool.idle(), 1);
            let _again = pool.take().unwrap();
            assert_eq!(pool.idle(), 0);
        });
    }

    #[test]
    fn recycles_up_to_the_bound() {
        let pool = BufferPool::new(1024, 2);
        let (a, b, c) = (pool.take(), pool.take(), pool.take());
        assert!(a.capacity() >= 1024);
        let a_ptr = a.as_ptr();
        pool.give(a);
        pool.give(b);
        pool.give(c);
        assert_eq!(pool.idle(), 2);
        let again = pool.take();
        assert!(again.is_empty());
        assert!(std::ptr::eq(again.as_ptr(), a_ptr) || pool.idle() == 1);
        pool.give(Vec::with_capacity(10));
        pool.give(Vec::with_capacity(1 << 20));
        assert_eq!(pool.idle(), 1, "wrong-sized buffers are not kept");
    }

    #[test]
    fn initialized_buffers_keep_their_content_across_reuse() {
        let pool = BufferPool::new(64, 2);
        let mut a = pool.take_initialized();
        assert_eq!(a.len(), a.capacity());
        a[0] = 7;
        pool.give(a);
        let b = pool.take_initialized();
        assert_eq!((b.len(), b[0]), (b.capacity(), 7), "not re-zeroed");
        pool.give(b);
        assert!(pool.take().is_empty(), "take() hands out an empty buffer");
    }

    #[test]
    fn elastic_buffers_hold_pooled_memory_only_while_it_is_needed() {
        let pool = BufferPool::new(1024, 4);
        let mut buf = ElasticBuf::new(&pool, 16);
        assert!(!buf.is_pooled());
        assert_eq!(buf.vec().capacity(), 16);
        buf.vec().extend_from_slice(b"partial record");
        buf.grow();
        assert!(buf.is_pooled());
        assert_eq!(
            buf.vec().as_slice(),
            b"partial record",
            "content moves along"
        );
        assert!(buf.vec().capacity() >= 1024);
        buf.vec().extend_from_slice(&[0; 100]);
        buf.shrink();
        assert!(buf.is_pooled(), "too much content for the small buffer");
        buf.vec().truncate(3);
        buf.shrink();
        assert!(!buf.is_pooled());
        assert_eq!((buf.vec().as_slice(), pool.idle()), (&b"par"[..], 1));
        buf.grow();
        assert_eq!(pool.idle(), 0);
        drop(buf);
        assert_eq!(pool.idle(), 1, "dropping returns the pooled buffer");

        let empty = ElasticBuf::new(&pool, 0);
        assert_eq!(empty.parked.capacity() + empty.buf.capacity(), 0);
        let handed = ElasticBuf::from_pooled(&pool, pool.take(), 16).into_pooled();
        assert!(handed.capacity() >= 1024);
        assert_eq!(pool.idle(), 0, "into_pooled keeps the buffer");
    }
}
