//! The report's figures, gathered while the log is replayed: one entry at a time, never
//! holding the entries. What grows is bounded: per-day counts by the period's days (at
//! most [`MAX_DAYS`]), fixed-size matrices, and capped lists and sets (the caps below; a
//! capped list keeps its first rows and counts the rest, and the report says how many
//! were left out).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};

use crate::domain::{AuditAction, AuditOutcome};
use crate::ledger::entry::Entry;

/// Longest period a report covers, in days.
pub const MAX_DAYS: i64 = 366;
/// Rows kept of each listed table (break-glass events, refused logins, shreds).
pub const MAX_ROWS: usize = 500;
/// Rows kept of the per-patient access list.
pub const MAX_PATIENT_ROWS: usize = 1000;
/// Distinct `(actor, patient)` pairs counted exactly for "top actors"; past it, pairs not
/// yet seen are not counted (the counts become lower bounds, and the report says so).
/// 1,000,000 pairs of 8-byte hashes: some 20 MB at most.
pub const MAX_PAIRS: usize = 1_000_000;
/// Distinct actors tracked; past it, accesses by actors not yet seen are not ranked.
pub const MAX_ACTORS: usize = 100_000;
/// Distinct keys of the small tallies (purposes × roles, retention purges, holds ledgered).
pub const MAX_KEYS: usize = 10_000;

/// Business hours for the heat map's outline, Monday to Friday, UTC: `[start, end)`.
pub const BUSINESS_HOURS: (usize, usize) = (7, 19);

/// The series of the accesses-per-day chart, in stacking order: successful accesses by
/// kind, then every denied and every failed attempt whatever its action.
pub const ACCESS_SERIES: [&str; 8] = ["read", "search", "write", "sync", "export", "purge", "denied", "error"];

fn access_series(entry: &Entry) -> Option<usize> {
    match entry.outcome {
        AuditOutcome::Denied => Some(6),
        AuditOutcome::Error => Some(7),
        AuditOutcome::Success => match entry.action {
            AuditAction::Read | AuditAction::Vread | AuditAction::History => Some(0),
            AuditAction::Search => Some(1),
            AuditAction::Create | AuditAction::Update | AuditAction::Delete => Some(2),
            AuditAction::Sync => Some(3),
            AuditAction::Export => Some(4),
            AuditAction::Purge => Some(5),
            // A successful login is never ledgered (tokens are verified per request).
            AuditAction::Login => None,
        },
    }
}

/// The time range of a report: `[from, to)`, and its UTC days.
#[derive(Debug, Clone)]
pub struct Period {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub first_day: NaiveDate,
    pub days: usize,
}

impl Period {
    pub fn new(from: DateTime<Utc>, to: DateTime<Utc>) -> Self {
        let first_day = from.date_naive();
        let last_day = (to - chrono::Duration::milliseconds(1)).date_naive();
        let days = usize::try_from((last_day - first_day).num_days() + 1).unwrap_or(1).max(1);
        Self { from, to, first_day, days }
    }

    pub fn day_labels(&self) -> Vec<String> {
        (0..self.days).map(|d| (self.first_day + chrono::Duration::days(d as i64)).format("%m-%d").to_string()).collect()
    }

    pub fn day(&self, d: usize) -> String {
        (self.first_day + chrono::Duration::days(d as i64)).format("%Y-%m-%d").to_string()
    }
}

/// A list that keeps its first `cap` rows and counts all.
#[derive(Debug, Clone)]
pub struct Capped<T> {
    pub rows: Vec<T>,
    pub total: u64,
    cap: usize,
}

impl<T> Capped<T> {
    pub fn new(cap: usize) -> Self {
        Self { rows: Vec::new(), total: 0, cap }
    }

    pub fn push(&mut self, row: T) {
        self.total += 1;
        if self.rows.len() < self.cap {
            self.rows.push(row);
        }
    }

    /// Rows counted but not kept.
    pub fn left_out(&self) -> u64 {
        self.total - self.rows.len() as u64
    }
}

/// One listed entry: the fields a reviewer's table shows. No PHI values: the ledger holds
/// none (references, codes, subjects and the caller's own break-glass statement).
#[derive(Debug, Clone)]
pub struct Row {
    pub seq: u64,
    pub time: String,
    pub actor: String,
    pub roles: String,
    pub action: AuditAction,
    pub resource: Option<String>,
    pub patient: Option<String>,
    pub outcome: AuditOutcome,
    pub purpose: Option<String>,
    pub break_glass: Option<String>,
    pub client: Option<String>,
    pub request_id: Option<String>,
}

impl Row {
    fn of(entry: &Entry) -> Self {
        Self {
            seq: entry.seq,
            time: entry.time.clone(),
            actor: actor_name(entry),
            roles: entry.actor.roles.join(", "),
            action: entry.action,
            resource: entry.resource.clone(),
            patient: entry.patient.clone(),
            outcome: entry.outcome,
            purpose: entry.purpose_of_use.clone(),
            break_glass: entry.break_glass.clone(),
            client: entry.client.clone(),
            request_id: entry.request_id.clone(),
        }
    }
}

fn actor_name(entry: &Entry) -> String {
    entry.actor.sub.clone().unwrap_or_else(|| "(no trusted subject)".to_owned())
}

/// One actor's figures over the period.
#[derive(Debug, Clone)]
pub struct ActorStats {
    pub sub: String,
    pub roles: String,
    /// Successful accesses naming a patient.
    pub accesses: u64,
    /// Distinct patients among them.
    pub patients: u64,
    pub denied: u64,
}

/// Who touched the most patients: exact distinct counting of `(actor, patient)` pairs up to
/// [`MAX_PAIRS`], actors up to [`MAX_ACTORS`].
#[derive(Debug, Default)]
pub struct Actors {
    ids: HashMap<String, usize>,
    pub stats: Vec<ActorStats>,
    pairs: HashSet<u64>,
    /// Pairs not counted because the set was full.
    pub pairs_left_out: u64,
    /// Entries by actors not tracked because the table was full.
    pub actors_left_out: u64,
}

impl Actors {
    fn add(&mut self, entry: &Entry) {
        let Some(sub) = entry.actor.sub.as_deref() else { return };
        let id = match self.ids.get(sub) {
            Some(id) => *id,
            None if self.stats.len() >= MAX_ACTORS => {
                self.actors_left_out += 1;
                return;
            }
            None => {
                let id = self.stats.len();
                self.ids.insert(sub.to_owned(), id);
                let roles = entry.actor.roles.join(", ");
                self.stats.push(ActorStats { sub: sub.to_owned(), roles, accesses: 0, patients: 0, denied: 0 });
                id
            }
        };
        let stats = &mut self.stats[id];
        match (entry.outcome, entry.patient.as_deref()) {
            (AuditOutcome::Denied, _) => stats.denied += 1,
            (AuditOutcome::Success, Some(patient)) => {
                stats.accesses += 1;
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (id, patient).hash(&mut h);
                let pair = h.finish();
                if self.pairs.contains(&pair) {
                    return;
                }
                if self.pairs.len() >= MAX_PAIRS {
                    self.pairs_left_out += 1;
                    return;
                }
                self.pairs.insert(pair);
                stats.patients += 1;
            }
            _ => {}
        }
    }

    /// The `n` actors with the most distinct patients (then the most accesses, then by subject).
    pub fn top(&self, n: usize) -> Vec<&ActorStats> {
        let mut all: Vec<&ActorStats> = self.stats.iter().filter(|a| a.patients > 0).collect();
        all.sort_by(|a, b| b.patients.cmp(&a.patients).then(b.accesses.cmp(&a.accesses)).then(a.sub.cmp(&b.sub)));
        all.truncate(n);
        all
    }
}

/// One actor's accesses to the patient the report was asked about.
#[derive(Debug, Clone)]
pub struct Accessor {
    pub sub: String,
    pub roles: String,
    pub accesses: u64,
    pub denied: u64,
    pub break_glass: u64,
    pub first: String,
    pub last: String,
    pub purposes: BTreeSet<String>,
}

/// Who accessed one patient's records, when and why.
#[derive(Debug)]
pub struct PatientView {
    pub patient: String,
    pub accessors: BTreeMap<String, Accessor>,
    pub accessors_left_out: u64,
    pub rows: Capped<Row>,
}

/// Retention purges by run and patient (from the ledger's `purge` entries of the run).
pub type PurgeTally = BTreeMap<(String, String), u64>;

/// Everything the report shows that comes from the ledger.
#[derive(Debug)]
pub struct Aggregates {
    pub period: Period,
    /// Entries replayed (the whole log up to the report's checkpoint).
    pub log_entries: u64,
    /// Entries of the period.
    pub in_period: u64,
    /// Entries whose time does not parse (counted nowhere else).
    pub bad_times: u64,
    /// `per_day[d][s]`: entries of series [`ACCESS_SERIES`]`[s]` on day `d`.
    pub per_day: Vec<Vec<u64>>,
    /// `by_action[a][o]`: entries by action (`AuditAction::ALL` order) and outcome.
    pub by_action: Vec<[u64; 3]>,
    /// Accesses naming a patient by weekday (Monday first) and hour, UTC.
    pub heat: [[u64; 24]; 7],
    pub patient_accesses: u64,
    pub after_hours: u64,
    /// `denied_per_day[d]`: `[refused tokens, other denied attempts]`.
    pub denied_per_day: Vec<Vec<u64>>,
    pub break_glass: Capped<Row>,
    pub refused_logins: Capped<Row>,
    pub shreds: Capped<Row>,
    pub actors: Actors,
    pub patient: Option<PatientView>,
    /// Successful accesses naming a patient, by `(purpose, role)`.
    pub purposes: BTreeMap<(String, String), u64>,
    pub retention_purges: PurgeTally,
    /// Ids of legal holds whose placing (`create` of `LegalHold/ID`) the log holds, any time.
    pub holds_ledgered: HashSet<String>,
    /// Ids of the retention runs that can have purged in the period.
    retention_runs: HashSet<String>,
}

fn insert_capped<K: Ord>(map: &mut BTreeMap<K, u64>, key: K) {
    if let Some(n) = map.get_mut(&key) {
        *n += 1;
    } else if map.len() < MAX_KEYS {
        map.insert(key, 1);
    }
}

/// `true` outside Monday–Friday [`BUSINESS_HOURS`].
pub fn after_hours(weekday: usize, hour: usize) -> bool {
    weekday >= 5 || hour < BUSINESS_HOURS.0 || hour >= BUSINESS_HOURS.1
}

impl Aggregates {
    pub fn new(period: Period, patient: Option<String>, retention_runs: HashSet<String>) -> Self {
        let days = period.days;
        Self {
            period,
            log_entries: 0,
            in_period: 0,
            bad_times: 0,
            per_day: vec![vec![0; ACCESS_SERIES.len()]; days],
            by_action: vec![[0; 3]; AuditAction::ALL.len()],
            heat: [[0; 24]; 7],
            patient_accesses: 0,
            after_hours: 0,
            denied_per_day: vec![vec![0; 2]; days],
            break_glass: Capped::new(MAX_ROWS),
            refused_logins: Capped::new(MAX_ROWS),
            shreds: Capped::new(MAX_ROWS),
            actors: Actors::default(),
            patient: patient.map(|p| PatientView {
                patient: p,
                accessors: BTreeMap::new(),
                accessors_left_out: 0,
                rows: Capped::new(MAX_PATIENT_ROWS),
            }),
            purposes: BTreeMap::new(),
            retention_purges: BTreeMap::new(),
            holds_ledgered: HashSet::new(),
            retention_runs,
        }
    }

    /// Takes one entry of the log (any time); only those of the period are counted.
    pub fn add(&mut self, entry: &Entry) {
        self.log_entries += 1;
        if entry.action == AuditAction::Create
            && entry.outcome == AuditOutcome::Success
            && let Some(id) = entry.resource.as_deref().and_then(|r| r.strip_prefix("LegalHold/"))
            && self.holds_ledgered.len() < MAX_KEYS
        {
            self.holds_ledgered.insert(id.to_owned());
        }
        let Ok(time) = DateTime::parse_from_rfc3339(&entry.time).map(|t| t.with_timezone(&Utc)) else {
            self.bad_times += 1;
            return;
        };
        if time < self.period.from || time >= self.period.to {
            return;
        }
        self.in_period += 1;
        let day = usize::try_from((time.date_naive() - self.period.first_day).num_days()).unwrap_or(0).min(self.period.days - 1);
        if let Some(s) = access_series(entry) {
            self.per_day[day][s] += 1;
        }
        let a = AuditAction::ALL.iter().position(|a| *a == entry.action).unwrap_or(0);
        let o = AuditOutcome::ALL.iter().position(|o| *o == entry.outcome).unwrap_or(0);
        self.by_action[a][o] += 1;
        if entry.patient.is_some() {
            let (weekday, hour) = (time.weekday().num_days_from_monday() as usize, time.hour() as usize);
            self.heat[weekday][hour] += 1;
            self.patient_accesses += 1;
            if after_hours(weekday, hour) {
                self.after_hours += 1;
            }
        }
        if entry.outcome == AuditOutcome::Denied {
            self.denied_per_day[day][usize::from(entry.action != AuditAction::Login)] += 1;
        }
        if entry.action == AuditAction::Login && entry.outcome == AuditOutcome::Denied {
            self.refused_logins.push(Row::of(entry));
        }
        if entry.break_glass.is_some() {
            self.break_glass.push(Row::of(entry));
        }
        if entry.action == AuditAction::Purge {
            let run = entry.request_id.as_deref().filter(|r| self.retention_runs.contains(*r));
            match (run, entry.outcome, entry.patient.as_deref()) {
                (Some(run), AuditOutcome::Success, Some(patient)) => {
                    insert_capped(&mut self.retention_purges, (run.to_owned(), patient.to_owned()));
                }
                _ => self.shreds.push(Row::of(entry)),
            }
        }
        if entry.outcome == AuditOutcome::Success && entry.patient.is_some() && entry.action != AuditAction::Export {
            let purpose = entry.purpose_of_use.clone().unwrap_or_else(|| "(none)".to_owned());
            let role = if entry.actor.roles.is_empty() { "(none)".to_owned() } else { entry.actor.roles.join(", ") };
            insert_capped(&mut self.purposes, (purpose, role));
        }
        self.actors.add(entry);
        if let Some(view) = self.patient.as_mut()
            && entry.patient.as_deref() == Some(view.patient.as_str())
        {
            view.rows.push(Row::of(entry));
            let sub = actor_name(entry);
            let known = view.accessors.contains_key(&sub);
            if !known && view.accessors.len() >= MAX_PATIENT_ROWS {
                view.accessors_left_out += 1;
                return;
            }
            let a = view.accessors.entry(sub.clone()).or_insert_with(|| Accessor {
                sub,
                roles: entry.actor.roles.join(", "),
                accesses: 0,
                denied: 0,
                break_glass: 0,
                first: entry.time.clone(),
                last: entry.time.clone(),
                purposes: BTreeSet::new(),
            });
            match entry.outcome {
                AuditOutcome::Success => a.accesses += 1,
                _ => a.denied += 1,
            }
            if entry.break_glass.is_some() {
                a.break_glass += 1;
            }
            if entry.time < a.first {
                a.first = entry.time.clone();
            }
            if entry.time > a.last {
                a.last = entry.time.clone();
            }
            if let Some(p) = &entry.purpose_of_use
                && a.purposes.len() < 16
            {
                a.purposes.insert(p.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::entry::Actor;

    fn entry(time: &str, sub: &str, action: AuditAction, outcome: AuditOutcome, patient: Option<&str>) -> Entry {
        Entry {
            seq: 0,
            time: time.to_owned(),
            actor: Actor { sub: Some(sub.to_owned()), roles: vec!["clinician".into()], fhir_user: None },
            tenant: Some("t".into()),
            action,
            resource: patient.map(str::to_owned),
            patient: patient.map(str::to_owned),
            outcome,
            purpose_of_use: Some("TREAT".into()),
            break_glass: None,
            client: None,
            request_id: None,
        }
    }

    fn period() -> Period {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        Period::new(t("2026-11-01T00:00:00Z"), t("2026-12-01T00:00:00Z"))
    }

    #[test]
    fn a_period_has_its_utc_days() {
        let p = period();
        assert_eq!(p.days, 30);
        assert_eq!(p.day(0), "2026-11-01");
        assert_eq!(p.day(29), "2026-11-30");
        assert_eq!(p.day_labels()[1], "11-02");
    }

    #[test]
    fn entries_are_counted_by_day_series_hour_and_actor() {
        let mut a = Aggregates::new(period(), Some("Patient/p1".into()), HashSet::new());
        // Monday 2026-11-02 03:15 UTC: after hours.
        a.add(&entry("2026-11-02T03:15:00.000Z", "dr", AuditAction::Read, AuditOutcome::Success, Some("Patient/p1")));
        a.add(&entry("2026-11-02T10:00:00.000Z", "dr", AuditAction::Read, AuditOutcome::Success, Some("Patient/p1")));
        a.add(&entry("2026-11-02T10:05:00.000Z", "dr", AuditAction::Search, AuditOutcome::Success, Some("Patient/p2")));
        a.add(&entry("2026-11-03T10:00:00.000Z", "nurse", AuditAction::Read, AuditOutcome::Denied, Some("Patient/p1")));
        a.add(&entry("2026-11-03T10:00:00.000Z", "x", AuditAction::Login, AuditOutcome::Denied, None));
        // Outside the period: replayed, not counted.
        a.add(&entry("2026-10-31T23:59:59.999Z", "dr", AuditAction::Read, AuditOutcome::Success, Some("Patient/p9")));
        assert_eq!((a.log_entries, a.in_period), (6, 5));
        assert_eq!(a.per_day[1][..2], [2, 1]);
        assert_eq!(a.per_day[2][6], 2);
        assert_eq!(a.denied_per_day[2], [1, 1]);
        assert_eq!(a.heat[0][3], 1);
        assert_eq!(a.after_hours, 1);
        assert_eq!(a.refused_logins.total, 1);
        let top = a.actors.top(10);
        assert_eq!((top[0].sub.as_str(), top[0].patients, top[0].accesses), ("dr", 2, 3));
        let view = a.patient.as_ref().unwrap();
        assert_eq!(view.rows.total, 3);
        assert_eq!(view.accessors["dr"].accesses, 2);
        assert_eq!(view.accessors["nurse"].denied, 1);
    }

    #[test]
    fn capped_lists_keep_their_first_rows_and_count_all() {
        let mut c = Capped::new(2);
        for i in 0..5 {
            c.push(i);
        }
        assert_eq!((c.rows, c.total), (vec![0, 1], 5));
    }

    #[test]
    fn business_hours_are_monday_to_friday_seven_to_nineteen() {
        assert!(!after_hours(0, 7) && !after_hours(4, 18));
        assert!(after_hours(0, 6) && after_hours(4, 19) && after_hours(5, 12) && after_hours(6, 12));
    }
}
