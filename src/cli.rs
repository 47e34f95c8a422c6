//! The `carevault` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::auth::{Claims, mint_hs256};
use crate::config::{Environment, Settings};
use crate::startup::{Application, hs256_secret};
use crate::store::{DbConnection, run_migrations};

mod healthcheck;
pub mod seed;

#[derive(Debug, Parser)]
#[command(
    name = "carevault",
    version,
    about = "CareVault: FHIR R4 records backend with field-level encryption and a verifiable audit ledger"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the HTTP server (applies pending migrations first; in development creates the
    /// development JWT secret on first start).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print a signed development token (HS256). Refused in production.
    Token {
        /// Subject (user id).
        #[arg(long)]
        sub: String,
        /// Tenant the token is scoped to.
        #[arg(long)]
        tenant: String,
        /// Role; repeat for several (clinician, nurse, front_desk, patient, auditor, admin).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// SMART fhirUser, e.g. Practitioner/123 or Patient/456.
        #[arg(long)]
        fhir_user: Option<String>,
        /// Lifetime in seconds (default 3600, or the maximum when that is lower); at most
        /// CAREVAULT_MAX_TOKEN_TTL (default 86400).
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Master keys: create, rotate, inspect.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The audit ledger: verify it, sign a checkpoint, check an export.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Retention (policies/retention.toml): run the job that purges the patients a rule
    /// ends and no legal hold protects.
    Retention {
        #[command(subcommand)]
        command: RetentionCommand,
    },
    /// Compliance reviews.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Load a small synthetic clinic (2 practitioners, 4 patients and their encounters,
    /// observations, conditions, allergies and medication requests) into a tenant through
    /// the normal write path. Refused in production and for a tenant already seeded.
    Seed {
        /// Tenant to fill.
        #[arg(long, default_value = seed::DEFAULT_TENANT)]
        tenant: String,
        /// A fixture Bundle (type collection, urn:uuid: fullUrls) instead of the built-in
        /// clinic (tests/fixtures/clinic.json).
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
    /// Exit 0 when the configured server answers GET /healthz with 200, for a container
    /// HEALTHCHECK. Reads the same configuration as `serve`: CAREVAULT_ADDR (0.0.0.0 or ::
    /// mean this host's loopback), and TLS trusting the configured certificate when
    /// CAREVAULT_TLS_CERT and CAREVAULT_TLS_KEY are set.
    Healthcheck {
        /// Seconds to wait for the connection and for each read and write.
        #[arg(long, default_value_t = 2)]
        timeout: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Export a tenant's audit entries (as GET /audit/export), or with --platform those of
    /// the platform log (entries with no trusted tenant), with the log's signed checkpoint
    /// and inclusion proofs; ledgered as an export by the operator, in the exported log.
    /// The same command as `ledger export`.
    Export(ExportArgs),
    /// Write the reviewer's report of a tenant for a period (as GET /audit/report): one
    /// self-contained HTML page led by whether the tenant's log verified, with charts and
    /// tables of accesses, denials, break-glass, top actors, disclosures, purges, shreds,
    /// legal holds and refused logins. Ledgered as an export by the operator.
    Report(ReportArgs),
}

/// What `audit report` covers, and where it goes.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Tenant whose log to report on.
    #[arg(long)]
    tenant: String,
    /// RFC 3339 start (inclusive).
    #[arg(long)]
    from: String,
    /// RFC 3339 end (exclusive); at most 366 days after --from.
    #[arg(long)]
    to: String,
    /// Add who accessed this patient (Patient/ID), and its accounting of disclosures.
    #[arg(long)]
    patient: Option<String>,
    /// The checkpoint of a previous report: its HTML file, a file holding the signed note
    /// (or the JSON of GET /audit/checkpoint), or the note itself. The report says whether
    /// the log is still consistent with it.
    #[arg(long)]
    since_checkpoint: Option<String>,
    /// Write here instead of standard output.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

/// What `audit export` and `ledger export` (one command under two names) export, and where.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// Tenant whose entries to export.
    #[arg(long, required_unless_present = "platform", conflicts_with = "platform")]
    tenant: Option<String>,
    /// Export the platform log instead of a tenant's.
    #[arg(long)]
    platform: bool,
    /// RFC 3339 start (inclusive).
    #[arg(long)]
    from: Option<String>,
    /// RFC 3339 end (exclusive).
    #[arg(long)]
    to: Option<String>,
    /// Only entries about this patient (Patient/ID).
    #[arg(long)]
    patient: Option<String>,
    /// Only entries by this actor (token subject).
    #[arg(long)]
    actor: Option<String>,
    /// ndjson, csv or fhir.
    #[arg(long, default_value = "ndjson")]
    format: String,
    /// Write here instead of standard output.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

/// Which of the ledger's logs a command works on: every log when neither is given.
#[derive(Debug, Clone, clap::Args)]
pub struct LogChoice {
    /// Only this tenant's log.
    #[arg(long, conflicts_with = "platform")]
    tenant: Option<String>,
    /// Only the platform log (entries with no trusted tenant, such as forged tokens).
    #[arg(long)]
    platform: bool,
}

impl LogChoice {
    /// The one log chosen, or `None` for every log.
    fn log(&self) -> Result<Option<String>, String> {
        match (&self.tenant, self.platform) {
            (Some(t), _) => crate::domain::TenantId::parse(t).map(|t| Some(t.to_string())).map_err(|e| format!("--tenant: {e}")),
            (None, true) => Ok(Some(crate::ledger::log::PLATFORM_LOG.to_owned())),
            (None, false) => Ok(None),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Recompute leaves, trees and checkpoint signatures of every log (each tenant's, the
    /// platform log, the sealed legacy log) or of the one chosen from the database; name
    /// the log and the first entry that does not match, and exit non-zero on any mismatch.
    Verify {
        #[command(flatten)]
        choice: LogChoice,
    },
    /// Sign a checkpoint of every log with entries since its last one (or of the one
    /// chosen) and print the latest checkpoint of each.
    Checkpoint {
        #[command(flatten)]
        choice: LogChoice,
    },
    /// Export a tenant's log, or with --platform the platform log, with its signed
    /// checkpoint and inclusion proofs: the same command as `audit export`.
    Export(ExportArgs),
    /// Check an NDJSON export offline: its checkpoint against the public key, and each
    /// entry's leaf bytes and inclusion proof against the checkpoint. Needs no database.
    VerifyExport {
        /// The export file (NDJSON from GET /audit/export).
        file: std::path::PathBuf,
        /// The ledger's Ed25519 public key, base64 (GET /audit/public-key).
        #[arg(long)]
        public_key: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// Run the retention job once: judge every patient of every tenant, purge the due ones
    /// (data key destroyed, rows deleted, destruction recorded and ledgered, `purge`
    /// changes for devices) and print one JSON line per patient, then a summary line.
    Run {
        /// Judge and print, writing nothing.
        #[arg(long)]
        dry_run: bool,
        /// Judge the rules as of this instant (RFC 3339) instead of the clock.
        #[arg(long)]
        now: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create production keys: the master key (version 1 in the key file
    /// CAREVAULT_MASTER_KEY_FILE, or in the PKCS#11 token when CAREVAULT_KEY_PROVIDER=pkcs11)
    /// and the ledger signing key (CAREVAULT_LEDGER_KEY_FILE, or a key pair in the token when
    /// CAREVAULT_LEDGER_KEY_PROVIDER=pkcs11). Never overwrites: a key file that exists is an
    /// error, and keys a token already holds are kept.
    Init,
    /// Add a master-key version and rewrap every tenant key under it. Safe while servers run.
    Rotate,
    /// Show where the master keys live (the file, or the token by label and slot), their
    /// versions, the tenant keys each wraps, data-key counts and the ledger signing key.
    Status,
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

/// Every file and directory a command creates is private to the service user (0600,
/// 0700): the database, its WAL, logs, exports, keys. Set before anything is created.
fn private_by_default() {
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

pub async fn run(cli: Cli) -> ExitCode {
    private_by_default();
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    match cli.command {
        Command::Serve => serve(settings).await,
        Command::Migrate => migrate(&settings),
        Command::Token { sub, tenant, roles, fhir_user, ttl } => token(&settings, sub, tenant, roles, fhir_user, ttl),
        Command::Keys { command } => keys(&settings, command),
        Command::Ledger { command } => ledger(&settings, command),
        Command::Retention { command: RetentionCommand::Run { dry_run, now } } => retention_run(&settings, dry_run, now.as_deref()),
        Command::Audit { command: AuditCommand::Export(args) } => export(&settings, args),
        Command::Audit { command: AuditCommand::Report(args) } => report(&settings, args),
        Command::Seed { tenant, file } => seed::seed(&settings, &tenant, file.as_deref()),
        Command::Healthcheck { timeout } => match healthcheck::check(&settings, std::time::Duration::from_secs(timeout.max(1))) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(format!("unhealthy: {e}")),
        },
    }
}

/// `retention run`: one JSON line per patient as it is judged, then the summary.
fn retention_run(settings: &Settings, dry_run: bool, now: Option<&str>) -> ExitCode {
    let now = match now.map(chrono::DateTime::parse_from_rfc3339).transpose() {
        Ok(now) => now.map_or_else(chrono::Utc::now, |n| n.with_timezone(&chrono::Utc)),
        Err(_) => return fail("--now must be an RFC 3339 instant, e.g. 2040-01-01T00:00:00Z"),
    };
    let services = match crate::startup::services(settings, 2) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let operator = std::env::var("USER").unwrap_or_else(|_| "operator".into());
    let trigger = crate::service::retention::Trigger::Cli(operator);
    let mut print = |verdict: &crate::service::retention::Verdict| {
        let mut line = serde_json::json!({ "type": "patient" });
        if let (Some(line), Ok(serde_json::Value::Object(fields))) = (line.as_object_mut(), serde_json::to_value(verdict)) {
            line.extend(fields);
        }
        println!("{line}");
    };
    let summary = match services.retention().run(&trigger, now, dry_run, &mut print, &|| false) {
        Ok(summary) => summary,
        Err(e) => return fail(format!("retention run failed: {e}")),
    };
    let mut line = serde_json::json!({ "type": "summary" });
    if let (Some(line), Ok(serde_json::Value::Object(fields))) = (line.as_object_mut(), serde_json::to_value(&summary)) {
        line.extend(fields);
    }
    println!("{line}");
    if summary.skipped {
        return fail("another retention run holds the lock; nothing was done");
    }
    if summary.errors > 0 {
        return fail(format!("{} patient(s) could not be judged; see the log", summary.errors));
    }
    ExitCode::SUCCESS
}

/// `audit export` and `ledger export`.
fn export(settings: &Settings, args: ExportArgs) -> ExitCode {
    let ExportArgs { tenant, platform, from, to, patient, actor, format, out } = args;
    let Some(format) = crate::service::export_format::ExportFormat::parse(&format) else {
        return fail("--format must be ndjson, csv or fhir");
    };
    let tenant = match tenant.as_deref().map(crate::domain::TenantId::parse).transpose() {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let services = match crate::startup::services(settings, 2) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let operator = std::env::var("USER").unwrap_or_else(|_| "operator".into());
    let request = crate::service::ExportRequest { from, to, patient, actor };
    let prepared = match tenant {
        None if platform => services.prepare_platform_export(&format!("cli:{operator}"), &uuid::Uuid::new_v4().to_string(), request),
        None => return fail("--tenant or --platform is needed"),
        Some(tenant) => services.prepare_export(&operator_caller(&operator, tenant), request),
    };
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    write_export(&services, &prepared, format, out.as_deref())
}

/// `audit report`: the reviewer's report of one tenant, written to `--out` or stdout. Exit
/// status 0 whether or not the log verified (the report says which); a message on standard
/// error when it did not.
fn report(settings: &Settings, args: ReportArgs) -> ExitCode {
    let ReportArgs { tenant, from, to, patient, since_checkpoint, out } = args;
    let tenant = match crate::domain::TenantId::parse(&tenant) {
        Ok(t) => t,
        Err(e) => return fail(format!("--tenant: {e}")),
    };
    let since_checkpoint = match since_checkpoint {
        None => None,
        Some(arg) if std::path::Path::new(&arg).is_file() => match std::fs::read_to_string(&arg) {
            Ok(text) => Some(crate::service::report::checkpoint_note_in(&text)),
            Err(e) => return fail(format!("--since-checkpoint {arg}: {e}")),
        },
        Some(note) => Some(crate::service::report::checkpoint_note_in(&note)),
    };
    let services = match crate::startup::services(settings, 2) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let operator = std::env::var("USER").unwrap_or_else(|_| "operator".into());
    let request = crate::service::ReportRequest { from, to, patient, since_checkpoint };
    let report = match services.audit_report(&operator_caller(&operator, tenant), request) {
        Ok(r) => r,
        Err(crate::service::ServiceError::BadRequest(issues)) => {
            return fail(issues.iter().map(|i| i.diagnostics.as_str()).collect::<Vec<_>>().join("; "));
        }
        Err(e) => return fail(e),
    };
    let written = match &out {
        Some(path) => std::fs::write(path, report.html.as_bytes()),
        None => std::io::Write::write_all(&mut std::io::stdout().lock(), report.html.as_bytes()),
    };
    if let Err(e) = written {
        return fail(format!("the report could not be written: {e}"));
    }
    if report.verified {
        eprintln!("report written; the tenant's log verified");
    } else {
        eprintln!("report written; the tenant's log did NOT verify (see the report's first section)");
    }
    ExitCode::SUCCESS
}

/// The operator of the command line as an auditor of `tenant`.
fn operator_caller(operator: &str, tenant: crate::domain::TenantId) -> crate::service::Caller {
    crate::service::Caller {
        principal: crate::domain::Principal {
            sub: format!("cli:{operator}"),
            tenant,
            roles: vec![crate::domain::Role::Auditor],
            fhir_user: None,
            expires_at: None,
        },
        break_glass: None,
        purpose: crate::domain::PurposeOfUse::parse("HCOMPL").unwrap_or_default(),
        request_id: uuid::Uuid::new_v4().to_string(),
        client: "cli".into(),
    }
}

/// Streams a prepared export to `out` (standard output when `None`).
fn write_export(
    services: &crate::service::Services,
    prepared: &crate::service::PreparedExport,
    format: crate::service::export_format::ExportFormat,
    out: Option<&std::path::Path>,
) -> ExitCode {
    let mut sink: Box<dyn std::io::Write> = match out {
        Some(path) => match std::fs::File::create(path) {
            Ok(f) => Box::new(std::io::BufWriter::new(f)),
            Err(e) => return fail(format!("{}: {e}", path.display())),
        },
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut write_error = None;
    let written = services.stream_export(prepared, format, |chunk| match sink.write_all(&chunk) {
        Ok(()) => true,
        Err(e) => {
            write_error = Some(e);
            false
        }
    });
    match (written, write_error, sink.flush()) {
        (Err(e), ..) => fail(e),
        (_, Some(e), _) | (_, None, Err(e)) => fail(format!("the export could not be written: {e}")),
        (Ok(done), None, Ok(())) if !done.complete => fail("the export stopped before its end"),
        (Ok(done), None, Ok(())) => {
            eprintln!("exported {} entries", done.entries);
            ExitCode::SUCCESS
        }
    }
}

fn ledger(settings: &Settings, command: LedgerCommand) -> ExitCode {
    let command = match command {
        LedgerCommand::Export(args) => return export(settings, args),
        other => other,
    };
    if let LedgerCommand::VerifyExport { file, public_key } = &command {
        return match crate::ledger::export::verify_ndjson(file, public_key) {
            Ok((entries, size)) => {
                println!("export verified: {entries} entries, each included in the signed checkpoint of size {size}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(format!("export verification FAILED: {e}")),
        };
    }
    let signer = match crate::startup::ledger_signer(settings) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let mut conn = match connect(settings) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match command {
        LedgerCommand::Verify { choice } => {
            let started = std::time::Instant::now();
            let verified = match choice.log() {
                Err(e) => return fail(e),
                Ok(Some(log)) => {
                    let origin = crate::ledger::log::origin(signer.origin(), &log);
                    match crate::ledger::verify::verify(&mut conn, &log, &origin, signer.public_key()) {
                        Ok(report) => Ok(vec![(log, report)]),
                        Err(mismatch) => Err((log, mismatch)),
                    }
                }
                Ok(None) => crate::ledger::verify::verify_all(&mut conn, signer.origin(), signer.public_key()),
            };
            match verified {
                Ok(reports) => {
                    let secs = started.elapsed().as_secs_f64();
                    let mut total = 0;
                    for (log, report) in &reports {
                        total += report.entries;
                        println!(
                            "log {log} verified: {} entries, {} checkpoints, root {}",
                            report.entries,
                            report.checkpoints,
                            crate::ledger::merkle::to_hex(&report.root)
                        );
                    }
                    println!(
                        "ledger verified: {} logs, {total} entries ({secs:.2} s, {:.0} entries/s)",
                        reports.len(),
                        total as f64 / secs.max(1e-9)
                    );
                    ExitCode::SUCCESS
                }
                Err((log, mismatch)) => fail(format!("ledger verification FAILED in log {log}: {mismatch}")),
            }
        }
        LedgerCommand::Export(_) | LedgerCommand::VerifyExport { .. } => ExitCode::FAILURE,
        LedgerCommand::Checkpoint { choice } => {
            let logs = match choice.log() {
                Err(e) => return fail(e),
                Ok(Some(log)) => vec![log],
                Ok(None) => match crate::store::ledger::logs(&mut conn) {
                    Ok(logs) => logs,
                    Err(e) => return fail(e),
                },
            };
            for log in logs {
                match crate::ledger::log::checkpoint(&mut conn, &signer, &log) {
                    Ok(row) => print!("{}", row.note),
                    Err(e) => return fail(format!("log {log}: {e}")),
                }
            }
            ExitCode::SUCCESS
        }
    }
}

/// A connection to the configured database (migrations applied), for one-shot commands.
fn connect(settings: &Settings) -> Result<crate::store::PooledConn, ExitCode> {
    crate::store::Store::open(&settings.database_url, 1).and_then(|s| s.conn()).map_err(fail)
}

/// `keys init`. The key file and the ledger key file are never overwritten (an existing
/// one is an error); in a token, what exists is kept and only what is missing is created.
fn keys_init(settings: &Settings) -> Result<(), String> {
    use crate::config::KeyProviderKind;
    use crate::crypto::KeyProvider;
    let token_keys = settings.key_provider == KeyProviderKind::Pkcs11;
    if token_keys {
        let token = crate::startup::pkcs11_token(settings).map_err(|e| e.to_string())?;
        let label = settings.pkcs11.as_ref().map_or("carevault-master", |p| p.key_label.as_str());
        let provider = crate::crypto::pkcs11::Pkcs11Provider::new(token, label);
        match provider.init().map_err(|e| e.to_string())? {
            Some(version) => println!("created master key version {version} in {}", provider.location()),
            None => println!(
                "{} already holds master key versions {:?}; none created",
                provider.location(),
                provider.versions().unwrap_or_default()
            ),
        }
    } else {
        crate::crypto::LocalKeyFile::create(&settings.master_key_file, false).map_err(|e| e.to_string())?;
        println!("created master-key file {} (version 1)", settings.master_key_file.display());
    }
    if settings.ledger_key_provider == KeyProviderKind::Pkcs11 {
        let (key, created) = crate::startup::token_ledger_key(settings, true).map_err(|e| e.to_string())?;
        let public = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key.public_key());
        println!("{} ledger signing key in {} (public key {public})", if created { "created" } else { "kept the" }, key.location());
    } else if token_keys && settings.ledger_key_file.exists() {
        println!("kept the ledger signing key {}", settings.ledger_key_file.display());
    } else {
        crate::startup::create_ledger_key(&settings.ledger_key_file).map_err(|e| e.to_string())?;
        println!("created ledger signing key {}", settings.ledger_key_file.display());
    }
    Ok(())
}

fn keys(settings: &Settings, command: KeysCommand) -> ExitCode {
    if let KeysCommand::Init = command {
        return match keys_init(settings) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        };
    }
    let codec = match crate::startup::codec(settings, 1) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    // The records database's migrations run first, and any keys an older release left
    // there move to the key store, so the command sees every key.
    let records = match crate::store::Store::open(&settings.database_url, 1) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    if let Err(e) = crate::startup::adopt_legacy_keys(&codec, &records) {
        return fail(e);
    }
    match command {
        KeysCommand::Init => ExitCode::SUCCESS,
        KeysCommand::Rotate => match codec.keys().rotate() {
            Ok((version, rewrapped)) => {
                println!("master key version {version} is current; rewrapped {rewrapped} tenant key(s)");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        KeysCommand::Status => match codec.keys().status() {
            Ok(status) => {
                println!("master keys: {} ({})", status.location, if status.development { "development" } else { "production" });
                println!("key store: {}", settings.keystore_url);
                for (version, tenants) in &status.versions {
                    println!("  version {version}: wraps {tenants} tenant key(s)");
                }
                if settings.key_provider == crate::config::KeyProviderKind::Pkcs11 {
                    // The token's own answer: its attributes, not this program's intent.
                    let sealed = crate::startup::pkcs11_provider(settings)
                        .map_err(|e| e.to_string())
                        .and_then(|p| p.keys_are_sealed().map_err(|e| e.to_string()));
                    match sealed {
                        Ok(true) => println!("  every version: sensitive, never extractable (token attributes)"),
                        Ok(false) => println!("  WARNING: a master key in the token is extractable or not sensitive"),
                        Err(e) => println!("  token attributes unavailable: {e}"),
                    }
                }
                for (tenant, version) in &status.tenants {
                    println!("  tenant {tenant}: key wrapped under master key version {version}");
                }
                println!("data keys: {} live, {} destroyed", status.data_keys_live, status.data_keys_destroyed);
                match crate::startup::ledger_signer(settings) {
                    Ok(_) if settings.ledger_key_provider == crate::config::KeyProviderKind::Pkcs11 => {
                        println!("ledger signing key: '{}' in the PKCS#11 token", settings.ledger_key_label);
                    }
                    Ok(_) => println!("ledger signing key: file {}", settings.ledger_key_file.display()),
                    Err(e) => println!("ledger signing key: unavailable ({e})"),
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
    }
}

async fn serve(settings: Settings) -> ExitCode {
    let _guard = match crate::telemetry::init(&settings.log_dir) {
        Ok(g) => g,
        Err(e) => return fail(format!("cannot start logging in {}: {e}", settings.log_dir.display())),
    };
    tracing::info!(settings = ?settings, "starting");
    let app = match Application::build(&settings) {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "start-up failed");
            return fail(e);
        }
    };
    tracing::info!(addr = %app.addr(), tls = app.is_tls(), "listening");
    if settings.env == Environment::Development {
        tracing::warn!(
            "development mode: mint a token with `cargo run --release -- token --sub dev --tenant demo --role clinician --fhir-user Practitioner/dev`"
        );
    }
    match app.run_until_terminated().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn migrate(settings: &Settings) -> ExitCode {
    use diesel::Connection;
    let url = &settings.database_url;
    if let crate::store::DatabaseUrl::Sqlite(path) = url
        && let Err(e) = crate::store::files::prepare_sqlite(path)
    {
        return fail(format!("{}: {e}", path.display()));
    }
    let conn = match url {
        crate::store::DatabaseUrl::Sqlite(path) => diesel::SqliteConnection::establish(&path.to_string_lossy()).map(DbConnection::Sqlite),
        crate::store::DatabaseUrl::Postgres(u) => diesel::PgConnection::establish(u).map(DbConnection::Postgres),
    };
    let mut conn = match conn {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot connect to {url}: {e}")),
    };
    match run_migrations(&mut conn) {
        Ok(applied) if applied.is_empty() => {
            println!("database is up to date");
            ExitCode::SUCCESS
        }
        Ok(applied) => {
            for m in applied {
                println!("applied {m}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn token(settings: &Settings, sub: String, tenant: String, roles: Vec<String>, fhir_user: Option<String>, ttl: Option<u64>) -> ExitCode {
    if settings.env == Environment::Production {
        return fail("`token` mints development tokens and is refused in production");
    }
    if let Err(e) = crate::domain::TenantId::parse(&tenant) {
        return fail(e);
    }
    if let Some(unknown) = roles.iter().find(|r| crate::domain::Role::parse(r).is_none()) {
        return fail(format!("unknown role '{unknown}'"));
    }
    if let Some(r) = &fhir_user
        && crate::domain::Reference::parse(r).is_err()
    {
        return fail("--fhir-user must look like Practitioner/ID or Patient/ID");
    }
    let ttl = ttl.unwrap_or(3600.min(settings.max_token_ttl));
    if ttl > settings.max_token_ttl {
        return fail(format!(
            "--ttl {ttl} exceeds the maximum token lifetime of {} seconds (CAREVAULT_MAX_TOKEN_TTL)",
            settings.max_token_ttl
        ));
    }
    let secret = match hs256_secret(settings) {
        Ok(Some(s)) => s,
        Ok(None) if settings.jwks_file.is_some() => {
            return fail("with CAREVAULT_JWKS_FILE set only its keys verify tokens; development tokens would be refused");
        }
        Ok(None) => return fail("no HS256 secret configured"),
        Err(e) => return fail(e),
    };
    let now = jsonwebtoken::get_current_timestamp();
    let claims = Claims {
        sub,
        tenant,
        roles,
        fhir_user,
        exp: now + ttl,
        iat: Some(now),
        iss: settings.jwt_issuer.clone(),
        aud: settings.jwt_audience.clone().map(Into::into),
    };
    match mint_hs256(&secret, &claims) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}
