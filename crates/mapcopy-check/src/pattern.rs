//! Recognisable file contents: every byte tells which version of the file
//! (its *generation*) and which offset it came from.
//!
//! The content of generation `g` is a sequence of 32-byte text lines, one per
//! 32-byte-aligned file offset, like
//! `g001 p0000003 +0fe0 bbbbbbbbbbb\n`: the generation, the page index, the
//! offset within the page, and a fill letter that also depends on the
//! generation. A fragment of a page read back therefore names its version,
//! and a byte from the wrong offset or version never matches. No byte is
//! ever zero (zero means "past the end of the file"), and all are printable
//! ASCII, so the content can also pass through a shell's `printf`.
//!
//! ```
//! use mapcopy_check::pattern;
//! let v1 = pattern::bytes(1, 0, 64);
//! assert_eq!(&v1[..32], b"g001 p0000000 +0000 bbbbbbbbbbb\n");
//! assert_eq!(pattern::identify(&v1[5..40], 5, 4096), Some(1));
//! assert!(v1.iter().all(|&b| b != 0));
//! ```

/// Length of one pattern line.
pub const LINE: u64 = 32;

/// Page size the page numbers in the pattern refer to (the text only; the
/// pattern is valid at any offset).
pub const PATTERN_PAGE: u64 = 4096;

fn line(generation: u32, line_start: u64) -> [u8; LINE as usize] {
    let mut out = [0u8; LINE as usize];
    let fill = b'a' + (generation % 26) as u8;
    let text = format!(
        "g{:03} p{:07} +{:04x} ",
        generation % 1000,
        (line_start / PATTERN_PAGE) % 10_000_000,
        line_start % PATTERN_PAGE
    );
    out[..text.len()].copy_from_slice(text.as_bytes());
    for b in &mut out[text.len()..LINE as usize - 1] {
        *b = fill;
    }
    out[LINE as usize - 1] = b'\n';
    out
}

/// Fills `buf` with generation `generation`'s bytes at file offsets
/// `start .. start + buf.len()`.
pub fn fill(generation: u32, start: u64, buf: &mut [u8]) {
    let mut off = start;
    let mut i = 0;
    while i < buf.len() {
        let ls = off - off % LINE;
        let l = line(generation, ls);
        let from = (off - ls) as usize;
        let n = (LINE as usize - from).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&l[from..from + n]);
        i += n;
        off += n as u64;
    }
}

/// Generation `generation`'s bytes at file offsets `start .. start + len`.
pub fn bytes(generation: u32, start: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill(generation, start, &mut v);
    v
}

/// Which generation (up to `max_gen`) wrote all of `buf`, read from file
/// offset `start`; `None` if no single one did (mixed, zeros, garbage).
pub fn identify(buf: &[u8], start: u64, max_gen: u32) -> Option<u32> {
    if buf.is_empty() {
        return None;
    }
    (0..=max_gen).find(|&g| bytes(g, start, buf.len()) == buf)
}

/// A short human description of `buf` (read from file offset `start`) for
/// failure messages: which generation each run of bytes belongs to, or
/// "zeros", or "unknown".
pub fn describe(buf: &[u8], start: u64) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0usize;
    while i < buf.len() {
        // Classify per 32-byte-aligned chunk, merging equal neighbours.
        let off = start + i as u64;
        let n = ((LINE - off % LINE) as usize).min(buf.len() - i);
        let chunk = &buf[i..i + n];
        let what = if chunk.iter().all(|&b| b == 0) {
            "zeros".to_string()
        } else {
            match identify(chunk, off, 64) {
                Some(g) => format!("gen {g}"),
                None => "unknown".to_string(),
            }
        };
        match parts.last_mut() {
            Some(last) if last.ends_with(&format!(" {what}")) => {
                // extend the range of the previous run
                let (range, _) = last.split_once(' ').expect("range then label");
                let (a, _) = range.split_once("..").expect("a..b");
                *last = format!("{a}..{} {what}", off + n as u64);
            }
            _ => parts.push(format!("{off}..{} {what}", off + n as u64)),
        }
        i += n;
    }
    if parts.is_empty() {
        "empty".into()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_is_offset_consistent() {
        let whole = bytes(3, 0, 10_000);
        for (start, len) in [(0, 1), (5, 100), (31, 2), (4095, 3), (9000, 1000)] {
            assert_eq!(
                bytes(3, start, len),
                &whole[start as usize..start as usize + len]
            );
        }
        assert!(
            whole
                .iter()
                .all(|&b| (0x20..0x7f).contains(&b) || b == b'\n')
        );
    }

    #[test]
    fn generations_differ_everywhere() {
        let a = bytes(1, 0, 8192);
        let b = bytes(2, 0, 8192);
        // every 32-byte line differs, so any read-back fragment tells them apart
        for (x, y) in a.chunks(32).zip(b.chunks(32)) {
            assert_ne!(x, y);
        }
        assert_eq!(identify(&a[100..200], 100, 10), Some(1));
        assert_eq!(identify(&a[100..200], 101, 10), None);
    }

    #[test]
    fn describe_names_runs() {
        let mut v = bytes(1, 0, 128);
        v[64..].fill(0);
        assert_eq!(describe(&v, 0), "0..64 gen 1, 64..128 zeros");
    }
}
