//! FHIR R4 date search (search.html#date and #prefix): the span of time a date, dateTime or
//! instant stands for at its precision, and prefixed query values (`ge2026-03`) compared
//! against those spans. Clinical date elements are stored encrypted, so they are compared
//! here, in memory, once one patient's records are opened; `meta.lastUpdated` is plain and
//! is filtered in SQL through [`DateQuery::instant_bounds`], which agrees with
//! [`DateQuery::matches_instant`].
//!
//! Every time is UTC. A value with a time zone is converted; a value without one (a date or
//! partial date) is taken as UTC. Years run 0001–9999 and every date must be a real
//! calendar date: `2023-02-29` and `2026-13` are refused. Leap seconds (`:60`) are refused.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, Timelike};
use serde_json::Value;

/// A span of time [low, high) in UTC; None = unbounded on that side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub low: Option<NaiveDateTime>,
    pub high: Option<NaiveDateTime>,
}

/// The comparison prefix of a date query value (search.html#prefix). `sa`, `eb` and `ap`
/// are not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

/// A parsed date query value: prefix (default eq) + the bounded span of its date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateQuery {
    pub prefix: Prefix,
    pub span: Span,
}

/// Why a date query value was refused. The value itself is never included.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DateQueryError {
    #[error("uses a prefix this server does not support (eq, ne, gt, ge, lt, le)")]
    Prefix,
    #[error("is not a FHIR date or dateTime (YYYY, YYYY-MM, YYYY-MM-DD or a full dateTime with time zone)")]
    Date,
}

/// Which spellings are read: a resource's elements follow the FHIR types exactly; query
/// values also take `hh:mm` without seconds, and a space where the zone's `+` was (an
/// unescaped `+` in a query string arrives decoded as a space).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grammar {
    Element,
    Query,
}

/// The number spelled by `b`, when `b` is non-empty and all ASCII digits.
fn number(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    b.iter().try_fold(0u32, |n, d| n.checked_mul(10)?.checked_add(u32::from(d - b'0')))
}

/// `[start, start + step)`, None when the end falls outside chrono's range.
fn span_from(start: NaiveDateTime, step: TimeDelta) -> Option<Span> {
    Some(Span { low: Some(start), high: Some(start.checked_add_signed(step)?) })
}

/// The offset of `Z`, `+hh:mm` or `-hh:mm` in minutes east of UTC. FHIR allows
/// `-14:00`..`+14:00`: hours 00–13 with any minutes, or exactly 14:00.
fn zone_minutes(b: &[u8], grammar: Grammar) -> Option<i64> {
    if b == b"Z" {
        return Some(0);
    }
    let &[sign, h1, h2, b':', m1, m2] = b else { return None };
    let sign = match sign {
        b'+' => 1,
        b'-' => -1,
        b' ' if grammar == Grammar::Query => 1,
        _ => return None,
    };
    let hours = number(&[h1, h2])?;
    let minutes = number(&[m1, m2])?;
    let valid = (hours <= 13 && minutes <= 59) || (hours == 14 && minutes == 0);
    valid.then(|| sign * i64::from(hours * 60 + minutes))
}

fn parse_span(raw: &str, grammar: Grammar) -> Option<Span> {
    let b = raw.as_bytes();
    let at = |i: usize| b.get(i).copied();

    let year = number(b.get(0..4)?)?;
    if year == 0 {
        return None;
    }
    let year = year as i32;
    if b.len() == 4 {
        let low = NaiveDate::from_ymd_opt(year, 1, 1)?;
        let high = NaiveDate::from_ymd_opt(year + 1, 1, 1)?;
        return Some(Span { low: Some(low.into()), high: Some(high.into()) });
    }

    if at(4) != Some(b'-') {
        return None;
    }
    let month = number(b.get(5..7)?)?;
    let first = NaiveDate::from_ymd_opt(year, month, 1)?;
    if b.len() == 7 {
        let next = if month == 12 { NaiveDate::from_ymd_opt(year + 1, 1, 1) } else { NaiveDate::from_ymd_opt(year, month + 1, 1) };
        return Some(Span { low: Some(first.into()), high: Some(next?.into()) });
    }

    if at(7) != Some(b'-') {
        return None;
    }
    let day = NaiveDate::from_ymd_opt(year, month, number(b.get(8..10)?)?)?;
    if b.len() == 10 {
        return Some(Span { low: Some(day.into()), high: Some(day.succ_opt()?.into()) });
    }

    // A time: `Thh:mm:ss[.fff…]` (or `Thh:mm` in a query), then the zone it is required to carry.
    if at(10) != Some(b'T') || at(13) != Some(b':') {
        return None;
    }
    let hour = number(b.get(11..13)?)?;
    let minute = number(b.get(14..16)?)?;
    let mut rest = &b[16..];
    let (second, milli, step) = if let [b':', s1, s2, tail @ ..] = rest {
        let second = number(&[*s1, *s2])?;
        rest = tail;
        if let [b'.', tail @ ..] = rest {
            let digits = tail.iter().take_while(|d| d.is_ascii_digit()).count();
            if digits == 0 {
                return None;
            }
            // Kept to the millisecond: further digits are dropped, fewer are padded.
            let milli = tail[..digits].iter().chain(b"000").take(3).fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
            rest = &tail[digits..];
            (second, milli, TimeDelta::milliseconds(1))
        } else {
            (second, 0, TimeDelta::seconds(1))
        }
    } else if grammar == Grammar::Query {
        (0, 0, TimeDelta::minutes(1))
    } else {
        return None;
    };
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let offset = zone_minutes(rest, grammar)?;
    let local = day.and_time(NaiveTime::from_hms_milli_opt(hour, minute, second, milli)?);
    span_from(local.checked_sub_signed(TimeDelta::minutes(offset))?, step)
}

/// The span a FHIR date, dateTime or instant stands for, at its precision: "2026" is all of
/// 2026, "2026-03" all of March, "2026-03-05" that day, "2026-03-05T10:00:00+02:00" that
/// second (converted to UTC; fractional seconds kept to ms: the span is that ms..+1ms when
/// fractional seconds are given, else the whole second). Values without a time zone (dates,
/// partial dates) are taken as UTC. None when `raw` is not a valid FHIR date/dateTime/instant
/// or not a real calendar date.
///
/// A time must carry seconds and a zone (`Z` or `±hh:mm`, at most 14:00 either way), as the
/// FHIR types require.
pub fn span_of(raw: &str) -> Option<Span> {
    parse_span(raw, Grammar::Element)
}

/// The span of one element value: a date string, or a Period object `{start, end}`. A
/// Period with a side present but not a date, with neither side, or ending before it
/// starts carries no usable span.
fn value_span(value: &Value) -> Option<Span> {
    match value {
        Value::String(s) => span_of(s),
        Value::Object(period) => {
            let side = |name: &str| match period.get(name) {
                None => Some(None),
                Some(v) => v.as_str().and_then(span_of).map(Some),
            };
            let (start, end) = (side("start")?, side("end")?);
            if start.is_none() && end.is_none() {
                return None;
            }
            let span = Span { low: start.and_then(|s| s.low), high: end.and_then(|e| e.high) };
            match span {
                Span { low: Some(low), high: Some(high) } if low >= high => None,
                _ => Some(span),
            }
        }
        _ => None,
    }
}

/// The spans of a resource's date element named `base` for a search parameter: the
/// element itself (`authoredOn`, `period`), and choice-type variants `{base}DateTime`,
/// `{base}Instant`, `{base}Date`, `{base}Period` (e.g. base "effective" →
/// effectiveDateTime / effectivePeriod / effectiveInstant; base "onset" → onsetDateTime /
/// onsetPeriod). A string gives span_of(string); a Period object `{start, end}` gives
/// [span_of(start).low, span_of(end).high) with a missing side unbounded; an array gives
/// every item's span. Invalid values are skipped, and so is a Period with neither `start`
/// nor `end` (it names no time) or one that ends before it starts.
pub fn spans_of(resource: &Value, base: &str) -> Vec<Span> {
    let names = [base.to_owned(), format!("{base}DateTime"), format!("{base}Instant"), format!("{base}Date"), format!("{base}Period")];
    let mut spans = Vec::new();
    for name in &names {
        match resource.get(name) {
            Some(Value::Array(items)) => spans.extend(items.iter().filter_map(value_span)),
            Some(value) => spans.extend(value_span(value)),
            None => {}
        }
    }
    spans
}

/// Whether bound `a` lies strictly further out than bound `b` on the same side of a span:
/// earlier for low bounds, later for high ones. None is unbounded, further out than any
/// time and not further out than another None.
fn further(a: Option<NaiveDateTime>, b: Option<NaiveDateTime>, low_side: bool) -> bool {
    match (a, b) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(a), Some(b)) => {
            if low_side {
                a < b
            } else {
                a > b
            }
        }
    }
}

/// The same instant at millisecond precision (sub-millisecond digits dropped, a leap
/// second read as the last millisecond of its minute).
fn to_milli(t: NaiveDateTime) -> NaiveDateTime {
    let nanos = t.nanosecond().min(999_999_999) / 1_000_000 * 1_000_000;
    t.with_nanosecond(nanos).unwrap_or(t)
}

impl DateQuery {
    /// Reads `[prefix]date`, trimmed: the prefix is one of `eq` (the default when the value
    /// starts with a digit), `ne`, `gt`, `ge`, `lt`, `le`; two other letters (`sa`, `eb`,
    /// `ap`, …) are [`DateQueryError::Prefix`]. The date is `YYYY`, `YYYY-MM`, `YYYY-MM-DD`
    /// or a dateTime with a time zone, seconds optional (`2026-03-05T10:00Z` is that
    /// minute); a time without a zone is [`DateQueryError::Date`], as FHIR requires one. A
    /// space where the zone's `+` belongs is read as `+`: an unescaped `+` in a query string
    /// arrives decoded as a space.
    pub fn parse(raw: &str) -> Result<Self, DateQueryError> {
        let raw = raw.trim();
        let (prefix, date) = match raw.as_bytes() {
            [a, b, ..] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                let prefix = match &raw[..2] {
                    "eq" => Prefix::Eq,
                    "ne" => Prefix::Ne,
                    "gt" => Prefix::Gt,
                    "ge" => Prefix::Ge,
                    "lt" => Prefix::Lt,
                    "le" => Prefix::Le,
                    _ => return Err(DateQueryError::Prefix),
                };
                (prefix, &raw[2..])
            }
            _ => (Prefix::Eq, raw),
        };
        let span = parse_span(date, Grammar::Query).ok_or(DateQueryError::Date)?;
        Ok(Self { prefix, span })
    }

    /// Whether a target span matches, per the R4 prefix table, the search span being S and
    /// the target T (both [low, high), an unbounded side lying beyond any time):
    ///
    /// - `lt`: "the range below the search value intersects the target": T starts before S
    ///   does, `T.low < S.low` (an unbounded T.low counts).
    /// - `gt`: "the range above the search value intersects the target": T runs past S's
    ///   end, `T.high > S.high` (an unbounded T.high counts).
    /// - `eq`: "the search range fully contains the target": `S.low <= T.low && T.high <=
    ///   S.high`, which is neither `lt` nor `gt`.
    /// - `ne`: not `eq`, i.e. `lt || gt`.
    /// - `ge`: `gt || eq`, i.e. `gt || !lt`: T does not start before S, or it runs past S's
    ///   end. A target that starts before S and ends inside it matches `lt`, `le` and `ne`
    ///   but not `ge`; one that contains S with room on both sides matches all four of
    ///   `gt`, `ge`, `lt`, `le`.
    /// - `le`: `lt || eq`, i.e. `lt || !gt`: T does not run past S's end, or it starts
    ///   before S. A target that starts inside S and runs past its end matches `gt`, `ge` and
    ///   `ne` but not `le`.
    pub fn matches(&self, target: &Span) -> bool {
        let s = &self.span;
        let lt = further(target.low, s.low, true);
        let gt = further(target.high, s.high, false);
        match self.prefix {
            Prefix::Eq => !lt && !gt,
            Prefix::Ne => lt || gt,
            Prefix::Gt => gt,
            Prefix::Lt => lt,
            Prefix::Ge => gt || !lt,
            Prefix::Le => lt || !gt,
        }
    }

    /// Whether a single instant (a resource's `meta.lastUpdated`, ms precision) matches:
    /// the instant as the span [t, t+1ms). Digits below the millisecond are dropped first.
    pub fn matches_instant(&self, t: NaiveDateTime) -> bool {
        let t = to_milli(t);
        // Past chrono's last millisecond the span is open-ended, which compares the same.
        self.matches(&Span { low: Some(t), high: t.checked_add_signed(TimeDelta::milliseconds(1)) })
    }

    /// The same test as bounds for SQL on an instant column: instants t with `t >= from`
    /// (if Some) and `t < until` (if Some); for `ne`, None (the caller filters `ne` in
    /// memory or negates the `eq` bounds). With S the search span:
    ///
    /// - `eq`: `S.low <= t < S.high`
    /// - `gt`: `t >= S.high`
    /// - `ge`: `t >= S.low`
    /// - `lt`: `t < S.low`
    /// - `le`: `t < S.high`
    ///
    /// Agrees with [`DateQuery::matches_instant`] for every instant and every prefix but
    /// `ne`, because all bounds a query parses to are whole milliseconds. (For a span built
    /// by hand with an unbounded side that `gt`/`lt` must reach past, nothing matches, and the
    /// bounds are the empty range `UNIX_EPOCH <= t < UNIX_EPOCH`.)
    pub fn instant_bounds(&self) -> Option<(Option<NaiveDateTime>, Option<NaiveDateTime>)> {
        let Span { low, high } = self.span;
        let epoch = DateTime::UNIX_EPOCH.naive_utc();
        let nothing = Some((Some(epoch), Some(epoch)));
        match self.prefix {
            Prefix::Ne => None,
            Prefix::Eq => Some((low, high)),
            Prefix::Gt => high.map_or(nothing, |h| Some((Some(h), None))),
            Prefix::Lt => low.map_or(nothing, |l| Some((None, Some(l)))),
            // `gt || eq`: S.low for any non-empty S; an empty one leaves only `gt`.
            Prefix::Ge => match (low, high) {
                (Some(l), Some(h)) if h < l => Some((Some(h), None)),
                _ => Some((low, None)),
            },
            // `lt || eq`: S.high for any non-empty S; an empty one leaves only `lt`.
            Prefix::Le => match (low, high) {
                (Some(l), Some(h)) if l > h => Some((None, Some(l))),
                _ => Some((None, high)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(raw: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S%.f").unwrap()
    }

    fn span(low: &str, high: &str) -> Span {
        Span { low: Some(at(low)), high: Some(at(high)) }
    }

    #[test]
    fn spans_at_each_precision() {
        assert_eq!(span_of("2026"), Some(span("2026-01-01T00:00:00", "2027-01-01T00:00:00")));
        assert_eq!(span_of("2026-03"), Some(span("2026-03-01T00:00:00", "2026-04-01T00:00:00")));
        assert_eq!(span_of("2026-12"), Some(span("2026-12-01T00:00:00", "2027-01-01T00:00:00")));
        assert_eq!(span_of("2026-03-05"), Some(span("2026-03-05T00:00:00", "2026-03-06T00:00:00")));
        assert_eq!(span_of("2026-12-31"), Some(span("2026-12-31T00:00:00", "2027-01-01T00:00:00")));
        assert_eq!(span_of("2026-03-05T10:00:00Z"), Some(span("2026-03-05T10:00:00", "2026-03-05T10:00:01")));
        assert_eq!(span_of("2026-03-05T10:00:00.5Z"), Some(span("2026-03-05T10:00:00.500", "2026-03-05T10:00:00.501")));
        assert_eq!(span_of("2026-03-05T10:00:00.123456789Z"), Some(span("2026-03-05T10:00:00.123", "2026-03-05T10:00:00.124")));
        assert_eq!(span_of("2026-03-05T10:00:00.000Z"), Some(span("2026-03-05T10:00:00", "2026-03-05T10:00:00.001")));
        assert_eq!(span_of("0001"), Some(span("0001-01-01T00:00:00", "0002-01-01T00:00:00")));
        let year_10000 = NaiveDate::from_ymd_opt(10000, 1, 1).unwrap().into();
        assert_eq!(span_of("9999-12-31"), Some(Span { low: Some(at("9999-12-31T00:00:00")), high: Some(year_10000) }));
    }

    #[test]
    fn time_zones_convert_to_utc() {
        assert_eq!(span_of("2026-03-05T10:00:00+02:00"), Some(span("2026-03-05T08:00:00", "2026-03-05T08:00:01")));
        assert_eq!(span_of("2026-03-05T01:30:00+05:30"), Some(span("2026-03-04T20:00:00", "2026-03-04T20:00:01")));
        assert_eq!(span_of("2026-12-31T20:00:00-05:00"), Some(span("2027-01-01T01:00:00", "2027-01-01T01:00:01")));
        assert_eq!(span_of("2026-03-05T10:00:00-00:00"), span_of("2026-03-05T10:00:00Z"));
        assert_eq!(span_of("2026-03-05T10:00:00+14:00"), Some(span("2026-03-04T20:00:00", "2026-03-04T20:00:01")));
        assert_eq!(span_of("2026-03-05T10:00:00.250-14:00"), Some(span("2026-03-06T00:00:00.250", "2026-03-06T00:00:00.251")));
        // An instant and the same instant in another zone are the same span.
        assert_eq!(span_of("2026-03-05T12:00:00+02:00"), span_of("2026-03-05T10:00:00Z"));
    }

    #[test]
    fn invalid_values_are_refused() {
        for bad in [
            "",
            "202",
            "20266",
            "0000",
            "2026-13",
            "2026-00",
            "2026-3",
            "2023-02-29",
            "2026-02-30",
            "2026-04-31",
            "2026-03-00",
            "2026-03-5",
            "2026-03-05T",
            "2026-03-05T10:00:00",
            "2026-03-05T10:00Z",
            "2026-03-05T24:00:00Z",
            "2026-03-05T10:60:00Z",
            "2026-03-05T10:00:60Z",
            "2026-03-05T10:00:00.Z",
            "2026-03-05T10:00:00+02",
            "2026-03-05T10:00:00+0200",
            "2026-03-05T10:00:00+14:30",
            "2026-03-05T10:00:00+15:00",
            "2026-03-05T10:00:00+02:60",
            "2026-03-05T10:00:00 02:00",
            "2026-03-05T10:00:00z",
            "2026-03-05t10:00:00Z",
            "2026-03-05 10:00:00Z",
            "2026-03-05Z",
            " 2026",
            "2026 ",
            "+2026",
            "２０２６",
            "2026-03-05T10:00:00ZZ",
        ] {
            assert_eq!(span_of(bad), None, "{bad:?}");
        }
        assert!(span_of("2024-02-29").is_some());
        assert!(span_of("2000-02-29").is_some());
        assert!(span_of("1900-02-29").is_none());
    }

    #[test]
    fn periods_and_choice_types() {
        let r = json!({
            "resourceType": "Observation",
            "effectivePeriod": {"start": "2026-03-05", "end": "2026-03-07T12:00:00Z"},
            "issued": "2026-03-08T09:00:00.000Z",
        });
        assert_eq!(spans_of(&r, "effective"), vec![span("2026-03-05T00:00:00", "2026-03-07T12:00:01")]);
        assert_eq!(spans_of(&r, "issued"), vec![span("2026-03-08T09:00:00", "2026-03-08T09:00:00.001")]);
        assert!(spans_of(&r, "onset").is_empty());

        let open_end = json!({"period": {"start": "2026-03-05"}});
        assert_eq!(spans_of(&open_end, "period"), vec![Span { low: Some(at("2026-03-05T00:00:00")), high: None }]);
        let open_start = json!({"onsetPeriod": {"end": "2026-03"}});
        assert_eq!(spans_of(&open_start, "onset"), vec![Span { low: None, high: Some(at("2026-04-01T00:00:00")) }]);

        let r = json!({
            "onsetDateTime": "2026-03-05T10:00:00+01:00",
            "effectiveInstant": "2026-03-05T10:00:00Z",
            "occurrenceDate": "2026",
            "authoredOn": "2026-03-05",
        });
        assert_eq!(spans_of(&r, "onset"), vec![span("2026-03-05T09:00:00", "2026-03-05T09:00:01")]);
        assert_eq!(spans_of(&r, "effective"), vec![span("2026-03-05T10:00:00", "2026-03-05T10:00:01")]);
        assert_eq!(spans_of(&r, "occurrence"), vec![span("2026-01-01T00:00:00", "2027-01-01T00:00:00")]);
        assert_eq!(spans_of(&r, "authoredOn"), vec![span("2026-03-05T00:00:00", "2026-03-06T00:00:00")]);

        // Arrays give every item; invalid items and periods are skipped.
        let r = json!({
            "date": ["2026-03-05", "2023-02-29", 7, {"start": "2026-04"}, {"start": "nope"}, {}, {"start": "2026-03-06", "end": "2026-03-04"}, ["2026"]],
            "datePeriod": {"start": "2026-03-05", "end": "2026-03-05"},
            "dateDateTime": "2026-03-05T10:00:00",
        });
        assert_eq!(
            spans_of(&r, "date"),
            vec![
                span("2026-03-05T00:00:00", "2026-03-06T00:00:00"),
                Span { low: Some(at("2026-04-01T00:00:00")), high: None },
                span("2026-03-05T00:00:00", "2026-03-06T00:00:00"),
            ]
        );
    }

    #[test]
    fn query_values_parse() {
        let q = |raw: &str| DateQuery::parse(raw);
        let march = span("2026-03-01T00:00:00", "2026-04-01T00:00:00");
        assert_eq!(q("2026-03"), Ok(DateQuery { prefix: Prefix::Eq, span: march }));
        assert_eq!(q("  eq2026-03 "), Ok(DateQuery { prefix: Prefix::Eq, span: march }));
        for (raw, prefix) in
            [("ne", Prefix::Ne), ("gt", Prefix::Gt), ("ge", Prefix::Ge), ("lt", Prefix::Lt), ("le", Prefix::Le), ("eq", Prefix::Eq)]
        {
            assert_eq!(q(&format!("{raw}2026-03")), Ok(DateQuery { prefix, span: march }));
        }
        let minute = span("2026-03-05T08:00:00", "2026-03-05T08:01:00");
        assert_eq!(q("ge2026-03-05T10:00+02:00").map(|d| d.span), Ok(minute));
        assert_eq!(q("2026-03-05T08:00Z").map(|d| d.span), Ok(minute));
        assert_eq!(q("2026-03-05T10:00:00 02:00").map(|d| d.span), q("2026-03-05T10:00:00+02:00").map(|d| d.span));
        assert_eq!(q("2026-03-05T10:00 02:00").map(|d| d.span), Ok(minute));
        assert_eq!(q("lt2026-03-05T10:00:00.25Z").map(|d| d.span), Ok(span("2026-03-05T10:00:00.250", "2026-03-05T10:00:00.251")));

        for unsupported in ["sa2026", "eb2026-03", "ap2026-03-05", "xx2026", "GE2026", "Eq2026", "abc"] {
            assert_eq!(q(unsupported), Err(DateQueryError::Prefix), "{unsupported}");
        }
        for not_a_date in [
            "",
            "   ",
            "eq",
            "ge",
            "ge 2026",
            "2026-13",
            "ge2023-02-29",
            "2026-03-05T10:00:00",
            "2026-03-05T10:00",
            "2026-03-05T10Z",
            "2026-03-05T10:00:00+15:00",
            "e2026",
            "é2026",
            "g",
            "2026/03/05",
        ] {
            assert_eq!(q(not_a_date), Err(DateQueryError::Date), "{not_a_date:?}");
        }
    }

    #[test]
    fn errors_never_echo_the_value() {
        for raw in ["sa2026-03-05", "zz1999", "2023-02-29", "ge2026-03-05T10:00:00", "secret-value-123", "2026-13"] {
            let err = DateQuery::parse(raw).unwrap_err();
            for shown in [err.to_string(), format!("{err:?}")] {
                assert!(!shown.contains(raw), "{shown}");
                assert!(!shown.contains("2026") && !shown.contains("1999") && !shown.contains("2023"), "{shown}");
            }
        }
    }

    /// Every prefix against targets that lie before, inside, across either end of, after,
    /// and around the search span `2026-03`, per the R4 prefix table.
    #[test]
    fn prefixes_follow_the_r4_table() {
        let period = |start: Option<&str>, end: Option<&str>| {
            let mut p = serde_json::Map::new();
            p.extend(start.map(|s| ("start".to_owned(), json!(s))));
            p.extend(end.map(|e| ("end".to_owned(), json!(e))));
            spans_of(&json!({ "period": p }), "period")[0]
        };
        let one = |raw: &str| span_of(raw).unwrap();
        // Expected results, in the order eq, ne, gt, ge, lt, le.
        let table: Vec<(&str, Span, [bool; 6])> = vec![
            ("long before", one("2025"), [false, true, false, false, true, true]),
            ("just before (ends where S starts)", one("2026-02"), [false, true, false, false, true, true]),
            ("last ms before", one("2026-02-28T23:59:59.999Z"), [false, true, false, false, true, true]),
            ("before, in another zone", one("2026-03-01T01:00:00+02:00"), [false, true, false, false, true, true]),
            ("first second inside", one("2026-03-01T00:00:00Z"), [true, false, false, true, false, true]),
            ("inside", one("2026-03-05"), [true, false, false, true, false, true]),
            ("last ms inside", one("2026-03-31T23:59:59.999Z"), [true, false, false, true, false, true]),
            ("inside, in another zone", one("2026-04-01T01:00:00+02:00"), [true, false, false, true, false, true]),
            ("equal", one("2026-03"), [true, false, false, true, false, true]),
            ("period inside", period(Some("2026-03-02"), Some("2026-03-30")), [true, false, false, true, false, true]),
            ("overlapping the start", period(Some("2026-02-20"), Some("2026-03-10")), [false, true, false, false, true, true]),
            ("overlapping the end", period(Some("2026-03-20"), Some("2026-04-10")), [false, true, true, true, false, false]),
            ("just after (starts where S ends)", one("2026-04"), [false, true, true, true, false, false]),
            ("first second after", one("2026-04-01T00:00:00Z"), [false, true, true, true, false, false]),
            ("long after", one("2027"), [false, true, true, true, false, false]),
            ("containing", one("2026"), [false, true, true, true, true, true]),
            ("containing, same start", period(Some("2026-03-01"), Some("2026-04-15")), [false, true, true, true, false, false]),
            ("containing, same end", period(Some("2026-02-15"), Some("2026-03-31")), [false, true, false, false, true, true]),
            ("open end, starting inside", period(Some("2026-03-10"), None), [false, true, true, true, false, false]),
            ("open end, starting before", period(Some("2026-02-10"), None), [false, true, true, true, true, true]),
            ("open end, starting after", period(Some("2026-05-10"), None), [false, true, true, true, false, false]),
            ("open start, ending inside", period(None, Some("2026-03-10")), [false, true, false, false, true, true]),
            ("open start, ending after", period(None, Some("2026-05-10")), [false, true, true, true, true, true]),
            ("open start, ending before", period(None, Some("2026-02-10")), [false, true, false, false, true, true]),
            ("unbounded", Span { low: None, high: None }, [false, true, true, true, true, true]),
        ];
        let prefixes = ["eq", "ne", "gt", "ge", "lt", "le"];
        for (name, target, expected) in &table {
            for (prefix, want) in prefixes.iter().zip(expected) {
                let q = DateQuery::parse(&format!("{prefix}2026-03")).unwrap();
                assert_eq!(q.matches(target), *want, "{prefix} against {name}");
            }
        }
    }

    #[test]
    fn a_finer_query_against_a_coarser_target() {
        // The day 2026-03-05 is not inside the minute, but reaches past both of its ends.
        let day = span_of("2026-03-05").unwrap();
        let results: Vec<bool> = ["eq", "ne", "gt", "ge", "lt", "le"]
            .iter()
            .map(|p| DateQuery::parse(&format!("{p}2026-03-05T10:00Z")).unwrap().matches(&day))
            .collect();
        assert_eq!(results, [false, true, true, true, true, true]);
    }

    #[test]
    fn instant_matching_agrees_with_sql_bounds() {
        let mut queries: Vec<DateQuery> = Vec::new();
        for date in
            ["2026", "2026-03", "2026-02-28", "2024-02-29", "2026-03-05T10:00:00+02:00", "2026-03-05T10:00Z", "2026-03-05T10:00:00.250Z"]
        {
            for prefix in ["eq", "ne", "gt", "ge", "lt", "le"] {
                queries.push(DateQuery::parse(&format!("{prefix}{date}")).unwrap());
            }
        }
        // Spans built by hand, open on a side or empty, agree too.
        let t0 = at("2026-03-05T00:00:00");
        let t1 = at("2026-03-06T00:00:00");
        for span in [
            Span { low: None, high: Some(t1) },
            Span { low: Some(t0), high: None },
            Span { low: None, high: None },
            Span { low: Some(t1), high: Some(t0) },
            Span { low: Some(t0), high: Some(t0) },
        ] {
            for prefix in [Prefix::Eq, Prefix::Ne, Prefix::Gt, Prefix::Ge, Prefix::Lt, Prefix::Le] {
                queries.push(DateQuery { prefix, span });
            }
        }

        // Every bound of every query, and instants just around it, plus a sweep.
        let mut instants = vec![NaiveDateTime::MIN, NaiveDateTime::MAX, DateTime::UNIX_EPOCH.naive_utc()];
        let steps = [0, 1, -1, 999, -999, 1_000, -1_000, 60_000, -60_000, 86_400_000, -86_400_000];
        for q in &queries {
            for bound in [q.span.low, q.span.high].into_iter().flatten() {
                for ms in steps {
                    let t = bound + TimeDelta::milliseconds(ms);
                    instants.extend([
                        t,
                        t + TimeDelta::microseconds(1),
                        t + TimeDelta::nanoseconds(999_999),
                        t - TimeDelta::nanoseconds(1),
                    ]);
                }
            }
        }
        let mut t = at("2025-12-01T00:00:00");
        while t < at("2027-02-01T00:00:00") {
            instants.push(t);
            t += TimeDelta::milliseconds(3_600_007);
        }

        let mut checked = 0;
        for q in &queries {
            let Some((from, until)) = q.instant_bounds() else {
                assert_eq!(q.prefix, Prefix::Ne);
                continue;
            };
            for &t in &instants {
                let in_bounds = from.is_none_or(|f| t >= f) && until.is_none_or(|u| t < u);
                assert_eq!(q.matches_instant(t), in_bounds, "{q:?} at {t}");
                checked += 1;
            }
        }
        assert!(checked > 10_000);

        // `ne` is exactly not `eq`.
        for q in queries.iter().filter(|q| q.prefix == Prefix::Ne) {
            let eq = DateQuery { prefix: Prefix::Eq, ..*q };
            for &t in &instants {
                assert_eq!(q.matches_instant(t), !eq.matches_instant(t));
            }
        }
    }

    #[test]
    fn instants_at_the_edges_of_a_day() {
        let q = |raw: &str| DateQuery::parse(raw).unwrap();
        let start = at("2026-03-05T00:00:00");
        let last = at("2026-03-05T23:59:59.999");
        let next = at("2026-03-06T00:00:00");
        assert!(q("2026-03-05").matches_instant(start));
        assert!(q("2026-03-05").matches_instant(last));
        assert!(q("2026-03-05").matches_instant(at("2026-03-05T23:59:59.999999")));
        assert!(!q("2026-03-05").matches_instant(next));
        assert!(q("gt2026-03-05").matches_instant(next));
        assert!(!q("gt2026-03-05").matches_instant(last));
        assert!(q("ge2026-03-05").matches_instant(start));
        assert!(!q("ge2026-03-05").matches_instant(start - TimeDelta::milliseconds(1)));
        assert!(q("lt2026-03-05").matches_instant(start - TimeDelta::milliseconds(1)));
        assert!(!q("lt2026-03-05").matches_instant(start));
        assert!(q("le2026-03-05").matches_instant(last));
        assert!(!q("le2026-03-05").matches_instant(next));
        assert_eq!(q("2026-03-05").instant_bounds(), Some((Some(start), Some(next))));
        assert_eq!(q("gt2026-03-05").instant_bounds(), Some((Some(next), None)));
        assert_eq!(q("ge2026-03-05").instant_bounds(), Some((Some(start), None)));
        assert_eq!(q("lt2026-03-05").instant_bounds(), Some((None, Some(start))));
        assert_eq!(q("le2026-03-05").instant_bounds(), Some((None, Some(next))));
        assert_eq!(q("ne2026-03-05").instant_bounds(), None);
    }
}
