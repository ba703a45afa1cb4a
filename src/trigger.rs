//! A one-shot event inside one worker: fired once, awaited by many.
//!
//! Workers are single-threaded, so this needs no atomics; a waiter that is
//! dropped before the event unregisters itself, so long-lived listeners of a
//! rarely fired event (drain, shutdown) do not accumulate wakers.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// A one-shot, single-thread event.
#[derive(Default)]
pub struct Trigger {
    fired: Cell<bool>,
    waiters: RefCell<Waiters>,
}

#[derive(Default)]
struct Waiters {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Trigger {
    /// A trigger not yet fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the event and wakes every waiter. Idempotent.
    pub fn fire(&self) {
        self.fired.set(true);
        let wakers: Vec<Waker> = {
            let mut w = self.waiters.borrow_mut();
            w.free.clear();
            w.slots.drain(..).flatten().collect()
        };
        for waker in wakers {
            waker.wake();
        }
    }

    /// Completes once the event has fired.
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            trigger: self,
            slot: None,
        }
    }
}

/// Future returned by [`Trigger::wait`].
pub struct Wait<'a> {
    trigger: &'a Trigger,
    slot: Option<usize>,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.trigger.fired.get() {
            self.slot = None;
            return Poll::Ready(());
        }
        let mut w = self.trigger.waiters.borrow_mut();
        match self.slot {
            Some(i) => w.slots[i] = Some(cx.waker().clone()),
            None => {
                let i = match w.free.pop() {
                    Some(i) => {
                        w.slots[i] = Some(cx.waker().clone());
                        i
                    }
                    None => {
                        w.slots.push(Some(cx.waker().clone()));
                        w.slots.len() - 1
                    }
                };
                drop(w);
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            if !self.trigger.fired.get() {
                let mut w = self.trigger.waiters.borrow_mut();
                w.slots[i] = None;
                w.free.push(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn fire_wakes_live_waiters_and_reuses_dropped_slots() {
        let t = Trigger::new();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);

        let mut a = Box::pin(t.wait());
        assert!(a.as_mut().poll(&mut cx).is_pending());
        {
            let mut b = Box::pin(t.wait());
            assert!(b.as_mut().poll(&mut cx).is_pending());
        }
        let mut c = Box::pin(t.wait());
        assert!(c.as_mut().poll(&mut cx).is_pending());
        assert_eq!(t.waiters.borrow().slots.len(), 2, "dropped slot reused");

        t.fire();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert!(a.as_mut().poll(&mut cx).is_ready());
        assert!(c.as_mut().poll(&mut cx).is_ready());
        assert!(Box::pin(t.wait()).as_mut().poll(&mut cx).is_ready());
    }
}
