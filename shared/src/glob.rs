//! Glob matching for header patterns: `*` matches any run of characters, `?` exactly one.
//! Iterative with one backtrack point, so a hostile pattern cannot make matching
//! exponential.

/// Matches `name` against `pattern`, ignoring ASCII case.
pub fn matches_ignore_ascii_case(pattern: &str, name: &str) -> bool {
    let pattern = pattern.as_bytes();
    let name = name.as_bytes();
    let (mut p, mut n) = (0usize, 0usize);
    // Where the last '*' was seen in the pattern, and the name position it matched up to.
    let mut backtrack: Option<(usize, usize)> = None;
    while n < name.len() {
        // '*' is checked first: header names may contain '*' themselves, and a wildcard
        // taken for a literal match would record no backtrack point.
        if p < pattern.len() && pattern[p] == b'*' {
            backtrack = Some((p, n));
            p += 1;
        } else if p < pattern.len()
            && (pattern[p] == b'?' || pattern[p].eq_ignore_ascii_case(&name[n]))
        {
            p += 1;
            n += 1;
        } else if let Some((star, matched)) = backtrack {
            p = star + 1;
            n = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|b| *b == b'*')
}

#[cfg(test)]
mod tests {
    use super::matches_ignore_ascii_case as m;
    use proptest::prelude::*;

    #[test]
    fn wildcards() {
        assert!(m("x-internal-*", "x-internal-user"));
        assert!(m("x-internal-*", "X-Internal-"));
        assert!(!m("x-internal-*", "x-interna"));
        assert!(m("*-secret", "my-secret"));
        assert!(!m("*-secret", "my-secrets"));
        assert!(m("x-?", "x-a"));
        assert!(!m("x-?", "x-ab"));
        assert!(m("*", ""));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
        assert!(m("exact", "EXACT"));
        // A '*' in the name is an ordinary character; the pattern's '*' stays a wildcard.
        assert!(m("*", "*0"));
        assert!(m("x-internal-*", "x-internal-*role"));
        assert!(m("*-secret", "*x-secret"));
    }

    #[test]
    fn hostile_patterns_stay_linear() {
        let pattern = "*a".repeat(50) + "b";
        let name = "a".repeat(10_000);
        assert!(!m(&pattern, &name));
    }

    fn reference(pattern: &[u8], name: &[u8]) -> bool {
        match (pattern.first(), name.first()) {
            (None, None) => true,
            (Some(b'*'), _) => {
                reference(&pattern[1..], name)
                    || (!name.is_empty() && reference(pattern, &name[1..]))
            }
            (Some(b'?'), Some(_)) => reference(&pattern[1..], &name[1..]),
            (Some(p), Some(n)) if p.eq_ignore_ascii_case(n) => reference(&pattern[1..], &name[1..]),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn agrees_with_a_recursive_reference(pattern in "[ab*?]{0,8}", name in "[abAB*?]{0,10}") {
            prop_assert_eq!(m(&pattern, &name), reference(pattern.as_bytes(), name.as_bytes()));
        }
    }
}
