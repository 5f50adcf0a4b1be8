//! Single byte ranges of the `Range` header (RFC 9110, section 14).

/// What a `Range` header asks of a resource of a given length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangeRequest {
    /// No usable range: the whole resource, with 200.
    Full,
    /// Bytes `start..=end`, with 206.
    Partial { start: u64, end: u64 },
    /// A valid range that lies outside the resource, with 416.
    Unsatisfiable,
}

/// Parses a `Range` header value. Syntax errors and multiple ranges are ignored, which RFC 9110
/// allows, so they yield the whole resource.
pub(crate) fn parse(header: &str, len: u64) -> RangeRequest {
    let Some((unit, spec)) = header.trim().split_once('=') else {
        return RangeRequest::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let number = |s: &str| {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse::<u64>().ok()
        } else {
            None
        }
    };
    match (first.is_empty(), last.is_empty()) {
        (true, false) => match number(last) {
            None => RangeRequest::Full,
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if len == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Partial {
                start: len.saturating_sub(n),
                end: len - 1,
            },
        },
        (false, true) => match number(first) {
            None => RangeRequest::Full,
            Some(start) if start >= len => RangeRequest::Unsatisfiable,
            Some(start) => RangeRequest::Partial {
                start,
                end: len - 1,
            },
        },
        (false, false) => match (number(first), number(last)) {
            (Some(start), Some(end)) if start <= end => {
                if start >= len {
                    RangeRequest::Unsatisfiable
                } else {
                    RangeRequest::Partial {
                        start,
                        end: end.min(len - 1),
                    }
                }
            }
            _ => RangeRequest::Full,
        },
        (true, true) => RangeRequest::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::RangeRequest::{Full, Partial, Unsatisfiable};
    use super::parse;

    #[test]
    fn parses_the_three_single_range_forms() {
        assert_eq!(parse("bytes=0-9", 100), Partial { start: 0, end: 9 });
        assert_eq!(parse("bytes=90-200", 100), Partial { start: 90, end: 99 });
        assert_eq!(parse("bytes=40-", 100), Partial { start: 40, end: 99 });
        assert_eq!(parse("bytes=-10", 100), Partial { start: 90, end: 99 });
        assert_eq!(parse("bytes=-1000", 100), Partial { start: 0, end: 99 });
        assert_eq!(parse("Bytes = 5-5", 100), Partial { start: 5, end: 5 });
    }

    #[test]
    fn rejects_ranges_outside_the_resource() {
        assert_eq!(parse("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(parse("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse("bytes=0-", 0), Unsatisfiable);
    }

    #[test]
    fn ignores_what_it_does_not_understand() {
        assert_eq!(parse("bytes=9-1", 100), Full);
        assert_eq!(parse("bytes=0-1,5-6", 100), Full);
        assert_eq!(parse("items=0-1", 100), Full);
        assert_eq!(parse("bytes=-", 100), Full);
        assert_eq!(parse("bytes=a-b", 100), Full);
        assert_eq!(parse("bytes=+1-2", 100), Full);
    }
}
