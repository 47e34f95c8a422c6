//! `policies/retention.toml`: which rule ends a patient's records, and from which day.
//! Pure: the facts a rule is judged on (birth date, death, last activity) come in, a
//! judgement comes out. Loaded and checked at start; an invalid policy stops the server.

use std::path::Path;

use chrono::{Datelike, Months, NaiveDate};
use serde::Deserialize;

/// HIPAA keeps documentation, the audit ledger included, six years (45 CFR 164.316(b)(2)).
pub const LEDGER_MINIMUM_YEARS: u32 = 6;

#[derive(Debug, thiserror::Error)]
pub enum RetentionPolicyError {
    #[error("cannot read retention policy {0}: {1}")]
    Read(String, std::io::Error),
    #[error("retention policy is not valid: {0}")]
    Parse(String),
    #[error("retention policy: {0}")]
    Invalid(String),
}

/// A patient category, judged from the patient's own record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PatientCategory {
    /// Neither of the others.
    Adult,
    /// Last seen before the age of majority.
    Minor,
    /// `deceasedBoolean` true or a `deceasedDateTime`.
    Deceased,
}

impl PatientCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            PatientCategory::Adult => "adult",
            PatientCategory::Minor => "minor",
            PatientCategory::Deceased => "deceased",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default = "default_majority")]
    majority_age: u32,
    ledger: LedgerRule,
    #[serde(default, rename = "rule")]
    rules: Vec<Rule>,
}

fn default_majority() -> u32 {
    18
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LedgerRule {
    keep_years: u32,
}

fn patient_type() -> String {
    "Patient".to_owned()
}

/// One rule: what it ends (a patient's whole compartment) and from when.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    #[serde(default = "patient_type")]
    resource_type: String,
    pub category: PatientCategory,
    years_after_last_activity: Option<u32>,
    years_after_majority: Option<u32>,
    years_after_death: Option<u32>,
}

/// What a rule is judged on for one patient. Dates of a partial `birthDate` or
/// `deceasedDateTime` are taken at the end of the period they name (`1980` → 1980-12-31),
/// so rounding never ends a record early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientFacts {
    pub birth_date: Option<NaiveDate>,
    /// `Some(None)`: deceased, date unknown (`deceasedBoolean` true).
    pub death: Option<Option<NaiveDate>>,
    /// The last write to anything in the patient's compartment.
    pub last_activity: NaiveDate,
}

/// How the policy judges one patient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    pub category: PatientCategory,
    /// The rule of that category and the first day it ends the records; `None` when the
    /// policy has no rule for the category (kept).
    pub due: Option<(String, NaiveDate)>,
}

#[derive(Debug, Clone)]
pub struct RetentionPolicy {
    file: PolicyFile,
}

fn add_years(date: NaiveDate, years: u32) -> NaiveDate {
    date.checked_add_months(Months::new(years.saturating_mul(12))).unwrap_or(NaiveDate::MAX)
}

/// The last day of the period a FHIR `date` (or the date part of a `dateTime`) names:
/// `YYYY`, `YYYY-MM` or `YYYY-MM-DD`. `None` when it is none of these.
pub fn end_of_fhir_date(text: &str) -> Option<NaiveDate> {
    let date = text.get(..10.min(text.len()))?;
    match date.len() {
        4 => NaiveDate::from_ymd_opt(date.parse().ok()?, 12, 31),
        7 => {
            let first = NaiveDate::parse_from_str(&format!("{date}-01"), "%Y-%m-%d").ok()?;
            first.checked_add_months(Months::new(1))?.pred_opt()
        }
        10 => NaiveDate::parse_from_str(date, "%Y-%m-%d").ok(),
        _ => None,
    }
}

impl RetentionPolicy {
    pub fn load(dir: &Path) -> Result<Self, RetentionPolicyError> {
        let path = dir.join("retention.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| RetentionPolicyError::Read(path.display().to_string(), e))?;
        Self::from_toml(&text)
    }

    pub fn from_toml(text: &str) -> Result<Self, RetentionPolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| RetentionPolicyError::Parse(e.message().to_owned()))?;
        let invalid = |m: String| Err(RetentionPolicyError::Invalid(m));
        if file.ledger.keep_years < LEDGER_MINIMUM_YEARS {
            return invalid(format!(
                "[ledger] keep_years is {}: the audit ledger is kept at least {LEDGER_MINIMUM_YEARS} years (45 CFR 164.316(b)(2))",
                file.ledger.keep_years
            ));
        }
        if !(1..=30).contains(&file.majority_age) {
            return invalid(format!("majority_age {} is not an age of majority (1 to 30)", file.majority_age));
        }
        let mut seen = std::collections::HashSet::new();
        for rule in &file.rules {
            let name = &rule.name;
            if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return invalid(format!("rule name '{name}' must be 1 to 64 letters, digits or -_."));
            }
            match rule.resource_type.as_str() {
                "Patient" => {}
                "AuditEvent" | "ledger" | "Ledger" | "audit" => {
                    return invalid(format!("rule '{name}': the audit ledger is never purged by record rules (see [ledger])"));
                }
                other if crate::domain::ResourceType::from_name(other).is_some() => {
                    return invalid(format!(
                        "rule '{name}': resource_type {other}: records of a patient's compartment end with their patient \
                         (one data key seals them all); write the rule for resource_type \"Patient\""
                    ));
                }
                other => return invalid(format!("rule '{name}': '{other}' is not a resource type this server keeps")),
            }
            if !seen.insert((rule.resource_type.clone(), rule.category)) {
                return invalid(format!("rule '{name}': a second rule for {} patients", rule.category.as_str()));
            }
            let years = [rule.years_after_last_activity, rule.years_after_majority, rule.years_after_death];
            if years.iter().flatten().any(|y| !(1..=150).contains(y)) {
                return invalid(format!("rule '{name}': years must be 1 to 150"));
            }
            let fits = match rule.category {
                PatientCategory::Adult => {
                    rule.years_after_last_activity.is_some() && rule.years_after_majority.is_none() && rule.years_after_death.is_none()
                }
                PatientCategory::Minor => rule.years_after_majority.is_some() && rule.years_after_death.is_none(),
                PatientCategory::Deceased => rule.years_after_death.is_some() && rule.years_after_majority.is_none(),
            };
            if !fits {
                return invalid(format!(
                    "rule '{name}': an adult rule takes years_after_last_activity; a minor rule years_after_majority (and \
                     optionally years_after_last_activity, whichever ends later); a deceased rule years_after_death (and \
                     optionally years_after_last_activity)"
                ));
            }
        }
        let names: std::collections::HashSet<&str> = file.rules.iter().map(|r| r.name.as_str()).collect();
        if names.len() != file.rules.len() {
            return invalid("rule names must be unique".to_owned());
        }
        Ok(Self { file })
    }

    /// Years the audit ledger is kept (never less than six; CareVault deletes no entry).
    pub fn ledger_keep_years(&self) -> u32 {
        self.file.ledger.keep_years
    }

    pub fn majority_age(&self) -> u32 {
        self.file.majority_age
    }

    pub fn rules(&self) -> &[Rule] {
        &self.file.rules
    }

    /// The patient's category: deceased, else minor when last seen before the age of
    /// majority, else adult (also when the birth date is unknown).
    pub fn category(&self, facts: &PatientFacts) -> PatientCategory {
        if facts.death.is_some() {
            return PatientCategory::Deceased;
        }
        match facts.birth_date {
            Some(born) if facts.last_activity < add_years(born, self.file.majority_age) => PatientCategory::Minor,
            _ => PatientCategory::Adult,
        }
    }

    /// Which rule ends the patient's records, and from which day. A death of unknown date
    /// counts from the last activity (the death was recorded by then at the latest).
    pub fn judge(&self, facts: &PatientFacts) -> Judgement {
        let category = self.category(facts);
        let Some(rule) = self.file.rules.iter().find(|r| r.category == category) else { return Judgement { category, due: None } };
        let after_activity = rule.years_after_last_activity.map(|y| add_years(facts.last_activity, y));
        let from = match category {
            PatientCategory::Adult => after_activity.unwrap_or(NaiveDate::MAX),
            PatientCategory::Minor => {
                let majority = facts.birth_date.map_or(NaiveDate::MAX, |b| add_years(b, self.file.majority_age));
                let after_majority = add_years(majority, rule.years_after_majority.unwrap_or(0));
                after_majority.max(after_activity.unwrap_or(NaiveDate::MIN))
            }
            PatientCategory::Deceased => {
                let died = facts.death.flatten().unwrap_or(facts.last_activity);
                add_years(died, rule.years_after_death.unwrap_or(0)).max(after_activity.unwrap_or(NaiveDate::MIN))
            }
        };
        Judgement { category, due: Some((rule.name.clone(), from)) }
    }
}

/// The `birthDate` and death of an opened Patient, as [`PatientFacts`] wants them.
pub fn facts_of(patient: &serde_json::Value, last_activity: NaiveDate) -> PatientFacts {
    let birth_date = patient.get("birthDate").and_then(serde_json::Value::as_str).and_then(end_of_fhir_date);
    let death = match (patient.get("deceasedDateTime").and_then(serde_json::Value::as_str), patient.get("deceasedBoolean")) {
        (Some(at), _) => Some(end_of_fhir_date(at)),
        (None, Some(serde_json::Value::Bool(true))) => Some(None),
        _ => None,
    };
    PatientFacts { birth_date, death, last_activity }
}

/// Whole years from `born` to `on` (for the dry run's explanation).
pub fn age_on(born: NaiveDate, on: NaiveDate) -> i32 {
    let mut age = on.year() - born.year();
    if (on.month(), on.day()) < (born.month(), born.day()) {
        age -= 1;
    }
    age
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
        majority_age = 18
        [ledger]
        keep_years = 6
        [[rule]]
        name = "adult-10y"
        category = "adult"
        years_after_last_activity = 10
        [[rule]]
        name = "minor-majority-5y"
        category = "minor"
        years_after_majority = 5
        years_after_last_activity = 10
        [[rule]]
        name = "deceased-7y"
        category = "deceased"
        years_after_death = 7
    "#;

    fn d(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    fn invalid(text: &str) -> String {
        match RetentionPolicy::from_toml(text) {
            Err(RetentionPolicyError::Invalid(m)) | Err(RetentionPolicyError::Parse(m)) => m,
            other => panic!("expected an invalid policy, got {other:?}"),
        }
    }

    #[test]
    fn the_shipped_policy_loads() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let policy = RetentionPolicy::load(&dir).unwrap();
        assert!(policy.ledger_keep_years() >= LEDGER_MINIMUM_YEARS);
        assert_eq!(policy.rules().len(), 3);
    }

    #[test]
    fn adults_end_years_after_their_last_activity() {
        let p = RetentionPolicy::from_toml(POLICY).unwrap();
        let facts = PatientFacts { birth_date: Some(d("1970-03-01")), death: None, last_activity: d("2020-06-15") };
        assert_eq!(p.judge(&facts), Judgement { category: PatientCategory::Adult, due: Some(("adult-10y".into(), d("2030-06-15"))) });
        let unknown_birth = PatientFacts { birth_date: None, ..facts };
        assert_eq!(p.judge(&unknown_birth).category, PatientCategory::Adult);
    }

    #[test]
    fn minors_end_after_majority_plus_years_or_after_activity_whichever_is_later() {
        let p = RetentionPolicy::from_toml(POLICY).unwrap();
        // Seen at 10: majority 2028-01-10, +5 = 2033-01-10; activity 2020 + 10 = 2030.
        let facts = PatientFacts { birth_date: Some(d("2010-01-10")), death: None, last_activity: d("2020-05-01") };
        assert_eq!(p.judge(&facts).due, Some(("minor-majority-5y".into(), d("2033-01-10"))));
        // Seen at 17: majority 2021-02-01 + 5 = 2026-02-01; activity 2020-12-01 + 10 = 2030-12-01.
        let late = PatientFacts { birth_date: Some(d("2003-02-01")), death: None, last_activity: d("2020-12-01") };
        assert_eq!(p.judge(&late).due, Some(("minor-majority-5y".into(), d("2030-12-01"))));
        // Seen again the day they came of age: an adult.
        let adult = PatientFacts { birth_date: Some(d("2003-02-01")), death: None, last_activity: d("2021-02-01") };
        assert_eq!(p.category(&adult), PatientCategory::Adult);
    }

    #[test]
    fn the_deceased_end_years_after_death_and_an_unknown_date_counts_from_last_activity() {
        let p = RetentionPolicy::from_toml(POLICY).unwrap();
        let facts = PatientFacts { birth_date: Some(d("2010-01-10")), death: Some(Some(d("2019-04-30"))), last_activity: d("2019-05-02") };
        assert_eq!(p.judge(&facts), Judgement { category: PatientCategory::Deceased, due: Some(("deceased-7y".into(), d("2026-04-30"))) });
        let unknown = PatientFacts { death: Some(None), ..facts };
        assert_eq!(p.judge(&unknown).due, Some(("deceased-7y".into(), d("2026-05-02"))));
    }

    #[test]
    fn partial_dates_count_from_the_end_of_their_period() {
        assert_eq!(end_of_fhir_date("1980"), Some(d("1980-12-31")));
        assert_eq!(end_of_fhir_date("2024-02"), Some(d("2024-02-29")));
        assert_eq!(end_of_fhir_date("2019-04-30T23:10:00+02:00"), Some(d("2019-04-30")));
        assert_eq!(end_of_fhir_date("soon"), None);
        let patient = serde_json::json!({"birthDate": "2001", "deceasedBoolean": true});
        assert_eq!(
            facts_of(&patient, d("2025-01-01")),
            PatientFacts { birth_date: Some(d("2001-12-31")), death: Some(None), last_activity: d("2025-01-01") }
        );
    }

    #[test]
    fn a_category_without_a_rule_is_kept() {
        let p = RetentionPolicy::from_toml(
            "[ledger]\nkeep_years = 6\n[[rule]]\nname = \"a\"\ncategory = \"adult\"\nyears_after_last_activity = 3\n",
        )
        .unwrap();
        let deceased = PatientFacts { birth_date: None, death: Some(None), last_activity: d("2000-01-01") };
        assert_eq!(p.judge(&deceased), Judgement { category: PatientCategory::Deceased, due: None });
    }

    #[test]
    fn policies_that_would_shorten_or_purge_the_ledger_are_refused() {
        assert!(invalid("[ledger]\nkeep_years = 5\n").contains("at least 6 years"));
        assert!(invalid("majority_age = 18\n").contains("ledger"), "the ledger rule is required");
        let purge_ledger = "[ledger]\nkeep_years = 6\n[[rule]]\nname = \"l\"\nresource_type = \"AuditEvent\"\ncategory = \"adult\"\nyears_after_last_activity = 6\n";
        assert!(invalid(purge_ledger).contains("never purged by record rules"));
    }

    #[test]
    fn malformed_rules_are_refused_with_their_name() {
        let base = "[ledger]\nkeep_years = 6\n";
        let rule = |body: &str| format!("{base}[[rule]]\nname = \"r1\"\n{body}\n");
        assert!(invalid(&rule("category = \"adult\"\nyears_after_death = 3")).contains("r1"));
        assert!(invalid(&rule("category = \"minor\"\nyears_after_last_activity = 3")).contains("r1"));
        assert!(invalid(&rule("category = \"adult\"\nyears_after_last_activity = 0")).contains("1 to 150"));
        assert!(
            invalid(&rule("category = \"adult\"\nresource_type = \"Observation\"\nyears_after_last_activity = 3"))
                .contains("end with their patient")
        );
        assert!(invalid(&rule("category = \"adult\"\nresource_type = \"Invoice\"\nyears_after_last_activity = 3")).contains("Invoice"));
        assert!(invalid(&rule("category = \"elderly\"\nyears_after_last_activity = 3")).contains("elderly"));
        assert!(invalid(&rule("category = \"adult\"\nyears_after_last_activity = 3\nkeep = true")).contains("keep"));
        let twice = format!(
            "{}[[rule]]\nname = \"r2\"\ncategory = \"adult\"\nyears_after_last_activity = 4\n",
            rule("category = \"adult\"\nyears_after_last_activity = 3")
        );
        assert!(invalid(&twice).contains("second rule"));
        assert!(invalid(&format!("{base}majority_age = 0\n")).contains("majority"));
    }

    #[test]
    fn ages_count_whole_years() {
        assert_eq!(age_on(d("2000-05-10"), d("2018-05-09")), 17);
        assert_eq!(age_on(d("2000-05-10"), d("2018-05-10")), 18);
    }
}
