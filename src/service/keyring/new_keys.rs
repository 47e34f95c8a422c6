//! Group commit for new data keys. Every new owner (each created Patient) needs a data key
//! committed in the key store before the version sealed under it is written. Inserting
//! each in a transaction of its own makes concurrent creates queue for the key store's
//! write lock and pay one sync to disk each; here requests hand their wrapped key to one
//! writer thread, which inserts everything waiting in one transaction (each row in a
//! savepoint of its own, so one key that cannot be inserted fails alone), commits, and
//! answers each request once the key is durable. A job may carry several keys: a refill
//! of the new owners' reserve (`super::KeyRing::reserve`) commits them all at once.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use crate::service::ServiceError;
use crate::store::keys::{self as rows, DataKeyRow};
use crate::store::{Store, write_transaction};

/// Most keys one shared commit takes (a job is never split).
const MAX_BATCH: usize = 256;
/// Requests that may wait for the writer before their senders block.
const QUEUE: usize = 1024;

/// How inserting a key ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Inserted {
    /// The key is durable in the key store.
    Yes,
    /// The owner already had a key (another writer created it first); nothing was written.
    Exists,
}

type Answer = Result<Inserted, ServiceError>;

struct Job {
    rows: Vec<DataKeyRow>,
    done: SyncSender<Vec<Answer>>,
}

/// Hands new data keys to the key store's writer thread, which ends once this is dropped.
pub(super) struct NewKeys {
    jobs: SyncSender<Job>,
}

impl NewKeys {
    /// Starts the writer on a connection of its own to the key store.
    pub(super) fn start(store: &Store) -> Result<Self, ServiceError> {
        let store = store.dedicated()?;
        let (jobs, queue) = sync_channel::<Job>(QUEUE);
        std::thread::Builder::new()
            .name("keystore-writer".into())
            .spawn(move || run(&store, &queue))
            .map_err(|_| ServiceError::keys("key store writer"))?;
        Ok(Self { jobs })
    }

    /// Inserts `row` in the next shared commit and returns once it committed.
    pub(super) fn insert(&self, row: DataKeyRow) -> Answer {
        self.insert_all(vec![row]).pop().unwrap_or(Err(ServiceError::keys("key store writer stopped")))
    }

    /// Inserts `rows` in the next shared commit, each in a savepoint of its own, and
    /// returns once they committed: one answer per row, in order.
    pub(super) fn insert_all(&self, rows: Vec<DataKeyRow>) -> Vec<Answer> {
        let count = rows.len();
        let stopped = || (0..count).map(|_| Err(ServiceError::keys("key store writer stopped"))).collect();
        let (done, answer) = sync_channel(1);
        if self.jobs.send(Job { rows, done }).is_err() {
            return stopped();
        }
        answer.recv().unwrap_or_else(|_| stopped())
    }
}

fn run(store: &Store, queue: &Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut keys = first.rows.len();
        let mut batch = vec![first];
        while keys < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => {
                    keys += job.rows.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        commit(store, batch);
    }
}

fn commit(store: &Store, batch: Vec<Job>) {
    let mut outcomes: Vec<Answer> = Vec::new();
    let result = store.conn().map_err(ServiceError::from).and_then(|mut conn| {
        write_transaction(&mut conn, |tx| {
            for row in batch.iter().flat_map(|job| &job.rows) {
                outcomes.push(match crate::store::savepoint(tx, |sp| rows::insert_data_key(sp, row)) {
                    Ok(()) => Ok(Inserted::Yes),
                    Err(e) if crate::store::is_unique_violation(&e) => Ok(Inserted::Exists),
                    Err(e) => Err(ServiceError::from(e)),
                });
            }
            Ok::<_, ServiceError>(())
        })
    });
    if let Err(e) = &result {
        tracing::error!(error = %e, jobs = batch.len(), "key store group commit failed");
    }
    let mut outcomes = outcomes.into_iter();
    for job in batch {
        let answers = job
            .rows
            .iter()
            .map(|_| match (&result, outcomes.next()) {
                (Ok(()), Some(outcome)) => outcome,
                _ => Err(ServiceError::keys("key store")),
            })
            .collect();
        let _ = job.done.send(answers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_row(owner: &str, key_id: i64) -> DataKeyRow {
        DataKeyRow {
            key_id,
            tenant: "zz-tenant".into(),
            owner: owner.into(),
            wrapped: Some("zz-wrapped".into()),
            created_at: chrono::Utc::now().naive_utc(),
            destroyed_at: None,
            destroyed_reason: None,
        }
    }

    #[test]
    fn keys_of_one_commit_are_inserted_each_in_its_own_savepoint() {
        let dir = tempfile::tempdir().unwrap();
        let (url, _schema) = crate::store::test_db::database(dir.path());
        let store = Store::open_keystore(&crate::store::DatabaseUrl::parse(&url).unwrap(), 2).unwrap();
        let mut batch = Vec::new();
        let mut answers = Vec::new();
        // The second key of Patient/a comes too late: the owner has its key, and the
        // batch goes on past the refused row.
        // One job of two rows and one of one: answers per row, per job.
        for job_rows in [vec![key_row("Patient/a", 11), key_row("Patient/a", 12)], vec![key_row("Patient/b", 13)]] {
            let (done, answer) = sync_channel(1);
            batch.push(Job { rows: job_rows, done });
            answers.push(answer);
        }
        commit(&store, batch);
        let got: Vec<Vec<Inserted>> = answers.iter().map(|a| a.recv().unwrap().into_iter().map(Result::unwrap).collect()).collect();
        assert_eq!(got, [vec![Inserted::Yes, Inserted::Exists], vec![Inserted::Yes]]);
        let mut conn = store.conn().unwrap();
        let rows = rows::find_data_keys(&mut conn, "zz-tenant", &["Patient/a".into(), "Patient/b".into()]).unwrap();
        let mut ids: Vec<(String, i64)> = rows.into_iter().map(|r| (r.owner, r.key_id)).collect();
        ids.sort();
        assert_eq!(ids, [("Patient/a".to_owned(), 11), ("Patient/b".to_owned(), 13)], "the first key of each owner, durable");

        // Through the writer thread: the answer comes once the key is committed.
        let writer = NewKeys::start(&store).unwrap();
        assert_eq!(writer.insert(key_row("Patient/c", 14)).unwrap(), Inserted::Yes);
        assert_eq!(writer.insert(key_row("Patient/c", 15)).unwrap(), Inserted::Exists);
        assert_eq!(rows::find_data_keys(&mut conn, "zz-tenant", &["Patient/c".into()]).unwrap()[0].key_id, 14);
    }
}
