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
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.capacity))
    }

    /// Returns a buffer for reuse. Buffers that shrank below the size class
    /// or exceed the bound are dropped; oversized ones (a large ClientHello)
    /// are dropped too, so the pool's memory stays predictable.
    pub fn give(&self, mut buf: Vec<u8>) {
        let mut free = self.free.borrow_mut();
        if free.len() < self.keep
            && buf.capacity() >= self.capacity
            && buf.capacity() <= 2 * self.capacity
        {
            buf.clear();
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

/// The buffers one worker recycles.
#[derive(Debug)]
pub struct Buffers {
    /// Ciphertext from clients and the plaintext decrypted from it: one
    /// maximal TLS record each.
    pub records: BufferPool,
    /// Backend reads and the ciphertext encrypted from them.
    pub chunks: BufferPool,
    /// Pipes for splicing kernel TLS connections.
    pub pipes: PipePool,
}

impl Buffers {
    /// Pools for one worker, keeping at most `keep` idle buffers of each kind.
    pub fn new(keep: usize) -> Self {
        Self {
            records: BufferPool::new(crate::handshake::INCOMING_CAPACITY, keep),
            chunks: BufferPool::new(crate::relay::userspace::CLIENT_WRITE, keep),
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
}
