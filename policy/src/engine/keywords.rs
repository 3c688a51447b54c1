//! Keyword imports that mean nothing in Rego v1, blanked before parsing.
//!
//! genpolicy's policies start with `import future.keywords.in`, `.every` and `.if`. In Rego v1
//! those keywords are always on, so the imports change nothing in how the text parses; but
//! regorus keeps them in its import table, and once that table is not empty its interpreter
//! resolves every function call through it (a path string built and looked up per call: about
//! 3 % of an allowed genpolicy CreateContainer, 4–5 % of an exec). Blanking them makes the
//! table empty.
//!
//! That keeps the policy's meaning only under conditions, all checked, or nothing is blanked:
//!
//! - only `import future.keywords.in`, `.every` and `.if`: their aliases are keywords that no
//!   Rego v1 expression can name (`contains` is also a builtin's name, so it is kept), and each
//!   at most once (regorus refuses a keyword imported twice in v1, which must stay refused);
//! - only in the header: after a `package` line, among blank, comment and such import lines
//!   only; any other import anywhere (`rego.v1`, bare `future.keywords`, `data...`), or a line
//!   starting with `import` past the header, and nothing is blanked;
//! - the result is used only if it parses as Rego v1 (the caller's job: a v0 policy needs its
//!   imports, and is parsed as written);
//! - each import is replaced by as many spaces as it had bytes, so byte offsets, line and
//!   column numbers, print output and error locations are unchanged.

/// The keyword imports that are blanked.
const BLANKED: [&str; 3] = [
    "import future.keywords.in",
    "import future.keywords.every",
    "import future.keywords.if",
];

/// `text` with its v1-neutral keyword imports blanked, or `None` when there are none or a
/// condition fails.
pub(super) fn blank_v1_keyword_imports(text: &str) -> Option<String> {
    let mut seen_package = false;
    let mut header_ended = false;
    // Byte ranges of the imports to blank, and which keywords they were.
    let mut blanks: Vec<(usize, usize)> = Vec::new();
    let mut found = [false; BLANKED.len()];
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let start = at;
        at += line.len();
        let code = line.trim_end_matches(['\n', '\r']);
        let trimmed = code.trim_matches([' ', '\t']);
        if header_ended {
            if trimmed.starts_with("import") {
                return None;
            }
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if !seen_package {
            if !is_package_line(trimmed) {
                return None;
            }
            seen_package = true;
            continue;
        }
        // A trailing comment may follow an import.
        let statement = trimmed
            .split_once('#')
            .map_or(trimmed, |(s, _)| s)
            .trim_end_matches([' ', '\t']);
        match BLANKED.iter().position(|import| *import == statement) {
            Some(i) if found[i] => return None,
            Some(i) => {
                found[i] = true;
                let offset = start + (code.len() - code.trim_start_matches([' ', '\t']).len());
                blanks.push((offset, offset + statement.len()));
            }
            None if trimmed.starts_with("import") => return None,
            None => header_ended = true,
        }
    }
    if blanks.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (from, to) in blanks {
        out.push_str(&text[last..from]);
        out.extend(std::iter::repeat_n(' ', to - from));
        last = to;
    }
    out.push_str(&text[last..]);
    Some(out)
}

/// `package a.b` on one line: a dotted path of identifiers, maybe a comment after it.
fn is_package_line(line: &str) -> bool {
    let Some(rest) = line.strip_prefix("package") else {
        return false;
    };
    let Some(rest) = rest.strip_prefix([' ', '\t']) else {
        return false;
    };
    let path = rest
        .split_once('#')
        .map_or(rest, |(p, _)| p)
        .trim_matches([' ', '\t']);
    !path.is_empty()
        && path.split('.').all(|part| {
            part.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use super::blank_v1_keyword_imports as blank;

    #[test]
    fn genpolicy_header_is_blanked_in_place() {
        let text = "# generated\npackage agent_policy\n\nimport future.keywords.in\nimport \
                    future.keywords.every # loops\r\nimport future.keywords.if\n\nx := 1\n";
        let out = blank(text).expect("blanked");
        assert_eq!(out.len(), text.len());
        assert_eq!(out.lines().count(), text.lines().count());
        assert!(!out.contains("import"), "{out}");
        assert!(out.contains("# loops\r\n"));
        assert!(out.ends_with("\n\nx := 1\n"));
    }

    #[test]
    fn anything_doubtful_blanks_nothing() {
        for text in [
            // Nothing to blank.
            "package p\nx := 1\n",
            // Imports before the package: refused by the parser, must stay refused.
            "import future.keywords.in\npackage p\nx := 1\n",
            // A keyword twice: regorus refuses it in v1.
            "package p\nimport future.keywords.in\nimport future.keywords.in\n",
            // Other imports: they share the shadowing rules, or have aliases in use.
            "package p\nimport future.keywords.in\nimport rego.v1\n",
            "package p\nimport rego.v1\nimport future.keywords.in\n",
            "package p\nimport future.keywords\nimport future.keywords.if\n",
            "package p\nimport future.keywords.if\nimport data.lib as keywords\n",
            "package p\nimport future.keywords.contains\nimport future.keywords.if\n",
            // Aliased (refused by the parser) or not on a line of its own.
            "package p\nimport future.keywords.in as i\n",
            "package p\nimport future.keywords.in; x := 1\n",
            // An import past the first rule.
            "package p\nimport future.keywords.in\nx := 1\nimport future.keywords.if\n",
            // A package statement split over lines.
            "package\np\nimport future.keywords.in\n",
        ] {
            assert_eq!(blank(text), None, "{text}");
        }
    }

    /// A Rego v1 interpreter as the engine configures it; `None` when it refuses `text`.
    fn v1(text: &str) -> Option<regorus::Engine> {
        let mut engine = regorus::Engine::new();
        engine.set_rego_v0(false);
        engine.set_strict_builtin_errors(false);
        engine.set_gather_prints(true);
        engine
            .add_policy("policy.rego".to_owned(), text.to_owned())
            .ok()?;
        Some(engine)
    }

    fn decide(engine: &mut regorus::Engine, input: &str) -> (String, Vec<String>) {
        engine.set_input(regorus::Value::from_json_str(input).expect("test input is JSON"));
        let result = engine.eval_rule("data.agent_policy.ExecProcessRequest".to_owned());
        let prints = engine.take_prints().unwrap_or_default();
        let result = match result {
            Ok(value) => format!("{value:?}"),
            Err(e) => format!("error: {e:#}"),
        };
        (result, prints)
    }

    /// Texts made of lines drawn from headers, imports, comments, rules and raw-string
    /// delimiters: whenever a text is blanked, the blanked text parses as v1 exactly when the
    /// text does, and then decides and prints the same.
    #[test]
    fn blanked_texts_parse_decide_and_print_as_written() {
        const LINES: &[&str] = &[
            "package agent_policy",
            "package agent_policy # p",
            "package",
            "agent_policy",
            "import future.keywords.in",
            "import future.keywords.every",
            "import future.keywords.if",
            "  import future.keywords.if  # c",
            "import future.keywords.contains",
            "import future.keywords",
            "import rego.v1",
            "import data.pstate as keywords",
            "import future.keywords.in as i",
            "import input",
            "# comment",
            "",
            "default ExecProcessRequest := false",
            "ExecProcessRequest if { every x in input.a { x in [1, 2] }; print(\"ok\", input.a) }",
            "ExecProcessRequest if { contains(input.s, \"x\"); print(\"s\") }",
            "ExecProcessRequest if { keywords.x == input.s }",
            "s := `",
            "`",
        ];
        let inputs = [r#"{"a": [1, 2]}"#, r#"{"a": [3]}"#, r#"{"s": "xy"}"#, "{}"];
        let mut state = 0x5eed_u64;
        let mut below = |n: usize| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            ((state >> 33) % n as u64) as usize
        };
        let (mut blanked, mut parsed) = (0, 0);
        for _ in 0..5_000 {
            // Mostly a package line, then header-like lines, then anything.
            let mut lines = Vec::new();
            if below(8) != 0 {
                lines.push(LINES[below(2)]);
            }
            for _ in 0..below(5) {
                lines.push(LINES[4 + below(12)]);
            }
            for _ in 0..below(5) {
                lines.push(LINES[below(LINES.len())]);
            }
            let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
            let Some(out) = blank(&text) else { continue };
            blanked += 1;
            let (original, rewritten) = (v1(&text), v1(&out));
            assert_eq!(original.is_some(), rewritten.is_some(), "{text}");
            let (Some(mut original), Some(mut rewritten)) = (original, rewritten) else {
                continue;
            };
            parsed += 1;
            for input in inputs {
                assert_eq!(
                    decide(&mut original, input),
                    decide(&mut rewritten, input),
                    "{text}"
                );
            }
        }
        // The draw must reach both blanked texts that parse and ones that do not.
        eprintln!("{blanked} texts blanked, {parsed} of them parse");
        assert!(
            blanked > 100 && parsed > 20,
            "{blanked} blanked, {parsed} parsed"
        );
    }

    #[test]
    fn look_alikes_past_the_header_are_left_alone() {
        // In a raw string past the header, a line reading like an import is not one; its
        // presence alone stops the rewrite.
        let text = "package p\nimport future.keywords.in\ns := `\nimport future.keywords.if\n`\n";
        assert_eq!(blank(text), None);
        let text = "package p\nimport future.keywords.in\ns := \"import future.keywords.if\"\n";
        let out = blank(text).expect("blanked");
        assert!(
            out.ends_with("s := \"import future.keywords.if\"\n"),
            "{out}"
        );
    }
}
