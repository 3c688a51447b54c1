//! Messages cut to a length.

/// Cuts `text` to at most `max` bytes when it is longer: it keeps the longest prefix of at most
/// `max - 3` bytes that ends on a character boundary and appends `...`. Text of `max` bytes or
/// fewer is left alone; below 3 bytes there is no room for the mark and the text is only cut.
/// For quoting values in error messages.
pub fn clip(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let marked = max >= 3;
    let mut cut = if marked { max - 3 } else { max };
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    if marked {
        text.push_str("...");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clipped(text: &str, max: usize) -> String {
        let mut text = text.to_owned();
        clip(&mut text, max);
        text
    }

    #[test]
    fn short_text_is_kept_and_long_text_is_marked() {
        assert_eq!(clipped("abcdef", 6), "abcdef");
        assert_eq!(clipped("abcdefg", 6), "abc...");
        assert_eq!(clipped("", 0), "");
        assert_eq!(clipped("ab", 1), "a");
        assert_eq!(clipped("abcd", 3), "...");
    }

    #[test]
    fn cuts_on_a_character_boundary() {
        // 'é' is two bytes: a cut at 4 would split the second one.
        assert_eq!(clipped("aéébbbbb", 7), "aé...");
        let long = "€".repeat(100);
        let out = clipped(&long, 60);
        assert!(out.len() <= 60);
        assert!(out.ends_with("..."));
    }
}
