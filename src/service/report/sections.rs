//! The report's sections after the trust banner: the period at a glance, the charts with
//! their captions and tables, break-glass events, one patient's accessors, the accounting
//! of disclosures, purges, shreds, legal holds and refused logins. Every text that is not
//! this file's own goes through [`escape`].

use std::fmt::Write;

use super::ReportData;
use super::aggregate::{ACCESS_SERIES, BUSINESS_HOURS, Capped, MAX_PAIRS, Row};
use super::html::{escape, number};
use super::svg::{FILLS, HeatMap, HorizontalBars, Series, StackedBars};
use crate::domain::AuditAction;

pub(super) fn summary(out: &mut String, data: &ReportData) {
    let f = &data.figures;
    let denied: u64 = f.denied_per_day.iter().map(|d| d.iter().sum::<u64>()).sum();
    let share = if f.patient_accesses == 0 { 0.0 } else { 100.0 * f.after_hours as f64 / f.patient_accesses as f64 };
    let actors = f.actors.stats.len() as u64;
    let _ = write!(
        out,
        r#"<section id="summary" aria-labelledby="summary-h"><h2 id="summary-h">The period at a glance</h2><div class="kpi">
<div><b>{}</b>ledger entries</div><div><b>{}</b>accesses naming a patient</div><div><b>{}</b>after hours ({share:.1}%)</div><div><b>{}</b>denied attempts</div>
<div><b>{}</b>break-glass entries</div><div><b>{}</b>refused tokens</div><div><b>{}</b>actors</div><div><b>{}</b>records purged</div></div></section>
"#,
        number(f.in_period),
        number(f.patient_accesses),
        number(f.after_hours),
        number(denied),
        number(f.break_glass.total),
        number(f.refused_logins.total),
        number(actors),
        number(f.retention_purges.values().sum())
    );
}

fn access_series() -> Vec<Series> {
    ACCESS_SERIES.iter().zip(FILLS).map(|(name, fill)| Series { name, fill }).collect()
}

pub(super) fn accesses(out: &mut String, data: &ReportData) {
    let f = &data.figures;
    let labels = f.period.day_labels();
    let total: u64 = f.per_day.iter().flatten().sum();
    let busiest = f.per_day.iter().enumerate().max_by_key(|(_, d)| d.iter().sum::<u64>()).map(|(d, v)| (d, v.iter().sum::<u64>()));
    let desc = match busiest {
        Some((d, n)) if total > 0 => format!(
            "Stacked bars, one per UTC day from {} to {}: {} entries in all; the busiest day, {}, had {}. Successful accesses are split by kind (read, search, write, sync, export, purge); denied and failed attempts are stacked on top whatever their action. The table below gives the exact counts.",
            f.period.day(0),
            f.period.day(f.period.days - 1),
            number(total),
            f.period.day(d),
            number(n)
        ),
        _ => "No entries in this period.".to_owned(),
    };
    let series = access_series();
    let svg = StackedBars {
        id: "chart-accesses",
        title: "Accesses per day, by action and outcome",
        desc: &desc,
        x_title: "Day (UTC, month-day)",
        y_title: "Ledger entries",
        labels: &labels,
        series: &series,
        values: &f.per_day,
    }
    .render();
    let _ = write!(
        out,
        r#"<section id="accesses" aria-labelledby="accesses-h"><h2 id="accesses-h">Accesses per day</h2><figure>{svg}<figcaption>{}</figcaption></figure>"#,
        escape(&desc)
    );
    out.push_str(r#"<table><caption class="note">Entries of the period by action and outcome</caption><thead><tr><th>action</th><th class="n">success</th><th class="n">denied</th><th class="n">error</th></tr></thead><tbody>"#);
    for (a, counts) in AuditAction::ALL.iter().zip(&f.by_action) {
        if counts.iter().all(|c| *c == 0) {
            continue;
        }
        let _ = write!(
            out,
            r#"<tr><td>{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
            a.as_str(),
            number(counts[0]),
            number(counts[1]),
            number(counts[2])
        );
    }
    out.push_str("</tbody></table></section>\n");
}

pub(super) fn heat(out: &mut String, data: &ReportData) {
    let f = &data.figures;
    let (b0, b1) = BUSINESS_HOURS;
    let desc = format!(
        "Heat map of the {} accesses naming a patient by hour of day (columns, UTC) and weekday (rows, Monday first); darker cells had more, and each cell shows its count. The outlined block is Monday to Friday {b0:02}:00 to {b1:02}:00 UTC; the {} accesses outside it are after hours.",
        number(f.patient_accesses),
        number(f.after_hours)
    );
    let svg = HeatMap {
        id: "chart-after-hours",
        title: "Accesses by hour and weekday (UTC)",
        desc: &desc,
        cells: &f.heat,
        business: BUSINESS_HOURS,
    }
    .render();
    let _ = writeln!(
        out,
        r#"<section id="after-hours" aria-labelledby="after-hours-h"><h2 id="after-hours-h">After-hours access</h2><p class="note">Hours are UTC: the ledger records UTC and the report does not assume the clinic's time zone. Read the business-hours block with the clinic's offset in mind.</p><figure>{svg}<figcaption>{}</figcaption></figure></section>"#,
        escape(&desc)
    );
}

pub(super) fn denied(out: &mut String, data: &ReportData) {
    let f = &data.figures;
    let refused: u64 = f.denied_per_day.iter().map(|d| d[0]).sum();
    let other: u64 = f.denied_per_day.iter().map(|d| d[1]).sum();
    let desc = format!(
        "Stacked bars of denied attempts per UTC day: {} refused tokens (validly signed, refused for their claims) and {} requests refused by access control, {} in all.",
        number(refused),
        number(other),
        number(refused + other)
    );
    let labels = f.period.day_labels();
    let series = [Series { name: "refused token", fill: FILLS[0] }, Series { name: "access denied", fill: FILLS[6] }];
    let svg = StackedBars {
        id: "chart-denied",
        title: "Denied attempts per day",
        desc: &desc,
        x_title: "Day (UTC, month-day)",
        y_title: "Denied attempts",
        labels: &labels,
        series: &series,
        values: &f.denied_per_day,
    }
    .render();
    let _ = writeln!(
        out,
        r#"<section id="denied" aria-labelledby="denied-h"><h2 id="denied-h">Denied attempts</h2><figure>{svg}<figcaption>{}</figcaption></figure></section>"#,
        escape(&desc)
    );
}

fn left_out(out: &mut String, list_total: u64, shown: usize, what: &str) {
    let more = list_total.saturating_sub(shown as u64);
    if more > 0 {
        let _ = write!(
            out,
            r#"<p class="note">{} more {what} are not listed here (the first {} are); an export of the period lists them all.</p>"#,
            number(more),
            number(shown as u64)
        );
    }
}

fn opt(v: &Option<String>) -> String {
    escape(v.as_deref().unwrap_or("—"))
}

pub(super) fn break_glass(out: &mut String, data: &ReportData) {
    let list = &data.figures.break_glass;
    out.push_str(r#"<section id="break-glass" aria-labelledby="break-glass-h"><h2 id="break-glass-h">Break-glass events</h2><p class="note">Emergency access (allowed because the caller broke the glass) and refused break-glass attempts, each with the reason the caller gave.</p>"#);
    if list.rows.is_empty() {
        out.push_str("<p>No break-glass event in this period.</p></section>\n");
        return;
    }
    out.push_str(r#"<table><thead><tr><th>time (UTC)</th><th>actor</th><th>patient</th><th>action</th><th>outcome</th><th>reason given</th></tr></thead><tbody>"#);
    for r in &list.rows {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{} <span class=\"note\">({})</span></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.time),
            escape(&r.actor),
            escape(&r.roles),
            opt(&r.patient),
            r.action.as_str(),
            r.outcome.as_str(),
            opt(&r.break_glass)
        );
    }
    out.push_str("</tbody></table>");
    left_out(out, list.total, list.rows.len(), "break-glass events");
    out.push_str("</section>\n");
}

pub(super) fn top_actors(out: &mut String, data: &ReportData) {
    let actors = &data.figures.actors;
    let top = actors.top(10);
    let bars: Vec<(String, u64)> = top.iter().map(|a| (a.sub.clone(), a.patients)).collect();
    let desc = if top.is_empty() {
        "No successful access named a patient in this period.".to_owned()
    } else {
        format!(
            "Horizontal bars: the {} actors who touched the most distinct patients in the period (successful accesses naming a patient), {} first with {}.",
            top.len(),
            top[0].sub,
            number(top[0].patients)
        )
    };
    let svg = HorizontalBars {
        id: "chart-top-actors",
        title: "Top actors by distinct patients touched",
        desc: &desc,
        x_title: "Distinct patients",
        bars: &bars,
    }
    .render();
    let _ = write!(
        out,
        r#"<section id="top-actors" aria-labelledby="top-actors-h"><h2 id="top-actors-h">Top actors by distinct patients</h2><figure>{svg}<figcaption>{}</figcaption></figure>"#,
        escape(&desc)
    );
    if !top.is_empty() {
        out.push_str(r#"<table><thead><tr><th>actor</th><th>roles</th><th class="n">distinct patients</th><th class="n">accesses</th><th class="n">denied</th></tr></thead><tbody>"#);
        for a in &top {
            let _ = write!(
                out,
                r#"<tr><td>{}</td><td>{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
                escape(&a.sub),
                escape(&a.roles),
                number(a.patients),
                number(a.accesses),
                number(a.denied)
            );
        }
        out.push_str("</tbody></table>");
    }
    if actors.pairs_left_out > 0 || actors.actors_left_out > 0 {
        let _ = write!(
            out,
            r#"<p class="note">Counting bound reached: more than {} distinct actor–patient pairs (or actors) in the period; {} accesses to pairs not yet seen were not counted, so these counts are lower bounds.</p>"#,
            number(MAX_PAIRS as u64),
            number(actors.pairs_left_out + actors.actors_left_out)
        );
    }
    out.push_str("</section>\n");
}

pub(super) fn patient_view(out: &mut String, data: &ReportData) {
    let Some(view) = &data.figures.patient else { return };
    let _ =
        write!(out, r#"<section id="patient" aria-labelledby="patient-h"><h2 id="patient-h">Who accessed {}</h2>"#, escape(&view.patient));
    if view.rows.total == 0 {
        out.push_str("<p>No entry names this patient in the period.</p></section>\n");
        return;
    }
    out.push_str(r#"<table><thead><tr><th>actor</th><th>roles</th><th class="n">accesses</th><th class="n">denied</th><th class="n">break-glass</th><th>first</th><th>last</th><th>purposes of use</th></tr></thead><tbody>"#);
    for a in view.accessors.values() {
        let _ = write!(
            out,
            r#"<tr><td>{}</td><td>{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            escape(&a.sub),
            escape(&a.roles),
            number(a.accesses),
            number(a.denied),
            number(a.break_glass),
            escape(&a.first),
            escape(&a.last),
            escape(&a.purposes.iter().cloned().collect::<Vec<_>>().join(", "))
        );
    }
    out.push_str("</tbody></table><h3>Every entry naming the patient</h3>");
    rows_table(out, &view.rows, "entries naming the patient");
    out.push_str("</section>\n");
}

fn rows_table(out: &mut String, list: &Capped<Row>, what: &str) {
    out.push_str(r#"<table><thead><tr><th>time (UTC)</th><th>actor</th><th>action</th><th>record</th><th>outcome</th><th>purpose</th><th>break-glass reason</th></tr></thead><tbody>"#);
    for r in &list.rows {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{} <span class=\"note\">({})</span></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.time),
            escape(&r.actor),
            escape(&r.roles),
            r.action.as_str(),
            opt(&r.resource),
            r.outcome.as_str(),
            opt(&r.purpose),
            opt(&r.break_glass)
        );
    }
    out.push_str("</tbody></table>");
    left_out(out, list.total, list.rows.len(), what);
}

pub(super) fn disclosures(out: &mut String, data: &ReportData) {
    out.push_str(r#"<section id="disclosures" aria-labelledby="disclosures-h"><h2 id="disclosures-h">Accounting of disclosures (45 CFR 164.528)</h2>"#);
    match (&data.patient, &data.disclosures) {
        (Some(patient), Some(list)) => {
            let _ = write!(
                out,
                "<p class=\"note\">Every successful access to {}'s records in the period (as <code>GET /audit/disclosures</code> lists them, exports left out).</p>",
                escape(patient)
            );
            if list.rows.is_empty() {
                out.push_str("<p>None in this period.</p>");
            } else {
                out.push_str(r#"<table><thead><tr><th>date (UTC)</th><th>recipient</th><th>purpose</th><th>description</th><th>break-glass reason</th></tr></thead><tbody>"#);
                for d in &list.rows {
                    let _ = write!(
                        out,
                        "<tr><td>{}</td><td>{} <span class=\"note\">({}{})</span></td><td>{}</td><td>{} of {}</td><td>{}</td></tr>",
                        escape(&d.date),
                        opt(&d.recipient_sub),
                        escape(&d.recipient_roles.join(", ")),
                        d.recipient_fhir_user.as_deref().map(|u| format!(", {}", escape(u))).unwrap_or_default(),
                        opt(&d.purpose),
                        d.action.as_str(),
                        escape(d.resource.as_deref().unwrap_or("records")),
                        opt(&d.break_glass)
                    );
                }
                out.push_str("</tbody></table>");
                left_out(out, list.total, list.rows.len(), "disclosures");
            }
        }
        _ => {
            out.push_str("<p class=\"note\">The accounting is kept per patient: ask for the report with <code>patient=Patient/ID</code> (or <code>--patient</code>) for one patient's list. Below, every successful access naming a patient in the period, by purpose of use and the recipient's roles.</p>");
            let purposes = &data.figures.purposes;
            if purposes.is_empty() {
                out.push_str("<p>No access named a patient in this period.</p>");
            } else {
                out.push_str(
                    r#"<table><thead><tr><th>purpose of use</th><th>recipient roles</th><th class="n">accesses</th></tr></thead><tbody>"#,
                );
                for ((purpose, roles), n) in purposes {
                    let _ =
                        write!(out, r#"<tr><td>{}</td><td>{}</td><td class="n">{}</td></tr>"#, escape(purpose), escape(roles), number(*n));
                }
                out.push_str("</tbody></table>");
            }
        }
    }
    out.push_str("</section>\n");
}

pub(super) fn retention(out: &mut String, data: &ReportData) {
    let f = &data.figures;
    out.push_str(r#"<section id="retention" aria-labelledby="retention-h"><h2 id="retention-h">Purges, shreds and legal holds</h2>"#);
    out.push_str(r#"<h3 id="purges">Retention purges (destruction records)</h3>"#);
    if data.destructions.rows.is_empty() {
        out.push_str("<p>No patient was purged by the retention job in this period.</p>");
    } else {
        out.push_str(r#"<table><thead><tr><th>destroyed at (UTC)</th><th>patient</th><th>rule</th><th>category</th><th>records purged</th><th>run</th><th class="n">ledger purge entries</th></tr></thead><tbody>"#);
        for d in &data.destructions.rows {
            let patient = format!("Patient/{}", d.patient_id);
            let ledgered = f.retention_purges.get(&(d.run_id.clone(), patient.clone())).copied().unwrap_or(0);
            let records = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&d.resources)
                .map(|m| m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            let _ = write!(
                out,
                r#"<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td class="n">{}</td></tr>"#,
                escape(&d.destroyed_at),
                escape(&patient),
                escape(&d.rule),
                escape(&d.category),
                escape(&records),
                escape(&d.run_id),
                number(ledgered)
            );
        }
        out.push_str("</tbody></table>");
        left_out(out, data.destructions.total, data.destructions.rows.len(), "destruction records");
    }
    out.push_str(r#"<h3 id="shreds">Crypto-shredding outside retention runs</h3>"#);
    if f.shreds.rows.is_empty() {
        out.push_str("<p>No data key was destroyed (or refused to be) outside a retention run in this period.</p>");
    } else {
        rows_table(out, &f.shreds, "shreds");
    }
    out.push_str(r#"<h3 id="holds">Legal holds in force during the period</h3>"#);
    if data.holds.rows.is_empty() {
        out.push_str("<p>No legal hold was in force in this period.</p>");
    } else {
        out.push_str(r#"<table><thead><tr><th>hold</th><th>patient</th><th>reason</th><th>placed</th><th>released</th><th>placing in the ledger</th></tr></thead><tbody>"#);
        for h in &data.holds.rows {
            let released = match (&h.released_at, &h.released_by) {
                (Some(at), Some(by)) => format!("{} by {}", escape(at), escape(by)),
                (Some(at), None) => escape(at),
                _ => "active".to_owned(),
            };
            let ledgered = if f.holds_ledgered.contains(&h.id) { "✔ recorded" } else { "✘ not found" };
            let _ = write!(
                out,
                "<tr><td><code>{}</code></td><td>Patient/{}</td><td>{}</td><td>{} by {}</td><td>{released}</td><td>{ledgered}</td></tr>",
                escape(&h.id),
                escape(&h.patient_id),
                escape(&h.reason),
                escape(&h.created_at),
                escape(&h.created_by)
            );
        }
        out.push_str("</tbody></table>");
        left_out(out, data.holds.total, data.holds.rows.len(), "legal holds");
    }
    out.push_str("</section>\n");
}

pub(super) fn refused(out: &mut String, data: &ReportData) {
    let list = &data.figures.refused_logins;
    out.push_str(r#"<section id="refused-logins" aria-labelledby="refused-h"><h2 id="refused-h">Refused logins</h2><p class="note">Requests whose token was validly signed for this tenant but refused for its claims (expired, not yet valid, too long-lived, another issuer or audience, a claim missing). Tokens whose signature does not verify name no trusted tenant; they are in the platform log, which operators review (<code>carevault ledger export --platform</code>).</p>"#);
    if list.rows.is_empty() {
        out.push_str("<p>No refused token in this period.</p></section>\n");
        return;
    }
    out.push_str(r#"<table><thead><tr><th>time (UTC)</th><th>subject</th><th>client address</th><th>request id</th></tr></thead><tbody>"#);
    for r in &list.rows {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            escape(&r.time),
            escape(&r.actor),
            opt(&r.client),
            opt(&r.request_id)
        );
    }
    out.push_str("</tbody></table>");
    left_out(out, list.total, list.rows.len(), "refused tokens");
    out.push_str("</section>\n");
}
