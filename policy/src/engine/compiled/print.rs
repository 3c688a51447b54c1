//! How `print` renders a non-string argument, as regorus's interpreter renders it.

use regorus::Value;

/// Appends `value` to `out`: collections element by element, scalars as their JSON text.
pub(super) fn printable(value: &Value, out: &mut String) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, e) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                printable(e, out);
            }
            out.push(']');
        }
        Value::Set(items) => {
            out.push('{');
            for (i, e) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                printable(e, out);
            }
            out.push('}');
        }
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
