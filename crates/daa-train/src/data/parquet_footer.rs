//! A check of a Parquet footer's schema before parquet reads it.
//!
//! A Parquet schema is a flat list of elements in depth-first order, each
//! group giving its number of children (`SchemaElement.num_children`,
//! field 5 of field 2 of the footer's thrift `FileMetaData`). parquet 60.1
//! reserves room for that many children before it reads one
//! (`Vec::with_capacity(num_children)`): a 3 KB file claiming 900 million
//! children made it reserve 7.2 GiB (found by libFuzzer, `rows_parquet`).
//! In a well-formed schema every element but the root is the child of
//! exactly one group, so
//!
//! Σᵢ num_childrenᵢ = (number of elements) − 1,
//!
//! and a footer that breaks this would be refused by parquet anyway. This
//! module walks the footer with the thrift compact protocol, reading only
//! what it needs and allocating nothing per element, and refuses such a
//! schema first. What it cannot walk it leaves to parquet, whose own error
//! then names the defect.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// How deeply nested thrift structures, lists and maps may be skipped.
const MAX_DEPTH: u32 = 64;

/// The inconsistency found in a footer's schema, as a sentence.
pub fn schema_defect(file: &File, len: u64) -> Option<String> {
    let footer = read_footer(file, len)?;
    let counts = schema_child_counts(&footer)?;
    let elements = counts.elements;
    if let Some((index, children)) = counts.first_impossible {
        return Some(format!(
            "the Parquet schema is damaged: element {index} declares {children} children, but the schema has \
             {elements} elements"
        ));
    }
    (elements > 0 && counts.total_children != elements - 1).then(|| {
        format!(
            "the Parquet schema is damaged: its {elements} elements declare {} children in all (a schema tree \
             has one fewer children than elements)",
            counts.total_children
        )
    })
}

/// The footer's thrift bytes: `<metadata> <u32 length> PAR1` at the end.
fn read_footer(file: &File, len: u64) -> Option<Vec<u8>> {
    let mut tail = [0u8; 8];
    file.read_exact_at(&mut tail, len.checked_sub(8)?).ok()?;
    if &tail[4..] != b"PAR1" {
        return None;
    }
    let size = u64::from(u32::from_le_bytes(tail[..4].try_into().ok()?));
    let start = len.checked_sub(8)?.checked_sub(size)?;
    let mut footer = vec![0u8; usize::try_from(size).ok()?];
    file.read_exact_at(&mut footer, start).ok()?;
    Some(footer)
}

/// What the schema's elements declare.
#[derive(Debug, Default, PartialEq)]
struct ChildCounts {
    elements: u64,
    /// Σ num_children over the elements that give one.
    total_children: u64,
    /// The first element whose count is negative or not below the number
    /// of elements: (index, count).
    first_impossible: Option<(u64, i64)>,
}

/// The thrift compact protocol's field and element types.
mod kind {
    pub const STOP: u8 = 0;
    pub const TRUE: u8 = 1;
    pub const FALSE: u8 = 2;
    pub const BYTE: u8 = 3;
    pub const I16: u8 = 4;
    pub const I32: u8 = 5;
    pub const I64: u8 = 6;
    pub const DOUBLE: u8 = 7;
    pub const BINARY: u8 = 8;
    pub const LIST: u8 = 9;
    pub const SET: u8 = 10;
    pub const MAP: u8 = 11;
    pub const STRUCT: u8 = 12;
    pub const UUID: u8 = 13;
}

/// Reads `FileMetaData` up to its schema (field 2); `None` where the bytes
/// are not what the compact protocol allows.
fn schema_child_counts(footer: &[u8]) -> Option<ChildCounts> {
    let mut cursor = Cursor { bytes: footer, at: 0 };
    let mut last = 0i16;
    loop {
        let (id, kind) = cursor.field_header(&mut last)?;
        if kind == kind::STOP {
            return None;
        }
        if id == 2 && kind == kind::LIST {
            return cursor.schema_list();
        }
        cursor.skip(kind, 0)?;
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn advance(&mut self, n: u64) -> Option<()> {
        let end = self.at.checked_add(usize::try_from(n).ok()?)?;
        (end <= self.bytes.len()).then(|| self.at = end)
    }

    /// An unsigned LEB128 varint (at most 10 bytes).
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn zigzag(&mut self) -> Option<i64> {
        let v = self.varint()?;
        Some((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    /// A field header: (field id, type); the id is a delta from the last
    /// one in the high nibble, or a zigzag i16 after the byte.
    fn field_header(&mut self, last: &mut i16) -> Option<(i16, u8)> {
        let b = self.byte()?;
        let kind = b & 0x0f;
        if kind == kind::STOP {
            return Some((0, kind::STOP));
        }
        let id = match b >> 4 {
            0 => i16::try_from(self.zigzag()?).ok()?,
            delta => last.checked_add(i16::from(delta))?,
        };
        *last = id;
        Some((id, kind))
    }

    /// A list or set header: (element count, element type).
    fn list_header(&mut self) -> Option<(u64, u8)> {
        let b = self.byte()?;
        let count = match b >> 4 {
            15 => self.varint()?,
            n => u64::from(n),
        };
        Some((count, b & 0x0f))
    }

    /// The schema list: counts each element's `num_children` (field 5).
    fn schema_list(&mut self) -> Option<ChildCounts> {
        let (count, element) = self.list_header()?;
        if element != kind::STRUCT {
            return None;
        }
        let mut counts = ChildCounts { elements: count, ..ChildCounts::default() };
        for index in 0..count {
            let mut last = 0i16;
            loop {
                let (id, kind) = self.field_header(&mut last)?;
                match (id, kind) {
                    (_, kind::STOP) => break,
                    (5, kind::I32) => {
                        let n = self.zigzag()?;
                        match u64::try_from(n) {
                            Ok(n) if n < count => counts.total_children = counts.total_children.saturating_add(n),
                            _ => _ = counts.first_impossible.get_or_insert((index, n)),
                        }
                    }
                    _ => self.skip(kind, 1)?,
                }
            }
        }
        Some(counts)
    }

    /// Skips one element of a list, set or map, where a boolean takes a
    /// byte (in a struct its value is the field header's type).
    fn skip_element(&mut self, kind: u8, depth: u32) -> Option<()> {
        if matches!(kind, kind::TRUE | kind::FALSE) { self.advance(1) } else { self.skip(kind, depth) }
    }

    /// Skips one value of type `kind`.
    fn skip(&mut self, kind: u8, depth: u32) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match kind {
            kind::TRUE | kind::FALSE => Some(()),
            kind::BYTE => self.advance(1),
            kind::I16 | kind::I32 | kind::I64 => self.varint().map(drop),
            kind::DOUBLE => self.advance(8),
            kind::UUID => self.advance(16),
            kind::BINARY => {
                let n = self.varint()?;
                self.advance(n)
            }
            kind::LIST | kind::SET => {
                let (count, element) = self.list_header()?;
                for _ in 0..count {
                    self.skip_element(element, depth + 1)?;
                }
                Some(())
            }
            kind::MAP => {
                let count = self.varint()?;
                if count == 0 {
                    return Some(());
                }
                let types = self.byte()?;
                for _ in 0..count {
                    self.skip_element(types >> 4, depth + 1)?;
                    self.skip_element(types & 0x0f, depth + 1)?;
                }
                Some(())
            }
            kind::STRUCT => {
                let mut last = 0i16;
                loop {
                    let (_, kind) = self.field_header(&mut last)?;
                    if kind == kind::STOP {
                        return Some(());
                    }
                    self.skip(kind, depth + 1)?;
                }
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A compact-protocol `FileMetaData` by hand: version 1, then a schema
    /// of a root group declaring `root_children` and `leaves` leaves (type,
    /// name, and a boolean list and a map to skip in each).
    fn footer(root_children: i32, leaves: u8) -> Vec<u8> {
        let zigzag = |n: i32| ((n << 1) ^ (n >> 31)) as u32;
        let varint = |out: &mut Vec<u8>, mut v: u32| {
            while v >= 0x80 {
                out.push((v as u8) | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
        };
        let mut out = vec![0x15, 2]; // field 1, i32: version 1
        out.push(0x19); // field 2 (delta 1), list
        out.push(((1 + leaves) << 4) | kind::STRUCT);
        // Root: field 4 binary "schema", field 5 i32 children.
        out.extend([0x48, 6]);
        out.extend(b"schema");
        out.push(0x15);
        varint(&mut out, zigzag(root_children));
        out.push(0);
        for i in 0..leaves {
            out.extend([0x15, 2]); // field 1, i32: INT64
            out.extend([0x39, 0x11, 1]); // field 4 (delta 3), list of one `true`
            out.extend([0x1b, 1, 0x88, 1, b'k', 1, b'v']); // field 5: a map, skipped (not an i32)
            out.extend([0x1c, 0x1c, 0, 0]); // field 6, a struct holding a struct: skipped
            out.extend([0x08, 0x10, 2]); // field 8 (id as zigzag i16): binary "c{i}"
            out.push(b'c');
            out.push(b'0' + i);
            out.push(0);
        }
        out.push(0x16); // field 3, i64: rows, after the schema (not read)
        out.push(0);
        out.push(0);
        out
    }

    #[test]
    fn a_hand_made_schema_is_walked_to_its_counts() {
        let counts = schema_child_counts(&footer(2, 2)).unwrap();
        assert_eq!(counts, ChildCounts { elements: 3, total_children: 2, first_impossible: None });
        let counts = schema_child_counts(&footer(-5, 1)).unwrap();
        assert_eq!(counts, ChildCounts { elements: 2, total_children: 0, first_impossible: Some((0, -5)) });
        let counts = schema_child_counts(&footer(900_000_000, 1)).unwrap();
        assert_eq!(counts.first_impossible, Some((0, 900_000_000)));
    }

    #[test]
    fn bytes_cut_short_are_left_to_parquet() {
        let bytes = footer(2, 2);
        for cut in 0..bytes.len() - 3 {
            assert_eq!(schema_child_counts(&bytes[..cut]), None, "cut at {cut}");
        }
    }

    fn defect_of(bytes: &[u8]) -> Option<String> {
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(bytes, 0).unwrap();
        schema_defect(&file, bytes.len() as u64)
    }

    fn parquet_file(footer: &[u8]) -> Vec<u8> {
        let mut file = b"PAR1".to_vec();
        file.extend(footer);
        file.extend((footer.len() as u32).to_le_bytes());
        file.extend(b"PAR1");
        file
    }

    #[test]
    fn a_schema_declaring_impossible_children_is_named() {
        assert_eq!(defect_of(&parquet_file(&footer(2, 2))), None);
        assert_eq!(
            defect_of(&parquet_file(&footer(900_000_000, 2))).unwrap(),
            "the Parquet schema is damaged: element 0 declares 900000000 children, but the schema has 3 elements"
        );
        assert_eq!(
            defect_of(&parquet_file(&footer(1, 2))).unwrap(),
            "the Parquet schema is damaged: its 3 elements declare 1 children in all (a schema tree has one fewer \
             children than elements)"
        );
        // Not a Parquet footer: parquet says why.
        assert_eq!(defect_of(b"PAR1"), None);
        assert_eq!(defect_of(&footer(900_000_000, 2)), None);
    }

    #[test]
    fn a_file_daa_writes_passes_with_its_schema_walked() {
        let rows = crate::tiny_run::arithmetic_rows(4, 1);
        let bytes = crate::tiny_run::preference_parquet(&rows).unwrap();
        let len = bytes.len();
        let size = u32::from_le_bytes(bytes[len - 8..len - 4].try_into().unwrap()) as usize;
        let counts = schema_child_counts(&bytes[len - 8 - size..len - 8]).unwrap();
        assert!(counts.elements > 3, "{counts:?}");
        assert_eq!(counts.total_children, counts.elements - 1);
        assert_eq!(defect_of(&bytes), None);
    }
}
