//! Plots of one `scripts/bench.sh` results folder, as SVG (no plotting crate: a few rects
//! and texts are all a grouped bar chart needs):
//! - `throughput.svg`: median received packets/s per frame size and mode, with min–max
//!   whiskers, from every `same-node-<size>.json`;
//! - `rtt.svg`: RTT p50 and p99 per mode, from `rtt.json`.
//!
//! `fastpath-bench-plot <results dir>`

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use anyhow::{Context, bail};

const COLORS: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
];

/// (median, min, max) of `v`.
fn mmm(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// A grouped bar chart: `groups` (x labels) × `series` (legend), values (median, min, max).
fn bars(
    title: &str,
    unit: &str,
    groups: &[String],
    series: &[String],
    value: &dyn Fn(usize, usize) -> Option<(f64, f64, f64)>,
) -> String {
    let (w, h, left, top, bottom) = (900.0, 420.0, 80.0, 40.0, 70.0);
    let plot_h = h - top - bottom;
    let mut max = 0.0f64;
    for g in 0..groups.len() {
        for s in 0..series.len() {
            if let Some((_, _, hi)) = value(g, s) {
                max = max.max(hi);
            }
        }
    }
    let max = if max > 0.0 { max * 1.1 } else { 1.0 };
    let gw = (w - left - 20.0) / groups.len().max(1) as f64;
    let bw = gw * 0.8 / series.len().max(1) as f64;
    let y = |v: f64| top + plot_h - v / max * plot_h;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="20" text-anchor="middle" font-size="15">{title}</text>"#,
        w / 2.0
    );
    for i in 0..=5 {
        let v = max * i as f64 / 5.0;
        let _ = writeln!(
            o,
            r##"<line x1="{left}" x2="{}" y1="{y0:.1}" y2="{y0:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            w - 20.0,
            left - 6.0,
            y(v) + 4.0,
            human(v),
            y0 = y(v)
        );
    }
    let _ = writeln!(
        o,
        r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">{unit}</text>"#,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );
    for (g, name) in groups.iter().enumerate() {
        let gx = left + g as f64 * gw + gw * 0.1;
        for s in 0..series.len() {
            let Some((m, lo, hi)) = value(g, s) else {
                continue;
            };
            let x = gx + s as f64 * bw;
            let c = COLORS[s % COLORS.len()];
            let cx = x + bw * 0.45;
            let _ = writeln!(
                o,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{c}"><title>{}: {}</title></rect>
<line x1="{cx:.1}" x2="{cx:.1}" y1="{:.1}" y2="{:.1}" stroke="black"/>"#,
                y(m),
                bw * 0.9,
                top + plot_h - y(m),
                series[s],
                human(m),
                y(hi),
                y(lo)
            );
        }
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{name}</text>"#,
            left + g as f64 * gw + gw / 2.0,
            top + plot_h + 18.0
        );
    }
    for (s, name) in series.iter().enumerate() {
        let x = left + s as f64 * 140.0;
        let _ = writeln!(
            o,
            r#"<rect x="{x}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{}" y="{:.1}">{name}</text>"#,
            h - 30.0,
            COLORS[s % COLORS.len()],
            x + 16.0,
            h - 20.0
        );
    }
    o += "</svg>\n";
    o
}

fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.1}")
    }
}

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .context("usage: fastpath-bench-plot <results dir>")?;
    let dir = Path::new(&dir);
    // Throughput: (size, mode) → received pps of every rep.
    let mut thr: BTreeMap<(u64, String), Vec<f64>> = BTreeMap::new();
    let mut modes: Vec<String> = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if !(name.starts_with("same-node-") && name.ends_with(".json")) {
            continue;
        }
        let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p)?)?;
        for r in j["runs"].as_array().context("runs")? {
            let mode = r["mode"].as_str().context("mode")?.to_string();
            if !modes.contains(&mode) {
                modes.push(mode.clone());
            }
            let size = r["size"].as_u64().context("size")?;
            thr.entry((size, mode))
                .or_default()
                .push(r["received_pps"].as_f64().context("pps")?);
        }
    }
    let mut written = Vec::new();
    if !thr.is_empty() {
        let mut sizes: Vec<u64> = thr.keys().map(|(s, _)| *s).collect();
        sizes.dedup();
        let groups: Vec<String> = sizes.iter().map(|s| format!("{s} B")).collect();
        let svg = bars(
            "same-node UDP, received packets/s (median, min–max)",
            "packets/s",
            &groups,
            &modes,
            &|g, s| {
                thr.get(&(sizes[g], modes[s].clone()))
                    .map(|v| mmm(v.clone()))
            },
        );
        std::fs::write(dir.join("throughput.svg"), svg)?;
        written.push("throughput.svg");
    }
    let rtt = dir.join("rtt.json");
    if rtt.exists() {
        let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&rtt)?)?;
        let runs = j.as_array().context("rtt runs")?;
        let mut rmodes: Vec<String> = Vec::new();
        for r in runs {
            let m = r["mode"].as_str().context("mode")?.to_string();
            if !rmodes.contains(&m) {
                rmodes.push(m);
            }
        }
        let series = vec!["p50".to_string(), "p99".to_string()];
        let pick = |m: &str, k: &str| -> Vec<f64> {
            runs.iter()
                .filter(|r| r["mode"] == m)
                .filter_map(|r| r[k].as_f64())
                .collect()
        };
        let svg = bars(
            "same-node UDP request/response RTT, µs (median, min–max)",
            "µs",
            &rmodes,
            &series,
            &|g, s| {
                let v = pick(&rmodes[g], if s == 0 { "p50_us" } else { "p99_us" });
                (!v.is_empty()).then(|| mmm(v))
            },
        );
        std::fs::write(dir.join("rtt.svg"), svg)?;
        written.push("rtt.svg");
    }
    if written.is_empty() {
        bail!("{}: no same-node-*.json or rtt.json to plot", dir.display());
    }
    println!("wrote {} in {}", written.join(", "), dir.display());
    Ok(())
}
