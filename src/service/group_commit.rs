//! Group commit for audit entries that are not part of a write's own transaction (reads,
//! searches, denials, refused tokens) and for single-version writes (create, update,
//! patch, delete). Requests hand their entries, or their sealed version, to a writer
//! thread and wait; the writer stores everything waiting in one transaction, commits, and
//! then answers each request. An entry or a version is durable before its request goes on
//! (fail closed), yet concurrent requests share one commit (one lock acquisition, one
//! sync to disk) instead of paying for one each.
//!
//! The writes of a shared transaction are stored together; should one fail (a
//! constraint), the transaction is rolled back and stored again with each write in a
//! savepoint of its own, so that the failing write is rolled back alone and its request
//! gets its own error, while the others commit. A write's audit entry is appended only if its rows
//! were stored, in the same transaction; should the append or the commit fail, every
//! request of the batch fails and nothing of it is stored.
//!
//! Writers are kept apart, so that a log held up holds up only the logs sharing its
//! writer: the platform log (refused tokens with no trusted tenant, which anyone can send
//! in bulk) has a writer of its own, and the tenants' logs are spread over `tenant_writers`
//! writers by a fixed hash of the log name ([`shard_of`]). Each writer has its own thread,
//! connection and bounded queue, and its batches hold only its own logs, so on PostgreSQL
//! a batch waiting for one log's append lock (a long transaction of that tenant, a flood of
//! forged tokens) delays no tenant on another writer. A request whose entries fall to
//! several writers hands each its part and goes on once all have committed; if one fails,
//! the request fails (closed) and the parts that did commit stay recorded.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use crate::ledger::entry::Entry;
use crate::ledger::log::{PLATFORM_LOG, log_of};
use crate::service::ServiceError;
use crate::service::audit::append_in;
use crate::service::resources::Staged;
use crate::store::{Store, write_transaction};

/// Most entries one shared commit takes.
const MAX_BATCH: usize = 512;
/// Requests that may wait for one writer before its senders block.
const QUEUE: usize = 4096;

struct Job {
    entries: Vec<Entry>,
    /// Shared by the parts of one request that went to different writers; each answers once.
    done: SyncSender<bool>,
    /// The span of the request waiting, so that a failure is logged with its request id.
    span: tracing::Span,
}

/// A version to store: the answer is its change cursor, `None` when it was stale.
struct WriteJob {
    write: Staged,
    done: SyncSender<Result<Option<i64>, ServiceError>>,
    span: tracing::Span,
}

enum Message {
    Append(Job),
    Write(Box<WriteJob>),
    /// Commit what is queued, then end.
    Stop,
}

/// Hands entries to the writer threads; every clone feeds the same threads.
#[derive(Debug, Clone)]
pub struct LedgerWriter {
    /// One queue per writer: `lanes[0]` the platform log's, `lanes[1 + shard]` the tenant
    /// writers' ([`Self::lane_of`]).
    lanes: Arc<[SyncSender<Message>]>,
    /// Requests handed to the writers and not yet answered, over all writers.
    waiting: Arc<AtomicI64>,
}

/// The writer threads. [`Self::stop`] commits everything queued before it, ends every
/// thread and joins them. Dropping the handle instead leaves the threads running until the
/// last [`LedgerWriter`] is gone (commands that record a few entries and exit rely on that).
#[derive(Debug)]
pub struct WriterThread {
    writers: Vec<(SyncSender<Message>, std::thread::JoinHandle<()>)>,
}

/// The tenant writer of `log` among `shards`: FNV-1a (64-bit) of its name, modulo. A fixed
/// function rather than std's hasher, whose output may differ between Rust releases, so a
/// log keeps its writer and tests and benchmarks see the same spread on every run.
fn shard_of(log: &str, shards: usize) -> usize {
    let hash = log.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    (hash % shards.max(1) as u64) as usize
}

impl LedgerWriter {
    /// Starts the platform log's writer and `tenant_writers` (at least one) writers for the
    /// tenants' logs, each on a connection of its own: requests waiting for them hold pooled
    /// connections, so a writer must never need one of those.
    pub fn start(store: &Store, tenant_writers: usize) -> Result<(Self, WriterThread), std::io::Error> {
        let tenant_writers = tenant_writers.max(1);
        let mut lanes = Vec::with_capacity(1 + tenant_writers);
        let mut writers = Vec::with_capacity(1 + tenant_writers);
        // Should a later writer fail to start, the earlier ones see their queues closed
        // when `lanes` and `writers` drop, and end.
        for lane in 0..=tenant_writers {
            // Linux shows at most 15 bytes of a thread's name: "ledger-shard-63" fits.
            let name = if lane == 0 { "ledger-platform".to_owned() } else { format!("ledger-shard-{}", lane - 1) };
            let store = store.dedicated().map_err(std::io::Error::other)?;
            let (jobs, queue) = sync_channel::<Message>(QUEUE);
            let thread = std::thread::Builder::new().name(name).spawn(move || run(&store, &queue))?;
            lanes.push(jobs.clone());
            writers.push((jobs, thread));
        }
        Ok((Self { lanes: lanes.into(), waiting: Arc::new(AtomicI64::new(0)) }, WriterThread { writers }))
    }

    /// Requests waiting for their entries' shared commits (queued or being written), over
    /// all writers.
    pub fn queue_depth(&self) -> i64 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The queue of the writer that appends to `log`.
    fn lane_of(&self, log: &str) -> usize {
        if log == PLATFORM_LOG { 0 } else { 1 + shard_of(log, self.lanes.len() - 1) }
    }

    /// Appends `entries` and returns once they are committed, each log's in the order
    /// given. Fails if a writer it needs fails the commit or has stopped (its entries are
    /// not recorded then), so that the caller's access does not happen.
    pub fn record(&self, entries: Vec<Entry>) -> Result<(), ServiceError> {
        let mut parts: Vec<(usize, Vec<Entry>)> = Vec::new();
        for entry in entries {
            let lane = self.lane_of(log_of(&entry));
            match parts.iter_mut().find(|(l, _)| *l == lane) {
                Some((_, part)) => part.push(entry),
                None => parts.push((lane, vec![entry])),
            }
        }
        let expected = parts.len();
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let (done, answers) = sync_channel(expected);
        let span = tracing::Span::current();
        let mut sent = 0;
        for (lane, entries) in parts {
            let job = Job { entries, done: done.clone(), span: span.clone() };
            if self.lanes[lane].send(Message::Append(job)).is_ok() {
                sent += 1;
            }
        }
        // Each job holds a sender until it is answered, so a writer that ends without
        // answering ends the wait too.
        drop(done);
        let answered: Vec<bool> = answers.iter().take(sent).collect();
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        if answered.len() < expected {
            crate::service::audit::count_write_failure();
            return Err(ServiceError::ledger("group-commit writer stopped"));
        }
        if answered.iter().all(|committed| *committed) { Ok(()) } else { Err(ServiceError::ledger("group-commit writer")) }
    }
}

impl LedgerWriter {
    /// Stores a sealed version with its audit entry and change-log row in the next shared
    /// commit of its tenant's writer, and returns once that committed: the change cursor,
    /// or `None` when the version it replaces was no longer current (nothing was written).
    /// Fails with the write's own error if its rows could not be stored (the other writes
    /// of the batch commit), or with a ledger error if the shared commit failed.
    pub(in crate::service) fn write(&self, write: Staged) -> Result<Option<i64>, ServiceError> {
        let lane = self.lane_of(log_of(&write.entry));
        let (done, answer) = sync_channel(1);
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let sent = self.lanes[lane].send(Message::Write(Box::new(WriteJob { write, done, span: tracing::Span::current() }))).is_ok();
        let answered = if sent { answer.recv().ok() } else { None };
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        answered.unwrap_or_else(|| {
            crate::service::audit::count_write_failure();
            Err(ServiceError::ledger("group-commit writer stopped"))
        })
    }
}

impl WriterThread {
    /// Commits every entry queued before this call, then ends the writers and waits for
    /// them. Later [`LedgerWriter::record`] calls fail.
    pub fn stop(self) {
        // Every writer is told before any is waited for, so they drain their queues at
        // once. A writer holds its receiver until it has drained its queue, so a send only
        // fails if that thread is already gone.
        for (jobs, _) in &self.writers {
            let _ = jobs.send(Message::Stop);
        }
        for (_, thread) in self.writers {
            if thread.join().is_err() {
                tracing::error!("a ledger writer panicked");
            }
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
        let mut batch = Batch::default();
        let mut message = Some(first);
        while let Some(m) = message.take() {
            match m {
                Message::Append(job) => {
                    batch.count += job.entries.len();
                    batch.jobs.push(job);
                }
                Message::Write(job) => {
                    batch.count += 1;
                    batch.writes.push(*job);
                }
                Message::Stop => stopping = true,
            }
            if batch.count < MAX_BATCH {
                message = queue.try_recv().ok();
            }
        }
        if batch.count > 0 {
            commit(store, batch);
        }
    }
}

/// What one shared commit stores: entries of requests, and versions with their entries.
#[derive(Default)]
struct Batch {
    jobs: Vec<Job>,
    writes: Vec<WriteJob>,
    /// Entries in all, a version counting as its one entry.
    count: usize,
}

/// Stores the batch in one transaction and answers every request: its versions, then one
/// append of every entry: those of the versions stored and those of the entry jobs. The
/// versions go in together first, with no savepoint of their own (on SQLite a savepoint
/// copies every page before its first change in it; on PostgreSQL it costs round trips);
/// should that fail, the transaction is rolled back and the batch is stored again, each
/// version in a savepoint of its own, so that only the one that fails is rolled back and
/// answered with its own error. A failure is logged (its cause, never content) in the span
/// of each request it fails.
fn commit(store: &Store, batch: Batch) {
    let Batch { mut jobs, writes, count } = batch;
    let mut entries = Vec::with_capacity(count);
    let mut sizes = Vec::with_capacity(jobs.len());
    for job in &mut jobs {
        sizes.push(job.entries.len());
        entries.append(&mut job.entries);
    }
    let all: Vec<&Staged> = writes.iter().map(|w| &w.write).collect();
    let mut stored: Vec<Result<Option<i64>, ServiceError>> = Vec::with_capacity(writes.len());
    let result = match store.conn() {
        Ok(mut conn) => match attempt(&mut conn, &all, &mut entries, Versions::Together, &mut stored) {
            Err(Failed::Together) => attempt(&mut conn, &all, &mut entries, Versions::EachAlone, &mut stored),
            first => first,
        }
        .map_err(|failed| match failed {
            Failed::Batch(cause) => cause,
            Failed::Together => "the versions stored together failed".to_owned(),
        }),
        Err(e) => Err(format!("no connection: {e}")),
    };
    let requests = jobs.len() + writes.len();
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
    let mut stored = stored.into_iter();
    for job in writes {
        let outcome = match (&result, stored.next()) {
            // Its own failure, whatever became of the batch: it was rolled back alone.
            (_, Some(Err(e))) => {
                job.span.in_scope(|| tracing::warn!(error = %e, batch_requests = requests, "write refused in a group commit"));
                Err(e)
            }
            (Ok(()), Some(Ok(cursor))) => Ok(cursor),
            (Err(cause), _) => {
                job.span.in_scope(|| {
                    tracing::error!(error = %cause, batch_entries = count, batch_requests = requests, "write group commit failed");
                });
                Err(ServiceError::ledger("group commit"))
            }
            // Every version got an outcome unless the transaction failed first.
            (Ok(()), None) => Err(ServiceError::ledger("group commit")),
        };
        let _ = job.done.send(outcome);
    }
}

/// How one attempt stores a batch's versions.
#[derive(Clone, Copy)]
enum Versions {
    /// All in the transaction itself; any failure fails the attempt.
    Together,
    /// Each in a savepoint of its own; a failure is that version's outcome.
    EachAlone,
}

/// Why an attempt was rolled back.
enum Failed {
    /// Storing the versions together failed: store them again, each alone.
    Together,
    /// The batch itself failed (locks, the ledger append, the commit): every request fails.
    Batch(String),
}

impl From<diesel::result::Error> for Failed {
    fn from(e: diesel::result::Error) -> Self {
        Failed::Batch(e.to_string())
    }
}

/// One transaction storing `writes` as `how` says, then appending the entries of the
/// versions stored and `entries` (taken only once the versions are stored, so that they
/// are still there for a second attempt). `stored` receives each version's outcome.
fn attempt(
    conn: &mut crate::store::DbConnection,
    writes: &[&Staged],
    entries: &mut Vec<Entry>,
    how: Versions,
    stored: &mut Vec<Result<Option<i64>, ServiceError>>,
) -> Result<(), Failed> {
    stored.clear();
    write_transaction(conn, |tx| {
        // The logs' append locks first, as every write transaction takes them, then each
        // version's rows and its change-log row (under the change-log lock).
        let mut logs: Vec<&str> = writes.iter().map(|w| log_of(&w.entry)).collect();
        logs.sort_unstable();
        logs.dedup();
        for log in logs {
            crate::store::ledger::lock_for_append(tx, log)?;
        }
        match how {
            Versions::Together if !writes.is_empty() => match Staged::store_many(tx, writes) {
                Ok(cursors) => stored.extend(cursors.into_iter().map(Ok)),
                Err(_) => return Err(Failed::Together),
            },
            Versions::Together => {}
            Versions::EachAlone => stored.extend(writes.iter().map(|w| crate::store::savepoint(tx, |sp| w.store_in(sp)))),
        }
        let mut appended = Vec::with_capacity(stored.len() + entries.len());
        for (w, outcome) in writes.iter().zip(stored.iter()) {
            if let Ok(Some(_)) = outcome {
                appended.push(w.entry.clone());
            }
        }
        appended.append(entries);
        append_in(tx, appended).map_err(|e| Failed::Batch(e.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::entry::Actor;

    fn entry(request: usize) -> Entry {
        entry_of(Some("zz-tenant"), request)
    }

    /// An entry of `tenant`'s log, or of the platform log for `None`.
    fn entry_of(tenant: Option<&str>, request: usize) -> Entry {
        Entry {
            seq: 0,
            time: "2026-11-22T10:00:00.000Z".into(),
            actor: Actor { sub: Some("zz-tester".into()), roles: vec!["auditor".into()], fhir_user: None },
            tenant: tenant.map(str::to_owned),
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

    use crate::store::test_db::database;

    #[test]
    fn stop_commits_everything_queued_then_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let (url, _schema) = database(dir.path());
        let store = Store::open(&crate::store::DatabaseUrl::parse(&url).unwrap(), 2).unwrap();
        let (writer, thread) = LedgerWriter::start(&store, 4).unwrap();
        // Queued without waiting for the answers, so they are still in the queues (or in
        // batches being written) when the stop arrives behind them: a tenant's writer's
        // and the platform writer's.
        let mut answers = Vec::new();
        for request in 0..50 {
            for (tenant, log) in [(Some("zz-tenant"), "zz-tenant"), (None, PLATFORM_LOG)] {
                let (done, answer) = sync_channel(1);
                let job = Job { entries: vec![entry_of(tenant, request), entry_of(tenant, request)], done, span: tracing::Span::none() };
                writer.lanes[writer.lane_of(log)].send(Message::Append(job)).unwrap();
                answers.push(answer);
            }
        }
        thread.stop();
        assert!(answers.iter().all(|a| a.recv() == Ok(true)), "every queued job is answered as committed");
        let mut conn = store.conn().unwrap();
        assert_eq!(crate::store::ledger::size(&mut conn, "zz-tenant").unwrap(), 100);
        assert_eq!(crate::store::ledger::size(&mut conn, PLATFORM_LOG).unwrap(), 100);
        assert!(matches!(writer.record(vec![entry(99)]), Err(ServiceError::Ledger { .. })), "a stopped writer refuses");
        assert!(matches!(writer.record(vec![entry_of(None, 99)]), Err(ServiceError::Ledger { .. })), "all of them");
        assert_eq!(crate::store::ledger::size(&mut conn, "zz-tenant").unwrap(), 100);
        assert_eq!(crate::store::ledger::size(&mut conn, PLATFORM_LOG).unwrap(), 100);
    }

    #[test]
    fn a_request_spanning_writers_returns_once_each_log_holds_its_entries_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (url, _schema) = database(dir.path());
        let store = Store::open(&crate::store::DatabaseUrl::parse(&url).unwrap(), 2).unwrap();
        let (writer, thread) = LedgerWriter::start(&store, 4).unwrap();
        let tenants: Vec<Option<String>> = (0..8).map(|t| Some(format!("zz-tenant-{t}"))).chain([None]).collect();
        let lanes: std::collections::BTreeSet<usize> =
            tenants.iter().map(|t| writer.lane_of(t.as_deref().unwrap_or(PLATFORM_LOG))).collect();
        assert!(lanes.len() >= 3, "the logs fall to several writers: {lanes:?}");
        let entries: Vec<Entry> = (0..45).map(|i| entry_of(tenants[i % tenants.len()].as_deref(), i)).collect();
        writer.record(entries).unwrap();
        let mut conn = store.conn().unwrap();
        for (t, tenant) in tenants.iter().enumerate() {
            let log = tenant.as_deref().unwrap_or(PLATFORM_LOG);
            let rows = crate::store::ledger::entries(&mut conn, log, 0, 100).unwrap();
            let got: Vec<serde_json::Value> =
                rows.iter().map(|r| serde_json::from_str::<serde_json::Value>(&r.leaf).unwrap()["requestId"].clone()).collect();
            let expected: Vec<serde_json::Value> = (t..45).step_by(tenants.len()).map(|i| format!("zz-request-{i}").into()).collect();
            assert_eq!(got, expected, "{log}: every entry, in the order given");
        }
        drop(conn);
        thread.stop();
    }

    /// A create of `id` (a Practitioner of `zz-tenant`) staged for the writer.
    fn staged_create(id: &str, request: usize) -> Staged {
        let at = chrono::Utc::now().naive_utc();
        Staged {
            row: crate::store::resources::CurrentRow {
                tenant: "zz-tenant".into(),
                resource_type: "Practitioner".into(),
                id: id.into(),
                version_id: 1,
                deleted: 0,
                last_updated: at,
                patient_id: None,
                content: "zz-sealed".into(),
            },
            expected: None,
            tokens: vec![("name", format!("zz-token-{id}"))],
            op: crate::domain::ChangeOp::Create,
            entry: entry(request),
        }
    }

    #[test]
    fn a_write_that_fails_in_a_shared_commit_fails_alone_and_the_others_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (url, _schema) = database(dir.path());
        let store = Store::open(&crate::store::DatabaseUrl::parse(&url).unwrap(), 2).unwrap();
        let mut conn = store.conn().unwrap();
        let mut batch = Batch::default();
        let mut write_answers = Vec::new();
        for (request, id) in ["zz-first", "zz-failing", "zz-last"].into_iter().enumerate() {
            let mut write = staged_create(id, request + 1);
            if id == "zz-failing" {
                // Its rows and first token go in, then the second token violates the
                // tokens' primary key: the savepoint must take back everything before it.
                write.tokens = vec![("name", "zz-token-zz-failing".into()), ("name", "zz-token-zz-failing".into())];
            }
            let (done, answer) = sync_channel(1);
            batch.writes.push(WriteJob { write, done, span: tracing::Span::none() });
            batch.count += 1;
            write_answers.push(answer);
        }
        let (done, read_answer) = sync_channel(1);
        batch.jobs.push(Job { entries: vec![entry(9)], done, span: tracing::Span::none() });
        batch.count += 1;
        commit(&store, batch);

        let answers: Vec<Result<Option<i64>, ServiceError>> = write_answers.iter().map(|a| a.recv().unwrap()).collect();
        assert!(matches!(answers[1], Err(ServiceError::Store(_))), "the failing write gets its own error: {:?}", answers[1]);
        let (Ok(Some(first)), Ok(Some(last))) = (&answers[0], &answers[2]) else { panic!("the others commit: {answers:?}") };
        assert_eq!(*last, first + 1, "their change cursors follow each other, nothing allocated to the failed one");
        assert_eq!(read_answer.recv(), Ok(true), "the entries of the batch commit too");
        for id in ["zz-first", "zz-last"] {
            assert!(crate::store::resources::find_current(&mut conn, "zz-tenant", "Practitioner", id).unwrap().is_some(), "{id} stored");
        }
        assert!(crate::store::resources::find_current(&mut conn, "zz-tenant", "Practitioner", "zz-failing").unwrap().is_none());
        assert!(crate::store::resources::find_version(&mut conn, "zz-tenant", "Practitioner", "zz-failing", 1).unwrap().is_none());
        let ids: Vec<String> =
            crate::store::changes::since(&mut conn, "zz-tenant", 0, 10).unwrap().into_iter().map(|c| c.resource_id).collect();
        assert_eq!(ids, ["zz-first", "zz-last"], "one change-log row per stored write, in commit order");
        // The ledger holds the entries of the stored writes and of the read, not the failed one's.
        let requests: Vec<serde_json::Value> = crate::store::ledger::entries(&mut conn, "zz-tenant", 0, 10)
            .unwrap()
            .iter()
            .map(|r| serde_json::from_str::<serde_json::Value>(&r.leaf).unwrap()["requestId"].clone())
            .collect();
        assert_eq!(requests, ["zz-request-1", "zz-request-3", "zz-request-9"]);
        let failed_tokens: i64 = {
            use crate::store::schema::search_tokens;
            use diesel::prelude::*;
            search_tokens::table.filter(search_tokens::token.eq("zz-token-zz-failing")).count().get_result(&mut conn).unwrap()
        };
        assert_eq!(failed_tokens, 0, "nothing of the failed write is left");

        // A batch where nothing fails (on PostgreSQL stored together in one go), with a
        // stale update among the creates: that one writes nothing and gets `None`.
        let mut batch = Batch::default();
        let mut answers = Vec::new();
        let mut stale = staged_create("zz-first", 20);
        stale.row.version_id = 6;
        stale.expected = Some(5);
        stale.op = crate::domain::ChangeOp::Update;
        for write in [staged_create("zz-second", 21), stale, staged_create("zz-third", 22)] {
            let (done, answer) = sync_channel(1);
            batch.writes.push(WriteJob { write, done, span: tracing::Span::none() });
            batch.count += 1;
            answers.push(answer);
        }
        commit(&store, batch);
        let answers: Vec<Result<Option<i64>, ServiceError>> = answers.iter().map(|a| a.recv().unwrap()).collect();
        let (Ok(Some(second)), Ok(None), Ok(Some(third))) = (&answers[0], &answers[1], &answers[2]) else { panic!("{answers:?}") };
        assert_eq!((*second, *third), (last + 1, last + 2), "cursors continue in batch order");
        let ids: Vec<String> =
            crate::store::changes::since(&mut conn, "zz-tenant", 0, 10).unwrap().into_iter().map(|c| c.resource_id).collect();
        assert_eq!(ids, ["zz-first", "zz-last", "zz-second", "zz-third"]);
        let current = crate::store::resources::find_current(&mut conn, "zz-tenant", "Practitioner", "zz-first").unwrap().unwrap();
        assert_eq!(current.version_id, 1, "the stale update wrote nothing");
        let size = crate::store::ledger::size(&mut conn, "zz-tenant").unwrap();
        assert_eq!(size, 5, "entries of the two creates joined the ledger, not the stale update's");
    }

    #[test]
    fn logs_are_spread_over_the_tenant_writers_by_a_fixed_hash() {
        // FNV-1a 64-bit test vectors: the spread is the same in every build and process.
        assert_eq!(shard_of("a", usize::MAX) as u64, 0xaf63_dc4c_8601_ec8c);
        assert_eq!(shard_of("foobar", usize::MAX) as u64, 0x8594_4171_f739_67e8);
        let mut counts = [0usize; 4];
        for t in 0..1000 {
            counts[shard_of(&format!("clinic-{t}"), 4)] += 1;
        }
        assert!(counts.iter().all(|n| (200..=300).contains(n)), "{counts:?}");
        assert_eq!(shard_of("clinic-a", 1), 0);
        // tests/api/tenant_ledgers.rs holds one of these tenants' logs and expects the other
        // to go on: with the default four writers on PostgreSQL they must not share one.
        assert_ne!(shard_of("clinic-a", 4), shard_of("clinic-b", 4));
    }
}
