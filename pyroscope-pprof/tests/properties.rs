//! Properties of the pprof reader the report command runs on files it did not write: any bytes
//! give a profile or an error, never a panic, and what the builder writes reads back as it was.

use proptest::prelude::*;
use prost::Message;
use pyroscope_pprof::proto::{Function, Label, Line, Location, Profile, Sample, ValueType};
use pyroscope_pprof::{decode, encode_gzip, gzip, DecodeError, ProfileBuilder};

fn config() -> ProptestConfig {
    // Enough cases to find a panic in the reader, few enough for a busy 2-core CI runner.
    ProptestConfig { cases: 512, ..ProptestConfig::default() }
}

/// A string-table index that is sometimes out of range (negative or past the end).
fn index(len: usize) -> impl Strategy<Value = i64> {
    prop_oneof![8 => 0..len as i64, 1 => -3i64..0, 1 => len as i64..len as i64 + 3]
}

/// An id in `1..=n` most of the time, else 0 (invalid) or one past the end.
fn id(n: usize) -> impl Strategy<Value = u64> {
    prop_oneof![18 => 1..n as u64 + 1, 1 => Just(0u64), 1 => Just(n as u64 + 1)]
}

/// Profiles whose fields are arbitrary but mostly point at each other, so that decoding gets
/// past the wire format and exercises every invariant check, valid or not.
fn valid_ish_profile() -> impl Strategy<Value = Profile> {
    (1usize..12, 0usize..4, 1usize..6, 1usize..6).prop_flat_map(|(strings, types, functions, locations)| {
        let table = (prop::bool::weighted(0.95), prop::collection::vec("[a-z_:/.{}=, -]{0,12}", strings - 1)).prop_map(
            |(empty_first, rest)| {
                let first = if empty_first { String::new() } else { "x".to_owned() };
                std::iter::once(first).chain(rest).collect::<Vec<_>>()
            },
        );
        let value_type = move || (index(strings), index(strings)).prop_map(|(r#type, unit)| ValueType { r#type, unit });
        let function = (index(strings), index(strings)).prop_map(|(name, filename)| Function {
            id: 0,
            name,
            system_name: name,
            filename,
            start_line: 0,
        });
        let line = (id(functions), -1i64..100).prop_map(|(function_id, line)| Line { function_id, line, column: 0 });
        let location = (any::<u64>(), prop::collection::vec(line, 0..3)).prop_map(|(address, line)| Location {
            id: 0,
            mapping_id: 0,
            address,
            line,
            is_folded: false,
        });
        let label = (index(strings), index(strings)).prop_map(|(key, str)| Label { key, str, num: 0, num_unit: 0 });
        let values = prop_oneof![8 => Just(types), 1 => Just(types + 1), 1 => Just(types.saturating_sub(1))];
        let sample = (
            prop::collection::vec(id(locations), 0..4),
            values.prop_flat_map(|n| prop::collection::vec(any::<i64>(), n)),
            prop::collection::vec(label, 0..3),
        )
            .prop_map(|(location_id, value, label)| Sample { location_id, value, label });
        // Ids are 1..=n in order, except now and then one that is 0 (invalid) or repeated.
        let ids = move |n: usize| {
            prop::collection::vec(prop_oneof![18 => Just(None), 1 => Just(Some(0u64)), 1 => Just(Some(1u64))], n)
        };
        (
            table,
            prop::collection::vec(value_type(), types),
            prop::option::of(value_type()),
            (prop::collection::vec(function, functions), ids(functions)),
            (prop::collection::vec(location, locations), ids(locations)),
            prop::collection::vec(sample, 0..5),
            any::<i64>(),
        )
            .prop_map(
                |(
                    string_table,
                    sample_type,
                    period_type,
                    (mut function, fids),
                    (mut location, lids),
                    sample,
                    period,
                )| {
                    for (i, (f, id)) in function.iter_mut().zip(fids).enumerate() {
                        f.id = id.unwrap_or(i as u64 + 1);
                    }
                    for (i, (l, id)) in location.iter_mut().zip(lids).enumerate() {
                        l.id = id.unwrap_or(i as u64 + 1);
                    }
                    Profile {
                        string_table,
                        sample_type,
                        period_type,
                        function,
                        location,
                        sample,
                        period,
                        ..Profile::default()
                    }
                },
            )
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_give_an_error_or_a_profile(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn arbitrary_bytes_after_the_gzip_magic_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let mut data = vec![0x1f, 0x8b];
        data.extend_from_slice(&bytes);
        if let Ok(p) = decode(&data) {
            prop_assert_eq!(p.string_table.first().map(String::as_str), Some(""));
        }
    }

    #[test]
    fn gzipped_garbage_is_an_error_not_a_panic(bytes in prop::collection::vec(any::<u8>(), 1..2048)) {
        // Valid gzip around bytes that are not a profile: the error comes from the protobuf or the
        // invariants, never from the gzip layer.
        match decode(&gzip(&bytes)) {
            Ok(p) => prop_assert_eq!(p.string_table.first().map(String::as_str), Some("")),
            Err(e) => prop_assert!(!matches!(e, DecodeError::Gzip(_)), "{}", e),
        }
    }

    #[test]
    fn truncated_profiles_are_errors(p in valid_ish_profile(), cut in any::<prop::sample::Index>()) {
        let bytes = encode_gzip(&p);
        let cut = cut.index(bytes.len());
        prop_assert!(decode(&bytes[..cut]).is_err());
    }

    #[test]
    fn valid_ish_profiles_round_trip_or_are_rejected(p in valid_ish_profile()) {
        // What the reader accepts is exactly what was written, gzipped or not; what it rejects
        // is malformed, never misread as garbage bytes.
        for bytes in [encode_gzip(&p), p.encode_to_vec()] {
            match decode(&bytes) {
                Ok(back) => prop_assert_eq!(&back, &p),
                Err(e) => prop_assert!(matches!(e, DecodeError::Malformed(_)), "{}", e),
            }
        }
    }

    #[test]
    fn built_profiles_round_trip(
        names in prop::collection::vec("[a-zA-Z_:<>]{1,10}", 16),
        stacks in prop::collection::vec(prop::collection::vec(0usize..16, 1..6), 1..8),
        labels in prop::collection::vec(("[a-z_]{1,6}", "[ -~]{0,10}"), 0..3),
        values in prop::collection::vec((0i64..1_000_000, 0i64..1 << 40), 8),
    ) {
        let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")], ("cpu", "nanoseconds"), 10_000_000);
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        for (stack, (count, nanos)) in stacks.iter().zip(&values) {
            // Frame `k` is keyed and addressed by `k`: the builder makes one location per key.
            let ids = stack.iter().map(|k| b.location(*k as u64, *k as u64, || vec![(names[*k].as_str(), "f.rs", 1)])).collect();
            b.sample(ids, vec![*count, *nanos], &labels);
        }
        let p = decode(&encode_gzip(&b.build())).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let s = |i: i64| p.string_table[i as usize].as_str();
        prop_assert_eq!(p.sample.len(), stacks.len());
        for ((sample, stack), (count, nanos)) in p.sample.iter().zip(&stacks).zip(&values) {
            prop_assert_eq!(&sample.value, &vec![*count, *nanos]);
            let got: Vec<&str> = sample
                .location_id
                .iter()
                .map(|id| {
                    let loc = &p.location[(*id - 1) as usize];
                    s(p.function[(loc.line[0].function_id - 1) as usize].name)
                })
                .collect();
            prop_assert_eq!(got, stack.iter().map(|k| names[*k].as_str()).collect::<Vec<_>>());
            let got_labels: Vec<(&str, &str)> = sample.label.iter().map(|l| (s(l.key), s(l.str))).collect();
            prop_assert_eq!(&got_labels, &labels);
        }
    }
}
