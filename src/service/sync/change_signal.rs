//! Wake-ups for change-feed subscribers, per tenant (each tenant's change log has its own
//! cursors). Subscribers always read the change log from their own cursor; this only tells
//! them when there may be something new in their tenant: at once for writes of this
//! process, through PostgreSQL LISTEN/NOTIFY (plus a safety poll) for other processes on
//! the same database, and through a poll of the log on SQLite. Polls read only the tenants
//! that have subscribers in this process.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::store::Store;

/// How often SQLite's change log is polled for other processes' writes.
const SQLITE_POLL: Duration = Duration::from_millis(100);
/// How often notifications of the PostgreSQL listener are collected.
const LISTEN_POLL: Duration = Duration::from_millis(10);
/// The safety poll on PostgreSQL, should a notification be lost with its session.
const SAFETY_POLL: Duration = Duration::from_secs(1);

/// The newest change cursor of each tenant this process knows of.
type Heads = Mutex<HashMap<String, watch::Sender<i64>>>;

/// Per-tenant heads of the change log, shared by every clone.
#[derive(Debug, Clone, Default)]
pub struct ChangeSignal {
    heads: Arc<Heads>,
}

impl ChangeSignal {
    /// Records that `tenant`'s changes up to `cursor` are committed.
    pub fn advance(&self, tenant: &str, cursor: i64) {
        advance(&self.heads, tenant, cursor);
    }

    /// Wakes on each newer cursor of `tenant`.
    pub fn subscribe(&self, tenant: &str) -> watch::Receiver<i64> {
        let mut heads = self.heads.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        heads.entry(tenant.to_owned()).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// Watches the database for changes committed by other processes, on a thread that
    /// ends when the returned handle is stopped or dropped, or once every clone of this
    /// signal is gone.
    pub fn watch_database(&self, store: &Store) -> std::io::Result<ChangeWatcher> {
        let heads = Arc::downgrade(&self.heads);
        let store = store.clone();
        let (stop, stopped) = channel();
        let thread = std::thread::Builder::new().name("change-watcher".into()).spawn(move || watch_loop(&heads, &store, &stopped))?;
        Ok(ChangeWatcher { stop, thread })
    }
}

/// The change watcher's thread. Dropping the handle ends the thread without waiting.
#[derive(Debug)]
pub struct ChangeWatcher {
    stop: Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl ChangeWatcher {
    /// Ends the watcher (its PostgreSQL listening session with it) and waits for it.
    pub fn stop(self) {
        let _ = self.stop.send(());
        if self.thread.join().is_err() {
            tracing::error!("the change watcher panicked");
        }
    }
}

fn advance(heads: &Heads, tenant: &str, cursor: i64) {
    let heads = heads.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // A tenant nobody here subscribes to has nobody to wake.
    let Some(head) = heads.get(tenant) else { return };
    head.send_if_modified(|known| {
        let newer = cursor > *known;
        if newer {
            *known = cursor;
        }
        newer
    });
}

/// The tenants with a subscriber in this process.
fn watched(heads: &Heads) -> Vec<String> {
    let heads = heads.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    heads.iter().filter(|(_, h)| h.receiver_count() > 0).map(|(t, _)| t.clone()).collect()
}

fn read_heads(store: &Store, tenants: &[String]) -> Option<Vec<(String, i64)>> {
    let result = store.conn().map_err(|e| e.to_string()).and_then(|mut c| {
        tenants
            .iter()
            .map(|t| crate::store::changes::head(&mut c, t).map(|cursor| (t.clone(), cursor)).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()
    });
    match result {
        Ok(heads) => Some(heads),
        Err(error) => {
            tracing::warn!(%error, "change watcher cannot read the change log");
            None
        }
    }
}

fn watch_loop(heads: &Weak<Heads>, store: &Store, stopped: &Receiver<()>) {
    let mut listener = None;
    let mut last_poll = Instant::now() - SAFETY_POLL;
    let mut last_connect = Instant::now() - SAFETY_POLL;
    let postgres = store.backend() == crate::store::Backend::Postgres;
    loop {
        let Some(shared) = heads.upgrade() else { return };
        if postgres && listener.is_none() && last_connect.elapsed() >= SAFETY_POLL {
            last_connect = Instant::now();
            match store.listener() {
                Ok(l) => listener = l,
                Err(error) => tracing::warn!(%error, "change watcher cannot listen; polling"),
            }
        }
        if let Some(l) = listener.as_mut() {
            match l.poll() {
                Ok(newest) => newest.iter().for_each(|(tenant, cursor)| advance(&shared, tenant, *cursor)),
                Err(error) => {
                    tracing::warn!(%error, "change listener lost its session; reconnecting");
                    listener = None;
                }
            }
        }
        let every = if postgres { SAFETY_POLL } else { SQLITE_POLL };
        if last_poll.elapsed() >= every {
            last_poll = Instant::now();
            let tenants = watched(&shared);
            if !tenants.is_empty()
                && let Some(newest) = read_heads(store, &tenants)
            {
                newest.iter().for_each(|(tenant, cursor)| advance(&shared, tenant, *cursor));
            }
        }
        drop(shared);
        // Waiting on the stop channel rather than sleeping ends the thread at once.
        match stopped.recv_timeout(if postgres { LISTEN_POLL } else { SQLITE_POLL }) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
