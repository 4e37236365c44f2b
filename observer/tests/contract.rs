//! `docs/CONTRACT.md` and the code kept in step, both ways: every record kind the document names is a
//! `RecordKind` and every variant is documented; a kind documented as "produced" is written by the code
//! this file lists (reviewed by hand: where each kind is emitted), and one documented as "reserved, not
//! produced yet" is constructed nowhere in the daemon's code; every metric the document names is registered
//! by `Metrics::new()` with exactly the documented labels, and every registered metric is documented; every
//! HTTP endpoint the document names is routed by `export/http.rs`, and the reverse.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use observer::export::{Metrics, record::RecordKind};

/// Where each produced kind is emitted: (kind, file under observer/src, text that constructs it there).
/// Reviewed by hand; a kind that becomes produced gets a line here and "produced" in the document.
const PRODUCERS: &[(&str, &str, &str)] = &[
    ("blocked", "attribution.rs", "kind: RecordKind::Blocked"),
    (
        "unenforced",
        "attribution.rs",
        "kind: RecordKind::Unenforced",
    ),
    ("established", "attribution.rs", "RecordKind::Established"),
    (
        "stale_allowed",
        "attribution.rs",
        "RecordKind::StaleAllowed",
    ),
    ("interrupted", "attribution.rs", "RecordKind::Interrupted"),
    ("policy_changed", "pipeline.rs", "RecordKind::PolicyChanged"),
    ("lost_events", "pipeline.rs", "RecordKind::LostEvents"),
];

const PRODUCED: &str = "produced";
const RESERVED: &str = "reserved, not produced yet";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("observer/ lives in the workspace")
        .to_path_buf()
}

fn contract() -> String {
    let path = root().join("docs/CONTRACT.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The body of the section under `heading` (a whole line, `## X` or `### X`), up to the next heading of the
/// same or a higher level.
fn section(doc: &str, heading: &str) -> String {
    let level = |l: &str| {
        let hashes = l.bytes().take_while(|&b| b == b'#').count();
        (hashes > 0 && l.as_bytes().get(hashes) == Some(&b' ')).then_some(hashes)
    };
    let own = level(heading).expect("a Markdown heading");
    let mut lines = doc.lines().skip_while(|l| l.trim_end() != heading);
    assert!(
        lines.next().is_some(),
        "docs/CONTRACT.md has no heading {heading:?}"
    );
    let mut body = String::new();
    for l in lines.take_while(|l| level(l).is_none_or(|n| n > own)) {
        body.push_str(l);
        body.push('\n');
    }
    body
}

/// The rows of the first Markdown table in `text`, cells trimmed, header and separator left out.
fn table(text: &str) -> Vec<Vec<String>> {
    let rows: Vec<Vec<String>> = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with('|'))
        .take_while(|l| l.trim_start().starts_with('|'))
        .map(|l| {
            // `\|` inside a cell is an escaped pipe, not a column.
            let l = l.trim().replace("\\|", "\u{0}");
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().replace('\u{0}', "|"))
                .collect()
        })
        .collect();
    assert!(rows.len() >= 2, "no table in:\n{text}");
    rows.into_iter().skip(2).collect()
}

/// The backquoted words of a cell (`` `cause`, `direction` `` → cause, direction).
fn code_spans(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The documented kinds and their status.
fn documented_kinds() -> BTreeMap<String, String> {
    let doc = contract();
    let mut kinds = BTreeMap::new();
    for row in table(&section(&doc, "### Record kinds")) {
        let spans = code_spans(&row[0]);
        let [kind] = &spans[..] else {
            panic!(
                "record kinds: first cell must be one `kind`, got {:?}",
                row[0]
            );
        };
        let status = row.get(1).cloned().unwrap_or_default();
        assert!(
            status == PRODUCED || status == RESERVED,
            "record kind {kind}: status must be {PRODUCED:?} or {RESERVED:?}, got {status:?}"
        );
        assert!(
            kinds.insert(kind.clone(), status).is_none(),
            "record kind {kind} documented twice"
        );
    }
    kinds
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A source file without its unit tests (a `tests.rs` file is all tests; elsewhere the tests start at
/// `#[cfg(test)]` before `mod tests`).
fn production_code(path: &Path) -> String {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// `policy_changed` → `PolicyChanged`.
fn variant(kind: &str) -> String {
    kind.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

#[test]
fn every_record_kind_is_documented_and_every_documented_kind_exists() {
    let documented = documented_kinds();
    let code: BTreeSet<String> = RecordKind::ALL
        .iter()
        .map(|k| k.as_str().to_owned())
        .collect();
    let doc: BTreeSet<String> = documented.keys().cloned().collect();
    assert_eq!(
        doc, code,
        "docs/CONTRACT.md's record kinds (left) and RecordKind (right) differ"
    );
    for kind in &doc {
        assert_eq!(
            variant(kind),
            format!(
                "{:?}",
                serde_json::from_value::<RecordKind>(serde_json::Value::String(kind.clone()))
                    .expect("a documented kind parses")
            ),
            "the variant name of {kind}"
        );
    }
}

#[test]
fn produced_kinds_are_emitted_where_listed_and_reserved_ones_nowhere() {
    let documented = documented_kinds();
    let src = root().join("observer/src");
    for (kind, status) in &documented {
        let producer = PRODUCERS.iter().find(|(k, _, _)| k == kind);
        match (status.as_str(), producer) {
            (PRODUCED, Some((_, file, needle))) => {
                let code = production_code(&src.join(file));
                assert!(
                    code.contains(needle),
                    "{kind} is documented as produced by observer/src/{file}, which no longer has {needle:?}: \
                     update PRODUCERS (and the document, if it is no longer produced)"
                );
            }
            (PRODUCED, None) => panic!(
                "{kind} is documented as produced, but PRODUCERS does not say where: find the code that \
                 writes it and list it"
            ),
            (_, Some((_, file, _))) => panic!(
                "{kind} is listed as produced by observer/src/{file} but documented as {status:?}"
            ),
            (_, None) => {
                // Reserved: no daemon code constructs it (the record type's own module only names it).
                let needle = format!("RecordKind::{}", variant(kind));
                let mut files = Vec::new();
                sources(&src, &mut files);
                let constructing: Vec<String> = files
                    .iter()
                    .filter(|f| !f.ends_with("export/record.rs"))
                    .filter(|f| production_code(f).contains(&needle))
                    .map(|f| f.strip_prefix(&src).unwrap_or(f).display().to_string())
                    .collect();
                assert!(
                    constructing.is_empty(),
                    "{kind} is documented as {RESERVED:?} but {constructing:?} use {needle}: if they \
                     produce it, document it as produced and list it in PRODUCERS"
                );
            }
        }
    }
}

#[test]
fn every_registered_metric_is_documented_with_its_labels_and_the_reverse() {
    let doc = contract();
    let mut documented = BTreeMap::new();
    for row in table(&section(&doc, "## Metrics")) {
        let spans = code_spans(&row[0]);
        let [name] = &spans[..] else {
            panic!("metrics: first cell must be one `name`, got {:?}", row[0]);
        };
        let kind = row.get(1).cloned().unwrap_or_default();
        let mut labels = code_spans(row.get(2).map_or("", String::as_str));
        labels.sort();
        assert!(
            kind == "counter" || kind == "gauge",
            "{name}: type must be counter or gauge, got {kind:?}"
        );
        assert_eq!(
            kind == "counter",
            name.ends_with("_total"),
            "{name}: counters, and only counters, end in _total"
        );
        assert!(
            documented.insert(name.clone(), labels).is_none(),
            "{name} documented twice"
        );
    }
    let metrics = Metrics::new().expect("metrics");
    let registered: BTreeMap<String, Vec<String>> = metrics
        .families()
        .iter()
        .map(|(name, labels)| {
            let mut labels = labels.clone();
            labels.sort();
            (name.clone(), labels)
        })
        .collect();
    let missing: Vec<_> = registered
        .keys()
        .filter(|n| !documented.contains_key(*n))
        .collect();
    let unknown: Vec<_> = documented
        .keys()
        .filter(|n| !registered.contains_key(*n))
        .collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "registered but not in docs/CONTRACT.md: {missing:?}; documented but not registered: {unknown:?}"
    );
    for (name, labels) in &registered {
        assert_eq!(&documented[name], labels, "labels of {name}");
    }
}

#[test]
fn every_documented_endpoint_is_routed_and_the_reverse() {
    let doc = contract();
    let documented: BTreeSet<String> = table(&section(&doc, "## HTTP API"))
        .iter()
        .filter_map(|row| {
            let spans = code_spans(&row[0]);
            spans.first()?.strip_prefix("GET ").map(str::to_owned)
        })
        .collect();
    assert!(!documented.is_empty(), "no `GET /…` rows under ## HTTP API");
    let http = production_code(&root().join("observer/src/export/http.rs"));
    let routed: BTreeSet<String> = http
        .split(".route(\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next().map(str::to_owned))
        .collect();
    assert_eq!(
        documented, routed,
        "docs/CONTRACT.md's endpoints (left) and export/http.rs's routes (right) differ"
    );
}

#[test]
fn the_document_parser_finds_what_it_must() {
    // The checks above must not pass on an empty parse.
    let doc =
        "# t\n\n## A\n\n| k | s |\n|---|---|\n| `x` | produced |\n| `y` | no \\| pipe |\n\n## B\n";
    let rows = table(&section(doc, "## A"));
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1][1], "no | pipe");
    assert_eq!(code_spans("`a`, `b` c"), ["a", "b"]);
    assert_eq!(variant("policy_changed"), "PolicyChanged");
    assert!(!section(doc, "## A").contains("## B"));
}

#[test]
fn every_evidence_field_is_documented_and_the_reverse() {
    use observer::export::record::{
        ChannelSide, DnatSeen, DropSeen, Evidence, IcmpSeen, ResetSeen, ResetSide, RetransmitsSeen,
    };
    // Every field set, so that none is skipped when serialised.
    let full = Evidence {
        syn_retransmits: 1,
        drop: Some(DropSeen {
            reason: "NETFILTER_DROP".into(),
            call_site: "nft_do_chain+0x3e8".into(),
            interface: Some("lxca".into()),
        }),
        reset: Some(ResetSeen {
            side: ResetSide::Destination,
        }),
        icmp: Some(IcmpSeen {
            icmp_type: 3,
            code: 13,
        }),
        established: true,
        other_node: Some("node-b".into()),
        retransmits: Some(RetransmitsSeen {
            rtos: 3,
            since: std::time::SystemTime::UNIX_EPOCH,
            side: ChannelSide::Server,
        }),
        dnat: Some(DnatSeen {
            ip: "198.18.1.2".parse().expect("ip"),
            port: 50051,
            seen_in: "conntrack".into(),
        }),
    };
    let json = serde_json::to_value(&full).expect("evidence serialises");
    let produced: BTreeSet<String> = json
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect();
    let documented: BTreeSet<String> = table(&section(&contract(), "### Evidence"))
        .iter()
        .flat_map(|row| code_spans(&row[0]))
        .collect();
    assert_eq!(
        produced, documented,
        "docs/CONTRACT.md's Evidence table and the serialised `Evidence` differ"
    );
}
