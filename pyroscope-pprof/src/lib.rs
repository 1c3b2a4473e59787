//! # pyroscope-pprof
//!
//! The pprof `Profile` message (prost), a builder with string/function/location tables, gzip,
//! and a decoder that checks the invariants a Pyroscope server checks. No I/O, no sampling, no
//! HTTP: `pyroscope-core` builds its profiles with it and re-exports it, and the `pyroscope`
//! report command reads profiles with it alone. Field numbers follow google/pprof
//! `proto/profile.proto`.
//!
//! ```
//! let mut b = pyroscope_pprof::ProfileBuilder::new(&[("samples", "count")], ("cpu", "nanoseconds"), 10_000_000);
//! let leaf = b.location(0x10, 0x10, || vec![("work", "main.rs", 3)]);
//! b.sample(vec![leaf], vec![1], &[("vehicle", "car")]);
//! let bytes = pyroscope_pprof::encode_gzip(&b.build());
//! let p = pyroscope_pprof::decode(&bytes)?;
//! assert_eq!(p.sample[0].value, vec![1]);
//! # Ok::<(), pyroscope_pprof::DecodeError>(())
//! ```

#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::collections::HashMap;
use std::io::{Read, Write};

use prost::Message;

/// The protobuf messages of pprof's `profile.proto`.
#[allow(missing_docs)]
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "7")]
        pub drop_frames: i64,
        #[prost(int64, tag = "8")]
        pub keep_frames: i64,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }
    #[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
        #[prost(int64, tag = "4")]
        pub num_unit: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub memory_start: u64,
        #[prost(uint64, tag = "3")]
        pub memory_limit: u64,
        #[prost(uint64, tag = "4")]
        pub file_offset: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(int64, tag = "6")]
        pub build_id: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
        #[prost(bool, tag = "10")]
        pub has_inline_frames: bool,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
        #[prost(bool, tag = "5")]
        pub is_folded: bool,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
        #[prost(int64, tag = "3")]
        pub column: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
        #[prost(int64, tag = "5")]
        pub start_line: i64,
    }
}

use proto::{Function, Label, Line, Location, Profile, Sample, ValueType};

/// Builds a [`Profile`] with deduplicated strings, functions and locations.
pub struct ProfileBuilder {
    profile: Profile,
    strings: HashMap<String, i64>,
    functions: HashMap<(i64, i64), u64>,
    locations: HashMap<u64, u64>,
}

impl ProfileBuilder {
    /// A profile with `sample_types` (type, unit) pairs and a period.
    pub fn new(sample_types: &[(&str, &str)], period_type: (&str, &str), period: i64) -> Self {
        let mut b = ProfileBuilder {
            profile: Profile::default(),
            strings: HashMap::new(),
            functions: HashMap::new(),
            locations: HashMap::new(),
        };
        b.string("");
        for (t, u) in sample_types {
            let vt = ValueType { r#type: b.string(t), unit: b.string(u) };
            b.profile.sample_type.push(vt);
        }
        b.profile.period_type = Some(ValueType { r#type: b.string(period_type.0), unit: b.string(period_type.1) });
        b.profile.period = period;
        b
    }

    /// The index of `s` in the string table.
    pub fn string(&mut self, s: &str) -> i64 {
        if let Some(i) = self.strings.get(s) {
            return *i;
        }
        let i = self.profile.string_table.len() as i64;
        self.profile.string_table.push(s.to_owned());
        self.strings.insert(s.to_owned(), i);
        i
    }

    fn function(&mut self, name: &str, file: &str) -> u64 {
        let key = (self.string(name), self.string(file));
        if let Some(id) = self.functions.get(&key) {
            return *id;
        }
        let id = self.profile.function.len() as u64 + 1;
        self.profile.function.push(Function { id, name: key.0, system_name: key.0, filename: key.1, start_line: 0 });
        self.functions.insert(key, id);
        id
    }

    /// The location for `key` (an address or any unique frame key), creating it from `frames`
    /// (innermost first: (function, file, line)) the first time.
    pub fn location<'a>(
        &mut self,
        key: u64,
        address: u64,
        frames: impl FnOnce() -> Vec<(&'a str, &'a str, u32)>,
    ) -> u64 {
        if let Some(id) = self.locations.get(&key) {
            return *id;
        }
        let lines = frames()
            .into_iter()
            .map(|(name, file, line)| Line { function_id: self.function(name, file), line: line as i64, column: 0 })
            .collect();
        let id = self.profile.location.len() as u64 + 1;
        self.profile.location.push(Location { id, mapping_id: 0, address, line: lines, is_folded: false });
        self.locations.insert(key, id);
        id
    }

    /// Adds a sample: `locations` leaf first, `values` in sample-type order, string labels.
    pub fn sample(&mut self, locations: Vec<u64>, values: Vec<i64>, labels: &[(&str, &str)]) {
        let label = labels
            .iter()
            .map(|(k, v)| Label { key: self.string(k), str: self.string(v), num: 0, num_unit: 0 })
            .collect();
        self.profile.sample.push(Sample { location_id: locations, value: values, label });
    }

    /// Sets the window: start and length in nanoseconds.
    pub fn time(&mut self, time_nanos: i64, duration_nanos: i64) {
        self.profile.time_nanos = time_nanos;
        self.profile.duration_nanos = duration_nanos;
    }

    /// Adds a comment line.
    pub fn comment(&mut self, text: &str) {
        let i = self.string(text);
        self.profile.comment.push(i);
    }

    /// The finished profile.
    pub fn build(self) -> Profile {
        self.profile
    }
}

/// Encodes and gzips a profile.
pub fn encode_gzip(profile: &Profile) -> Vec<u8> {
    gzip(&profile.encode_to_vec())
}

/// Gzips bytes (fast level: profiles are small and we run every window).
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(bytes.len() / 4), flate2::Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(bytes);
    enc.finish().unwrap_or_default()
}

/// Why bytes could not be read as a profile.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The gzip stream is corrupt.
    #[error("corrupt gzip data: {0}")]
    Gzip(String),
    /// The bytes are not a pprof protobuf.
    #[error("not a pprof profile: {0}")]
    Protobuf(String),
    /// The profile violates pprof's invariants.
    #[error("malformed pprof: {0}")]
    Malformed(String),
}

/// Decodes a pprof profile, gzipped or not (detected by the gzip magic, as the server does),
/// and checks the invariants the server checks (string 0 empty, ids valid, one value per type).
pub fn decode(bytes: &[u8]) -> Result<Profile, DecodeError> {
    let raw;
    let data = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes).read_to_end(&mut out).map_err(|e| DecodeError::Gzip(e.to_string()))?;
        raw = out;
        &raw[..]
    } else {
        bytes
    };
    let p = Profile::decode(data).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    validate(&p).map_err(DecodeError::Malformed)?;
    Ok(p)
}

fn validate(p: &Profile) -> Result<(), String> {
    if p.string_table.first().map(String::as_str) != Some("") {
        return Err("string_table[0] must be empty".into());
    }
    let n = p.string_table.len() as i64;
    let s_ok = |i: i64| (0..n).contains(&i);
    for vt in p.sample_type.iter().chain(p.period_type.iter()) {
        if !s_ok(vt.r#type) || !s_ok(vt.unit) {
            return Err("value type string out of range".into());
        }
        if p.string_table[vt.r#type as usize].contains('-') {
            return Err("sample type names must not contain '-'".into());
        }
    }
    let fids: std::collections::HashSet<u64> = p.function.iter().map(|f| f.id).collect();
    for f in &p.function {
        if f.id == 0 || !s_ok(f.name) || !s_ok(f.filename) {
            return Err(format!("bad function {}", f.id));
        }
    }
    let lids: std::collections::HashSet<u64> = p.location.iter().map(|l| l.id).collect();
    for l in &p.location {
        if l.id == 0 || l.line.iter().any(|line| !fids.contains(&line.function_id)) {
            return Err(format!("bad location {}", l.id));
        }
    }
    for s in &p.sample {
        if s.value.len() != p.sample_type.len() {
            return Err("sample value count differs from sample_type count".into());
        }
        if s.location_id.iter().any(|id| !lids.contains(id)) {
            return Err("sample refers to a missing location".into());
        }
        if s.label.iter().any(|l| !s_ok(l.key) || !s_ok(l.str)) {
            return Err("label string out of range".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_inlined_frames() {
        let mut b =
            ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")], ("cpu", "nanoseconds"), 10_000_000);
        let leaf = b.location(0x10, 0x10, || vec![("inlined", "a.rs", 3), ("outer", "a.rs", 9)]);
        let root = b.location(0x20, 0x20, || vec![("main", "m.rs", 1)]);
        assert_eq!(b.location(0x10, 0x10, Vec::new), leaf);
        b.sample(vec![leaf, root], vec![2, 20_000_000], &[("vehicle", "car")]);
        b.time(1, 2);
        let bytes = encode_gzip(&b.build());
        let p = decode(&bytes).unwrap();
        let s = |i: i64| p.string_table[i as usize].as_str();
        assert_eq!(p.sample[0].value, vec![2, 20_000_000]);
        assert_eq!(s(p.sample[0].label[0].key), "vehicle");
        let loc = &p.location[0];
        assert_eq!(loc.line.len(), 2);
        assert_eq!(s(p.function[(loc.line[0].function_id - 1) as usize].name), "inlined");
        assert_eq!((p.time_nanos, p.duration_nanos, p.period), (1, 2, 10_000_000));
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(decode(b"\x1f\x8bnot gzip"), Err(DecodeError::Gzip(_))));
        assert!(decode(&[0xff, 0xff, 0xff]).is_err());
        let bad = Profile { string_table: vec!["x".into()], ..Default::default() };
        assert!(matches!(decode(&bad.encode_to_vec()), Err(DecodeError::Malformed(_))));
    }
}
