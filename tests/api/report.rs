//! The reviewer's report (SPEC section 5, issue 16) of a month of a clinic's activity: the
//! weeks before today appended to the tenant's log directly (the server writes entries
//! with the clock's time only), then today through the real server: creates, reads, a
//! search, a denial, a break-glass read and a refused break-glass attempt, a refused
//! token, a legal hold, a purge by `carevault retention run`, an administrator's
//! crypto-shredding. The page is checked as HTML (html5ever's parse errors), for its charts,
//! its tables and the absence of every PHI marker, then rendered by headless Chromium:
//! a screenshot, the DOM it built, each chart's drawn size, and its network log, which must
//! hold no request of the page's. A tampered ledger turns the banner into a failure; a
//! clinician is refused; another tenant's auditor sees nothing of this tenant.

use std::path::{Path, PathBuf};

use base64::Engine;
use chrono::{Duration, Utc};
use diesel::prelude::*;
use reqwest::StatusCode;
use scraper::{Html, Selector};
use serde_json::{Value, json};

use crate::helpers::*;

/// A month of history before today: each day a few reads and searches by three
/// clinicians over a handful of patient ids, some at night, and a denial every fourth day.
fn append_history(app: &TestApp, days: i64) {
    use carevault::domain::{AuditAction, AuditOutcome};
    use carevault::ledger::entry::{Actor, Entry};
    let start = Utc::now().date_naive() - Duration::days(days);
    let mut entries = Vec::new();
    for d in 0..days {
        let day = start + Duration::days(d);
        for (i, hour) in [2u32, 9, 10, 11, 14, 16, 22].iter().enumerate() {
            let at = day.and_hms_opt(*hour, 5 * i as u32, 0).unwrap().and_utc();
            let actor = format!("zz-history-dr{}", i % 3);
            let patient = format!("Patient/hist-{}", (d as usize + i) % 9);
            let denied = d % 4 == 0 && i == 0;
            entries.push(Entry {
                seq: 0,
                time: at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                actor: Actor { sub: Some(actor), roles: vec!["clinician".into()], fhir_user: None },
                tenant: Some(TENANT.into()),
                action: if i % 3 == 1 { AuditAction::Search } else { AuditAction::Read },
                resource: Some(patient.clone()),
                patient: Some(patient),
                outcome: if denied { AuditOutcome::Denied } else { AuditOutcome::Success },
                purpose_of_use: Some("TREAT".into()),
                break_glass: None,
                client: Some("127.0.0.1".into()),
                request_id: Some(format!("history-{d}-{i}")),
            });
        }
    }
    let mut conn = app.db();
    carevault::store::write_transaction(&mut conn, |tx| carevault::ledger::log::append(tx, &mut entries)).unwrap();
}

/// What the seeded month is made of, for the checks.
struct Month {
    markers: Vec<String>,
    cared: String,
    other: String,
    purged: String,
    held: String,
    hold_id: String,
    dr1_sub: String,
    refused_sub: String,
    reason: String,
}

async fn seed_month(app: &TestApp) -> Month {
    append_history(app, 30);
    let desk = app.front_desk();
    let markers: Vec<String> = (0..4).map(|_| marker()).collect();
    let cared = app.create(&desk, &patient(&markers[0], "dr1")).await;
    let other = app.create(&desk, &patient(&markers[1], "dr2")).await;
    let mut dead = patient(&markers[2], "dr1");
    dead["deceasedDateTime"] = json!("1990-05-01");
    let purged = app.create(&desk, &dead).await;
    let mut dead_held = patient(&markers[3], "dr1");
    dead_held["deceasedDateTime"] = json!("1990-05-01");
    let held = app.create(&desk, &dead_held).await;

    let dr1_sub = format!("zz-dr1-{}", marker());
    let dr1 = Who {
        token: app.token_with(carevault::auth::Claims {
            sub: dr1_sub.clone(),
            tenant: TENANT.into(),
            roles: vec!["clinician".into()],
            fhir_user: Some("Practitioner/dr1".into()),
            exp: now() + 600,
            iat: None,
            iss: None,
            aud: None,
        }),
    };
    assert_eq!(app.get(&dr1, &format!("/fhir/Patient/{cared}")).await.status(), StatusCode::OK);
    let search = app.get(&dr1, &format!("/fhir/Patient?family=Zz-Family-{}", markers[0])).await;
    assert_eq!(search.status(), StatusCode::OK);
    let refused = app.get(&dr1, &format!("/fhir/Patient/{other}")).await.status();
    assert!(refused == StatusCode::FORBIDDEN || refused == StatusCode::NOT_FOUND, "{refused}");
    let reason = "zz emergency: unconscious in the emergency room".to_owned();
    let glass = app.get_with(&dr1, &format!("/fhir/Patient/{other}"), &[("x-break-glass", &reason)]).await;
    assert_eq!(glass.status(), StatusCode::OK);
    let desk_glass = app.get_with(&desk, &format!("/fhir/Patient/{other}"), &[("x-break-glass", "front desk trying the glass")]).await;
    assert_eq!(desk_glass.status(), StatusCode::FORBIDDEN);

    // A validly signed token of this tenant, refused because it expired.
    let refused_sub = format!("zz-expired-{}", marker());
    let expired = app.token_with(carevault::auth::Claims {
        sub: refused_sub.clone(),
        tenant: TENANT.into(),
        roles: vec!["clinician".into()],
        fhir_user: None,
        exp: now() - 3600,
        iat: None,
        iss: None,
        aud: None,
    });
    assert_eq!(app.get(&Who { token: expired }, "/fhir/Patient").await.status(), StatusCode::UNAUTHORIZED);

    let hold = app
        .client
        .post(app.url("/admin/legal-holds"))
        .bearer_auth(&app.admin().token)
        .json(&json!({"patient": format!("Patient/{held}"), "reason": "Matter ZZ-2026-117, litigation hold"}))
        .send()
        .await
        .unwrap();
    assert_eq!(hold.status(), StatusCode::CREATED);
    let hold_id = hold.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();

    let (ok, out) = app.cli(&["retention", "run"]);
    assert!(ok && out.contains(&format!("Patient/{purged}")), "{out}");
    let owner = carevault::domain::Reference::parse("Practitioner/zz-shredded").unwrap();
    app.services().shred(&service_caller(TENANT, "zz-admin-shredder", "admin"), &owner).unwrap();
    Month { markers, cared, other, purged, held, hold_id, dr1_sub, refused_sub, reason }
}

fn period_query(days_back: i64) -> String {
    let from = (Utc::now() - Duration::days(days_back)).date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    let to = (Utc::now() + Duration::days(1)).date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    format!("from={}&to={}", from.format("%Y-%m-%dT%H:%M:%SZ"), to.format("%Y-%m-%dT%H:%M:%SZ"))
}

/// `GET /audit/report?QUERY` as `who`: (status, headers, body).
async fn report(app: &TestApp, who: &Who, query: &str) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let r = app.get(who, &format!("/audit/report?{query}")).await;
    (r.status(), r.headers().clone(), r.text().await.unwrap())
}

fn select<'a>(doc: &'a Html, css: &str) -> Vec<scraper::ElementRef<'a>> {
    doc.select(&Selector::parse(css).unwrap()).collect()
}

fn text_of(doc: &Html, css: &str) -> String {
    select(doc, css).iter().map(|e| e.text().collect::<String>()).collect::<Vec<_>>().join("\n")
}

/// The page parses without a single HTML5 parse error, loads nothing (no script, no
/// external reference, a CSP that allows only its inline style) and has its charts, each
/// with marks drawn when `drawn` (an empty period draws axes only).
fn check_page(html: &str, drawn: bool) -> Html {
    let doc = Html::parse_document(html);
    assert!(doc.errors.is_empty(), "HTML parse errors: {:?}", doc.errors);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(select(&doc, "script").is_empty(), "no script");
    let references: Vec<String> = select(&doc, "[src], [href], link, iframe, object, embed, img").iter().map(|e| e.html()).collect();
    assert!(references.is_empty(), "the page references something: {references:?}");
    assert!(!html.contains("src=") && !html.contains("href="), "no src or href at all");
    assert!(!html.contains("url(http") && !html.contains("@import") && !html.contains("//fonts."), "no external style resource");
    for reference in html.match_indices("url(").map(|(i, _)| &html[i..i + 6]) {
        assert_eq!(reference, "url(#c", "only same-document references: {reference}");
    }
    let csp = select(&doc, r#"meta[http-equiv="Content-Security-Policy"]"#);
    assert_eq!(csp.len(), 1);
    let policy = csp[0].value().attr("content").unwrap();
    assert!(policy.starts_with("default-src 'none'; style-src 'sha256-") && !policy.contains("script-src"), "{policy}");
    assert_eq!(select(&doc, "style").len(), 1, "one inline style");
    // The style the policy allows is the one the page has.
    let style = select(&doc, "style")[0].text().collect::<String>();
    let digest = ring::digest::digest(&ring::digest::SHA256, style.as_bytes());
    assert!(policy.contains(&base64::engine::general_purpose::STANDARD.encode(digest.as_ref())), "the style's hash is allowed");
    // Print: figures and the banner are not split across pages.
    assert!(style.contains("@media print") && style.contains("break-inside:avoid") && style.contains("@page"));

    for id in ["chart-accesses", "chart-after-hours", "chart-denied", "chart-top-actors"] {
        let svg = select(&doc, &format!("svg#{id}"));
        assert_eq!(svg.len(), 1, "{id}");
        let svg = svg[0].value();
        assert_eq!(svg.attr("role"), Some("img"), "{id}");
        assert_eq!(svg.attr("aria-labelledby"), Some(format!("{id}-t {id}-d").as_str()));
        let view: Vec<f64> = svg.attr("viewbox").or(svg.attr("viewBox")).unwrap().split(' ').map(|v| v.parse().unwrap()).collect();
        assert!(view[2] > 100.0 && view[3] > 50.0, "{id}: {view:?}");
        assert!(!text_of(&doc, &format!("svg#{id} > title")).is_empty() && !text_of(&doc, &format!("svg#{id} > desc")).is_empty());
        let marks = select(&doc, &format!("svg#{id} rect"))
            .iter()
            .filter(|r| {
                let size = |a| r.value().attr(a).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
                size("width") > 0.0 && size("height") > 0.0
            })
            .count();
        assert!(marks > 0 || !drawn, "{id} draws nothing");
    }
    doc
}

/// No value of the patients' records anywhere in the file: names, identifiers, contact
/// details and birth dates carry markers, and none may appear.
fn assert_no_phi(html: &str, month: &Month) {
    for m in &month.markers {
        assert!(!html.contains(m.as_str()), "marker {m} in the report");
    }
    for value in ["Zz-Family", "Zz-Given", "MRN-", "NPI-", "Zz-Doc", "010-0199", "example.test", "1901-02-03", "1990-05-01"] {
        assert!(!html.contains(value), "{value} in the report");
    }
}

// ---- Chromium ----

/// The Chromium binary, or `None` (with a notice) when it is not installed; CI must have it.
fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|name| {
        std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file()))
    });
    if found.is_none() {
        assert!(std::env::var_os("CI").is_none(), "chromium is needed for the report's browser checks (.ci/run installs it)");
        eprintln!("NOTICE: no chromium on PATH: the report's browser checks are skipped (apt-get install chromium)");
    }
    found
}

/// Runs headless Chromium on `page` with `args`; its standard output.
async fn browse(bin: &Path, dir: &Path, page: &Path, args: &[String]) -> String {
    let profile = tempfile::tempdir_in(dir).unwrap();
    let mut command = tokio::process::Command::new(bin);
    command
        .args(["--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--no-first-run", "--mute-audio"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-default-apps"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(90), command.output()).await.expect("chromium in time").unwrap();
    assert!(out.status.success(), "chromium failed: {}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// URLs the page itself asked the network for, from Chromium's NetLog: requests whose
/// isolation key or initiator is the page's file origin (Chromium's own background
/// requests carry neither).
fn page_requests(netlog: &Path) -> Vec<String> {
    let log: Value = serde_json::from_str(&std::fs::read_to_string(netlog).unwrap()).unwrap();
    let start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"].as_i64().unwrap();
    log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"].as_i64() == Some(start))
        .map(|e| &e["params"])
        .filter(|p| p["network_isolation_key"].as_str().is_some_and(|k| k.contains("file://")) || p["initiator"] == "null")
        .map(|p| p["url"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Renders the report in Chromium: a screenshot, the DOM it built, each chart's drawn size
/// (measured by a page of the test's own that frames the report), and no request of its own.
async fn check_in_browser(html: &str) {
    let Some(bin) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    std::fs::write(&page, html).unwrap();

    // The network log sees a page's requests: a control page that loads an image shows it.
    let control = dir.path().join("control.html");
    std::fs::write(&control, r#"<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/x.png" alt=""></body></html>"#).unwrap();
    let control_log = dir.path().join("control-net.json");
    browse(&bin, dir.path(), &control, &[format!("--log-net-log={}", control_log.display()), "--dump-dom".into()]).await;
    assert_eq!(page_requests(&control_log), ["http://127.0.0.1:9/x.png"], "the network-log check sees page requests");

    let shot = dir.path().join("report.png");
    let netlog = dir.path().join("net.json");
    let dom = browse(
        &bin,
        dir.path(),
        &page,
        &[
            format!("--log-net-log={}", netlog.display()),
            format!("--screenshot={}", shot.display()),
            "--window-size=1000,2400".into(),
            "--dump-dom".into(),
        ],
    )
    .await;
    assert_eq!(page_requests(&netlog), Vec::<String>::new(), "the report made requests");
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let (w, h) = (u32::from_be_bytes(png[16..20].try_into().unwrap()), u32::from_be_bytes(png[20..24].try_into().unwrap()));
    assert_eq!((w, h), (1000, 2400));
    assert!(png.len() > 50_000, "a screenshot of a drawn page, not a blank one ({} bytes)", png.len());
    let built = Html::parse_document(&dom);
    assert_eq!(select(&built, "svg.chart").len(), 4, "Chromium built the four charts");
    assert!(text_of(&built, "#trust").contains("VERIFIED"));

    // Drawn sizes: a page of the test's own frames the report (file pages are one origin
    // with --allow-file-access-from-files) and writes each chart's box and marks.
    let measure = dir.path().join("measure.html");
    std::fs::write(
        &measure,
        r#"<!DOCTYPE html><html><body><iframe id="r" src="report.html" width="1000" height="3000"></iframe><pre id="out">pending</pre><script>
document.getElementById('r').addEventListener('load', () => {
  const d = document.getElementById('r').contentDocument;
  const charts = [...d.querySelectorAll('svg.chart')].map(s => {
    const box = s.getBoundingClientRect();
    const marks = [...s.querySelectorAll('rect, path, line')].filter(m => { const b = m.getBBox(); return b.width > 0 || b.height > 0; }).length;
    return {id: s.id, width: box.width, height: box.height, marks};
  });
  document.getElementById('out').textContent = JSON.stringify(charts);
});
</script></body></html>"#,
    )
    .unwrap();
    let dom = browse(
        &bin,
        dir.path(),
        &measure,
        &["--allow-file-access-from-files".into(), "--virtual-time-budget=10000".into(), "--dump-dom".into()],
    )
    .await;
    let measured: Value = serde_json::from_str(&text_of(&Html::parse_document(&dom), "pre#out")).expect("measurements");
    let charts = measured.as_array().unwrap();
    assert_eq!(charts.len(), 4, "{measured}");
    for c in charts {
        assert!(c["width"].as_f64().unwrap() > 300.0 && c["height"].as_f64().unwrap() > 100.0, "{c}");
        assert!(c["marks"].as_u64().unwrap() > 10, "{c}");
    }
}

#[tokio::test]
async fn a_month_reviewed_in_one_self_contained_page_that_chromium_renders() {
    let app = spawn_app().await;
    let month = seed_month(&app).await;
    let auditor = auditor(&app);
    let query = format!("{}&patient=Patient/{}", period_query(30), month.other);
    let started = std::time::Instant::now();
    let (status, headers, html) = report(&app, &auditor, &query).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    eprintln!("report of a month: {} bytes in {:?}", html.len(), started.elapsed());
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"));
    assert_eq!(headers["x-ledger-verified"], "true");
    let header_csp = headers["content-security-policy"].to_str().unwrap().to_owned();
    assert!(html.len() < 2 * 1024 * 1024);

    let doc = check_page(&html, true);
    assert!(html.contains(&format!("content=\"{}\"", header_csp.replace('\'', "&#39;"))), "the header repeats the page's policy");
    assert_no_phi(&html, &month);

    // Trust first: the banner is the first section, and it says the log verified.
    let first = select(&doc, "body section")[0].value().attr("id");
    assert_eq!(first, Some("trust"));
    let banner = text_of(&doc, "#trust");
    assert!(banner.contains("VERIFIED") && !banner.contains("FAILED"), "{banner}");
    assert!(!select(&doc, "#trust")[0].value().classes().any(|c| c == "fail"));
    let note = text_of(&doc, "pre#checkpoint-note");
    assert!(note.starts_with(&format!("carevault.local/ledger/{TENANT}\n")) && note.contains("\n\n\u{2014} "), "{note}");
    let key: Value = app.client.get(app.url("/audit/public-key")).send().await.unwrap().json().await.unwrap();
    assert_eq!(text_of(&doc, "#public-key"), key["public_key"].as_str().unwrap());
    assert!(text_of(&doc, "#verify-yourself").contains(&format!("carevault ledger verify --tenant {TENANT}")));

    // Charts and tables hold the month.
    let accesses = select(&doc, "svg#chart-accesses g.bars rect");
    let days_drawn: std::collections::BTreeSet<String> =
        accesses.iter().filter_map(|r| r.text().collect::<String>().split(':').next().map(str::to_owned)).collect();
    assert!(days_drawn.len() >= 28, "bars on most days of the month: {days_drawn:?}");
    let glass = text_of(&doc, "#break-glass");
    assert!(
        glass.contains(&month.reason) && glass.contains(&format!("Patient/{}", month.other)) && glass.contains(&month.dr1_sub),
        "{glass}"
    );
    assert!(glass.contains("front desk trying the glass") && glass.contains("denied"), "the refused attempt too: {glass}");
    let top = text_of(&doc, "#top-actors");
    assert!(top.contains("zz-history-dr0") && top.contains(&month.dr1_sub), "{top}");
    let who = text_of(&doc, "#patient");
    assert!(who.contains(&month.dr1_sub) && who.contains("TREAT") && who.contains(&month.reason), "{who}");
    let disclosed = text_of(&doc, "#disclosures");
    assert!(disclosed.contains(&month.dr1_sub) && disclosed.contains(&format!("read of Patient/{}", month.other)), "{disclosed}");
    let retention = text_of(&doc, "#retention");
    assert!(retention.contains(&format!("Patient/{}", month.purged)) && retention.contains("deceased-10y-after-death"), "{retention}");
    assert!(retention.contains("Practitioner/zz-shredded") && retention.contains("zz-admin-shredder"), "{retention}");
    assert!(retention.contains(&month.hold_id) && retention.contains(&format!("Patient/{}", month.held)), "{retention}");
    assert!(retention.contains("Matter ZZ-2026-117") && retention.contains("✔ recorded"), "{retention}");
    let purge_row = select(&doc, "#retention table")[0].text().collect::<String>();
    assert!(purge_row.contains("Patient 1"), "records purged per type: {purge_row}");
    assert!(text_of(&doc, "#refused-logins").contains(&month.refused_sub));

    // Its own making is in the log, as an export naming the patient.
    let entries = ledger_entries(&app).await;
    let last = entries.iter().rev().find(|e| e["action"] == "export").expect("an export entry");
    assert_eq!(last["patient"], format!("Patient/{}", month.other));
    assert_eq!(last["outcome"], "success");

    check_in_browser(&html).await;

    // A second report, given the first one's checkpoint, says nothing it covered changed;
    // the same through the command line, given the first report's file.
    app.get(&app.front_desk(), &format!("/fhir/Patient/{}", month.cared)).await;
    let note_b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(note.as_bytes());
    let (status, _, again) = report(&app, &auditor, &format!("{}&since_checkpoint={note_b64}", period_query(30))).await;
    assert_eq!(status, StatusCode::OK);
    let again = Html::parse_document(&again);
    let banner = text_of(&again, "#trust");
    assert!(banner.contains("still hash to the previous report's root") && !banner.contains("FAILED"), "{banner}");
    assert!(text_of(&again, "#verify-yourself").contains("/audit/proof/consistency?from="));

    let dir = tempfile::tempdir().unwrap();
    let (first, out) = (dir.path().join("first.html"), dir.path().join("second.html"));
    std::fs::write(&first, &html).unwrap();
    let from_to: Vec<String> = period_query(30).split('&').map(|kv| kv.split_once('=').unwrap().1.to_owned()).collect();
    let (ok, said) = app.cli(&[
        "audit",
        "report",
        "--tenant",
        TENANT,
        "--from",
        &from_to[0],
        "--to",
        &from_to[1],
        "--since-checkpoint",
        first.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok && said.contains("verified"), "{said}");
    let cli_html = std::fs::read_to_string(&out).unwrap();
    check_page(&cli_html, true);
    assert_no_phi(&cli_html, &month);
    let cli_doc = Html::parse_document(&cli_html);
    assert!(text_of(&cli_doc, "#trust").contains("still hash to the previous report's root"));
    assert!(cli_html.contains("by cli:"), "generated by the operator");
}

#[tokio::test]
async fn a_tampered_ledger_turns_the_banner_into_a_failure() {
    use carevault::store::schema::ledger_entries as le;
    let app = spawn_app().await;
    let desk = app.front_desk();
    for _ in 0..3 {
        let id = app.create(&desk, &patient(&marker(), "dr1")).await;
        app.get(&desk, &format!("/fhir/Patient/{id}")).await;
    }
    let auditor = auditor(&app);
    let (_, _, clean) = report(&app, &auditor, &period_query(2)).await;
    let kept = text_of(&Html::parse_document(&clean), "pre#checkpoint-note");

    // A database administrator drops the guards and turns a read into a denial.
    let mut conn = app.db();
    let drops: &[&str] = match app.db {
        TestDb::Sqlite(_) => &["DROP TRIGGER ledger_entries_append_only_update"],
        TestDb::Postgres { .. } => &["DROP TRIGGER ledger_entries_append_only ON ledger_entries"],
    };
    for sql in drops {
        diesel::sql_query(*sql).execute(&mut *conn).unwrap();
    }
    let leaf: String = le::table.filter(le::log.eq(TENANT)).filter(le::seq.eq(3)).select(le::leaf).first(&mut *conn).unwrap();
    let forged = leaf.replace("\"outcome\":\"success\"", "\"outcome\":\"denied\"");
    assert_ne!(forged, leaf);
    diesel::update(le::table.filter(le::log.eq(TENANT)).filter(le::seq.eq(3)))
        .set((le::leaf.eq(&forged), le::outcome.eq("denied")))
        .execute(&mut *conn)
        .unwrap();

    let (status, headers, html) = report(&app, &auditor, &period_query(2)).await;
    assert_eq!(status, StatusCode::OK, "a failed verification is reported, not an error: {html}");
    assert_eq!(headers["x-ledger-verified"], "false");
    let doc = check_page(&html, false);
    assert!(select(&doc, "#trust")[0].value().classes().any(|c| c == "fail"));
    let banner = text_of(&doc, "#trust");
    assert!(banner.contains("VERIFICATION FAILED") && !banner.contains("✔ VERIFIED"), "{banner}");
    assert!(banner.contains("the entries differ from what this checkpoint signed") || banner.contains("root"), "{banner}");
    // The figures are still shown, from what the database holds.
    assert!(!select(&doc, "svg#chart-accesses g.bars rect").is_empty());

    // The checkpoint kept from the clean report is not matched either, also by the command line.
    let b64 = base64::engine::general_purpose::STANDARD.encode(kept.as_bytes());
    let (_, _, html) = report(
        &app,
        &auditor,
        &format!("{}&since_checkpoint={}", period_query(2), b64.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D")),
    )
    .await;
    let banner = text_of(&Html::parse_document(&html), "#trust");
    assert!(banner.contains("no longer hash to the previous report's root"), "{banner}");
    let from_to: Vec<String> = period_query(2).split('&').map(|kv| kv.split_once('=').unwrap().1.to_owned()).collect();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.html");
    let (ok, said) =
        app.cli(&["audit", "report", "--tenant", TENANT, "--from", &from_to[0], "--to", &from_to[1], "--out", out.to_str().unwrap()]);
    assert!(ok && said.contains("did NOT verify"), "{said}");
}

#[tokio::test]
async fn only_auditors_get_a_report_and_only_of_their_own_tenant() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let id = app.create(&desk, &patient(&marker(), "dr1")).await;
    let dr1 = app.clinician("dr1");
    assert_eq!(app.get(&dr1, &format!("/fhir/Patient/{id}")).await.status(), StatusCode::OK);
    let q = period_query(1);

    // A clinician is refused, and the attempt is ledgered.
    expect_outcome(app.get(&dr1, &format!("/audit/report?{q}")).await, StatusCode::FORBIDDEN).await;
    let entries = ledger_entries(&app).await;
    assert!(entries.iter().any(|e| e["action"] == "export" && e["outcome"] == "denied"));
    let r = app.client.get(app.url(&format!("/audit/report?{q}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Another tenant's auditor gets its own tenant's report, naming nothing of this one.
    let other = app.who("clinic-b", &["auditor"], None);
    let (status, _, html) = report(&app, &other, &format!("{q}&patient=Patient/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    check_page(&html, false);
    assert!(!html.contains(TENANT), "nothing names clinic-a");
    let doc = Html::parse_document(&html);
    // The patient asked about is named as asked, and nothing is known of it here.
    let rows = select(&doc, "#patient table:last-of-type tbody tr");
    assert_eq!(rows.len(), 1, "only this report's own export names it here");
    assert!(rows[0].text().collect::<String>().contains("export"));
    assert!(text_of(&doc, "#disclosures").contains("None in this period"));
    assert!(text_of(&doc, "pre#checkpoint-note").starts_with("carevault.local/ledger/clinic-b\n"));
    assert!(text_of(&doc, "#summary").contains("1ledger entries"), "only its own report's export: {}", text_of(&doc, "#summary"));

    // Malformed requests.
    for bad in [
        "from=yesterday&to=2026-01-01T00:00:00Z".to_owned(),
        "from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z".to_owned(),
        "from=2024-01-01T00:00:00Z&to=2026-01-01T00:00:00Z".to_owned(),
        format!("{q}&patient=Practitioner/x"),
        format!("{q}&since_checkpoint=not%20base64!"),
        "to=2026-01-01T00:00:00Z".to_owned(),
    ] {
        expect_outcome(app.get(&auditor(&app), &format!("/audit/report?{bad}")).await, StatusCode::BAD_REQUEST).await;
    }
    // A checkpoint that is not this log's is reported, not refused.
    let foreign = base64::engine::general_purpose::STANDARD.encode("other.example/log\n1\nAAAA\n\n\u{2014} other.example/log AAAA\n");
    let (status, _, html) = report(
        &app,
        &auditor(&app),
        &format!("{q}&since_checkpoint={}", foreign.replace('=', "%3D").replace('+', "%2B").replace('/', "%2F")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let banner = text_of(&Html::parse_document(&html), "#trust");
    assert!(banner.contains("VERIFICATION FAILED") && banner.contains("does not verify under"), "{banner}");
}
