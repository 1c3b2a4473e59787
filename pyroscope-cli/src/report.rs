//! One self-contained HTML file: per type a flame graph, the self/total table and the tag
//! breakdown; with `--by TAG`, a comparison of the tag's values and a differential flame graph.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

use pyroscope_pprof::proto::Profile;

use crate::data::{self, Samples, Selection};
use crate::flame;
use crate::table::{self, human, pct, Table};

/// Order in which types appear when present.
const TYPE_ORDER: [&str; 8] =
    ["cpu", "wall", "alloc_space", "alloc_objects", "inuse_space", "inuse_objects", "samples", "space"];

/// The types present, in the report's order (known types first).
pub fn ordered_types(present: &[String]) -> Vec<String> {
    let mut out: Vec<String> =
        TYPE_ORDER.iter().filter(|t| present.iter().any(|p| p == *t)).map(|t| t.to_string()).collect();
    out.extend(present.iter().filter(|p| !TYPE_ORDER.contains(&p.as_str())).cloned());
    out
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// An SVG in its own document, so that several flame graphs' scripts and ids do not clash.
fn frame(svg: &str) -> String {
    let height = svg
        .split("height=\"")
        .nth(1)
        .and_then(|h| h.split('"').next())
        .and_then(|h| h.parse::<f64>().ok())
        .unwrap_or(600.0);
    format!(
        "<iframe class=\"flame\" style=\"height:{}px\" srcdoc=\"{}\"></iframe>\n",
        height.ceil() as i64 + 24,
        escape(svg)
    )
}

fn top_table(t: &Table, limit: usize) -> String {
    let mut h =
        String::from("<table><tr><th>function</th><th>self</th><th>self %</th><th>total</th><th>total %</th></tr>\n");
    for (name, s, tot) in t.rows.iter().take(limit) {
        let _ = writeln!(
            h,
            "<tr><td class=\"fn\">{}</td><td>{}</td><td>{:.2}%</td><td>{}</td><td>{:.2}%</td></tr>",
            escape(name),
            human(*s, &t.unit),
            pct(*s, t.sum),
            human(*tot, &t.unit),
            pct(*tot, t.sum)
        );
    }
    h.push_str("</table>\n");
    h
}

/// Share of the type's total per value of each label.
fn tag_breakdown(samples: &Samples) -> String {
    let mut by_key: BTreeMap<&str, BTreeMap<&str, i64>> = BTreeMap::new();
    let sum: i64 = samples.samples.iter().map(|s| s.value).sum();
    for s in &samples.samples {
        for (k, v) in &s.labels {
            *by_key.entry(k).or_default().entry(v).or_default() += s.value;
        }
    }
    if by_key.is_empty() {
        return "<p>No tags on these samples.</p>\n".into();
    }
    let mut h = String::new();
    for (k, values) in by_key {
        let mut values: Vec<_> = values.into_iter().collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.1));
        let _ =
            writeln!(h, "<table class=\"tags\"><tr><th>{}</th><th>total</th><th>share</th><th></th></tr>", escape(k));
        for (v, n) in values {
            let p = pct(n, sum);
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{:.1}%</td><td><div class=\"bar\" style=\"width:{:.0}px\"></div></td></tr>",
                escape(v),
                human(n, &samples.unit),
                p,
                p * 3.0
            );
        }
        h.push_str("</table>\n");
    }
    h
}

fn comparison(profiles: &[(PathBuf, Profile)], sel: &Selection, tag: &str, limit: usize) -> Result<String, String> {
    let all = data::extract(profiles, sel)?;
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    for s in &all.samples {
        if let Some(v) = s.labels.get(tag) {
            *totals.entry(v.clone()).or_default() += s.value;
        }
    }
    if totals.len() < 2 {
        return Ok(format!("<p>Tag <code>{}</code> has fewer than two values here.</p>\n", escape(tag)));
    }
    let mut values: Vec<(String, i64)> = totals.into_iter().collect();
    values.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let sides: Vec<(String, Table, Samples)> = values
        .iter()
        .map(|(v, _)| {
            let mut s = sel.clone();
            s.filters.push((tag.to_owned(), v.clone()));
            let samples = data::extract(profiles, &s)?;
            Ok((v.clone(), Table::new(&samples, true), samples))
        })
        .collect::<Result<_, String>>()?;
    let mut h = String::new();
    let _ = write!(h, "<table><tr><th>function (total)</th>");
    for (v, t, _) in &sides {
        let _ = write!(h, "<th>{}={} ({})</th>", escape(tag), escape(v), human(t.sum, &t.unit));
    }
    h.push_str("</tr>\n");
    let rows = table::diff(&sides[0].1, &sides[1].1);
    for r in rows.iter().take(limit) {
        let _ = write!(h, "<tr><td class=\"fn\">{}</td>", escape(&r.function));
        for (_, t, _) in &sides {
            let tot = t.get(&r.function).1;
            let _ = write!(h, "<td>{} ({:.1}%)</td>", human(tot, &t.unit), pct(tot, t.sum));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
    let (a, b) = (&sides[0], &sides[1]);
    let title = format!("{tag}={} vs {tag}={}: red grew, blue shrank (normalized)", a.0, b.0);
    let _ = write!(
        h,
        "<h4>Differential flame graph: {} compared with {}</h4>\n{}",
        escape(&a.0),
        escape(&b.0),
        frame(&flame::diff_svg(&b.2, &a.2, &title)?)
    );
    Ok(h)
}

pub fn html(
    profiles: &[(PathBuf, Profile)],
    sel: &Selection,
    types: &[String],
    by: Option<&str>,
    limit: usize,
) -> Result<String, String> {
    let mut body = String::new();
    let mut nav = String::new();
    for ty in types {
        let mut s = sel.clone();
        s.sample_type = ty.clone();
        let samples = data::extract(profiles, &s)?;
        if samples.samples.is_empty() {
            continue;
        }
        let t = Table::new(&samples, true);
        let _ = write!(nav, "<a href=\"#{0}\">{0}</a> ", escape(ty));
        let _ = write!(
            body,
            "<section id=\"{}\"><h2>{} <small>{} in {} profiles</small></h2>\n{}<h3>Top functions</h3>\n{}<h3>Tags</h3>\n{}",
            escape(ty),
            escape(ty),
            human(t.sum, &t.unit),
            samples.profiles,
            frame(&flame::svg(&samples, ty)?),
            top_table(&t, limit),
            tag_breakdown(&samples)
        );
        if let Some(tag) = by {
            let _ = write!(body, "<h3>Comparison by {}</h3>\n{}", escape(tag), comparison(profiles, &s, tag, limit)?);
        }
        body.push_str("</section>\n");
    }
    if body.is_empty() {
        return Err("no samples match the selection".into());
    }
    let filters: Vec<String> = sel.filters.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Ok(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Profile report</title>\n<style>{}</style></head>\n<body><h1>Profile report</h1>\n<p>{} profiles{}. Flame graphs: click to zoom, Ctrl-F or the Search button to highlight, hover for values.</p>\n<nav>{}</nav>\n{}</body></html>\n",
        STYLE,
        profiles.len(),
        if filters.is_empty() { String::new() } else { format!(", where {}", escape(&filters.join(", "))) },
        nav,
        body
    ))
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
iframe.flame{width:100%;border:1px solid #ddd;overflow:hidden}\
table{border-collapse:collapse;margin:.5em 0 1em}td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:right}\
td.fn,th:first-child,td:first-child{text-align:left}td.fn{font-family:monospace;max-width:60em;overflow-wrap:anywhere}\
.bar{background:#e8743b;height:10px}nav a{margin-right:1em}section{margin-top:2em}";
