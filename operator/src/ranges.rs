//! Sets of task indexes in the compressed text form of Kubernetes Indexed Jobs: `"0-41,43,45-46"`.

use std::collections::BTreeSet;

/// Formats indexes as ascending comma-separated ranges; a run of one is a single number.
pub fn format(indexes: &BTreeSet<u32>) -> String {
    let mut out = String::new();
    let mut iter = indexes.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end = iter.next().expect("peeked");
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
    }
    out
}

/// [`format`] cut to at most about `max` characters at a range boundary, with `,…` when cut: for
/// messages (a condition's text is for humans; the full list is in the status field).
pub fn format_short(indexes: &BTreeSet<u32>, max: usize) -> String {
    let mut text = format(indexes);
    if text.len() > max {
        let cut = text[..=max].rfind(',').unwrap_or(0);
        text.truncate(cut);
        text.push_str(",…");
    }
    text
}

/// Parses the form written by [`format`]. Whitespace around items is ignored.
pub fn parse(text: &str) -> Result<BTreeSet<u32>, String> {
    parse_below(text, u32::MAX)
}

/// Like [`parse`], keeping only indexes below `limit`: what a range spans past it costs nothing
/// (a status edited by hand to `0-4294967295` must not expand to four billion entries).
pub fn parse_below(text: &str, limit: u32) -> Result<BTreeSet<u32>, String> {
    let mut set = BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.trim(), hi.trim()),
            None => (part, part),
        };
        let lo: u32 = lo.parse().map_err(|_| format!("bad index range {part:?}"))?;
        let hi: u32 = hi.parse().map_err(|_| format!("bad index range {part:?}"))?;
        if hi < lo {
            return Err(format!("bad index range {part:?}: end before start"));
        }
        if lo < limit {
            set.extend(lo..=hi.min(limit - 1));
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u32]) -> BTreeSet<u32> {
        v.iter().copied().collect()
    }

    #[test]
    fn formats_like_kubernetes_indexed_jobs() {
        let cases: &[(&[u32], &str)] = &[(&[], ""), (&[0], "0"), (&[0, 1, 2], "0-2"), (&[0, 2], "0,2"), (&[1, 2, 3, 5, 7, 8], "1-3,5,7-8")];
        for (input, want) in cases {
            assert_eq!(format(&set(input)), *want, "{input:?}");
            assert_eq!(parse(want).unwrap(), set(input));
        }
        let all: BTreeSet<u32> = (0..42).chain([43]).collect();
        assert_eq!(format(&all), "0-41,43");
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse("a-b").is_err());
        assert!(parse("5-1").is_err());
        assert_eq!(parse(" 1 , 3-4 ").unwrap(), set(&[1, 3, 4]));
    }

    #[test]
    fn short_forms_cut_at_a_range_boundary() {
        let many: BTreeSet<u32> = (0..1000).step_by(2).collect();
        let short = format_short(&many, 20);
        assert_eq!(short, "0,2,4,6,8,10,12,14,…");
        assert_eq!(format_short(&set(&[1, 2, 3]), 20), "1-3");
    }

    #[test]
    fn parsing_below_a_limit_ignores_what_lies_past_it() {
        assert_eq!(parse_below("0-4294967295", 3).unwrap(), set(&[0, 1, 2]));
        assert_eq!(parse_below("1,5-9,2", 6).unwrap(), set(&[1, 2, 5]));
        assert_eq!(parse_below("7", 3).unwrap(), set(&[]));
    }
}
