//! From regorus's parsed policy to the compiled form, refusing what is not on the whitelist.
//!
//! Every rule and function is lowered on its own; one that uses a construct this module does
//! not implement with the interpreter's exact semantics is refused, and an entry point is
//! compiled only when nothing it can reach was refused (and nothing it reaches is recursive).

use std::collections::{BTreeMap, BTreeSet};

use regorus::Value;
use regorus::unstable::{
    ArithOp, AssignOp, BUILTINS, Expr as Ast, Literal, LiteralStmt, Module, Query as AstQuery, Ref,
    Rule, RuleHead, must_cache, numbers,
};

use super::depth;
use super::ir::*;
use super::schedule::{Refusal, schedule_module};

/// A dependency of a definition: a rule (`false`) or a function (`true`) by index.
type Dep = (bool, usize);

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

struct Names {
    rules: BTreeMap<String, usize>,
    funcs: BTreeMap<String, usize>,
    /// Arity of every definition of each function.
    arities: BTreeMap<usize, BTreeSet<usize>>,
    globals: BTreeSet<String>,
    data_roots: BTreeSet<String>,
    orders: BTreeMap<u32, Vec<u16>>,
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

fn root_name(e: &Ast) -> String {
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

/// Lowering state for one definition (one frame).
struct Fx<'a> {
    names: &'a Names,
    deps: &'a mut BTreeSet<Dep>,
    scopes: Vec<BTreeMap<String, Slot>>,
    /// Declared by `some x` and not bound yet.
    unbound: BTreeSet<Slot>,
    /// `every` variables: bound at run time, but regorus's loop hoisting does not count them as
    /// bound, so `x[v]` is hoisted as a loop (that checks `v` at run time) until a binding
    /// plan (a hoisted index, a call's last argument) binds `v` for the rest of the query.
    hoist_unbound: BTreeSet<Slot>,
    next: Slot,
}

impl<'a> Fx<'a> {
    fn new(names: &'a Names, deps: &'a mut BTreeSet<Dep>) -> Self {
        Self {
            names,
            deps,
            scopes: Vec::new(),
            unbound: BTreeSet::new(),
            hoist_unbound: BTreeSet::new(),
            next: 0,
        }
    }

    fn local(&self, name: &str) -> Option<Slot> {
        self.scopes.iter().rev().find_map(|s| s.get(name).copied())
    }

    fn new_slot(&mut self, name: Option<&str>) -> Slot {
        let slot = self.next;
        self.next += 1;
        if let (Some(n), Some(scope)) = (name, self.scopes.last_mut()) {
            scope.insert(n.to_owned(), slot);
        }
        slot
    }

    /// A name that may be newly bound here: not special, not a rule, not in scope.
    fn fresh(&self, name: &str) -> Result<(), Refusal> {
        if matches!(name, "_" | "input" | "data")
            || self.names.globals.contains(name)
            || self.local(name).is_some()
        {
            return Err(format!("cannot bind {name}"));
        }
        Ok(())
    }

    /// The slot `name` binds in a unification, when it is an unbound variable.
    fn unbound_var(&self, e: &Ast) -> Option<Option<Slot>> {
        let Ast::Var { span, .. } = e else {
            return None;
        };
        let n = span.text();
        if matches!(n, "_" | "input" | "data") || self.names.globals.contains(n) {
            return None;
        }
        match self.local(n) {
            None => Some(None),
            Some(slot) if self.unbound.contains(&slot) => Some(Some(slot)),
            Some(_) => None,
        }
    }

    /// Whether `e` has an unbound variable where a unification would bind it.
    fn has_pattern_var(&self, e: &Ast) -> bool {
        match e {
            Ast::Var { span, .. } => span.text() == "_" || self.unbound_var(e).is_some(),
            Ast::Array { items, .. } => items.iter().any(|i| self.has_pattern_var(i)),
            Ast::Object { fields, .. } => fields
                .iter()
                .any(|(_, k, v)| self.has_pattern_var(k) || self.has_pattern_var(v)),
            _ => false,
        }
    }

    /// Whether `e` names an `every` variable the hoister counts as unbound, at a place a
    /// binding plan would bind it (the expression itself, or inside array/object literals).
    fn mentions_hoist_unbound(&self, e: &Ast) -> bool {
        match e {
            Ast::Var { span, .. } => self
                .local(span.text())
                .is_some_and(|s| self.hoist_unbound.contains(&s)),
            Ast::Array { items, .. } | Ast::Set { items, .. } => {
                items.iter().any(|i| self.mentions_hoist_unbound(i))
            }
            Ast::Object { fields, .. } => fields
                .iter()
                .any(|(_, k, v)| self.mentions_hoist_unbound(k) || self.mentions_hoist_unbound(v)),
            _ => false,
        }
    }

    fn query(
        &mut self,
        q: &Ref<AstQuery>,
        outputs: &[&Ref<Ast>],
    ) -> Result<(Query, Vec<E>), Refusal> {
        let order = self
            .names
            .orders
            .get(&q.qidx)
            .ok_or("query not scheduled")?
            .clone();
        if order.len() != q.stmts.len() {
            return Err("schedule".into());
        }
        self.scopes.push(BTreeMap::new());
        // regorus's hoister works on a copy of its context per query: what a query binds is
        // not bound after it.
        let hoist_unbound = self.hoist_unbound.clone();
        let r = self.query_in_scope(&q.stmts, &order, outputs);
        self.hoist_unbound = hoist_unbound;
        self.scopes.pop();
        r
    }

    fn query_in_scope(
        &mut self,
        stmts_in: &[LiteralStmt],
        order: &[u16],
        outputs: &[&Ref<Ast>],
    ) -> Result<(Query, Vec<E>), Refusal> {
        let mut stmts = Vec::new();
        let mut seen_loop = false;
        for &i in order {
            let stmt = stmts_in.get(usize::from(i)).ok_or("schedule index")?;
            let s = self.stmt(stmt, seen_loop)?;
            seen_loop |= !s.loops.is_empty() || matches!(s.lit, Lit::SomeIn { .. });
            stmts.push(s);
        }
        let mut loops = Vec::new();
        let outs = outputs
            .iter()
            .map(|o| self.expr(o, &mut loops))
            .collect::<Result<Vec<_>, _>>()?;
        if !loops.is_empty() {
            return Err("loop in an output".into());
        }
        Ok((Query { stmts }, outs))
    }

    fn bind_name(&mut self, e: &Ast) -> Result<Option<Slot>, Refusal> {
        let Ast::Var { span, .. } = e else {
            return Err("pattern".into());
        };
        if span.text() == "_" {
            return Ok(None);
        }
        self.fresh(span.text())?;
        Ok(Some(self.new_slot(Some(span.text()))))
    }

    fn stmt(&mut self, stmt: &LiteralStmt, seen_loop: bool) -> Result<Stmt, Refusal> {
        if !stmt.with_mods.is_empty() {
            return Err("`with`".into());
        }
        let mut loops = Vec::new();
        let lit = match &stmt.literal {
            Literal::Expr { expr, .. } => match expr.as_ref() {
                Ast::AssignExpr { op, lhs, rhs, .. } => {
                    Lit::Expr(E::Assign(Box::new(self.assign(op, lhs, rhs, &mut loops)?)))
                }
                _ => Lit::Expr(self.expr(expr, &mut loops)?),
            },
            Literal::NotExpr { expr, .. } => Lit::Not(self.expr(expr, &mut loops)?),
            Literal::SomeVars { vars, .. } => {
                if seen_loop {
                    return Err("`some x` after a loop".into());
                }
                let mut slots = Vec::new();
                for v in vars {
                    self.fresh(v.text())?;
                    let slot = self.new_slot(Some(v.text()));
                    self.unbound.insert(slot);
                    slots.push(slot);
                }
                Lit::SomeVars(slots)
            }
            Literal::SomeIn {
                key,
                value,
                collection,
                ..
            } => {
                // regorus binds the pattern before it looks at the collection.
                if key
                    .iter()
                    .chain(std::iter::once(value))
                    .any(|p| names(collection, p.span().text()))
                {
                    return Err("`some` variable used in its collection".into());
                }
                let collection = self.expr(collection, &mut loops)?;
                let key = key.as_ref().map(|k| self.bind_name(k)).transpose()?;
                let value = self.bind_name(value)?;
                Lit::SomeIn {
                    key,
                    value,
                    collection,
                }
            }
            Literal::Every {
                key,
                value,
                domain,
                query,
                ..
            } => {
                let domain = self.expr(domain, &mut loops)?;
                let mut scope = BTreeMap::new();
                let key = key.as_ref().map(|k| {
                    let slot = self.next;
                    self.next += 1;
                    scope.insert(k.text().to_owned(), slot);
                    slot
                });
                let vslot = self.next;
                self.next += 1;
                scope.insert(value.text().to_owned(), vslot);
                let every_vars: Vec<Slot> = scope.values().copied().collect();
                let saved = self.hoist_unbound.clone();
                self.hoist_unbound.extend(every_vars);
                self.scopes.push(scope);
                let r = self.query(query, &[]);
                self.hoist_unbound = saved;
                self.scopes.pop();
                Lit::Every {
                    key,
                    value: vslot,
                    domain,
                    query: r?.0,
                }
            }
        };
        Ok(Stmt { loops, lit })
    }

    fn assign(
        &mut self,
        op: &AssignOp,
        lhs: &Ref<Ast>,
        rhs: &Ref<Ast>,
        loops: &mut Vec<Loop>,
    ) -> Result<Plan, Refusal> {
        if *op == AssignOp::ColEq {
            if self.has_pattern_var(rhs)
                || (matches!(lhs.as_ref(), Ast::Array { .. })
                    && matches!(rhs.as_ref(), Ast::Array { .. }))
            {
                return Err("`:=` pattern on the right".into());
            }
            // regorus binds the left side before it looks at the right one.
            if let Ast::Var { span, .. } = lhs.as_ref()
                && names(rhs, span.text())
            {
                return Err("assigned variable used on the right".into());
            }
            if let Ast::Array { items, .. } = lhs.as_ref()
                && items.iter().any(|i| names(rhs, i.span().text()))
            {
                return Err("assigned variable used on the right".into());
            }
            let value = self.expr(rhs, loops)?;
            return match lhs.as_ref() {
                Ast::Var { span, .. } if span.text() != "_" => {
                    self.fresh(span.text())?;
                    Ok(Plan::Bind {
                        value,
                        slot: self.new_slot(Some(span.text())),
                    })
                }
                Ast::Array { items, .. } => {
                    let mut slots = Vec::new();
                    for i in items {
                        slots.push(self.bind_name(i)?);
                    }
                    Ok(Plan::Array { value, slots })
                }
                _ => Err("`:=` pattern".into()),
            };
        }
        for side in [lhs, rhs] {
            if self.mentions_hoist_unbound(side) {
                return Err("unification with an `every` variable".into());
            }
        }
        let is_wild = |e: &Ast| matches!(e, Ast::Var { span, .. } if span.text() == "_");
        if is_wild(lhs) && !self.has_pattern_var(rhs) {
            return Ok(Plan::Wildcard(self.expr(rhs, loops)?));
        }
        if is_wild(rhs) && !self.has_pattern_var(lhs) {
            return Ok(Plan::Wildcard(self.expr(lhs, loops)?));
        }
        for (var, other) in [(lhs, rhs), (rhs, lhs)] {
            if let Some(existing) = self.unbound_var(var)
                && !self.has_pattern_var(other)
            {
                if names(other, var.span().text()) {
                    return Err("unified variable used on the other side".into());
                }
                let value = self.expr(other, loops)?;
                let slot = match existing {
                    Some(slot) => {
                        self.unbound.remove(&slot);
                        slot
                    }
                    None => {
                        let Ast::Var { span, .. } = var.as_ref() else {
                            return Err("pattern".into());
                        };
                        self.new_slot(Some(span.text()))
                    }
                };
                return Ok(Plan::Bind { value, slot });
            }
        }
        if self.has_pattern_var(lhs) || self.has_pattern_var(rhs) {
            return Err("unification pattern".into());
        }
        let l = self.expr(lhs, loops)?;
        let r = self.expr(rhs, loops)?;
        Ok(Plan::Check { lhs: l, rhs: r })
    }

    fn expr(&mut self, e: &Ref<Ast>, loops: &mut Vec<Loop>) -> Result<E, Refusal> {
        Ok(match e.as_ref() {
            Ast::String { value, .. }
            | Ast::RawString { value, .. }
            | Ast::Number { value, .. }
            | Ast::Bool { value, .. }
            | Ast::Null { value, .. } => E::Const(value.clone()),
            Ast::Var { .. } | Ast::RefDot { .. } | Ast::RefBrack { .. } => {
                self.reference(e, loops)?
            }
            Ast::Array { items, .. } => E::Array(self.exprs(items, loops)?),
            Ast::Set { items, .. } => E::Set(self.exprs(items, loops)?),
            Ast::Object { fields, .. } => {
                let mut out = Vec::new();
                for (_, k, v) in fields {
                    let k = self.expr(k, loops)?;
                    out.push((k, self.expr(v, loops)?));
                }
                E::Object(out)
            }
            Ast::ArrayCompr { term, query, .. } => {
                self.compr(ComprKind::Array, None, term, query)?
            }
            Ast::SetCompr { term, query, .. } => self.compr(ComprKind::Set, None, term, query)?,
            Ast::ObjectCompr {
                key, value, query, ..
            } => self.compr(ComprKind::Object, Some(key), value, query)?,
            Ast::Call {
                span, fcn, params, ..
            } => self.call(span, fcn, params, loops)?,
            Ast::UnaryExpr { span, expr, .. } => match expr.as_ref() {
                Ast::Number { value, .. } if !expr.span().text().starts_with('-') => {
                    let v = numbers::arithmetic_operation(
                        span,
                        &ArithOp::Sub,
                        e,
                        expr,
                        Value::from(0),
                        value.clone(),
                        false,
                    )
                    .map_err(|_| "unary minus")?;
                    E::Const(v)
                }
                _ => return Err("unary minus".into()),
            },
            Ast::BoolExpr { op, lhs, rhs, .. } => {
                let l = self.expr(lhs, loops)?;
                E::Compare {
                    op: op.clone(),
                    lhs: Box::new(l),
                    rhs: Box::new(self.expr(rhs, loops)?),
                }
            }
            Ast::ArithExpr {
                span, op, lhs, rhs, ..
            } => {
                let l = self.expr(lhs, loops)?;
                let r = self.expr(rhs, loops)?;
                E::Arith(Box::new(Arith {
                    op: op.clone(),
                    span: span.clone(),
                    lhs_ast: lhs.clone(),
                    rhs_ast: rhs.clone(),
                    lhs: l,
                    rhs: r,
                }))
            }
            Ast::BinExpr { op, lhs, rhs, .. } => {
                let l = self.expr(lhs, loops)?;
                let r = self.expr(rhs, loops)?;
                E::SetOp(Box::new(SetOp {
                    op: op.clone(),
                    lhs_ast: lhs.clone(),
                    rhs_ast: rhs.clone(),
                    lhs: l,
                    rhs: r,
                }))
            }
            Ast::Membership {
                key,
                value,
                collection,
                ..
            } => {
                let key = key
                    .as_ref()
                    .map(|k| self.expr(k, loops).map(Box::new))
                    .transpose()?;
                let value = Box::new(self.expr(value, loops)?);
                E::Member {
                    key,
                    value,
                    collection: Box::new(self.expr(collection, loops)?),
                }
            }
            Ast::AssignExpr { .. } => return Err("nested assignment".into()),
            #[allow(unreachable_patterns)]
            _ => return Err("expression".into()),
        })
    }

    fn exprs(&mut self, items: &[Ref<Ast>], loops: &mut Vec<Loop>) -> Result<Vec<E>, Refusal> {
        items.iter().map(|i| self.expr(i, loops)).collect()
    }

    fn compr(
        &mut self,
        kind: ComprKind,
        key: Option<&Ref<Ast>>,
        term: &Ref<Ast>,
        query: &Ref<AstQuery>,
    ) -> Result<E, Refusal> {
        let outs: Vec<&Ref<Ast>> = key.into_iter().chain(std::iter::once(term)).collect();
        let (query, mut outs) = self.query(query, &outs)?;
        let term = outs.pop().ok_or("comprehension term")?;
        let key = outs.pop();
        Ok(E::Compr(Box::new(Compr {
            kind,
            key,
            term,
            query,
        })))
    }

    fn call(
        &mut self,
        span: &regorus::unstable::Span,
        fcn: &Ref<Ast>,
        params: &[Ref<Ast>],
        loops: &mut Vec<Loop>,
    ) -> Result<E, Refusal> {
        let path = call_path(fcn).ok_or("call target")?;
        let args = self.exprs(params, loops)?;
        // regorus plans a binding of the last argument (used only for an output argument) and
        // counts the variables it would bind as bound from here on.
        if let Some(last) = params.last() {
            match last.as_ref() {
                Ast::Var { span, .. } => {
                    if let Some(slot) = self.local(span.text()) {
                        self.hoist_unbound.remove(&slot);
                    }
                }
                other if self.mentions_hoist_unbound(other) => {
                    return Err("`every` variable in a last argument pattern".into());
                }
                _ => {}
            }
        }
        if let Some(&id) = self.names.funcs.get(&path) {
            let arities = self.names.arities.get(&id).ok_or("function arity")?;
            if arities.len() != 1 || !arities.contains(&params.len()) {
                return Err(format!("call of {path} with an output argument"));
            }
            self.deps.insert((true, id));
            return Ok(E::Call { func: id, args });
        }
        if self.names.globals.contains(&path) {
            return Err(format!("call of rule {path}"));
        }
        if path == "print" {
            if params.len() > 100 {
                return Err("print arguments".into());
            }
            return Ok(E::Print {
                args,
                line: span.line,
            });
        }
        let builtin = BUILTINS
            .get(path.as_str())
            .ok_or_else(|| format!("unknown function {path}"))?;
        if must_cache(&path).is_some() || path == "trace" || usize::from(builtin.1) != params.len()
        {
            return Err(format!("builtin {path}"));
        }
        Ok(E::Builtin(Box::new(Builtin {
            f: *builtin,
            span: span.clone(),
            params: params.to_vec(),
            args,
        })))
    }

    fn var_head(&mut self, name: &str) -> Result<Head, Refusal> {
        match name {
            "input" => return Ok(Head::Input),
            "data" => return Ok(Head::Data),
            "_" => return Err("`_` as a value".into()),
            _ => {}
        }
        if let Some(slot) = self.local(name) {
            if self.unbound.contains(&slot) {
                return Err(format!("unbound {name} as a value"));
            }
            return Ok(Head::Local(slot));
        }
        if let Some(&id) = self.names.rules.get(name) {
            self.deps.insert((false, id));
            return Ok(Head::Rule(id));
        }
        Err(format!("variable {name}"))
    }

    fn reference(&mut self, e: &Ref<Ast>, loops: &mut Vec<Loop>) -> Result<E, Refusal> {
        let mut fields = Vec::new();
        let mut cur = e;
        let head = loop {
            match cur.as_ref() {
                Ast::Var { span, .. } => break self.var_head(span.text())?,
                Ast::RefDot { refr, field, .. } => {
                    fields.push(field.1.clone());
                    cur = refr;
                }
                Ast::RefBrack { refr, index, .. } => {
                    if let Ast::String { value, .. } = index.as_ref() {
                        fields.push(value.clone());
                        cur = refr;
                        continue;
                    }
                    let r = self.expr(refr, loops)?;
                    let every_var = match index.as_ref() {
                        Ast::Var { span, .. } => self
                            .local(span.text())
                            .filter(|s| self.hoist_unbound.contains(s)),
                        _ => None,
                    };
                    let hoisted = match index.as_ref() {
                        Ast::Var { span, .. } if span.text() == "_" => Some(None),
                        Ast::Var { .. } if every_var.is_some() => Some(every_var),
                        Ast::Var { .. } => self.unbound_var(index),
                        other => {
                            if self.has_pattern_var(other) {
                                return Err("pattern in an index".into());
                            }
                            None
                        }
                    };
                    let data_root = root_name(refr) == "data";
                    let Some(existing) = hoisted else {
                        let index = self.expr(index, loops)?;
                        break Head::Index {
                            loop_slot: None,
                            index,
                            refr: r,
                            data_root,
                        };
                    };
                    let index_slot = match (existing, index.as_ref()) {
                        (Some(slot), _) => {
                            self.unbound.remove(&slot);
                            self.hoist_unbound.remove(&slot);
                            Some(slot)
                        }
                        (None, Ast::Var { span, .. }) if span.text() != "_" => {
                            Some(self.new_slot(Some(span.text())))
                        }
                        _ => None,
                    };
                    let loop_slot = self.new_slot(None);
                    loops.push(Loop {
                        collection: r.clone(),
                        slot: loop_slot,
                        index: index_slot,
                    });
                    break Head::Index {
                        loop_slot: Some(loop_slot),
                        index: index_slot.map_or(E::Const(Value::Undefined), |s| E::Ref {
                            head: Box::new(Head::Local(s)),
                            fields: Vec::new(),
                        }),
                        refr: r,
                        data_root,
                    };
                }
                _ => break Head::Other(self.expr(cur, loops)?),
            }
        };
        fields.reverse();
        if matches!(head, Head::Data) {
            let first = fields.first().and_then(|f| f.as_string().ok());
            if !first.is_some_and(|f| self.names.data_roots.contains(f.as_ref())) {
                return Err("a data reference".into());
            }
        }
        Ok(E::Ref {
            head: Box::new(head),
            fields,
        })
    }
}

/// Whether a variable `name` occurs anywhere in `e` (comprehension bodies included).
fn names(e: &Ast, name: &str) -> bool {
    let any = |items: &[Ref<Ast>]| items.iter().any(|i| names(i, name));
    match e {
        Ast::Var { span, .. } => span.text() == name,
        Ast::Array { items, .. } | Ast::Set { items, .. } => any(items),
        Ast::Object { fields, .. } => fields
            .iter()
            .any(|(_, k, v)| names(k, name) || names(v, name)),
        Ast::ArrayCompr { term, query, .. } | Ast::SetCompr { term, query, .. } => {
            names(term, name) || query_names(query, name)
        }
        Ast::ObjectCompr {
            key, value, query, ..
        } => names(key, name) || names(value, name) || query_names(query, name),
        Ast::Call { fcn, params, .. } => names(fcn, name) || any(params),
        Ast::UnaryExpr { expr, .. } => names(expr, name),
        Ast::RefDot { refr, .. } => names(refr, name),
        Ast::RefBrack { refr, index, .. } => names(refr, name) || names(index, name),
        Ast::BinExpr { lhs, rhs, .. }
        | Ast::BoolExpr { lhs, rhs, .. }
        | Ast::ArithExpr { lhs, rhs, .. }
        | Ast::AssignExpr { lhs, rhs, .. } => names(lhs, name) || names(rhs, name),
        Ast::Membership {
            key,
            value,
            collection,
            ..
        } => {
            key.as_ref().is_some_and(|k| names(k, name))
                || names(value, name)
                || names(collection, name)
        }
        _ => false,
    }
}

fn query_names(q: &AstQuery, name: &str) -> bool {
    q.stmts.iter().any(|s| match &s.literal {
        Literal::SomeVars { vars, .. } => vars.iter().any(|v| v.text() == name),
        Literal::SomeIn {
            key,
            value,
            collection,
            ..
        } => {
            key.as_ref().is_some_and(|k| names(k, name))
                || names(value, name)
                || names(collection, name)
        }
        Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => names(expr, name),
        Literal::Every {
            key,
            value,
            domain,
            query,
            ..
        } => {
            key.as_ref().is_some_and(|k| k.text() == name)
                || value.text() == name
                || names(domain, name)
                || query_names(query, name)
        }
    })
}

/// `name` or `a.b.c` of a call target.
fn call_path(e: &Ast) -> Option<String> {
    match e {
        Ast::Var { span, .. } => Some(span.text().to_owned()),
        Ast::RefDot { refr, field, .. } => Some(format!("{}.{}", call_path(refr)?, field.0.text())),
        _ => None,
    }
}
