//! A generator of small agent policies and request sequences that lean on the corners of Rego's
//! semantics: undefined values, builtin errors, negation, `else` chains, comprehensions,
//! `every`/`some`, functions, `print` with erroring arguments, partial sets and objects, and
//! state (`data.pstate`) operations.
//!
//! Choices come from a [`Choices`] source: a seeded PRNG for in-tree runs, or the fuzzer's bytes
//! for coverage-guided runs, so a failing case is reproducible from its seed or its bytes.

/// Where the generator's choices come from.
pub trait Choices {
    /// A number below `n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize;

    /// One of `items`.
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    /// True with probability about `1/n`.
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

/// A seeded SplitMix64 stream.
#[derive(Debug, Clone)]
pub struct Seeded(u64);

impl Seeded {
    /// The stream for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl Choices for Seeded {
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Choices read from fuzzer bytes; zeros once they run out.
#[derive(Debug)]
pub struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    /// Choices drawn from `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self(data)
    }
}

impl Choices for Bytes<'_> {
    fn below(&mut self, n: usize) -> usize {
        let Some((first, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        usize::from(*first) % n.max(1)
    }
}

/// One generated case: a policy and the requests to replay on it, in order, on one engine.
#[derive(Debug, Clone)]
pub struct Case {
    /// The policy text.
    pub policy: String,
    /// `(entrypoint, input)` pairs.
    pub requests: Vec<(String, serde_json::Value)>,
}

/// The entrypoints generated policies define.
const ENTRYPOINTS: &[&str] = &["ExecProcessRequest", "CreateContainerRequest"];

/// Generates one case of up to 6 requests.
pub fn case(c: &mut impl Choices) -> Case {
    case_with(c, 6)
}

/// Generates one case of 1 to `max_requests` requests.
pub fn case_with(c: &mut impl Choices, max_requests: usize) -> Case {
    let mut g = Gen {
        c,
        vars: Vec::new(),
        fresh: 0,
        depth: 0,
        level: 0,
        constants: false,
    };
    let policy = g.policy();
    let count = 1 + g.c.below(max_requests.max(1));
    let requests = (0..count)
        .map(|_| {
            let entrypoint = g.c.pick(ENTRYPOINTS).to_owned();
            (entrypoint, g.input())
        })
        .collect();
    // Chosen last, so that a seed's rules and requests do not depend on it.
    let policy = policy.replacen(PACKAGE_LINE, &header(g.c), 1);
    Case { policy, requests }
}

/// The first line of every generated policy.
const PACKAGE_LINE: &str = "package agent_policy\n";

/// The package line, with imports as genpolicy and other generators write them (the engine
/// blanks some at load; see `engine::keywords`): all valid Rego v1.
fn header(c: &mut impl Choices) -> String {
    let mut out = String::from(PACKAGE_LINE);
    match c.below(8) {
        0 | 1 => {
            // genpolicy's, in any order, with the odd comment and blank line.
            let mut keywords = vec!["in", "every", "if"];
            for _ in 0..c.below(3) {
                let i = c.below(keywords.len());
                keywords.remove(i);
            }
            for keyword in keywords {
                if c.one_in(4) {
                    out.push_str("# keywords\n\n");
                }
                out.push_str(&format!("import future.keywords.{keyword}"));
                out.push_str(if c.one_in(4) { "  # v1\n" } else { "\n" });
            }
        }
        2 => out.push_str(c.pick(&[
            "import rego.v1\n",
            "import future.keywords\n",
            "import future.keywords.contains\nimport future.keywords.in\n",
            "import future.keywords.in\nimport data.pstate as state\n",
        ])),
        _ => {}
    }
    out
}

struct Gen<'c, C: Choices> {
    c: &'c mut C,
    /// Variables in scope in the body being generated.
    vars: Vec<String>,
    fresh: usize,
    depth: usize,
    /// Which helpers the body being generated may use, so that no rule refers to itself:
    /// 1 and up `f`, 2 `g`, 3 `h`, 4 `hs`, 5 `ho`.
    level: u8,
    /// Whether the policy has the constant document `pd`.
    constants: bool,
}

impl<C: Choices> Gen<'_, C> {
    fn policy(&mut self) -> String {
        let mut out = format!("{PACKAGE_LINE}\n");
        if self.c.below(4) != 0 {
            out.push_str("default ExecProcessRequest := false\n");
        }
        if self.c.below(3) != 0 {
            out.push_str("default CreateContainerRequest := false\n");
        }
        if self.c.one_in(8) {
            out.push_str("default AllowRequestsFailingPolicy := false\n");
        }
        // A large constant document, as genpolicy's policy_data (the engine may hoist it).
        self.constants = self.c.one_in(4);
        if self.constants {
            out.push_str(&constant_document(self.c.below(4)));
        }
        // Helpers first: functions, rules, partial sets and objects.
        out.push_str(&self.helpers());
        // The exec entrypoint: one or two bodies, maybe an else chain.
        let bodies = 1 + self.c.below(2);
        for _ in 0..bodies {
            self.vars.clear();
            let head = self.c.pick(&[
                "ExecProcessRequest if",
                "ExecProcessRequest := true if",
                "ExecProcessRequest := false if",
                "ExecProcessRequest := {\"allowed\": true} if",
            ]);
            let body = self.body(1, 4);
            out.push_str(&format!("{head} {{\n{body}}}"));
            if self.c.one_in(3) {
                self.vars.clear();
                let value = self.c.pick(&["true", "false", "1"]);
                let body = self.body(1, 3);
                out.push_str(&format!(" else := {value} if {{\n{body}}}"));
                if self.c.one_in(2) {
                    out.push_str(" else := false");
                }
            }
            out.push('\n');
        }
        // The stateful entrypoint: allowed with JSON Patch operations on data.pstate.
        self.vars.clear();
        let body = self.body(0, 4);
        let value = self.expr();
        let op = self.c.pick(&["add", "replace", "remove", "add", "test"]);
        let op = if op == "remove" {
            "{\"op\": \"remove\", \"path\": concat(\"/\", [\"/pstate\", input.id])}".to_owned()
        } else {
            format!(
                "{{\"op\": \"{op}\", \"path\": concat(\"/\", [\"/pstate\", input.id]), \"value\": v}}"
            )
        };
        out.push_str(&format!(
            "CreateContainerRequest := {{\"allowed\": true, \"ops\": [{op}]}} if {{\n{body}    v := {value}\n}}\n"
        ));
        out
    }

    fn helpers(&mut self) -> String {
        let mut out = String::new();
        // A function with one or two definitions (two may conflict: an error).
        self.level = 0;
        let defs = 1 + self.c.below(2);
        for _ in 0..defs {
            self.vars = vec!["x".to_owned()];
            let body = self.body(0, 3);
            let result = self.expr();
            out.push_str(&format!("f(x) := r if {{\n{body}    r := {result}\n}}\n"));
        }
        if self.c.one_in(3) {
            out.push_str("f(x) := 0 if x == 0\n");
        }
        // A zero-argument function, with an `else`.
        self.vars.clear();
        let body = self.body(0, 2);
        let value = self.expr();
        out.push_str(&format!(
            "z() := zv if {{\n{body}    zv := {value}\n}} else := \"z\"\n"
        ));
        // g(x) is true or undefined.
        self.level = 1;
        self.vars = vec!["x".to_owned()];
        let body = self.body(1, 2);
        out.push_str(&format!("g(x) if {{\n{body}}}\n"));
        // A complete rule, maybe with a default.
        self.level = 2;
        self.vars.clear();
        if self.c.one_in(2) {
            out.push_str("default h := 7\n");
        }
        let body = self.body(0, 3);
        let value = self.expr();
        out.push_str(&format!("h := hv if {{\n{body}    hv := {value}\n}}\n"));
        // A partial set and a partial object.
        self.level = 3;
        let body = self.body(0, 2);
        let value = self.expr();
        out.push_str(&format!(
            "hs contains sv if {{\n{body}    sv := {value}\n}}\n"
        ));
        out.push_str("hs contains \"fixed\"\n");
        self.level = 4;
        let body = self.body(0, 2);
        let key = self.c.pick(&["input.s", "\"k\"", "input.id", "input.n"]);
        let value = self.expr();
        out.push_str(&format!(
            "ho[{key}] := ov if {{\n{body}    ov := {value}\n}}\n"
        ));
        self.vars.clear();
        self.level = 5;
        out
    }

    /// `min` to `min + extra - 1` statements, one per line, indented.
    fn body(&mut self, min: usize, extra: usize) -> String {
        let n = min + self.c.below(extra);
        let mut out = String::new();
        for _ in 0..n {
            out.push_str("    ");
            // Two in five statements usually hold, so that enough bodies succeed for the
            // corners around them to matter.
            if self.c.below(5) < 2 {
                out.push_str(
                    self.c
                        .pick(&["true", "input.id", "is_string(input.s)", "input.obj"]),
                );
            } else {
                out.push_str(&self.stmt());
            }
            out.push('\n');
        }
        if n == 0 {
            out.push_str("    true\n");
        }
        out
    }

    fn new_var(&mut self) -> String {
        self.fresh += 1;
        format!("v{}", self.fresh)
    }

    fn stmt(&mut self) -> String {
        self.depth += 1;
        let s = match self.c.below(24) {
            0..=3 => {
                let e = self.expr();
                let v = self.new_var();
                self.vars.push(v.clone());
                format!("{v} := {e}")
            }
            4 => self.expr(),
            5 => {
                let (a, b) = (self.expr(), self.expr());
                let op = self.c.pick(&["==", "!=", "<", ">=", "=="]);
                format!("{a} {op} {b}")
            }
            6 => format!("not {}", self.expr()),
            7 if self.level >= 2 => format!("not g({})", self.expr()),
            8 => {
                let e = self.expr();
                let v = self.new_var();
                let s = format!("some {v} in {e}");
                self.vars.push(v);
                s
            }
            9 => {
                let e = self.expr();
                let (k, v) = (self.new_var(), self.new_var());
                let s = format!("some {k}, {v} in {e}");
                self.vars.push(k);
                self.vars.push(v);
                s
            }
            10 if self.depth < 3 => {
                let e = self.expr();
                let v = self.new_var();
                self.vars.push(v.clone());
                let inner = self.stmt();
                self.vars.retain(|x| *x != v);
                format!("every {v} in {e} {{ {inner} }}")
            }
            11 => {
                let args = (0..1 + self.c.below(2))
                    .map(|_| self.expr())
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("print({args})")
            }
            12 => {
                let e = self.expr();
                let v = self.new_var();
                self.vars.push(v.clone());
                format!("{v} = {e}")
            }
            13 => {
                let e = self.expr();
                let (p, q) = (self.new_var(), self.new_var());
                self.vars.push(p.clone());
                self.vars.push(q.clone());
                format!("[{p}, {q}] := {e}")
            }
            14 => format!("{} in {}", self.expr(), self.expr()),
            15 if self.level >= 2 => format!("g({})", self.expr()),
            16 => format!("data.pstate[input.id] == {}", self.expr()),
            17 => format!("_ = {}", self.expr()),
            // Loops regorus hoists out of a statement: `x[_]` and `x[i]` with a fresh `i`.
            18 => {
                let e = self.atom();
                let v = self.new_var();
                let s = format!("{v} := {e}[_]");
                self.vars.push(v);
                s
            }
            19 => {
                let e = self.atom();
                let (i, v) = (self.new_var(), self.new_var());
                let s = if self.c.one_in(2) {
                    format!("some {i}\n    {v} := {e}[{i}]")
                } else {
                    format!("{v} := {e}[{i}]")
                };
                self.vars.push(i);
                self.vars.push(v);
                s
            }
            // `every` with a key, indexing with its variables (regorus hoists that as a loop).
            20 if self.depth < 3 && self.c.one_in(2) => {
                let e = self.expr();
                let (k, v) = (self.new_var(), self.new_var());
                let other = self.atom();
                format!("every {k}, {v} in {e} {{ {other}[{k}] != {v} }}")
            }
            // A unification of two bound expressions, and one that binds a fresh variable.
            21 => {
                let a = self.expr();
                let b = if self.c.one_in(2) {
                    a.clone()
                } else {
                    self.expr()
                };
                format!("{a} = {b}")
            }
            22 if self.level >= 1 => {
                if self.c.one_in(2) {
                    "z() == z()".to_owned()
                } else {
                    format!("z() == {}", self.expr())
                }
            }
            _ if self.level >= 3 => self
                .c
                .pick(&["true", "false", "input.flag", "h == 7"])
                .to_owned(),
            _ => self.c.pick(&["true", "false", "input.flag"]).to_owned(),
        };
        self.depth -= 1;
        s
    }

    fn expr(&mut self) -> String {
        self.depth += 1;
        let deep = self.depth > 4;
        let e = if deep || self.c.below(3) == 0 {
            self.atom()
        } else {
            match self.c.below(26) {
                0 => format!("{} + {}", self.atom(), self.atom()),
                1 => format!("{} - {}", self.atom(), self.atom()),
                2 => format!("{} * {}", self.atom(), self.atom()),
                3 => format!("{} / {}", self.atom(), self.atom()),
                4 => format!("{} % {}", self.atom(), self.atom()),
                5 => format!("to_number({})", self.expr()),
                6 => format!("count({})", self.expr()),
                7 => format!("concat(\",\", {})", self.expr()),
                8 => format!("sprintf(\"%v-%d\", [{}, {}])", self.expr(), self.expr()),
                9 => format!("json.unmarshal({})", self.expr()),
                10 => format!("base64.decode({})", self.expr()),
                11 => format!("regex.match({}, {})", self.expr(), self.expr()),
                12 => format!("startswith({}, {})", self.expr(), self.expr()),
                13 => format!("object.get({}, \"k\", {})", self.expr(), self.expr()),
                14 => format!("split({}, \",\")", self.expr()),
                15 if self.level >= 1 => format!("f({})", self.expr()),
                16 => format!("[{}, {}]", self.expr(), self.expr()),
                17 => format!("{{{}}}", self.expr()),
                18 => format!("{{\"k\": {}}}", self.expr()),
                19 => {
                    let coll = self.expr();
                    let y = self.new_var();
                    self.vars.push(y.clone());
                    let cond = self.stmt();
                    self.vars.retain(|x| *x != y);
                    match self.c.below(3) {
                        0 => format!("[{y} | some {y} in {coll}; {cond}]"),
                        1 => format!("{{{y} | some {y} in {coll}; {cond}}}"),
                        _ => format!("{{{y}: true | some {y} in {coll}; {cond}}}"),
                    }
                }
                20 => format!("{}[{}]", self.atom(), self.atom()),
                21 => format!("upper({})", self.expr()),
                22 => format!("is_null({})", self.expr()),
                23 => format!("abs({})", self.expr()),
                24 => format!("{}, {} in {}", self.atom(), self.atom(), self.atom()),
                _ => format!("indexof({}, \"b\")", self.expr()),
            }
        };
        self.depth -= 1;
        e
    }

    fn atom(&mut self) -> String {
        if !self.vars.is_empty() && self.c.one_in(3) {
            let i = self.c.below(self.vars.len());
            return self.vars[i].clone();
        }
        if self.constants && self.c.one_in(5) {
            return self
                .c
                .pick(&[
                    "pd",
                    "pd.items",
                    "pd.items[input.n]",
                    "pd.items[_]",
                    "pd.byname[input.s]",
                    "pd.byname.abc",
                    "pd.nums[input.a]",
                    "pd.text",
                    "data.consts",
                    "count(pd.items)",
                ])
                .to_owned();
        }
        let helpers: &[(u8, &str)] = &[
            (3, "h"),
            (4, "hs"),
            (4, "hs[input.s]"),
            (5, "ho"),
            (5, "ho[input.s]"),
            (5, "ho.k"),
        ];
        if self.c.one_in(6) {
            let usable: Vec<&str> = helpers
                .iter()
                .filter(|(level, _)| self.level >= *level)
                .map(|(_, atom)| *atom)
                .collect();
            if !usable.is_empty() {
                return self.c.pick(&usable).to_owned();
            }
        }
        self.c
            .pick(&[
                "input.a",
                "input.n",
                "input.s",
                "input.arr",
                "input.arr[0]",
                "input.arr[5]",
                "input.arr[input.n]",
                "input.obj",
                "input.obj.k",
                "input.obj[input.s]",
                "input.b64",
                "input.js",
                "input.re",
                "input.missing",
                "input.missing.deeper",
                "data.pstate[input.id]",
                "data.pstate",
                "data.pstate.nothing",
                "0",
                "1",
                "-1",
                "2.5",
                "\"abc\"",
                "\"1\"",
                "\"a,b\"",
                "\"(\"",
                "null",
                "true",
                "[]",
                "[1, 2]",
                "{}",
                "{\"k\": 1}",
            ])
            .to_owned()
    }

    fn input(&mut self) -> serde_json::Value {
        use serde_json::json;
        let mut obj = serde_json::Map::new();
        let mut put = |g: &mut Self, key: &str, options: &[serde_json::Value]| {
            // Each key is sometimes absent.
            if !g.c.one_in(6) {
                let i = g.c.below(options.len());
                obj.insert(key.to_owned(), options[i].clone());
            }
        };
        put(
            self,
            "a",
            &[json!(1), json!(0), json!(-3), json!(2.5), json!("1")],
        );
        put(
            self,
            "n",
            &[
                json!(0),
                json!(1),
                json!(2),
                json!(-1),
                json!("x"),
                json!(null),
            ],
        );
        put(
            self,
            "s",
            &[
                json!("abc"),
                json!("1"),
                json!("12"),
                json!("k"),
                json!(""),
                json!(3),
            ],
        );
        put(
            self,
            "arr",
            &[
                json!([1]),
                json!([1, 2, 3]),
                json!([]),
                json!(["a", "b"]),
                json!({"k": 1}),
            ],
        );
        put(
            self,
            "obj",
            &[json!({"k": 1}), json!({}), json!({"abc": [1]}), json!([1])],
        );
        put(self, "b64", &[json!("aGk="), json!("!!"), json!("e30=")]);
        put(
            self,
            "js",
            &[json!("{\"x\":1}"), json!("{bad"), json!("[1,2]"), json!(1)],
        );
        put(self, "re", &[json!("^a"), json!("("), json!("b+")]);
        put(self, "id", &[json!("c1"), json!("c2"), json!("")]);
        put(self, "flag", &[json!(true), json!(false), json!(1)]);
        serde_json::Value::Object(obj)
    }
}

/// `pd := {...}`: a constant document over 4 KiB with values the generated inputs can match,
/// written one of a few ways (one line or many; with escapes; after or before the rules).
fn constant_document(style: usize) -> String {
    let items: Vec<String> = (0..64)
        .map(|i| format!("{{\"id\": {i}, \"name\": \"n{i}\", \"tags\": [\"a,b\", \"\\u00e9\\n\", null, true]}}"))
        .collect();
    let sep = if style.is_multiple_of(2) {
        ",\n    "
    } else {
        ", "
    };
    let body = format!(
        "{{\"items\": [{}], \"byname\": {{\"abc\": 1, \"1\": [1, 2], \"k\": {{\"k\": 0}}}}, \"nums\": {{\"1\": -3, \"0\": 0}}, \"text\": \"q\\\"uote\"}}",
        items.join(sep)
    );
    match style {
        // A document the engine must not hoist: a number the two readings may not agree on.
        3 => format!("pd := {}\n", body.replacen("\"id\": 7,", "\"id\": 7.0,", 1)),
        _ => format!("pd := {body}\n"),
    }
}
