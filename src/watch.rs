//! Reload when the files a configuration names change.
//!
//! Polling rather than inotify: it follows the symlink swaps Kubernetes
//! uses for mounted secrets (`..data` replaced atomically) without tracking
//! directories, costs a few `stat` calls a second, and needs no platform
//! code. The decision (has the set changed, has it settled) is sans-IO.

use std::fs;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// What identifies one file's content cheaply: the target's inode, size and
/// modification time after following symlinks. `None`: currently missing.
pub type Stamp = Option<(u64, u64, SystemTime)>;

fn stamp(path: &PathBuf) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path).ok()?;
    Some((m.ino(), m.size(), m.modified().ok()?))
}

/// Debounces changes: a reload is due once the files differ from the last
/// reloaded state and have not changed for `quiet`.
#[derive(Debug)]
pub struct Debounce {
    applied: Vec<Stamp>,
    seen: Vec<Stamp>,
    changed_at: Option<Instant>,
    quiet: Duration,
}

impl Debounce {
    /// Starts from the stamps the running configuration was loaded from.
    pub fn new(initial: Vec<Stamp>, quiet: Duration) -> Self {
        Self {
            seen: initial.clone(),
            applied: initial,
            changed_at: None,
            quiet,
        }
    }

    /// Feeds one observation; returns true when a reload is due now.
    pub fn observe(&mut self, stamps: Vec<Stamp>, now: Instant) -> bool {
        if stamps != self.seen {
            self.seen = stamps;
            self.changed_at = Some(now);
            return false;
        }
        match self.changed_at {
            Some(t) if now.duration_since(t) >= self.quiet && self.seen != self.applied => {
                self.applied = self.seen.clone();
                self.changed_at = None;
                true
            }
            _ => false,
        }
    }
}

/// Polls `files` every `interval` and calls `reload` once they changed and
/// settled. Runs until `reload` returns false.
pub fn spawn(
    files: Vec<PathBuf>,
    interval: Duration,
    reload: impl Fn() -> bool + Send + 'static,
) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("tlsplice-watch".into())
        .spawn(move || {
            let stamps = || files.iter().map(stamp).collect::<Vec<_>>();
            let mut debounce = Debounce::new(stamps(), interval * 2);
            loop {
                thread::sleep(interval);
                if debounce.observe(stamps(), Instant::now()) {
                    tracing::info!("watched files changed: reloading");
                    if !reload() {
                        return;
                    }
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(n: u64) -> Stamp {
        Some((n, n, SystemTime::UNIX_EPOCH))
    }

    #[test]
    fn reloads_once_after_changes_settle() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut d = Debounce::new(vec![st(1), st(2)], Duration::from_millis(500));
        assert!(!d.observe(vec![st(1), st(2)], ms(100)), "nothing changed");
        assert!(!d.observe(vec![st(3), st(2)], ms(200)), "changed: wait");
        assert!(!d.observe(vec![st(3), st(4)], ms(400)), "still changing");
        assert!(
            !d.observe(vec![st(3), st(4)], ms(800)),
            "not quiet long enough"
        );
        assert!(d.observe(vec![st(3), st(4)], ms(900)), "settled: reload");
        assert!(!d.observe(vec![st(3), st(4)], ms(2000)), "only once");
    }

    #[test]
    fn a_change_reverted_before_settling_does_not_reload() {
        let t0 = Instant::now();
        let mut d = Debounce::new(vec![st(1)], Duration::from_millis(100));
        assert!(!d.observe(vec![None], t0));
        assert!(!d.observe(vec![st(1)], t0 + Duration::from_millis(50)));
        assert!(!d.observe(vec![st(1)], t0 + Duration::from_millis(500)));
    }
}
