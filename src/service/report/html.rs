//! The report page: one HTML document with its style inline (allowed by hash in its own
//! Content-Security-Policy, which allows nothing else: no script, no fetch), its charts as
//! inline SVG ([`super::svg`]), the trust banner first. Printable on A4 and Letter: charts
//! scale to the page width and figures, the banner and table rows are not split across
//! pages. Every text that is not this file's own goes through [`escape`].

use std::fmt::Write;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::aggregate::{ACCESS_SERIES, BUSINESS_HOURS, Capped, MAX_PAIRS, Row};
use super::svg::{FILLS, HeatMap, HorizontalBars, Series, StackedBars};
use super::{ReportData, Trust};
use crate::domain::AuditAction;
use crate::ledger::merkle;

/// Escapes text for HTML element content and quoted attribute values (and SVG text).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Undoes [`escape`] (for reading a checkpoint note back out of a report).
pub fn unescape(text: &str) -> String {
    text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&#39;", "'").replace("&amp;", "&")
}

/// `1234567` as `1,234,567`.
pub fn number(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

const STYLE: &str = r#"
*{box-sizing:border-box}
body{font-family:system-ui,"Segoe UI",Roboto,"Liberation Sans","DejaVu Sans",sans-serif;color:#111;background:#fff;margin:0 auto;max-width:840px;padding:24px;line-height:1.4;font-size:14px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:28px 0 8px;border-bottom:2px solid #14305e;padding-bottom:3px;break-after:avoid}
h3{font-size:14px;margin:16px 0 6px;break-after:avoid}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:8px 0}
dl.meta dt{font-weight:600}
dl.meta dd{margin:0}
.banner{border:4px solid #1d6b35;background:#eef7f0;padding:12px 16px;margin:16px 0;break-inside:avoid}
.banner.fail{border:8px double #8a1c12;background:#fbeceb}
.verdict{font-size:19px;font-weight:700;margin:0 0 8px}
.checks td:first-child{width:34%}
.checks td:nth-child(2){white-space:nowrap}
table{border-collapse:collapse;width:100%;margin:6px 0 10px;font-size:12px}
th,td{border:1px solid #b8b8b8;padding:3px 6px;text-align:left;vertical-align:top;overflow-wrap:break-word}
th{background:#eceff4}
tr{break-inside:avoid}
.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f4f4f4;border:1px solid #c8c8c8;padding:8px;font-size:12px}
code{font-size:12px;overflow-wrap:anywhere}
figure{margin:8px 0 14px;break-inside:avoid}
figcaption{font-size:12px;margin-top:4px}
svg.chart{display:block;max-width:100%;height:auto}
.note{font-size:12px}
.kpi{display:grid;grid-template-columns:repeat(4,1fr);gap:8px;break-inside:avoid}
.kpi div{border:1px solid #b8b8b8;padding:6px 8px}
.kpi b{display:block;font-size:18px}
@page{size:auto;margin:14mm}
@media print{body{max-width:none;padding:0;font-size:11px}.banner,th{print-color-adjust:exact;-webkit-print-color-adjust:exact}}
"#;

/// The page, and the Content-Security-Policy it carries (for the HTTP answer to repeat).
pub fn page(data: &ReportData) -> (String, String) {
    let digest = ring::digest::digest(&ring::digest::SHA256, STYLE.as_bytes());
    let csp = format!(
        "default-src 'none'; style-src 'sha256-{}'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        STANDARD.encode(digest.as_ref())
    );
    let t = &data.trust;
    let f = &data.figures;
    let period = format!("{} to {}", stamp(&f.period.from), stamp(&f.period.to));
    let mut out = String::with_capacity(256 * 1024);
    let _ = write!(
        out,
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{}">
<meta name="referrer" content="no-referrer">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Access review of {}: {}</title>
<style>{STYLE}</style>
</head>
<body>
<header>
<h1>Access review: tenant {}</h1>
<dl class="meta"><dt>Period</dt><dd>{} (UTC; from inclusive, to exclusive)</dd>"#,
        escape(&csp),
        escape(&t.tenant),
        escape(&period),
        escape(&t.tenant),
        escape(&period)
    );
    if let Some(p) = &data.patient {
        let _ = write!(out, "<dt>Patient</dt><dd>{}</dd>", escape(p));
    }
    let _ = write!(
        out,
        "<dt>Generated</dt><dd>{} by {} (request {}); recorded in the ledger as an export</dd><dt>Source</dt><dd>the tenant's audit log, entries 0 to {} (its checkpoint below), and the retention records</dd></dl>\n</header>\n",
        escape(&data.generated_at),
        escape(&data.generated_by),
        escape(&data.request_id),
        number(t.replayed.entries.saturating_sub(1))
    );
    banner(&mut out, t);
    verify_yourself(&mut out, t);
    summary(&mut out, data);
    accesses(&mut out, data);
    heat(&mut out, data);
    denied(&mut out, data);
    break_glass(&mut out, data);
    top_actors(&mut out, data);
    if data.patient.is_some() {
        patient_view(&mut out, data);
    }
    disclosures(&mut out, data);
    retention(&mut out, data);
    refused(&mut out, data);
    about(&mut out);
    out.push_str("</body>\n</html>\n");
    (out, csp)
}

fn stamp(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn check_row(out: &mut String, what: &str, ok: Option<bool>, detail: &str) {
    let mark = match ok {
        Some(true) => "✔ passed",
        Some(false) => "✘ FAILED",
        None => "— not checked",
    };
    let _ = write!(out, "<tr><td>{}</td><td><b>{mark}</b></td><td>{}</td></tr>", escape(what), escape(detail));
}

fn banner(out: &mut String, t: &Trust) {
    let verified = t.verified();
    let r = &t.replayed;
    let _ = write!(
        out,
        r#"<section id="trust" class="banner{}" aria-labelledby="trust-h"><h2 id="trust-h">Can this record be trusted?</h2><p class="verdict">{}</p>"#,
        if verified { "" } else { " fail" },
        if verified {
            format!(
                "✔ VERIFIED: the tenant's audit log verified for this report. All {} entries were rehashed from their stored bytes, and the root they give is the one the signed checkpoint below states.",
                number(r.entries)
            )
        } else {
            format!(
                "✘ VERIFICATION FAILED: the tenant's audit log does not verify. {} The figures below are what the database holds now; they are not a trustworthy record until this is explained.",
                t.replayed
                    .first_mismatch
                    .as_ref()
                    .map(|m| format!("First problem: {m}."))
                    .unwrap_or_else(|| "The checkpoint does not match the entries.".to_owned())
            )
        }
    );
    out.push_str(r#"<table class="checks"><thead><tr><th>check</th><th>result</th><th>detail</th></tr></thead><tbody>"#);
    match &t.signature {
        Ok((size, _)) => check_row(
            out,
            "checkpoint signature (Ed25519, public key below)",
            Some(true),
            &format!("signed by the ledger key as {} for {} entries", t.origin, number(*size)),
        ),
        Err(e) => check_row(out, "checkpoint signature (Ed25519, public key below)", Some(false), e),
    }
    let root_detail = match (&r.root, &t.signature) {
        (Some(root), Ok((_, signed))) if root == signed => format!("{} entries rehash to root {}", number(r.entries), merkle::to_hex(root)),
        (Some(root), _) => {
            format!("{} entries rehash to root {}, not the signed root {}", number(r.entries), merkle::to_hex(root), t.checkpoint.root_hash)
        }
        (None, _) => "no root could be recomputed: an entry is missing".to_owned(),
    };
    check_row(out, "root recomputed from the entries", Some(t.root_matches()), &root_detail);
    let entries_detail = match &r.first_mismatch {
        None => "sequence numbers dense from 0; every leaf a ledger entry of this tenant; stored columns equal to the leaves".to_owned(),
        Some(m) => m.to_string(),
    };
    check_row(
        out,
        "entries well-formed, and earlier checkpoints",
        Some(r.first_mismatch.is_none()),
        &format!("{entries_detail}; {} stored checkpoints compared with the recomputed roots", number(r.checkpoints)),
    );
    match &t.previous {
        None => check_row(
            out,
            "consistency with a previous report",
            None,
            "no previous checkpoint given (since_checkpoint / --since-checkpoint)",
        ),
        Some(p) => match &p.signed {
            Err(e) => check_row(
                out,
                "consistency with a previous report",
                Some(false),
                &format!("the checkpoint given does not verify under {} with the public key below: {e}", t.origin),
            ),
            Ok((size, root)) => check_row(
                out,
                "consistency with a previous report",
                t.previous_ok(),
                &if t.previous_ok() == Some(true) {
                    format!(
                        "the first {} entries still hash to the previous report's root {}: nothing it covered was changed or removed",
                        number(*size),
                        merkle::to_hex(root)
                    )
                } else {
                    format!(
                        "the first {} entries no longer hash to the previous report's root {}: the log was rewritten or truncated since",
                        number(*size),
                        merkle::to_hex(root)
                    )
                },
            ),
        },
    }
    out.push_str("</tbody></table>");
    let _ = write!(
        out,
        "<h3>The checkpoint this report is pinned to</h3><p class=\"note\">A C2SP signed note: origin, tree size, base64 root, a blank line, the signature. Keep this report (or this note): give it to the next report as <code>since_checkpoint</code> to prove nothing it covered changed since.</p><pre id=\"checkpoint-note\">{}</pre>",
        escape(&t.checkpoint.note)
    );
    let _ = write!(
        out,
        "<p class=\"note\">The same note as a query parameter of <code>GET /audit/report</code> (base64url): <code id=\"since-checkpoint\">since_checkpoint={}</code>; on the command line, <code>--since-checkpoint</code> takes this report's file.</p>",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(t.checkpoint.note.as_bytes())
    );
    if let Some(p) = &t.previous {
        let _ = write!(out, "<h3>The previous report's checkpoint, as given</h3><pre id=\"previous-checkpoint\">{}</pre>", escape(&p.note));
    }
    out.push_str("</section>\n");
}

fn verify_yourself(out: &mut String, t: &Trust) {
    let size = t.checkpoint.size;
    let _ = write!(
        out,
        r#"<section id="verify-yourself" aria-labelledby="verify-h"><h2 id="verify-h">Verify this yourself</h2>
<p>Nothing above needs to be taken on trust:</p>
<ul>
<li>The ledger's public key, from <code>GET /audit/public-key</code> (no login needed): <code id="public-key">{}</code> (Ed25519; this log signs as <code>{}</code>).</li>
<li>Any signed-note verifier (c2sp.org/signed-note) checks the note above with that key. Its root is the RFC 6962 Merkle root of the log's first {} entries, which an auditor reads from <code>GET /audit/entries?from=0&amp;to=1000</code> onwards (each entry's <code>leaf</code> bytes; leaf hash SHA-256(0x00 || leaf), node hash SHA-256(0x01 || left || right)).</li>
<li>An operator with the database recomputes every leaf, subtree hash and checkpoint signature: <code>carevault ledger verify --tenant {}</code>.</li>
<li>Exports with an inclusion proof per entry: <code>GET /audit/export?from=…&amp;to=…</code>, checked offline by <code>carevault ledger verify-export FILE --public-key KEY</code>.</li>"#,
        escape(&t.public_key),
        escape(&t.origin),
        number(u64::try_from(size).unwrap_or(0)),
        escape(&t.tenant)
    );
    if let Some(Ok((old, _))) = t.previous.as_ref().map(|p| &p.signed) {
        let _ = write!(
            out,
            "<li>The RFC 9162 consistency proof from the previous report's tree to this one: <code>GET /audit/proof/consistency?from={old}&amp;to={size}</code>.</li>"
        );
    }
    out.push_str("</ul></section>\n");
}

fn summary(out: &mut String, data: &ReportData) {
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

fn accesses(out: &mut String, data: &ReportData) {
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

fn heat(out: &mut String, data: &ReportData) {
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

fn denied(out: &mut String, data: &ReportData) {
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

fn break_glass(out: &mut String, data: &ReportData) {
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

fn top_actors(out: &mut String, data: &ReportData) {
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

fn patient_view(out: &mut String, data: &ReportData) {
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

fn disclosures(out: &mut String, data: &ReportData) {
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

fn retention(out: &mut String, data: &ReportData) {
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

fn refused(out: &mut String, data: &ReportData) {
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

fn about(out: &mut String) {
    let _ = write!(
        out,
        r#"<section id="about" aria-labelledby="about-h"><h2 id="about-h">How to read this report</h2><ul class="note">
<li>Every figure comes from the tenant's audit log (entry times, UTC) and, for destruction records and legal holds, from the retention tables. Patients appear by id and actors by token subject: the ledger holds no PHI values.</li>
<li>An "access naming a patient" is any entry with a patient, whatever its outcome: a search yields one entry per patient returned.</li>
<li>After hours: outside Monday–Friday {:02}:00–{:02}:00 UTC.</li>
<li>Denied attempts: entries with outcome <code>denied</code>; refused tokens are those with action <code>login</code>.</li>
<li>Retention purges are the <code>purge</code> entries of a retention run (their request id is the run's id); any other <code>purge</code> entry is an administrator's crypto-shredding (or an attempt at it).</li>
<li>Lists stop at their first {} rows (1,000 for one patient's entries) and say how many more there are; distinct patients per actor are counted exactly up to {} actor–patient pairs.</li>
<li>This report is itself an <code>export</code> entry of the log, within the checkpoint above.</li>
</ul></section>
"#,
        BUSINESS_HOURS.0,
        BUSINESS_HOURS.1,
        super::aggregate::MAX_ROWS,
        number(MAX_PAIRS as u64)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AuditOutcome;

    #[test]
    fn escape_covers_the_five_html_specials_and_round_trips() {
        let raw = r#"<script>alert("x") & 'y'</script>"#;
        let escaped = escape(raw);
        assert_eq!(escaped, "&lt;script&gt;alert(&quot;x&quot;) &amp; &#39;y&#39;&lt;/script&gt;");
        assert!(!escaped.contains(['<', '>', '"', '\'']));
        assert_eq!(unescape(&escaped), raw);
        assert_eq!(escape("plain — text/ü"), "plain — text/ü");
        assert_eq!(unescape("&amp;lt;"), "&lt;");
    }

    #[test]
    fn numbers_get_thousands_separators() {
        assert_eq!(number(0), "0");
        assert_eq!(number(999), "999");
        assert_eq!(number(1000), "1,000");
        assert_eq!(number(1_234_567), "1,234,567");
    }

    #[test]
    fn the_style_has_no_url_or_import() {
        assert!(!STYLE.contains("url(") && !STYLE.contains("@import"), "the page must fetch nothing");
    }

    #[test]
    fn outcomes_order_matches_the_action_table() {
        assert_eq!(AuditOutcome::ALL, [AuditOutcome::Success, AuditOutcome::Denied, AuditOutcome::Error]);
    }
}
