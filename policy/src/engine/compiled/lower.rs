//! From regorus's parsed policy to the compiled form, refusing what is not on the whitelist.
//!
//! Every rule and function is lowered on its own; one that uses a construct this module does
//! not implement with the interpreter's exact semantics is refused, and an entry point is
//! compiled only when nothing it can reach was refused (and nothing it reaches is recursive).
//! This module handles the module level (names, rule sets, defaults, functions); each
//! definition's queries and expressions are lowered by `lower_body`.

use std::collections::{BTreeMap, BTreeSet};

use regorus::Value;
use regorus::unstable::{Expr as Ast, Module, Ref, Rule, RuleHead};

use super::depth;
use super::ir::*;
use super::lower_body::Fx;
use super::schedule::{Refusal, schedule_module};

/// A dependency of a definition: a rule (`false`) or a function (`true`) by index.
pub(super) type Dep = (bool, usize);

/// The lowered policy.
#[derive(Debug)]
pub(super) struct Lowered {
    pub(super) rules: Vec<Option<RuleSet>>,
    pub(super) funcs: Vec<Option<Func>>,
    pub(super) rule_ids: BTreeMap<String, usize>,
    /// Why each refused rule or function was refused.
    pub(super) refusals: BTreeMap<String, Refusal>,
    deps: BTreeMap<Dep, BTreeSet<Dep>>,
}

impl Lowered {
    /// Whether `rule` and everything it reaches were lowered, with no cycle and no chain of
    /// references longer than [`MAX_CHAIN`] (the walk recurses along the chain).
    pub(super) fn closure_ok(&self, rule: usize) -> bool {
        let mut seen = BTreeSet::new();
        let mut on_path = BTreeSet::new();
        self.visit((false, rule), &mut seen, &mut on_path)
    }

    fn visit(&self, d: Dep, seen: &mut BTreeSet<Dep>, on_path: &mut BTreeSet<Dep>) -> bool {
        if on_path.contains(&d) || on_path.len() >= MAX_CHAIN {
            return false;
        }
        if !seen.insert(d) {
            return true;
        }
        let ok = if d.0 {
            self.funcs.get(d.1).is_some_and(Option::is_some)
        } else {
            self.rules.get(d.1).is_some_and(Option::is_some)
        };
        if !ok {
            return false;
        }
        on_path.insert(d);
        let all = self
            .deps
            .get(&d)
            .is_none_or(|ds| ds.iter().all(|n| self.visit(*n, seen, on_path)));
        on_path.remove(&d);
        all
    }
}

/// The longest chain of rule and function references an entry point may reach through and be
/// compiled (genpolicy's are under 10); longer ones are left to the interpreter.
const MAX_CHAIN: usize = 256;

/// A rule name's kind, definitions and defaults.
type RuleGroup = (RuleKind, Vec<Ref<Rule>>, Vec<Ref<Rule>>);

pub(super) struct Names {
    pub(super) rules: BTreeMap<String, usize>,
    pub(super) funcs: BTreeMap<String, usize>,
    /// Arity of every definition of each function.
    pub(super) arities: BTreeMap<usize, BTreeSet<usize>>,
    pub(super) globals: BTreeSet<String>,
    pub(super) data_roots: BTreeSet<String>,
    pub(super) orders: BTreeMap<u32, Vec<u16>>,
}

/// Lowers the single module of an agent policy. `data_roots` are the first fields under `data`
/// the policy may read (`pstate` and the hoisted-constants key).
pub(super) fn lower(module: &Module, data_roots: BTreeSet<String>) -> Result<Lowered, Refusal> {
    if !module.imports.is_empty() {
        return Err("imports".into());
    }
    if module.policy.iter().any(|r| depth::rule_too_deep(r)) {
        return Err(format!(
            "an expression nested more than {} deep",
            depth::MAX_DEPTH
        ));
    }
    let mut names = Names {
        rules: BTreeMap::new(),
        funcs: BTreeMap::new(),
        arities: BTreeMap::new(),
        globals: BTreeSet::new(),
        data_roots,
        orders: BTreeMap::new(),
    };
    // Name -> (kind, definitions, default).
    let mut rule_defs: BTreeMap<String, RuleGroup> = BTreeMap::new();
    let mut func_defs: BTreeMap<String, Vec<Ref<Rule>>> = BTreeMap::new();
    let mut bad: BTreeMap<String, Refusal> = BTreeMap::new();
    for rule in &module.policy {
        let (name, what) = classify(rule);
        names.globals.insert(name.clone());
        match what {
            Class::Rule(kind) => {
                let e = rule_defs
                    .entry(name.clone())
                    .or_insert((kind, Vec::new(), Vec::new()));
                if e.0 != kind {
                    bad.insert(name, "rule kinds mixed".into());
                } else {
                    e.1.push(rule.clone());
                }
            }
            Class::Default => {
                rule_defs
                    .entry(name)
                    .or_insert((RuleKind::Complete, Vec::new(), Vec::new()))
                    .2
                    .push(rule.clone());
            }
            Class::Func => func_defs.entry(name).or_default().push(rule.clone()),
            Class::Bad(why) => {
                bad.insert(name, why);
            }
        }
    }
    for name in func_defs.keys() {
        if rule_defs.contains_key(name) {
            bad.insert(name.clone(), "both a rule and a function".into());
        }
    }
    for (i, name) in rule_defs.keys().enumerate() {
        names.rules.insert(name.clone(), i);
    }
    for (i, (name, defs)) in func_defs.iter().enumerate() {
        names.funcs.insert(name.clone(), i);
        let arities = defs
            .iter()
            .filter_map(|d| match d.as_ref() {
                Rule::Spec {
                    head: RuleHead::Func { args, .. },
                    ..
                } => Some(args.len()),
                _ => None,
            })
            .collect();
        names.arities.insert(i, arities);
    }
    names.orders = schedule_module(&module.policy, &names.globals)?;

    let mut out = Lowered {
        rules: Vec::new(),
        funcs: Vec::new(),
        rule_ids: names.rules.clone(),
        refusals: BTreeMap::new(),
        deps: BTreeMap::new(),
    };
    for (name, (kind, defs, defaults)) in &rule_defs {
        let id = out.rules.len();
        let mut deps = BTreeSet::new();
        let r = match bad.get(name) {
            Some(why) => Err(why.clone()),
            None => lower_rule_set(&names, name, *kind, defs, defaults, &mut deps),
        };
        out.deps.insert((false, id), deps);
        match r {
            Ok(set) => out.rules.push(Some(set)),
            Err(why) => {
                out.refusals.insert(name.clone(), why);
                out.rules.push(None);
            }
        }
    }
    for (name, defs) in &func_defs {
        let id = out.funcs.len();
        let mut deps = BTreeSet::new();
        let r = match bad.get(name) {
            Some(why) => Err(why.clone()),
            None => defs
                .iter()
                .map(|d| lower_func_def(&names, d, &mut deps))
                .collect::<Result<Vec<_>, _>>()
                .map(|defs| Func { defs }),
        };
        out.deps.insert((true, id), deps);
        match r {
            Ok(f) => out.funcs.push(Some(f)),
            Err(why) => {
                out.refusals.insert(format!("{name}()"), why);
                out.funcs.push(None);
            }
        }
    }
    Ok(out)
}

enum Class {
    Rule(RuleKind),
    Default,
    Func,
    Bad(Refusal),
}

pub(super) fn root_name(e: &Ast) -> String {
    match e {
        Ast::Var { span, .. } => span.text().to_owned(),
        Ast::RefDot { refr, .. } | Ast::RefBrack { refr, .. } => root_name(refr),
        _ => String::new(),
    }
}

fn classify(rule: &Ref<Rule>) -> (String, Class) {
    match rule.as_ref() {
        Rule::Spec { head, .. } => match head {
            RuleHead::Compr { refr, assign, .. } => match refr.as_ref() {
                Ast::Var { span, .. } => (span.text().to_owned(), Class::Rule(RuleKind::Complete)),
                Ast::RefBrack { refr: inner, .. }
                    if assign.is_some() && matches!(inner.as_ref(), Ast::Var { .. }) =>
                {
                    (root_name(inner), Class::Rule(RuleKind::Object))
                }
                other => (root_name(other), Class::Bad("rule head".into())),
            },
            RuleHead::Set { refr, key, .. } => match (refr.as_ref(), key) {
                (Ast::Var { span, .. }, Some(_)) => {
                    (span.text().to_owned(), Class::Rule(RuleKind::Set))
                }
                (other, _) => (root_name(other), Class::Bad("set rule head".into())),
            },
            RuleHead::Func { refr, .. } => match refr.as_ref() {
                Ast::Var { span, .. } => (span.text().to_owned(), Class::Func),
                other => (root_name(other), Class::Bad("function name".into())),
            },
        },
        Rule::Default { refr, args, .. } => match refr.as_ref() {
            Ast::Var { span, .. } if args.is_empty() => (span.text().to_owned(), Class::Default),
            other => (root_name(other), Class::Bad("default".into())),
        },
    }
}

fn is_simple_literal(e: &Ast) -> bool {
    matches!(
        e,
        Ast::String { .. }
            | Ast::RawString { .. }
            | Ast::Bool { .. }
            | Ast::Null { .. }
            | Ast::Number { .. }
    )
}

/// The value of a constant expression (a default rule's value).
fn const_value(e: &Ast) -> Option<Value> {
    match e {
        Ast::String { value, .. }
        | Ast::RawString { value, .. }
        | Ast::Bool { value, .. }
        | Ast::Null { value, .. }
        | Ast::Number { value, .. } => Some(value.clone()),
        Ast::Array { items, .. } => Some(Value::from(
            items
                .iter()
                .map(|i| const_value(i))
                .collect::<Option<Vec<_>>>()?,
        )),
        Ast::Object { fields, .. } => {
            let mut obj = Value::new_object();
            for (_, k, v) in fields {
                obj.as_object_mut()
                    .ok()?
                    .insert(const_value(k)?, const_value(v)?);
            }
            Some(obj)
        }
        _ => None,
    }
}

fn lower_rule_set(
    names: &Names,
    name: &str,
    kind: RuleKind,
    defs: &[Ref<Rule>],
    defaults: &[Ref<Rule>],
    deps: &mut BTreeSet<Dep>,
) -> Result<RuleSet, Refusal> {
    let default = match defaults {
        [] => None,
        [d] => match d.as_ref() {
            Rule::Default { value, .. } if kind == RuleKind::Complete => {
                Some(const_value(value).ok_or("default value")?)
            }
            _ => return Err("default".into()),
        },
        _ => return Err("several defaults".into()),
    };
    let mut out = Vec::new();
    for def in defs {
        let Rule::Spec { head, bodies, .. } = def.as_ref() else {
            return Err("rule".into());
        };
        let (key, output) = match head {
            RuleHead::Compr { refr, assign, .. } => {
                let key = match refr.as_ref() {
                    Ast::RefBrack { index, .. } => Some(index.clone()),
                    _ => None,
                };
                (key, assign.as_ref().map(|a| a.value.clone()))
            }
            RuleHead::Set { key, .. } => (None, key.clone()),
            RuleHead::Func { .. } => return Err("function in a rule".into()),
        };
        let mut fx = Fx::new(names, deps);
        let is_partial = kind != RuleKind::Complete;
        let constant_for = |out: &Option<Ref<Ast>>| {
            key.as_ref().is_none_or(|k| is_simple_literal(k))
                && out.as_ref().is_none_or(|o| is_simple_literal(o))
        };
        let mut lowered = Vec::new();
        for (idx, b) in bodies.iter().enumerate() {
            let body_out = if idx == 0 {
                output.clone()
            } else {
                b.assign
                    .as_ref()
                    .map(|a| a.value.clone())
                    .or_else(|| if is_partial { output.clone() } else { None })
            };
            let outs: Vec<&Ref<Ast>> = key.iter().chain(body_out.iter()).collect();
            let (query, mut outs) = fx.query(&b.query, &outs)?;
            let out_e = body_out.as_ref().and_then(|_| outs.pop());
            let key_e = key.as_ref().and_then(|_| outs.pop());
            lowered.push((
                Body {
                    query,
                    output: out_e,
                    constant: constant_for(&body_out),
                    is_else: b.is_else,
                },
                key_e,
            ));
        }
        let (bare_output, bare_key) = if bodies.is_empty() {
            fx.scopes.push(BTreeMap::new());
            let mut loops = Vec::new();
            let k = key.as_ref().map(|k| fx.expr(k, &mut loops)).transpose()?;
            let o = output
                .as_ref()
                .map(|o| fx.expr(o, &mut loops))
                .transpose()?;
            fx.scopes.pop();
            if !loops.is_empty() {
                return Err("loop in a rule head".into());
            }
            (o, k)
        } else {
            (None, None)
        };
        // The key is lowered per body; bodies share one frame, so any body's key will do for
        // body-less definitions and each body keeps its own.
        let mut bodies_out = Vec::new();
        let mut key_e = bare_key;
        for (b, k) in lowered {
            if key_e.is_none() {
                key_e = k;
            }
            bodies_out.push(b);
        }
        if key.is_some() && bodies.len() > 1 {
            return Err("several bodies with a key".into());
        }
        out.push(RuleDef {
            key: key_e,
            bodies: bodies_out,
            bare_constant: constant_for(&output),
            bare_output: if bodies.is_empty() {
                Some(bare_output.unwrap_or(E::Const(Value::Bool(true))))
            } else {
                None
            },
            frame: fx.next,
        });
    }
    Ok(RuleSet {
        name: Value::from(name),
        kind,
        defs: out,
        default,
    })
}

fn lower_func_def(
    names: &Names,
    def: &Ref<Rule>,
    deps: &mut BTreeSet<Dep>,
) -> Result<FuncDef, Refusal> {
    let Rule::Spec {
        head: RuleHead::Func { args, assign, .. },
        bodies,
        ..
    } = def.as_ref()
    else {
        return Err("function".into());
    };
    let mut fx = Fx::new(names, deps);
    let mut scope = BTreeMap::new();
    let mut params = Vec::new();
    for a in args {
        let Ast::Var { span, .. } = a.as_ref() else {
            return Err("function parameter pattern".into());
        };
        let n = span.text();
        if matches!(n, "_" | "input" | "data") || names.globals.contains(n) || scope.contains_key(n)
        {
            return Err("function parameter name".into());
        }
        scope.insert(n.to_owned(), fx.next);
        params.push(fx.next);
        fx.next += 1;
    }
    fx.scopes.push(scope);
    let output = assign.as_ref().map(|a| a.value.clone());
    let mut out = Vec::new();
    if bodies.is_empty() {
        // regorus evaluates the head's output at once, as an empty body would.
        let outs: Vec<&Ref<Ast>> = output.iter().collect();
        fx.scopes.push(BTreeMap::new());
        let r = fx.query_in_scope(&[], &[], &outs);
        fx.scopes.pop();
        let (query, mut outs) = r?;
        out.push(Body {
            query,
            output: outs.pop(),
            constant: false,
            is_else: false,
        });
    }
    for (idx, b) in bodies.iter().enumerate() {
        let body_out = if idx == 0 {
            output.clone()
        } else {
            b.assign.as_ref().map(|a| a.value.clone())
        };
        let outs: Vec<&Ref<Ast>> = body_out.iter().collect();
        let (query, mut outs) = fx.query(&b.query, &outs)?;
        out.push(Body {
            query,
            output: outs.pop(),
            constant: false,
            is_else: b.is_else,
        });
    }
    Ok(FuncDef {
        params,
        bodies: out,
        head_output: output.is_some(),
        frame: fx.next,
    })
}
