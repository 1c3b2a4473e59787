//! Folded stacks and flame graphs (inferno).

use std::collections::BTreeMap;

use crate::data::Samples;

/// `root;..;leaf value` lines, merged and sorted (inferno's input).
pub fn folded(samples: &Samples) -> Vec<String> {
    let mut merged: BTreeMap<String, i64> = BTreeMap::new();
    for s in &samples.samples {
        // `;` separates frames in the folded format.
        let key = s.stack.iter().map(|f| f.replace(';', ":")).collect::<Vec<_>>().join(";");
        *merged.entry(if key.is_empty() { "[no frames]".into() } else { key }).or_default() += s.value;
    }
    merged.into_iter().map(|(k, v)| format!("{k} {v}")).collect()
}

fn options(title: &str, count_name: &str) -> inferno::flamegraph::Options<'static> {
    let mut o = inferno::flamegraph::Options::default();
    o.title = title.to_owned();
    o.count_name = count_name.to_owned();
    o.deterministic = true;
    o.hash = true;
    o.image_width = Some(1200);
    o
}

/// An interactive SVG flame graph (search, zoom, tooltips are inferno's embedded script).
pub fn svg(samples: &Samples, title: &str) -> Result<String, String> {
    let lines = folded(samples);
    if lines.is_empty() {
        return Err("no samples match the selection".into());
    }
    let mut out = Vec::new();
    let mut o = options(title, &samples.unit);
    inferno::flamegraph::from_lines(&mut o, lines.iter().map(String::as_str), &mut out).map_err(|e| e.to_string())?;
    String::from_utf8(out).map_err(|e| e.to_string())
}

/// A differential flame graph: frames shaped by `after`, coloured by the change from `before`
/// (red grew, blue shrank). Both sides are normalized to the same total first.
pub fn diff_svg(before: &Samples, after: &Samples, title: &str) -> Result<String, String> {
    let (b, a) = (folded(before).join("\n"), folded(after).join("\n"));
    if b.is_empty() || a.is_empty() {
        return Err("one side of the comparison has no samples".into());
    }
    let mut diff = Vec::new();
    let opt = inferno::differential::Options { normalize: true, ..Default::default() };
    inferno::differential::from_readers(opt, b.as_bytes(), a.as_bytes(), &mut diff).map_err(|e| e.to_string())?;
    let text = String::from_utf8(diff).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut o = options(title, &after.unit);
    inferno::flamegraph::from_lines(&mut o, text.lines(), &mut out).map_err(|e| e.to_string())?;
    String::from_utf8(out).map_err(|e| e.to_string())
}
