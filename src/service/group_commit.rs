//! Group commit for audit entries that are not part of a write's own transaction (reads,
//! searches, denials, refused tokens). Requests hand their entries to one writer thread
//! and wait; the writer appends everything waiting in one transaction, commits, and then
//! answers each request. An entry is durable before its request goes on (fail closed),
//! yet concurrent requests share one commit instead of paying for one each.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
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
    /// The span of the request waiting, so that a failure is logged with its request id.
    span: tracing::Span,
}

enum Message {
    Append(Job),
    /// Commit what is queued, then end.
    Stop,
}

/// Hands entries to the writer thread; every clone feeds the same thread.
#[derive(Debug, Clone)]
pub struct LedgerWriter {
    jobs: SyncSender<Message>,
    /// Requests handed to the writer and not yet answered.
    waiting: Arc<AtomicI64>,
}

/// The writer thread. [`Self::stop`] commits everything queued before it, ends the thread
/// and joins it. Dropping the handle instead leaves the thread running until the last
/// [`LedgerWriter`] is gone (commands that record a few entries and exit rely on that).
#[derive(Debug)]
pub struct WriterThread {
    jobs: SyncSender<Message>,
    thread: std::thread::JoinHandle<()>,
}

impl LedgerWriter {
    /// Starts the writer on a connection of its own: requests waiting for it hold pooled
    /// connections, so it must never need one of those.
    pub fn start(store: &Store) -> Result<(Self, WriterThread), std::io::Error> {
        let store = store.dedicated().map_err(std::io::Error::other)?;
        let (jobs, queue) = sync_channel::<Message>(QUEUE);
        let thread = std::thread::Builder::new().name("ledger-writer".into()).spawn(move || run(&store, &queue))?;
        Ok((Self { jobs: jobs.clone(), waiting: Arc::new(AtomicI64::new(0)) }, WriterThread { jobs, thread }))
    }

    /// Requests waiting for their entries' shared commit (queued or being written).
    pub fn queue_depth(&self) -> i64 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Appends `entries` and returns once they are committed. Fails once the writer has
    /// stopped: nothing is recorded then, so the caller's access does not happen.
    pub fn record(&self, entries: Vec<Entry>) -> Result<(), ServiceError> {
        let (done, answer) = sync_channel(1);
        let job = Job { entries, done, span: tracing::Span::current() };
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let answered = match self.jobs.send(Message::Append(job)) {
            Ok(()) => answer.recv().ok(),
            Err(_) => None,
        };
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        match answered {
            Some(true) => Ok(()),
            Some(false) => Err(ServiceError::ledger("group-commit writer")),
            None => {
                crate::service::audit::count_write_failure();
                Err(ServiceError::ledger("group-commit writer stopped"))
            }
        }
    }
}

impl WriterThread {
    /// Commits every entry queued before this call, then ends the writer and waits for it.
    /// Later [`LedgerWriter::record`] calls fail.
    pub fn stop(self) {
        // The writer holds the receiver until it has drained the queue, so this send only
        // fails if the thread is already gone.
        let _ = self.jobs.send(Message::Stop);
        if self.thread.join().is_err() {
            tracing::error!("the ledger writer panicked");
        }
    }
}

fn run(store: &Store, queue: &Receiver<Message>) {
    let mut stopping = false;
    loop {
        // Once stopping, whatever is still queued is committed, and the thread ends when
        // the queue is empty (dropping the receiver refuses later senders).
        let next = if stopping { queue.try_recv().ok() } else { queue.recv().ok() };
        let Some(first) = next else { return };
        let mut jobs = Vec::new();
        let mut count = 0;
        let mut message = Some(first);
        while let Some(m) = message.take() {
            match m {
                Message::Append(job) => {
                    count += job.entries.len();
                    jobs.push(job);
                }
                Message::Stop => stopping = true,
            }
            if count < MAX_BATCH {
                message = queue.try_recv().ok();
            }
        }
        if !jobs.is_empty() {
            commit(store, jobs, count);
        }
    }
}

/// Appends the jobs' entries in one transaction and answers every job. A failure is
/// logged (its cause, never entry content) in the span of each request it fails.
fn commit(store: &Store, mut jobs: Vec<Job>, count: usize) {
    let mut entries = Vec::with_capacity(count);
    let mut sizes = Vec::with_capacity(jobs.len());
    for job in &mut jobs {
        sizes.push(job.entries.len());
        entries.append(&mut job.entries);
    }
    let result = match store.conn() {
        Ok(mut conn) => write_transaction(&mut conn, |tx| append_in(tx, entries)).map_err(|e| e.to_string()),
        Err(e) => Err(format!("no connection: {e}")),
    };
    let requests = jobs.len();
    if result.is_err() {
        crate::service::audit::count_write_failure();
    }
    for (job, entries) in jobs.into_iter().zip(sizes) {
        if let Err(cause) = &result {
            job.span.in_scope(|| {
                tracing::error!(error = %cause, entries, batch_entries = count, batch_requests = requests, "ledger group commit failed");
            });
        }
        let _ = job.done.send(result.is_ok());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::entry::Actor;

    fn entry(request: usize) -> Entry {
        Entry {
            seq: 0,
            time: "2026-11-22T10:00:00.000Z".into(),
            actor: Actor { sub: Some("zz-tester".into()), roles: vec!["auditor".into()], fhir_user: None },
            tenant: Some("zz-tenant".into()),
            action: crate::domain::AuditAction::Read,
            resource: None,
            patient: None,
            outcome: crate::domain::AuditOutcome::Success,
            purpose_of_use: None,
            break_glass: None,
            client: None,
            request_id: Some(format!("zz-request-{request}")),
        }
    }

    /// A fresh schema on the PostgreSQL named by CAREVAULT_TEST_POSTGRES_URL, dropped on drop.
    struct PgSchema {
        admin_url: String,
        name: String,
    }

    impl Drop for PgSchema {
        fn drop(&mut self) {
            use diesel::Connection;
            use diesel::connection::SimpleConnection;
            if let Ok(mut conn) = diesel::PgConnection::establish(&self.admin_url) {
                let _ = conn.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
            }
        }
    }

    /// The backend under test: PostgreSQL when CAREVAULT_TEST_POSTGRES_URL is set, else a
    /// SQLite file in `dir`.
    fn database(dir: &std::path::Path) -> (String, Option<PgSchema>) {
        use diesel::Connection;
        use diesel::connection::SimpleConnection;
        match std::env::var("CAREVAULT_TEST_POSTGRES_URL") {
            Ok(admin_url) if !admin_url.is_empty() => {
                let name = format!("t_{}", uuid::Uuid::new_v4().simple());
                diesel::PgConnection::establish(&admin_url).unwrap().batch_execute(&format!("CREATE SCHEMA {name}")).unwrap();
                let sep = if admin_url.contains('?') { '&' } else { '?' };
                let url = format!("{admin_url}{sep}options=-c%20search_path%3D{name}");
                (url, Some(PgSchema { admin_url, name }))
            }
            _ => (format!("sqlite://{}", dir.join("cv.db").display()), None),
        }
    }

    #[test]
    fn stop_commits_everything_queued_then_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let (url, _schema) = database(dir.path());
        let store = Store::open(&crate::store::DatabaseUrl::parse(&url).unwrap(), 2).unwrap();
        let (writer, thread) = LedgerWriter::start(&store).unwrap();
        // Queued without waiting for the answers, so they are still in the queue (or in a
        // batch being written) when the stop arrives behind them.
        let mut answers = Vec::new();
        for request in 0..50 {
            let (done, answer) = sync_channel(1);
            let job = Job { entries: vec![entry(request), entry(request)], done, span: tracing::Span::none() };
            writer.jobs.send(Message::Append(job)).unwrap();
            answers.push(answer);
        }
        thread.stop();
        assert!(answers.iter().all(|a| a.recv() == Ok(true)), "every queued job is answered as committed");
        let mut conn = store.conn().unwrap();
        assert_eq!(crate::store::ledger::size(&mut conn, "zz-tenant").unwrap(), 100);
        assert!(matches!(writer.record(vec![entry(99)]), Err(ServiceError::Ledger { .. })), "a stopped writer refuses");
        assert_eq!(crate::store::ledger::size(&mut conn, "zz-tenant").unwrap(), 100);
    }
}
