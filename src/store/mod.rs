//! The only place with SQL. One connection enum over SQLite and PostgreSQL, an r2d2 pool
//! whose backend is chosen from the URL scheme, embedded migrations per backend, the few
//! backend-specific functions (connection set-up, write transactions, the ledger's append
//! lock, migration lock) fenced in here, and the private file modes of what it stores
//! (`files`). Row structs hold strings; the service parses them into domain types at this
//! edge. May use `domain`.
//!
//! Reads of one row (by primary key, or an aggregate) use `get_result`, never `first`:
//! `first` binds `LIMIT 1` as a parameter, and SQLite recompiles a statement whose LIMIT
//! parameter was bound again on every execution (it plans with the bound value), which
//! cost a read about half its time in the statement cache's recompiles.

/// Runs `$body` with `$c` bound to the connection's own backend connection. diesel's derived
/// `MultiConnection` wraps every query in a serialized form that has no statement cached by
/// type, so the query's SQL text is built again on every call; on the backend's own
/// connection a query of a fixed shape is looked up by its type. For the hottest reads
/// (a record's current row, its owner's data key, the ledger's size and sibling hashes).
macro_rules! on_backend {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::store::DbConnection::Sqlite($c) => $body,
            $crate::store::DbConnection::Postgres($c) => $body,
        }
    };
}

pub mod changes;
pub mod files;
pub mod keys;
pub mod ledger;
pub mod resources;
pub mod retention;
pub mod schema;
pub mod sync;
#[cfg(test)]
pub(crate) mod test_db;
mod wal;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::prelude::*;
use diesel::r2d2::R2D2Connection;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
const KEYSTORE_SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/keystore/sqlite");
const KEYSTORE_POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/keystore/postgres");

/// Which database a [`Store`] opens: the records, or the key store (its own migrations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    Records,
    KeyStore,
}

/// A connection to either backend. Queries written against it run on both.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Sqlite(diesel::SqliteConnection),
    Postgres(diesel::PgConnection),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database URL must start with sqlite:// or postgres:// (or postgresql://)")]
    UrlScheme,
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    #[error("database pool: {0}")]
    Pool(#[from] r2d2::Error),
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("database migration failed: {0}")]
    Migration(String),
    #[error("cannot prepare the data directory: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// True when the database was merely busy or out of connections: worth a 503, not a 500.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Pool(_) | StoreError::Connect(_))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A parsed `CAREVAULT_DATABASE_URL`. `Debug`/`Display` never show a password.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl DatabaseUrl {
    pub fn parse(raw: &str) -> Result<Self, StoreError> {
        if let Some(path) = raw.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(StoreError::UrlScheme);
            }
            Ok(Self::Sqlite(PathBuf::from(path)))
        } else if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            Ok(Self::Postgres(raw.to_owned()))
        } else {
            Err(StoreError::UrlScheme)
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Self::Sqlite(_) => Backend::Sqlite,
            Self::Postgres(_) => Backend::Postgres,
        }
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            Self::Postgres(url) => {
                // postgres://user:secret@host/db → postgres://user:***@host/db
                let shown = match (url.find("://"), url.rfind('@')) {
                    (Some(s), Some(at)) if url[s + 3..at].contains(':') => {
                        let colon = s + 3 + url[s + 3..at].find(':').unwrap_or(0);
                        format!("{}:***{}", &url[..colon], &url[at..])
                    }
                    _ => url.clone(),
                };
                f.write_str(&shown)
            }
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// Opens connections for the pool, choosing the backend from the URL scheme so a failure
/// reports the real cause.
#[derive(Debug)]
pub struct Manager {
    url: DatabaseUrl,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error(transparent)]
    Connection(#[from] diesel::ConnectionError),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
}

impl Manager {
    fn open(&self) -> Result<DbConnection, ConnError> {
        match &self.url {
            DatabaseUrl::Sqlite(path) => {
                let mut conn = diesel::SqliteConnection::establish(&path.to_string_lossy())?;
                // WAL for concurrent readers; FULL sync so a committed audit entry survives
                // power loss; checkpoints by a thread of the store's, not inside commits (`wal`);
                // savepoints' journals in memory, not in a temp file per transaction (a file
                // created, written page by page and unlinked on every write commit, holding
                // copies of the database's pages outside its directory).
                conn.batch_execute(
                    "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; \
                     PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA secure_delete = ON; \
                     PRAGMA wal_autocheckpoint = 0; PRAGMA temp_store = MEMORY;",
                )?;
                Ok(DbConnection::Sqlite(conn))
            }
            DatabaseUrl::Postgres(url) => {
                let mut conn = diesel::PgConnection::establish(url)?;
                // Plan every statement with its actual parameters. diesel keeps statements
                // prepared per connection, and PostgreSQL's generic plans for `= ANY($n)`
                // batches scan a tenant's whole key range (30 ms against 1.4 ms per feed
                // batch at 78,000 versions; see BENCHMARKS.md). Our statements plan in
                // microseconds, so custom plans cost little.
                conn.batch_execute("SET TIME ZONE 'UTC'; SET plan_cache_mode = force_custom_plan")?;
                Ok(DbConnection::Postgres(conn))
            }
        }
    }
}

impl r2d2::ManageConnection for Manager {
    type Connection = DbConnection;
    type Error = ConnError;

    fn connect(&self) -> Result<DbConnection, ConnError> {
        self.open()
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), ConnError> {
        Ok(conn.ping().map(|_| ())?)
    }

    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        conn.is_broken()
    }
}

pub type PooledConn = r2d2::PooledConnection<Manager>;

/// Whether the pool runs `SELECT 1` on a connection before handing it out. On PostgreSQL
/// it does: a connection the server closed while it sat idle is replaced rather than
/// failing its request (diesel only reports a connection broken by a failed transaction).
/// A SQLite connection is a file opened in this process and cannot go away, so the check
/// would only cost every checkout a statement.
fn validate_on_check_out(url: &DatabaseUrl) -> bool {
    matches!(url, DatabaseUrl::Postgres(_))
}

/// The connection pool and the backend behind it.
#[derive(Clone)]
pub struct Store {
    pool: r2d2::Pool<Manager>,
    backend: Backend,
    url: DatabaseUrl,
    /// SQLite: checkpoints the write-ahead log while any store over the database is open.
    checkpointer: Option<std::sync::Arc<wal::Checkpointer>>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("backend", &self.backend).finish_non_exhaustive()
    }
}

/// Pool usage for `/metrics`.
#[derive(Debug, Clone, Copy)]
pub struct PoolState {
    pub connections: u32,
    pub idle: u32,
    pub max: u32,
}

impl Store {
    /// Connects (failing at once with the real cause if the database is unreachable),
    /// applies pending migrations and builds the pool.
    pub fn open(url: &DatabaseUrl, pool_size: u32) -> Result<Self, StoreError> {
        Self::open_database(url, pool_size, Database::Records)
    }

    /// [`Self::open`] for the key store.
    pub fn open_keystore(url: &DatabaseUrl, pool_size: u32) -> Result<Self, StoreError> {
        Self::open_database(url, pool_size, Database::KeyStore)
    }

    fn open_database(url: &DatabaseUrl, pool_size: u32, database: Database) -> Result<Self, StoreError> {
        if let DatabaseUrl::Sqlite(path) = url {
            files::prepare_sqlite(path)?;
        }
        let manager = Manager { url: url.clone() };
        let mut first = manager.open().map_err(|e| StoreError::Connect(e.to_string()))?;
        match database {
            Database::Records => run_migrations(&mut first)?,
            Database::KeyStore => run_keystore_migrations(&mut first)?,
        };
        drop(first);
        let checkpointer = match url {
            DatabaseUrl::Sqlite(_) => Some(std::sync::Arc::new(wal::Checkpointer::start(&manager)?)),
            DatabaseUrl::Postgres(_) => None,
        };
        let pool = r2d2::Pool::builder()
            .max_size(pool_size.max(1))
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(10))
            .test_on_check_out(validate_on_check_out(url))
            .build(manager)?;
        Ok(Self { pool, backend: url.backend(), url: url.clone(), checkpointer })
    }

    /// A separate one-connection store over the same database, for a worker that must
    /// never wait behind requests holding connections of the shared pool.
    pub fn dedicated(&self) -> Result<Self, StoreError> {
        let pool = r2d2::Pool::builder()
            .max_size(1)
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(10))
            .test_on_check_out(validate_on_check_out(&self.url))
            .build(Manager { url: self.url.clone() })?;
        Ok(Self { pool, backend: self.backend, url: self.url.clone(), checkpointer: self.checkpointer.clone() })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn conn(&self) -> Result<PooledConn, StoreError> {
        Ok(self.pool.get()?)
    }

    /// A round trip to the database, for readiness.
    pub fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        conn.batch_execute("SELECT 1")?;
        Ok(())
    }

    /// A connection listening for change-log notifications: PostgreSQL only (`None` on
    /// SQLite, whose other writers are seen by polling the change log).
    pub fn listener(&self) -> Result<Option<changes::Listener>, StoreError> {
        match &self.url {
            DatabaseUrl::Sqlite(_) => Ok(None),
            DatabaseUrl::Postgres(url) => {
                let conn = diesel::PgConnection::establish(url).map_err(|e| StoreError::Connect(e.to_string()))?;
                Ok(Some(changes::Listener::start(conn)?))
            }
        }
    }

    pub fn state(&self) -> PoolState {
        let s = self.pool.state();
        PoolState { connections: s.connections, idle: s.idle_connections, max: self.pool.max_size() }
    }
}

/// True when an insert lost a race on a unique key (a concurrent writer got there first).
pub fn is_unique_violation(e: &diesel::result::Error) -> bool {
    matches!(e, diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _))
}

/// Applies pending migrations of the records database. On PostgreSQL an advisory lock
/// serialises instances starting together against one database.
pub fn run_migrations(conn: &mut DbConnection) -> Result<Vec<String>, StoreError> {
    migrate(conn, (SQLITE_MIGRATIONS, POSTGRES_MIGRATIONS), 7417117)
}

/// Applies pending key-store migrations (under an advisory lock of their own).
pub fn run_keystore_migrations(conn: &mut DbConnection) -> Result<Vec<String>, StoreError> {
    migrate(conn, (KEYSTORE_SQLITE_MIGRATIONS, KEYSTORE_POSTGRES_MIGRATIONS), 7417115)
}

/// Applies the pending migrations of the connection's backend out of `(sqlite, postgres)`,
/// on PostgreSQL under advisory lock `lock`.
fn migrate(
    conn: &mut DbConnection,
    (sqlite, postgres): (EmbeddedMigrations, EmbeddedMigrations),
    lock: i64,
) -> Result<Vec<String>, StoreError> {
    let migration = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Migration(e.to_string());
    let names = |versions: Vec<diesel::migration::MigrationVersion<'_>>| versions.iter().map(ToString::to_string).collect();
    match conn {
        DbConnection::Sqlite(c) => c.run_pending_migrations(sqlite).map(names).map_err(migration),
        DbConnection::Postgres(c) => {
            c.batch_execute(&format!("SELECT pg_advisory_lock({lock})"))?;
            let result = c.run_pending_migrations(postgres).map(names).map_err(migration);
            c.batch_execute(&format!("SELECT pg_advisory_unlock({lock})"))?;
            result
        }
    }
}

/// Runs `work` in a transaction that writes. On SQLite it starts with `BEGIN IMMEDIATE`,
/// taking the write lock up front so concurrent writers wait on the busy timeout instead
/// of failing when a read lock is upgraded; on PostgreSQL it is an ordinary transaction.
/// Commits on `Ok`, rolls back on `Err`.
pub fn write_transaction<T, E>(conn: &mut DbConnection, work: impl FnOnce(&mut DbConnection) -> Result<T, E>) -> Result<T, E>
where
    E: From<diesel::result::Error>,
{
    match conn {
        DbConnection::Sqlite(inner) => {
            AnsiTransactionManager::begin_transaction_sql(inner, "BEGIN IMMEDIATE")?;
            match work(conn) {
                Ok(value) => match <DbConnection as Connection>::TransactionManager::commit_transaction(conn) {
                    Ok(()) => Ok(value),
                    Err(e) => {
                        if let Err(rollback) = <DbConnection as Connection>::TransactionManager::rollback_transaction(conn) {
                            tracing::error!(error = %rollback, "rollback after a failed commit failed too");
                        }
                        Err(e.into())
                    }
                },
                // The work's own error is what the caller learns; a failed rollback is
                // logged beside it, never in its place.
                Err(e) => {
                    if let Err(rollback) = <DbConnection as Connection>::TransactionManager::rollback_transaction(conn) {
                        tracing::error!(error = %rollback, "rollback after a failed transaction failed too");
                    }
                    Err(e)
                }
            }
        }
        DbConnection::Postgres(_) => conn.transaction(work),
    }
}

/// Runs `work` in a savepoint of the write transaction open on `conn`: on `Err` only what
/// `work` wrote is rolled back and the transaction goes on (on PostgreSQL too, where a
/// failed statement would otherwise abort the whole transaction).
pub fn savepoint<T, E>(conn: &mut DbConnection, work: impl FnOnce(&mut DbConnection) -> Result<T, E>) -> Result<T, E>
where
    E: From<diesel::result::Error>,
{
    conn.transaction(work)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_choose_the_backend_and_hide_passwords() {
        assert_eq!(DatabaseUrl::parse("sqlite://./data/x.db").unwrap().backend(), Backend::Sqlite);
        let pg = DatabaseUrl::parse("postgres://carevault:hunter2@db:5432/cv").unwrap();
        assert_eq!(pg.backend(), Backend::Postgres);
        assert_eq!(pg.to_string(), "postgres://carevault:***@db:5432/cv");
        assert!(!format!("{pg:?}").contains("hunter2"));
        assert!(DatabaseUrl::parse("mysql://x").is_err());
        assert!(DatabaseUrl::parse("sqlite://").is_err());
    }
}
