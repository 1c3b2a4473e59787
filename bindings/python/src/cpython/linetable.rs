//! The line of an instruction, from a code object's `co_linetable` (CPython 3.11+ format,
//! `Objects/locations.md`). Collector side only.
//!
//! Each entry starts with a byte `1cccclll`: `c` the kind of entry, `l + 1` code units covered.
//! Kinds: 15 no location; 14 long form (signed varint line delta, then end line, column and
//! end column varints); 13 no columns (signed varint line delta); 10–12 one-line form (line
//! delta `c - 10`, two column bytes); 0–9 short form (same line, one column byte). Varints are
//! 6 bits per byte, bit 6 = more, least significant chunk first; signed ones keep the sign in
//! bit 0.

/// The line of code unit `lasti`, or `None` when the table gives it no location or is
/// malformed. A negative `lasti` (a frame that has not started) is the first line.
pub(crate) fn line_at(table: &[u8], firstlineno: i32, lasti: i32) -> Option<u32> {
    if lasti < 0 {
        return u32::try_from(firstlineno).ok();
    }
    let target = lasti as u64;
    let mut bytes = table.iter().copied();
    let mut line = i64::from(firstlineno);
    let mut addr: u64 = 0;
    while let Some(first) = bytes.next() {
        if first & 0x80 == 0 {
            return None; // not at an entry start: malformed
        }
        let kind = (first >> 3) & 15;
        let end = addr + u64::from(first & 7) + 1;
        let has_line = match kind {
            15 => false,
            14 => {
                line += signed_varint(&mut bytes)?;
                for _ in 0..3 {
                    varint(&mut bytes)?;
                }
                true
            }
            13 => {
                line += signed_varint(&mut bytes)?;
                true
            }
            10..=12 => {
                line += i64::from(kind) - 10;
                bytes.next()?;
                bytes.next()?;
                true
            }
            _ => {
                bytes.next()?;
                true
            }
        };
        if (addr..end).contains(&target) {
            return if has_line { u32::try_from(line).ok() } else { None };
        }
        addr = end;
    }
    None
}

fn varint(bytes: &mut impl Iterator<Item = u8>) -> Option<u64> {
    let mut value = 0u64;
    let mut shift = 0u32;
    loop {
        let b = bytes.next()?;
        value |= u64::from(b & 63).checked_shl(shift)?;
        if b & 64 == 0 {
            return Some(value);
        }
        shift += 6;
        if shift > 60 {
            return None;
        }
    }
}

fn signed_varint(bytes: &mut impl Iterator<Item = u8>) -> Option<i64> {
    let v = varint(bytes)?;
    let magnitude = (v >> 1) as i64;
    Some(if v & 1 != 0 { -magnitude } else { magnitude })
}
