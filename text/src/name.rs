//! Names that become file names or path segments.

/// Whether `name` is non-empty, made only of ASCII letters, digits, `-`, `_` and `.`, and does
/// not start with `.`: so it is one path segment that can neither be hidden nor climb (`.`, `..`).
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_digits_dash_underscore_dot_not_leading() {
        for good in ["a", "c1", "my-container_2.log", "A.b.C", "x.."] {
            assert!(is_safe_name(good), "{good:?}");
        }
        for bad in [
            "", ".", "..", ".hidden", "a/b", "a b", "é", "a\0", "../x", "a:b",
        ] {
            assert!(!is_safe_name(bad), "{bad:?}");
        }
    }
}
