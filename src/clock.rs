//! Time comes from a [`Clock`] handed in from outside, so tests move time
//! instead of sleeping to a cycle boundary.

use std::sync::{Arc, Mutex};

use jiff::{SignedDuration, Timestamp};

/// A source of the current instant.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The machine's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that only moves when told to. Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<Timestamp>>);

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        ManualClock(Arc::new(Mutex::new(start)))
    }

    pub fn set(&self, t: Timestamp) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }

    pub fn advance(&self, by: SignedDuration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t = t.saturating_add(by).unwrap_or(*t);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A clock read from a file holding one RFC 3339 time: end-to-end tests
/// move time for a running binary by rewriting the file. Falls back to
/// the last good reading while the file is being rewritten.
#[derive(Debug)]
pub struct FileClock {
    path: std::path::PathBuf,
    last: Mutex<Timestamp>,
}

impl FileClock {
    pub fn new(path: impl Into<std::path::PathBuf>) -> Result<Self, String> {
        let path = path.into();
        let first = read_time(&path).ok_or_else(|| format!("{}: expected an RFC 3339 time", path.display()))?;
        Ok(FileClock {
            path,
            last: Mutex::new(first),
        })
    }
}

fn read_time(path: &std::path::Path) -> Option<Timestamp> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl Clock for FileClock {
    fn now(&self) -> Timestamp {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = read_time(&self.path) {
            *last = t;
        }
        *last
    }
}
