//! The one YAML reader. Every YAML text fastpath accepts — the node config, a service file,
//! policy documents (from a file, the config or the control socket) — is read here, with
//! its bounds checked *while* it is parsed, never after:
//!
//! - size: the text is refused before parsing when it is longer than its [`Limits`];
//! - nesting depth, node count, document count, anchors/aliases: serde-saphyr's budgets stop
//!   the parser at the first event past a bound (an 80 KiB nested document costs
//!   microseconds, not seconds; "billion laughs" alias bombs are refused);
//! - errors name the field path (`pods[1].ip`) and the line and column.
//!
//! Generic documents (Kubernetes objects) are read as `serde_json::Value`: Kubernetes objects
//! are JSON by definition, so a YAML feature JSON lacks (non-string keys, tags) is refused.
//! The choice of serde-saphyr over serde_yaml 0.9 (deprecated) is in docs/decisions.md.

use serde::de::DeserializeOwned;

/// The bounds of one kind of YAML input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// What the input is, for messages ("config", "policy").
    pub what: &'static str,
    /// Longest text accepted, in bytes.
    pub max_bytes: usize,
    /// Deepest nesting of sequences and mappings.
    pub max_depth: usize,
    /// Most nodes (scalars, sequences, mappings) over the whole text.
    pub max_nodes: usize,
    /// Most documents in a `---`-separated stream.
    pub max_documents: usize,
}

/// A node config (`fastpath run --config`, `config check`). 16 MiB holds tens of thousands
/// of remote pods; a Kubernetes object in `policies:` nests ~12 levels below the top.
pub const CONFIG: Limits = Limits {
    what: "config",
    max_bytes: 16 << 20,
    max_depth: 32,
    max_nodes: 2_000_000,
    max_documents: 1,
};

/// A policy text (`policy apply -f`, the control socket's `policy_apply`).
pub const POLICY: Limits = Limits {
    what: "policy text",
    max_bytes: 4 << 20,
    max_depth: 32,
    max_nodes: 500_000,
    max_documents: 4096,
};

/// A service file (`service apply -f`): one service or a list of them. Sent to the node as
/// one control-socket request, so below that bound (8 MiB).
pub const SERVICES: Limits = Limits {
    what: "service file",
    max_bytes: 4 << 20,
    max_depth: 16,
    max_nodes: 2_000_000,
    max_documents: 1,
};

/// Why a YAML text was refused: where (field path, line, column) and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{msg}{}", if path.is_empty() { String::new() } else { format!("{path}: ") }, at.map(|(l, c)| format!(" (line {l}, column {c})")).unwrap_or_default())]
pub struct YamlError {
    /// The field, e.g. `pods[1].ip`; `(top level)` for the document itself.
    pub path: String,
    pub msg: String,
    /// Line and column (1-based), when known.
    pub at: Option<(u64, u64)>,
}

fn options(l: &Limits) -> serde_saphyr::Options {
    serde_saphyr::options! {
        with_snippet: false,
        budget: serde_saphyr::budget! {
            max_depth: l.max_depth,
            max_nodes: l.max_nodes,
            max_documents: l.max_documents,
            max_events: l.max_nodes.saturating_mul(3),
            max_total_scalar_bytes: l.max_bytes,
            max_aliases: 1024,
            max_anchors: 1024,
            max_recorded_anchor_events: 65_536,
            max_recorded_anchor_bytes: 1 << 20,
        },
    }
}

fn too_long(text: &str, l: &Limits) -> Option<YamlError> {
    (text.len() > l.max_bytes).then(|| YamlError {
        path: "(top level)".into(),
        msg: format!(
            "{} bytes: a {} may have at most {} bytes",
            text.len(),
            l.what,
            l.max_bytes
        ),
        at: None,
    })
}

/// The message of a parser error without the location serde-saphyr appends (we print our
/// own), with budget breaches said in the terms of [`Limits`].
fn message(e: &serde_saphyr::Error, l: &Limits) -> (String, Option<(u64, u64)>) {
    use serde_saphyr::budget::BudgetBreach as B;
    let at = e
        .location()
        .filter(|loc| loc.line() > 0)
        .map(|loc| (loc.line(), loc.column()));
    if let serde_saphyr::Error::Budget { breach, .. } = e {
        let msg = match breach {
            B::Depth { .. } => format!("nested deeper than {} levels", l.max_depth),
            B::Nodes { .. } | B::Events { .. } => {
                format!("more than {} YAML nodes", l.max_nodes)
            }
            B::Documents { .. } => format!("more than {} documents", l.max_documents),
            B::Aliases { .. } | B::Anchors { .. } => {
                "more than 1024 anchors or aliases".to_string()
            }
            other => format!("exceeds the bounds of a {}: {other:?}", l.what),
        };
        return (format!("too large: {msg}"), at);
    }
    let s = e.to_string();
    let s = match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    };
    // A breach found while replaying an alias arrives wrapped in the alias's context.
    if s.contains("budget breached") {
        return (
            format!(
                "too large: {s} (a {} may have at most 1024 anchors/aliases expanding to 65536 events)",
                l.what
            ),
            at,
        );
    }
    (s, at)
}

/// Parse one YAML document into `T`, within `limits`.
///
/// # Errors
/// The text is too long or too deep/large, not YAML, or not a `T` (with the field path).
pub fn parse<T: DeserializeOwned>(text: &str, limits: &Limits) -> Result<T, YamlError> {
    if let Some(e) = too_long(text, limits) {
        return Err(e);
    }
    let mut path = String::new();
    let r = serde_saphyr::with_deserializer_from_str_with_options(text, options(limits), |de| {
        let mut track = serde_path_to_error::Track::new();
        let r = T::deserialize(serde_path_to_error::Deserializer::new(de, &mut track));
        if r.is_err() {
            path = track.path().to_string();
        }
        r
    });
    r.map_err(|e| {
        let (msg, at) = message(&e, limits);
        YamlError {
            path: if path.is_empty() || path == "." {
                "(top level)".into()
            } else {
                path
            },
            msg,
            at,
        }
    })
}

/// Every non-empty document of a `---`-separated stream, as generic values, within
/// `limits`.
///
/// # Errors
/// As [`parse`]; the path is empty (the documents are not typed yet).
pub fn documents(text: &str, limits: &Limits) -> Result<Vec<serde_json::Value>, YamlError> {
    if let Some(e) = too_long(text, limits) {
        return Err(e);
    }
    serde_saphyr::from_multiple_with_options::<serde_json::Value>(text, options(limits))
        .map(|docs| docs.into_iter().filter(|d| !d.is_null()).collect())
        .map_err(|e| {
            let (msg, at) = message(&e, limits);
            YamlError {
                path: String::new(),
                msg,
                at,
            }
        })
}

/// Read a text file of at most `limits.max_bytes` (never more into memory).
///
/// # Errors
/// The file cannot be read, is not UTF-8, or is longer than the bound (the message says
/// which).
pub fn read_file(path: &std::path::Path, limits: &Limits) -> std::io::Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    f.take(limits.max_bytes as u64 + 1).read_to_end(&mut buf)?;
    if buf.len() > limits.max_bytes {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!(
                "longer than {} bytes, the most a {} may have",
                limits.max_bytes, limits.what
            ),
        ));
    }
    String::from_utf8(buf)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()))
}

/// Convert a generic value into `T`, naming the field path of a mismatch.
///
/// # Errors
/// `(path, message)` of the first field that does not fit.
pub fn typed<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        (path, e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "only parsed")]
    struct T {
        a: u16,
        #[serde(default)]
        b: Vec<std::net::Ipv4Addr>,
    }

    #[test]
    fn errors_name_path_and_line() {
        let e = parse::<T>("a: 1\nb: [10.0.0.1, 10.0.0.300]\n", &CONFIG).unwrap_err();
        assert_eq!(e.path, "b[1]");
        assert_eq!(e.at, Some((2, 15)));
        assert!(e.to_string().starts_with("b[1]: invalid IPv4"), "{e}");
        let e = parse::<T>("a: 1\nc: 2\n", &CONFIG).unwrap_err();
        assert!(e.to_string().contains("unknown field `c`"), "{e}");
        let e = parse::<T>("b: []\n", &CONFIG).unwrap_err();
        assert_eq!(e.path, "(top level)");
        assert!(e.msg.contains("missing field `a`"), "{e}");
    }

    /// Issue #11 defect 8: the depth limit applied only after a whole (slow) parse.
    #[test]
    fn bounds_stop_the_parser_early() {
        let mut s = String::from("a: 1\nb:\n");
        let mut ind = String::from("  ");
        for i in 0..3000 {
            s += &format!("{ind}- k{i}:\n");
            ind += "  ";
        }
        let t = std::time::Instant::now();
        let e = parse::<serde_json::Value>(&s, &CONFIG).unwrap_err();
        assert!(e.msg.contains("nested deeper than 32 levels"), "{e}");
        let flow = format!("a: {}{}", "[".repeat(50_000), "]".repeat(50_000));
        let e = parse::<serde_json::Value>(&flow, &CONFIG).unwrap_err();
        assert!(
            e.msg.contains("deeper") || e.msg.contains("recursion"),
            "{e}"
        );
        // Both together take milliseconds; serde_yaml took 6.5 s for an 80 KiB document.
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            t.elapsed()
        );
        let big = "x".repeat(CONFIG.max_bytes + 1);
        let e = parse::<serde_json::Value>(&big, &CONFIG).unwrap_err();
        assert!(e.msg.contains("may have at most 16777216 bytes"), "{e}");
        // An alias bomb ("billion laughs") is refused.
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            bomb += &format!(
                "a{i}: &a{i} [{}]\n",
                vec![format!("*a{}", i - 1); 10].join(", ")
            );
        }
        let t = std::time::Instant::now();
        let e = parse::<serde_json::Value>(&bomb, &CONFIG).unwrap_err();
        assert!(e.msg.starts_with("too large: "), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(10));
        let docs = "---\n".repeat(5000) + "a: 1\n";
        let e = documents(&docs, &POLICY).unwrap_err();
        assert!(e.msg.contains("more than 4096 documents"), "{e}");
    }

    #[test]
    fn documents_skip_empty_ones() {
        let d = documents("---\na: 1\n---\n---\nb: [x]\n", &POLICY).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[1]["b"][0], "x");
    }
}
