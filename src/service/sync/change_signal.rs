//! Wake-ups for change-feed subscribers. Subscribers always read the change log from
//! their own cursor; this only tells them when there may be something new: at once for
//! writes of this process, through PostgreSQL LISTEN/NOTIFY (plus a safety poll) for
//! other processes on the same database, and through a poll of the log on SQLite.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::store::Store;

/// How often SQLite's change log is polled for other processes' writes.
const SQLITE_POLL: Duration = Duration::from_millis(100);
/// How often notifications of the PostgreSQL listener are collected.
const LISTEN_POLL: Duration = Duration::from_millis(10);
/// The safety poll on PostgreSQL, should a notification be lost with its session.
const SAFETY_POLL: Duration = Duration::from_secs(1);

/// The newest change cursor this process knows of.
#[derive(Debug, Clone)]
pub struct ChangeSignal {
    head: Arc<watch::Sender<i64>>,
}

impl Default for ChangeSignal {
    fn default() -> Self {
        Self { head: Arc::new(watch::channel(0).0) }
    }
}

impl ChangeSignal {
    /// Records that changes up to `cursor` are committed.
    pub fn advance(&self, cursor: i64) {
        advance(&self.head, cursor);
    }

    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.head.subscribe()
    }

    /// Watches the database for changes committed by other processes, on a thread that
    /// ends when the returned handle is stopped or dropped, or once every clone of this
    /// signal is gone.
    pub fn watch_database(&self, store: &Store) -> std::io::Result<ChangeWatcher> {
        let head = Arc::downgrade(&self.head);
        let store = store.clone();
        let (stop, stopped) = channel();
        let thread = std::thread::Builder::new().name("change-watcher".into()).spawn(move || watch_loop(&head, &store, &stopped))?;
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

fn advance(head: &watch::Sender<i64>, cursor: i64) {
    head.send_if_modified(|known| {
        let newer = cursor > *known;
        if newer {
            *known = cursor;
        }
        newer
    });
}

fn read_head(store: &Store) -> Option<i64> {
    let result = store.conn().map_err(|e| e.to_string()).and_then(|mut c| crate::store::changes::head(&mut c).map_err(|e| e.to_string()));
    match result {
        Ok(cursor) => Some(cursor),
        Err(error) => {
            tracing::warn!(%error, "change watcher cannot read the change log");
            None
        }
    }
}

fn watch_loop(head: &Weak<watch::Sender<i64>>, store: &Store, stopped: &Receiver<()>) {
    let mut listener = None;
    let mut last_poll = Instant::now() - SAFETY_POLL;
    let mut last_connect = Instant::now() - SAFETY_POLL;
    let postgres = store.backend() == crate::store::Backend::Postgres;
    loop {
        let Some(sender) = head.upgrade() else { return };
        if postgres && listener.is_none() && last_connect.elapsed() >= SAFETY_POLL {
            last_connect = Instant::now();
            match store.listener() {
                Ok(l) => listener = l,
                Err(error) => tracing::warn!(%error, "change watcher cannot listen; polling"),
            }
        }
        if let Some(l) = listener.as_mut() {
            match l.poll() {
                Ok(Some(cursor)) => advance(&sender, cursor),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, "change listener lost its session; reconnecting");
                    listener = None;
                }
            }
        }
        let every = if postgres { SAFETY_POLL } else { SQLITE_POLL };
        if last_poll.elapsed() >= every {
            last_poll = Instant::now();
            if let Some(cursor) = read_head(store) {
                advance(&sender, cursor);
            }
        }
        drop(sender);
        // Waiting on the stop channel rather than sleeping ends the thread at once.
        match stopped.recv_timeout(if postgres { LISTEN_POLL } else { SQLITE_POLL }) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
