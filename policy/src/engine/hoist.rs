//! Constant documents out of the policy text, into the data document.
//!
//! genpolicy ends every policy with `policy_data := { ... }`, a JSON document of a thousand
//! lines or more. regorus's parser takes most of the policy's load time on it (about 20 of
//! 25 ms on the shared genpolicy policy), where a JSON parser takes a tenth of a millisecond.
//! So at load, a top-level rule `NAME := <JSON>` is rewritten to `NAME := data.<key>.NAME`,
//! and the document, read as JSON, is put at `data.<key>.NAME`. The rule keeps its name and
//! its value; only where the value is read from changes.
//!
//! That is the same policy only under conditions, all checked, or nothing is hoisted:
//!
//! - the literal is plain JSON whose Rego reading is the same value: no comments, sets or
//!   trailing commas (JSON refuses those), and numbers only as integers that both readings
//!   agree on (no fractions, exponents, `-0` or more than 15 digits);
//! - the rewritten rule is found, after parsing, as a rule of the package whose value is the
//!   reference at exactly the rewritten place (a match inside a string or a comment is not);
//! - `<key>` is `__peerpod_constants_` and 128 random bits, made at each load, and the policy
//!   never names `data` but as `data.name` or `data["name"]` (no `data[x]`, `walk(data)`,
//!   `x := data`), so it cannot see, enumerate or write the hoisted documents;
//! - line numbers stay: the literal's line breaks are kept after the reference, so print
//!   output and error locations name the same lines.

use regorus::Value;
use regorus::unstable::{Expr, Lexer, Rule, RuleHead, Source, TokenKind};

use super::POLICY_SOURCE;

/// Literals smaller than this are left alone: parsing them costs less than the rewrite.
const MIN_LITERAL_BYTES: usize = 4 * 1024;

/// A policy text with its constant documents moved out.
#[derive(Debug)]
pub(super) struct Hoisted {
    /// The rewritten text.
    pub(super) text: String,
    /// The data document holding the hoisted values: `{"<key>": {"NAME": value, ...}}`.
    pub(super) constants: Value,
    /// The rewritten rules: name and the byte span of the reference in `text`.
    spans: Vec<(String, usize, usize)>,
}

/// Rewrites `text`, or `None` when there is nothing worth hoisting or a condition fails.
pub(super) fn hoist(text: &str) -> Option<Hoisted> {
    if !data_is_only_named(text)? {
        return None;
    }
    let key = format!("__peerpod_constants_{:032x}", random_u128()?);
    let mut out = String::with_capacity(text.len() / 2);
    let mut documents = Value::new_object();
    let mut spans = Vec::new();
    let mut last = 0;
    let mut line_start = 0;
    while line_start < text.len() {
        let line_end = text[line_start..]
            .find('\n')
            .map_or(text.len(), |i| line_start + i + 1);
        if line_start >= last
            && let Some((name, value_at)) = constant_rule_head(&text[line_start..line_end])
        {
            let literal_start = line_start + value_at;
            if let Some((len, value)) = json_literal(&text[literal_start..]) {
                let literal_end = literal_start + len;
                out.push_str(&text[last..literal_start]);
                let reference = format!("data.{key}.{name}");
                spans.push((name.to_owned(), out.len(), out.len() + reference.len()));
                out.push_str(&reference);
                out.extend(
                    text[literal_start..literal_end]
                        .chars()
                        .filter(|c| *c == '\n'),
                );
                documents
                    .as_object_mut()
                    .ok()?
                    .insert(Value::from(name), value);
                last = literal_end;
            }
        }
        line_start = line_end;
    }
    if spans.is_empty() {
        return None;
    }
    out.push_str(&text[last..]);
    let mut constants = Value::new_object();
    constants
        .as_object_mut()
        .ok()?
        .insert(Value::from(key.as_str()), documents);
    Some(Hoisted {
        text: out,
        constants,
        spans,
    })
}

impl Hoisted {
    /// Whether every rewritten reference is, in the parsed policy, the whole value of a
    /// body-less top-level rule named as the original was.
    pub(super) fn is_confirmed_by(&self, engine: &mut regorus::Engine) -> bool {
        let modules = engine.get_modules();
        self.spans.iter().all(|(name, start, end)| {
            modules.iter().any(|module| {
                module.policy.iter().any(|rule| {
                    let Rule::Spec { head, bodies, .. } = &**rule else {
                        return false;
                    };
                    let RuleHead::Compr {
                        refr,
                        assign: Some(assign),
                        ..
                    } = head
                    else {
                        return false;
                    };
                    let named =
                        matches!(&**refr, Expr::Var { span, .. } if span.text() == name.as_str());
                    let value = assign.value.span();
                    bodies.is_empty()
                        && named
                        && value.start as usize == *start
                        && value.end as usize == *end
                        && matches!(&*assign.value, Expr::RefDot { .. })
                })
            })
        })
    }
}

/// `NAME := ` at the start of a line, followed by `{` or `[`: the name, and where the value
/// starts in the line.
fn constant_rule_head(line: &str) -> Option<(&str, usize)> {
    let name_len = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|n| *n > 0)?;
    let name = &line[..name_len];
    if !name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') || name == "default" {
        return None;
    }
    let rest = line[name_len..].trim_start_matches([' ', '\t']);
    let rest = rest.strip_prefix(":=")?;
    let value = rest.trim_start_matches([' ', '\t']);
    if !value.starts_with(['{', '[']) {
        return None;
    }
    Some((name, line.len() - value.len()))
}

/// The JSON value at the start of `text`: its length and its value, when it is big enough,
/// ends its line, and holds only numbers both readings agree on.
fn json_literal(text: &str) -> Option<(usize, Value)> {
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>();
    stream.next()?.ok()?;
    let len = stream.byte_offset();
    let after = text[len..].split('\n').next().unwrap_or_default();
    if len < MIN_LITERAL_BYTES || !after.trim().is_empty() || !numbers_are_plain(&text[..len]) {
        return None;
    }
    let value = Value::from_json_str(&text[..len]).ok()?;
    Some((len, value))
}

/// Whether every number outside strings in the JSON `text` is an integer of at most 15
/// digits, not `-0`.
fn numbers_are_plain(text: &str) -> bool {
    let mut in_string = false;
    let mut escaped = false;
    let mut number = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        let starts = c.is_ascii_digit() || c == '-';
        let continues = c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E');
        if (number.is_empty() && starts) || (!number.is_empty() && continues) {
            number.push(c);
            continue;
        }
        if !number.is_empty() {
            let digits = number.strip_prefix('-').unwrap_or(&number);
            let plain = !digits.is_empty()
                && digits.len() <= 15
                && digits.chars().all(|d| d.is_ascii_digit())
                && (digits == "0" || !digits.starts_with('0'))
                && number != "-0";
            if !plain {
                return false;
            }
            number.clear();
        }
        if c == '"' {
            in_string = true;
        }
    }
    true
}

/// Whether every `data` token of the policy is followed by `.name` or `["name"]`; `None`
/// when the text does not lex.
fn data_is_only_named(text: &str) -> Option<bool> {
    let source = Source::from_contents(POLICY_SOURCE.to_owned(), text.to_owned()).ok()?;
    let mut lexer = Lexer::new(&source);
    let mut previous: Option<String> = None;
    let mut pending: Vec<String> = Vec::new();
    loop {
        let token = lexer.next_token().ok()?;
        if matches!(token.0, TokenKind::Eof) {
            return Some(pending.is_empty());
        }
        let text = token.1.text().to_owned();
        if !pending.is_empty() {
            pending.push(text.clone());
            let ok = match pending.as_slice() {
                [_, dot, _] if dot == "." => matches!(token.0, TokenKind::Ident),
                [_, open, _] if open == "[" => matches!(token.0, TokenKind::String),
                [_, open, _, close] if open == "[" => close == "]",
                [_, _] => matches!(pending[1].as_str(), "." | "["),
                _ => false,
            };
            if !ok {
                return Some(false);
            }
            let done =
                matches!(pending.as_slice(), [_, dot, _] if dot == ".") || pending.len() == 4;
            if done {
                pending.clear();
            }
        } else if matches!(token.0, TokenKind::Ident)
            && text == "data"
            && previous.as_deref() != Some(".")
        {
            pending.push(text.clone());
        }
        previous = Some(text);
    }
}

fn random_u128() -> Option<u128> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .ok()?;
    Some(u128::from_le_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn big_object() -> String {
        let items: Vec<String> = (0..300)
            .map(|i| format!("\"k{i}\": [{i}, \"v\\n{i}\"]"))
            .collect();
        format!("{{\n{}\n}}", items.join(",\n"))
    }

    #[test]
    fn hoists_a_big_constant_and_keeps_lines() {
        let text = format!(
            "package agent_policy\n\np := {}\n\nx if p.k1[0] == 1\n",
            big_object()
        );
        let hoisted = hoist(&text).expect("hoists");
        assert_eq!(hoisted.text.lines().count(), text.lines().count());
        assert!(hoisted.text.contains("p := data.__peerpod_constants_"));
        assert!(hoisted.text.ends_with("\nx if p.k1[0] == 1\n"));
    }

    #[test]
    fn refuses_what_would_change_the_meaning() {
        let object = big_object();
        for text in [
            // The policy could see the hoisted document.
            format!("package agent_policy\np := {object}\nx := data\n"),
            format!("package agent_policy\np := {object}\nx := data[input.k]\n"),
            format!("package agent_policy\np := {object}\nx := walk(data)\n"),
            // Numbers the two readings may not agree on.
            format!("package agent_policy\np := [{}, 1.5]\n", &object),
            format!("package agent_policy\np := [{}, -0]\n", &object),
            format!("package agent_policy\np := [{}, 1e2]\n", &object),
            // Not the end of the line: a comment, or more expression.
            format!("package agent_policy\np := {object} # c\n"),
            format!("package agent_policy\np := {object} | {{}}\n"),
        ] {
            assert!(hoist(&text).is_none(), "{}", &text[text.len() - 30..]);
        }
        // A small literal is not worth it.
        assert!(hoist("package agent_policy\np := {\"a\": 1}\n").is_none());
    }

    #[test]
    fn data_references_by_name_are_fine() {
        assert_eq!(
            data_is_only_named(
                "package p\nx := data.pstate[input.id]\ny := data[\"pstate\"]\nz := input.data\n"
            ),
            Some(true)
        );
        assert_eq!(data_is_only_named("package p\nx := data\n"), Some(false));
        assert_eq!(data_is_only_named("package p\nx := data[y]\n"), Some(false));
    }

    #[test]
    fn plain_numbers() {
        assert!(numbers_are_plain(
            "[0, 1, -1, 123456789012345, \"1.5e-0\", true, false, null]"
        ));
        assert!(numbers_are_plain("{\"e\": [true,1,false]}"));
        assert!(!numbers_are_plain("[1234567890123456]"));
        assert!(!numbers_are_plain("[01]"));
        assert!(!numbers_are_plain("[1.0]"));
        assert!(!numbers_are_plain("[-0]"));
    }
}
