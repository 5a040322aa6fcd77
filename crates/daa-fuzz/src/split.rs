//! Several files in one fuzz input: the parts between [`SEPARATOR`] lines.

/// The line between two files of one input (readable in a corpus file, and
/// kept whole by most mutations, so the layout survives fuzzing).
pub const SEPARATOR: &[u8] = b"\n--8<--\n";

/// The first `n` parts of `data` (missing parts are empty; the last part
/// keeps any further separators).
pub fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(n);
    let mut rest = data;
    while out.len() + 1 < n {
        match find(rest, SEPARATOR) {
            Some(at) => {
                out.push(&rest[..at]);
                rest = &rest[at + SEPARATOR.len()..];
            }
            None => break,
        }
    }
    out.push(rest);
    out.resize(n, &[]);
    out
}

/// `parts` joined back: the input whose parts are `files`.
pub fn join(files: &[&[u8]]) -> Vec<u8> {
    files.join(SEPARATOR)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip_and_pad() {
        let data = join(&[b"a", b"", b"c\nd"]);
        assert_eq!(parts(&data, 3), vec![&b"a"[..], b"", b"c\nd"]);
        assert_eq!(parts(&data, 5), vec![&b"a"[..], b"", b"c\nd", b"", b""]);
        assert_eq!(parts(&data, 2), vec![&b"a"[..], &data[1 + SEPARATOR.len()..]]);
        assert_eq!(parts(b"", 2), vec![&b""[..], b""]);
    }
}
