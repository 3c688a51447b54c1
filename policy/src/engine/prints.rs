//! What a policy printed while deciding one request.
//!
//! The interpreter hands over finished lines. The compiled form keeps each `print` call's
//! argument values instead and renders them only when someone reads the lines (a denial's
//! message, the `initdata` tool, the differential tests): an allowed request, the common case,
//! never pays for formatting what genpolicy prints. Values are immutable, so rendering later
//! gives the lines rendering at once would have given.

use std::sync::OnceLock;

use regorus::Value;

/// One `print` call of the compiled form: its line and its arguments' values
/// (`Value::Undefined` for an undefined argument).
#[derive(Debug, Clone)]
pub(crate) struct PendingPrint {
    pub(crate) line: u32,
    pub(crate) args: Vec<Value>,
}

/// The lines a policy printed, rendered on first read.
#[derive(Clone, Default)]
pub(crate) struct Prints {
    /// The compiled form's calls, not yet rendered (boxed: a decision stays small).
    pending: Option<Box<Deferred>>,
    lines: OnceLock<Vec<String>>,
}

#[derive(Clone)]
struct Deferred {
    file: &'static str,
    calls: Vec<PendingPrint>,
}

impl Prints {
    /// Prints of the compiled form, in `file`, rendered when read.
    pub(crate) fn deferred(file: &'static str, pending: Vec<PendingPrint>) -> Self {
        Self {
            pending: Some(Box::new(Deferred {
                file,
                calls: pending,
            })),
            lines: OnceLock::new(),
        }
    }

    /// The lines, rendered now if they were not yet.
    pub(crate) fn lines(&self) -> &[String] {
        self.lines.get_or_init(|| match &self.pending {
            Some(d) => d.calls.iter().map(|p| render(d.file, p)).collect(),
            None => Vec::new(),
        })
    }
}

impl From<Vec<String>> for Prints {
    fn from(lines: Vec<String>) -> Self {
        Self {
            pending: None,
            lines: OnceLock::from(lines),
        }
    }
}

impl std::fmt::Debug for Prints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.lines()).finish()
    }
}

impl PartialEq for Prints {
    fn eq(&self, other: &Self) -> bool {
        self.lines() == other.lines()
    }
}

impl Eq for Prints {}

/// `file:line: ` then the arguments separated by spaces, as regorus's interpreter prints them.
fn render(file: &str, print: &PendingPrint) -> String {
    let mut msg = String::new();
    for (i, a) in print.args.iter().enumerate() {
        if i > 0 {
            msg.push(' ');
        }
        match a {
            Value::Undefined => msg.push_str("<undefined>"),
            Value::String(s) => msg.push_str(s),
            v => printable(v, &mut msg),
        }
    }
    format!("{file}:{}: {msg}", print.line)
}

/// Appends `value` to `out`: collections element by element, scalars as their JSON text.
fn printable(value: &Value, out: &mut String) {
    match value {
        Value::Array(items) => items_of(items.iter(), ('[', ']'), out),
        Value::Set(items) => items_of(items.iter(), ('{', '}'), out),
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter_sorted().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                printable(k, out);
                out.push_str(": ");
                printable(v, out);
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Appends `items` between `brackets`, separated by `, `.
fn items_of<'a>(items: impl Iterator<Item = &'a Value>, brackets: (char, char), out: &mut String) {
    out.push(brackets.0);
    for (i, e) in items.enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        printable(e, out);
    }
    out.push(brackets.1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferred_lines_render_like_the_interpreter_and_once() {
        let obj = Value::from(serde_json::json!({"b": [1, "x"], "a": null}));
        let prints = Prints::deferred(
            "policy.rego",
            vec![
                PendingPrint {
                    line: 7,
                    args: vec![Value::from("s"), Value::Undefined, obj],
                },
                PendingPrint {
                    line: 9,
                    args: Vec::new(),
                },
            ],
        );
        let first = prints.lines().as_ptr();
        assert_eq!(
            prints.lines(),
            [
                r#"policy.rego:7: s <undefined> {"a": null, "b": [1, "x"]}"#,
                "policy.rego:9: "
            ]
        );
        assert_eq!(first, prints.lines().as_ptr(), "rendered once");
        assert_eq!(prints, Prints::from(prints.lines().to_vec()));
    }
}
