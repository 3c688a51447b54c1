//! A bound on how deeply a policy text nests collection literals, checked before regorus
//! parses it.
//!
//! regorus's parser takes time exponential in the nesting of brackets and braces when a
//! collection's first element is itself a collection (`[[[[1]]]]`, `{"a": {"a": ...}}`,
//! `count([[...` — it tries each `[`/`{` as a comprehension first and parses the inside again
//! when that fails): about 2.2x per level, 0.13 s at 12 levels, 1.4 s at 16, hours at 30, on
//! the development machine. A policy text comes from initdata or from a `SetPolicy` request the
//! policy in force allowed; one such line would stall the load (and the agent's policy swap)
//! for as long. Parentheses do not have the problem and are not counted.
//!
//! So the text regorus will see is scanned first (strings, raw strings and comments skipped):
//! no bracket or collection brace (a brace after an operator, an opening, a comma or a keyword
//! that takes a term; not one opening a rule, `else` or `every` body, which is parsed once) may
//! open deeper than [`MAX_DEPTH`], and the openings deeper than
//! [`FREE_DEPTH`] are charged `2^(depth - FREE_DEPTH)` each, at most [`BUDGET`] in all, which
//! bounds the parse time of many deep literals side by side as well. genpolicy's policies nest
//! at most 7 deep, counting parentheses.

use super::PolicyError;

/// The deepest a bracket or brace may open.
pub(super) const MAX_DEPTH: usize = 12;

/// Openings up to this depth cost nothing.
const FREE_DEPTH: usize = 8;

/// What the openings deeper than [`FREE_DEPTH`] may cost in all: about two 12-deep chains.
const BUDGET: u64 = 64;

/// What came before a `{`: whether it opens a rule, `else` or `every` body (after a term or
/// `if`/`else`) or a collection (after an operator, an opening or a keyword such as `in`).
#[derive(Clone, Copy, PartialEq)]
enum Prev {
    /// Start of text, an operator or punctuation, or a keyword that takes a term.
    Operator,
    /// The end of a term, or `if` / `else`: a `{` here opens a body.
    TermEnd,
}

/// Words after which a `{` is a collection, not a body.
const TERM_KEYWORDS: [&str; 6] = ["in", "not", "with", "as", "contains", "some"];

/// Refuses `text` when regorus's parser would take too long on its nesting.
pub(super) fn check(text: &str) -> Result<(), PolicyError> {
    // For each open bracket or brace: whether it counts towards the depth.
    let mut open: Vec<bool> = Vec::new();
    let mut depth = 0usize;
    let mut cost = 0u64;
    let mut line = 1usize;
    let mut prev = Prev::Operator;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            c if c.is_whitespace() => {}
            '#' => {
                // A comment runs to the end of the line.
                if chars.by_ref().any(|c| c == '\n') {
                    line += 1;
                }
            }
            '"' => {
                // A string ends at an unescaped quote; a line break ends it too (regorus
                // refuses the text then, and the count of lines stays right).
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => line += usize::from(chars.next() == Some('\n')),
                        '"' => break,
                        '\n' => {
                            line += 1;
                            break;
                        }
                        _ => {}
                    }
                }
                prev = Prev::TermEnd;
            }
            '`' => {
                for c in chars.by_ref() {
                    match c {
                        '`' => break,
                        '\n' => line += 1,
                        _ => {}
                    }
                }
                prev = Prev::TermEnd;
            }
            c if c.is_alphanumeric() || c == '_' => {
                let mut word = String::from(c);
                while let Some(&n) = chars.peek() {
                    if !(n.is_alphanumeric() || n == '_') {
                        break;
                    }
                    word.push(n);
                    chars.next();
                }
                prev = if TERM_KEYWORDS.contains(&word.as_str()) {
                    Prev::Operator
                } else {
                    Prev::TermEnd
                };
            }
            '[' | '{' => {
                // Brackets always count (a reference's `x[...]` too, which errs on the safe
                // side); a brace counts unless it opens a body.
                let counts = c == '[' || prev == Prev::Operator;
                open.push(counts);
                prev = Prev::Operator;
                if !counts {
                    continue;
                }
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(PolicyError::TooDeep {
                        line,
                        why: format!(
                            "collection literals and brackets nest {depth} deep (at most {MAX_DEPTH})"
                        ),
                    });
                }
                if depth > FREE_DEPTH {
                    cost += 1u64 << (depth - FREE_DEPTH);
                    if cost > BUDGET {
                        return Err(PolicyError::TooDeep {
                            line,
                            why: format!(
                                "too many collection literals and brackets nest more than \
                                 {FREE_DEPTH} deep"
                            ),
                        });
                    }
                }
            }
            ']' | '}' | ')' => {
                if c != ')' && open.pop() == Some(true) {
                    depth = depth.saturating_sub(1);
                }
                prev = Prev::TermEnd;
            }
            _ => prev = Prev::Operator,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nest(n: usize) -> String {
        format!("{}1{}", "[".repeat(n), "]".repeat(n))
    }

    #[test]
    fn twelve_deep_passes_and_thirteen_is_refused_naming_the_line() {
        assert!(check(&format!("package p\nx := {}\n", nest(12))).is_ok());
        let err = check(&format!("package p\n\nx := {}\n", nest(13))).expect_err("refused");
        let msg = err.to_string();
        assert!(msg.contains("line 3"), "{msg}");
        assert!(msg.contains("13 deep (at most 12)"), "{msg}");
    }

    #[test]
    fn bodies_are_not_counted_but_collections_after_keywords_and_operators_are() {
        // Rule, `every` and `else` bodies nest freely: regorus parses them once.
        let bodies = format!(
            "p if {{ {}true{} }} else {{ true }}\nq {{ true }}\nf(x) {{ x }}",
            "every z in input.a { ".repeat(40),
            " }".repeat(40)
        );
        assert!(check(&bodies).is_ok());
        // A set after `in`, `:=`, `(` or `,` is a collection.
        for prefix in ["x in ", "x := ", "count(", "[1, ", "not ", "p contains "] {
            let text = format!("{prefix}{}1{}", "{".repeat(13), "}".repeat(13));
            let msg = check(&text).expect_err("refused").to_string();
            assert!(msg.contains("13 deep"), "{prefix}: {msg}");
        }
        // An object's first value.
        let obj = format!("x := {}1{}", "{\"a\": ".repeat(13), "}".repeat(13));
        assert!(check(&obj).is_err());
    }

    #[test]
    fn strings_raw_strings_and_comments_are_not_counted() {
        let deep = "[".repeat(40);
        let text = format!(
            "package p\nx := \"{deep}\\\"{deep}\"\ny := `{deep}\n{deep}`\n# {deep}\nz := {}\n",
            nest(12)
        );
        assert!(check(&text).is_ok());
        // Parentheses cost nothing.
        assert!(check(&format!("x := {}1{}", "(".repeat(500), ")".repeat(500))).is_ok());
    }

    #[test]
    fn many_deep_literals_side_by_side_exhaust_the_budget() {
        // A 12-deep chain costs 2 + 4 + 8 + 16 = 30: two fit, three do not.
        let two = format!("x := [{}, {}]", nest(11), nest(11));
        assert!(check(&two).is_ok());
        let three = format!("x := [{}, {}, {}]", nest(11), nest(11), nest(11));
        let msg = check(&three).expect_err("refused").to_string();
        assert!(msg.contains("too many"), "{msg}");
        // Shallow literals are free however many there are.
        let wide = format!("x := [{}]", vec![nest(7); 10_000].join(", "));
        assert!(check(&wide).is_ok());
    }
}
