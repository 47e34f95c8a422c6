//! Checkpoints of a SQLite database's write-ahead log, off the write path. SQLite's
//! automatic checkpoint runs inside whichever commit crosses its threshold, so under load a
//! writer (and every request waiting for its shared commit) stalls while pages are copied
//! into the database file and synced. Connections here turn it off
//! (`wal_autocheckpoint = 0`), and a thread per open database runs a `PASSIVE` checkpoint
//! every [`INTERVAL`]: it copies what no reader still needs, beside writers and readers,
//! never waiting for them. Durability does not change: a commit is durable once its frames
//! are synced to the log (`synchronous = FULL`), checkpointed or not. The last connection
//! to close checkpoints what is left.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use diesel::connection::SimpleConnection;

use super::{DbConnection, Manager};

/// How often the log is checkpointed.
pub const INTERVAL: Duration = Duration::from_millis(200);

/// Ends the checkpoint thread when the last store sharing it is dropped.
#[derive(Debug)]
pub struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
}

impl Checkpointer {
    /// Starts checkpointing the SQLite database `manager` opens, on a connection of its own.
    pub(super) fn start(manager: &Manager) -> Result<Self, super::StoreError> {
        let mut conn = manager.open().map_err(|e| super::StoreError::Connect(e.to_string()))?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = stop.clone();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || run(&mut conn, &signal))
            .map_err(|e| super::StoreError::Connect(format!("checkpoint thread: {e}")))?;
        Ok(Self { stop })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let (stopped, wake) = &*self.stop;
        if let Ok(mut stopped) = stopped.lock() {
            *stopped = true;
        }
        wake.notify_all();
    }
}

fn run(conn: &mut DbConnection, stop: &(Mutex<bool>, Condvar)) {
    let (stopped, wake) = stop;
    let Ok(mut guard) = stopped.lock() else { return };
    loop {
        let Ok((next, _)) = wake.wait_timeout_while(guard, INTERVAL, |stopped| !*stopped) else { return };
        guard = next;
        if *guard {
            return;
        }
        // Busy (another checkpoint running) or failed: the next round tries again; the
        // log only grows meanwhile, nothing is lost.
        if let Err(e) = conn.batch_execute("PRAGMA wal_checkpoint(PASSIVE)") {
            tracing::debug!(error = %e, "WAL checkpoint did not run");
        }
    }
}
