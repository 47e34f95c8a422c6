//! Keeps `compliance/safeguards.toml` honest: every HIPAA technical safeguard of
//! 45 CFR 164.312 (a)–(e) is mapped, every file it names exists, and every test it
//! names is a real test function.

use std::path::Path;

const REQUIRED: &[&str] = &[
    "164.312(a)(1)",
    "164.312(a)(2)(i)",
    "164.312(a)(2)(ii)",
    "164.312(a)(2)(iii)",
    "164.312(a)(2)(iv)",
    "164.312(b)",
    "164.312(c)(1)",
    "164.312(c)(2)",
    "164.312(d)",
    "164.312(e)(1)",
    "164.312(e)(2)(i)",
    "164.312(e)(2)(ii)",
];

#[test]
fn every_safeguard_maps_to_existing_code_and_tests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("compliance/safeguards.toml")).unwrap();
    let map: toml::Table = toml::from_str(&text).unwrap();
    let safeguards = map["safeguard"].as_array().unwrap();
    let ids: Vec<&str> = safeguards.iter().map(|s| s["id"].as_str().unwrap()).collect();
    for id in REQUIRED {
        assert!(ids.contains(id), "{id} is not mapped");
    }
    for s in safeguards {
        let id = s["id"].as_str().unwrap();
        let status = s["status"].as_str().unwrap();
        assert!(["implemented", "partial", "planned"].contains(&status), "{id}: status {status}");
        for file in s.get("code").and_then(|c| c.as_array()).into_iter().flatten() {
            let file = file.as_str().unwrap();
            assert!(root.join(file).exists(), "{id}: {file} does not exist");
        }
        let tests = s.get("tests").and_then(|t| t.as_array()).cloned().unwrap_or_default();
        if status != "planned" {
            assert!(!tests.is_empty(), "{id} is {status} but names no test");
        }
        for t in tests {
            let t = t.as_str().unwrap();
            let (file, name) = t.split_once("::").unwrap_or_else(|| panic!("{id}: '{t}' is not FILE::TEST"));
            let source = std::fs::read_to_string(root.join(file)).unwrap_or_else(|_| panic!("{id}: {file} missing"));
            let declared = source.contains(&format!("fn {name}()"));
            let is_test = source.split(&format!("fn {name}()")).next().is_some_and(|before| {
                let tail = &before[before.len().saturating_sub(80)..];
                tail.contains("#[test]") || tail.contains("#[tokio::test")
            });
            assert!(declared && is_test, "{id}: test {t} does not exist");
        }
    }
}
