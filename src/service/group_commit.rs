//! Group commit for audit entries that are not part of a write's own transaction (reads,
//! searches, denials, refused tokens). Requests hand their entries to one writer thread
//! and wait; the writer appends everything waiting in one transaction, commits, and then
//! answers each request. An entry is durable before its request goes on (fail closed),
//! yet concurrent requests share one commit instead of paying for one each.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use crate::ledger::entry::Entry;
use crate::service::ServiceError;
use crate::service::audit::append_in;
use crate::store::{Store, write_transaction};

/// Most entries one shared commit takes.
const MAX_BATCH: usize = 512;
/// Requests that may wait for the writer before senders block.
const QUEUE: usize = 4096;

struct Job {
    entries: Vec<Entry>,
    done: SyncSender<bool>,
}

/// Handle to the writer thread; the thread ends when the last handle is dropped.
#[derive(Debug, Clone)]
pub struct LedgerWriter {
    jobs: SyncSender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("entries", &self.entries.len()).finish()
    }
}

impl LedgerWriter {
    /// Starts the writer on a connection of its own: requests waiting for it hold pooled
    /// connections, so it must never need one of those.
    pub fn start(store: &Store) -> Result<Self, std::io::Error> {
        let store = store.dedicated().map_err(std::io::Error::other)?;
        let (jobs, queue) = sync_channel::<Job>(QUEUE);
        std::thread::Builder::new().name("ledger-writer".into()).spawn(move || run(&store, &queue))?;
        Ok(Self { jobs })
    }

    /// Appends `entries` and returns once they are committed.
    pub fn record(&self, entries: Vec<Entry>) -> Result<(), ServiceError> {
        let (done, answer) = sync_channel(1);
        self.jobs.send(Job { entries, done }).map_err(ServiceError::ledger_by("group-commit writer"))?;
        match answer.recv() {
            Ok(true) => Ok(()),
            _ => Err(ServiceError::ledger("group-commit writer")),
        }
    }
}

fn run(store: &Store, queue: &Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut jobs = vec![first];
        let mut count = jobs[0].entries.len();
        while count < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => {
                    count += job.entries.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let entries: Vec<Entry> = jobs.iter().flat_map(|j| j.entries.iter().cloned()).collect();
        let committed = match store.conn() {
            Ok(mut conn) => write_transaction(&mut conn, |tx| append_in(tx, entries)).is_ok(),
            Err(e) => {
                tracing::error!(error = %e, "ledger writer has no connection");
                false
            }
        };
        for job in jobs {
            let _ = job.done.send(committed);
        }
    }
}
