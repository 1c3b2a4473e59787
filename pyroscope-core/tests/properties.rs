//! Properties of what users type: tag strings, label names and values, server addresses and
//! `PYROSCOPE_*` values. Any input gives a value or a typed error, never a panic, and what is
//! valid reads back as written. Tested through the public entry points only (`parse_tags`,
//! `LabelSet::new`, `AgentBuilder::build`), so the properties hold whatever the validation rules.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use pyroscope_core::{parse_tags, AgentBuilder, Config, Destination, Error, LabelSet, MAX_SAMPLE_RATE};

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, ..ProptestConfig::default() }
}

/// Label names every version accepts: a letter or `_` then letters, digits, `_`; never `__`.
fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z][a-zA-Z0-9_]{0,15}"
}

/// Label values every version accepts, on samples and on series alike.
fn value() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_./:-]{1,20}"
}

/// Distinct names with values.
fn tags() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::btree_map(name(), value(), 0..6).prop_map(|m| m.into_iter().collect())
}

/// Spaces a user may put around items, names and values.
fn pad() -> impl Strategy<Value = String> {
    "[ ]{0,2}"
}

/// Settings from these variables only (the application name always set).
fn from_vars(vars: &[(&str, &str)]) -> Result<Config, Error> {
    let mut map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    map.entry("PYROSCOPE_APPLICATION_NAME".into()).or_insert_with(|| "app".into());
    AgentBuilder::from_vars(move |k| map.get(k).cloned()).build()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_tag_string_parses_or_is_a_typed_error(s in "\\PC{0,64}|[a-z=, {}_]{0,32}") {
        if let Ok(tags) = parse_tags(&s) {
            // What the parser accepts, the builder accepts too, unchanged.
            for (k, v) in &tags {
                prop_assert_eq!(k.trim(), k);
                prop_assert_eq!(v.trim(), v);
            }
            let c = AgentBuilder::new("app").tags(tags.clone()).build();
            prop_assert!(c.is_ok(), "parse_tags({:?}) = {:?} but build: {:?}", s, tags, c);
        }
    }

    #[test]
    fn written_tags_parse_back(tags in tags(), pads in prop::collection::vec(pad(), 24)) {
        let mut p = pads.iter().cycle();
        let text = tags
            .iter()
            .map(|(k, v)| format!("{}{k}{}={}{v}{}", p.next().unwrap(), p.next().unwrap(), p.next().unwrap(), p.next().unwrap()))
            .collect::<Vec<_>>()
            .join(",");
        prop_assert_eq!(parse_tags(&text).map_err(|e| TestCaseError::fail(e.to_string()))?, tags.clone());
        // The same through PYROSCOPE_TAGS and the builder.
        let c = from_vars(&[("PYROSCOPE_TAGS", &text)]).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(c.tags.into_iter().collect::<Vec<_>>(), tags);
    }

    #[test]
    fn an_item_without_equals_is_rejected(tags in tags(), bare in name(), at in any::<prop::sample::Index>()) {
        let mut items: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        items.insert(at.index(items.len() + 1), bare);
        let parsed = parse_tags(&items.join(","));
        prop_assert!(matches!(parsed, Err(Error::InvalidTagString { .. })), "{:?}", parsed);
    }

    #[test]
    fn any_sample_label_is_a_set_or_a_typed_error(k in "\\PC{0,24}", v in "\\PC{0,24}") {
        let _ = LabelSet::new(&[(k.as_str(), v.as_str())]);
    }

    #[test]
    fn valid_sample_labels_make_a_set(labels in tags()) {
        prop_assert!(LabelSet::new(&labels).is_ok(), "{:?}", labels);
    }

    #[test]
    fn any_server_address_is_a_server_or_a_typed_error(s in "\\PC{0,48}|(http|https|ftp)://[a-z@:/?#.0-9]{0,24}") {
        match AgentBuilder::new("app").server_address(&s).build() {
            Ok(c) => match c.destination {
                Destination::Server(url) => {
                    prop_assert!(url.scheme() == "http" || url.scheme() == "https", "{}", url);
                    prop_assert!(url.host_str().is_some_and(|h| !h.is_empty()), "{}", url);
                }
                Destination::Directory(d) => prop_assert!(false, "{:?} became a folder {:?}", s, d),
                Destination::Nowhere => prop_assert!(false, "{:?} became Nowhere", s),
            },
            Err(e) => prop_assert!(matches!(e, Error::InvalidServerAddress { .. }), "{:?}: {:?}", s, e),
        }
    }

    #[test]
    fn valid_server_addresses_are_kept(
        https in any::<bool>(),
        host in "[a-z][a-z0-9-]{0,12}(\\.[a-z]{2,5}){0,2}",
        port in prop::option::of(1u16..),
        path in prop::collection::vec("[a-z0-9]{1,8}", 0..3),
    ) {
        let scheme = if https { "https" } else { "http" };
        let port_text = port.map(|p| format!(":{p}")).unwrap_or_default();
        let s = format!("{scheme}://{host}{port_text}/{}", path.join("/"));
        let c = AgentBuilder::new("app").server_address(&s).build().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let Destination::Server(url) = c.destination else { return Err(TestCaseError::fail("not a server")) };
        prop_assert_eq!(url.host_str(), Some(host.as_str()));
        prop_assert_eq!(url.port_or_known_default(), Some(port.unwrap_or(if https { 443 } else { 80 })));
    }

    #[test]
    fn any_sample_rate_value_is_a_rate_or_a_typed_error(s in "\\PC{0,12}|[ +-]?[0-9]{1,12}[ ]?") {
        let c = from_vars(&[("PYROSCOPE_SAMPLE_RATE", &s)]);
        let expected = if s.trim().is_empty() { Some(100) } else { s.trim().parse::<u32>().ok() };
        match (expected, c) {
            (Some(hz), Ok(c)) => prop_assert_eq!(c.sample_rate, hz),
            (Some(hz), Err(e)) => prop_assert!(hz == 0 || hz > MAX_SAMPLE_RATE, "{:?}: {:?}", s, e),
            (None, Err(e)) => prop_assert!(matches!(e, Error::InvalidEnv { var: "PYROSCOPE_SAMPLE_RATE", .. }), "{:?}", e),
            (None, Ok(c)) => prop_assert!(false, "{:?} accepted as {}", s, c.sample_rate),
        }
    }

    #[test]
    fn upload_intervals_in_range_are_kept(ms in 1_000u64..=3_600_000, spaces in pad()) {
        let text = format!("{spaces}{}.{:03}{spaces}", ms / 1000, ms % 1000);
        let c = from_vars(&[("PYROSCOPE_UPLOAD_INTERVAL", &text)]).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let diff = c.upload_interval.abs_diff(Duration::from_millis(ms));
        prop_assert!(diff < Duration::from_micros(1), "{:?} -> {:?}", text, c.upload_interval);
    }

    #[test]
    fn any_env_value_is_a_setting_or_a_typed_error(
        var in prop::sample::select(vec![
            "PYROSCOPE_UPLOAD_INTERVAL",
            "PYROSCOPE_ALLOC_SAMPLE_BYTES",
            "PYROSCOPE_MEMORY",
            "PYROSCOPE_TAGS",
            "PYROSCOPE_SERVER_ADDRESS",
            "PYROSCOPE_APPLICATION_NAME",
        ]),
        s in "\\PC{0,24}|[0-9. e+-]{0,12}",
    ) {
        match from_vars(&[(var, &s)]) {
            Ok(c) if var == "PYROSCOPE_UPLOAD_INTERVAL" => {
                prop_assert!(c.upload_interval >= Duration::from_secs(1) && c.upload_interval <= Duration::from_secs(3600));
            }
            Ok(c) if var == "PYROSCOPE_MEMORY" && !s.trim().is_empty() => {
                let on = matches!(s.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on");
                prop_assert_eq!(c.memory, on);
            }
            _ => {}
        }
    }
}
