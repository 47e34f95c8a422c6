//! The report page: one HTML document with its style inline (allowed by hash in its own
//! Content-Security-Policy, which allows nothing else: no script, no fetch), its charts as
//! inline SVG ([`super::svg`]), the trust banner first and the sections of
//! [`super::sections`] after it. Printable on A4 and Letter: charts
//! scale to the page width and figures, the banner and table rows are not split across
//! pages. Every text that is not this file's own goes through [`escape`].

use std::fmt::Write;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::aggregate::{BUSINESS_HOURS, MAX_PAIRS};
use super::sections::{accesses, break_glass, denied, disclosures, heat, patient_view, refused, retention, summary, top_actors};
use super::{ReportData, Trust};
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
