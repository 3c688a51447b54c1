//! The order in which regorus's interpreter runs the statements of each query.
//!
//! regorus does not run a query's statements in text order: at analysis it orders them so that
//! each variable is defined before it is used, visiting variables in name order and running
//! statements that define nothing as early as they can. That order is visible (what is printed,
//! which failing statement stops a body first), so the compiled form must use the same one.
//! This module recomputes it from the parsed policy, following the facts of regorus 0.14's
//! analysis: which variables a statement defines and which it uses, and the same ordering rule.
//! Only the constructs the lowering accepts are handled; anything else is refused (`Err`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use regorus::unstable::{AssignOp, Expr, Literal, Query, Ref, Rule, RuleHead};

/// Why a policy is not compiled (the interpreter decides it).
pub(super) type Refusal = String;

/// One statement's definitions: `(variable or "", variables it uses)`.
type Definitions = Vec<(String, Vec<String>)>;

#[derive(Clone, Default, Debug)]
struct Scope {
    locals: BTreeMap<String, u32>,
    unscoped: BTreeSet<String>,
    inputs: BTreeSet<String>,
}

/// The statement order of every query of a module, by query index.
pub(super) fn schedule_module(
    rules: &[Ref<Rule>],
    globals: &BTreeSet<String>,
) -> Result<BTreeMap<u32, Vec<u16>>, Refusal> {
    let mut a = Analyzer {
        scopes: vec![Scope {
            unscoped: globals.clone(),
            ..Scope::default()
        }],
        orders: BTreeMap::new(),
    };
    let package = a.scopes.clone();
    for rule in rules {
        // A rule this module cannot analyse (`with`) gets no order for the query that has it,
        // so the lowering refuses that rule; the other rules' orders do not depend on it.
        if a.rule(rule).is_err() {
            a.scopes.clone_from(&package);
        }
    }
    Ok(a.orders)
}

struct Analyzer {
    scopes: Vec<Scope>,
    orders: BTreeMap<u32, Vec<u16>>,
}

/// regorus's traversal: comprehensions are not entered, call targets are not visited.
fn traverse(e: &Ref<Expr>, f: &mut dyn FnMut(&Ref<Expr>) -> bool) {
    if !f(e) {
        return;
    }
    match e.as_ref() {
        Expr::Array { items, .. } | Expr::Set { items, .. } => {
            items.iter().for_each(|i| traverse(i, f));
        }
        Expr::Object { fields, .. } => {
            for (_, k, v) in fields {
                traverse(k, f);
                traverse(v, f);
            }
        }
        Expr::Call { params, .. } => params.iter().for_each(|p| traverse(p, f)),
        Expr::UnaryExpr { expr, .. } => traverse(expr, f),
        Expr::RefDot { refr, .. } => traverse(refr, f),
        Expr::RefBrack { refr, index, .. } => {
            traverse(refr, f);
            traverse(index, f);
        }
        Expr::BinExpr { lhs, rhs, .. }
        | Expr::BoolExpr { lhs, rhs, .. }
        | Expr::ArithExpr { lhs, rhs, .. }
        | Expr::AssignExpr { lhs, rhs, .. } => {
            traverse(lhs, f);
            traverse(rhs, f);
        }
        Expr::Membership {
            key,
            value,
            collection,
            ..
        } => {
            if let Some(k) = key {
                traverse(k, f);
            }
            traverse(value, f);
            traverse(collection, f);
        }
        _ => {}
    }
}

fn var_name(e: &Expr) -> Option<(&str, u32)> {
    match e {
        Expr::Var { span, .. } => Some((span.text(), span.line)),
        _ => None,
    }
}

fn var_exists(name: &str, line: u32, parents: &[Scope]) -> bool {
    parents
        .iter()
        .rev()
        .any(|s| s.unscoped.contains(name) || s.locals.get(name).is_some_and(|l| *l <= line))
}

fn gather_assigned(e: &Ref<Expr>, can_shadow: bool, parents: &[Scope], scope: &mut Scope) {
    traverse(e, &mut |n| match n.as_ref() {
        Expr::Var { span, .. } => {
            let t = span.text();
            if matches!(t, "_" | "input" | "data") {
            } else if can_shadow {
                scope.locals.insert(t.to_owned(), span.line);
            } else if var_exists(t, span.line, parents) {
                scope.inputs.insert(t.to_owned());
            } else {
                scope.unscoped.insert(t.to_owned());
            }
            false
        }
        Expr::Array { .. } | Expr::Object { .. } => true,
        _ => false,
    });
}

fn gather_inputs(e: &Ref<Expr>, parents: &[Scope], scope: &mut Scope) {
    traverse(e, &mut |n| {
        if let Some((t, line)) = var_name(n) {
            if t != "input" && !scope.unscoped.contains(t) && var_exists(t, line, parents) {
                scope.inputs.insert(t.to_owned());
            }
            return false;
        }
        true
    });
}

fn gather_loop_vars(e: &Ref<Expr>, parents: &[Scope], scope: &mut Scope) {
    traverse(e, &mut |n| {
        if let Expr::RefBrack { index, .. } = n.as_ref() {
            gather_assigned(index, false, parents, scope);
        }
        true
    });
}

fn gather_vars(e: &Ref<Expr>, can_shadow: bool, parents: &[Scope], scope: &mut Scope) {
    if let Expr::AssignExpr { op, lhs, rhs, .. } = e.as_ref() {
        gather_assigned(lhs, *op == AssignOp::ColEq, parents, scope);
        gather_assigned(rhs, false, parents, scope);
    } else {
        gather_assigned(e, can_shadow, parents, scope);
    }
    gather_inputs(e, parents, scope);
    gather_loop_vars(e, parents, scope);
}

fn is_scoped(scope: &Scope, name: &str) -> bool {
    scope.locals.contains_key(name) || scope.unscoped.contains(name)
}

/// The variables `e` uses, the comprehensions in it, and index-variable definitions.
fn used_vars(
    e: &Ref<Expr>,
    scope: &Scope,
    defs: &mut Definitions,
) -> Result<(Vec<String>, Vec<Ref<Expr>>), Refusal> {
    let mut used = Vec::new();
    let mut comprs = Vec::new();
    let mut err = None;
    traverse(e, &mut |n| match n.as_ref() {
        Expr::Var { span, .. } => {
            let t = span.text();
            if !matches!(t, "_" | "input" | "data") {
                if is_scoped(scope, t) {
                    used.push(t.to_owned());
                } else if !scope.inputs.contains(t) {
                    err = Some(format!("unsafe variable {t}"));
                }
            }
            false
        }
        Expr::RefBrack { refr, index, .. } => {
            traverse(index, &mut |i| match i.as_ref() {
                Expr::Var { span, .. } => {
                    let t = span.text();
                    if is_scoped(scope, t) {
                        match used_vars(refr, scope, defs) {
                            Ok((rb_used, rb_comprs)) => {
                                defs.push((t.to_owned(), rb_used.clone()));
                                used.extend(rb_used);
                                used.push(t.to_owned());
                                comprs.extend(rb_comprs);
                            }
                            Err(e) => err = Some(e),
                        }
                    }
                    false
                }
                Expr::Array { .. } | Expr::Object { .. } => true,
                _ => false,
            });
            true
        }
        Expr::ArrayCompr { .. } | Expr::SetCompr { .. } | Expr::ObjectCompr { .. } => {
            comprs.push(n.clone());
            false
        }
        _ => true,
    });
    match err {
        Some(e) => Err(e),
        None => Ok((used, comprs)),
    }
}

fn assigned_vars(e: &Ref<Expr>, scope: &Scope) -> Vec<String> {
    let mut out = Vec::new();
    traverse(e, &mut |n| match n.as_ref() {
        Expr::Var { span, .. } => {
            if is_scoped(scope, span.text()) {
                out.push(span.text().to_owned());
            }
            false
        }
        Expr::Array { .. } | Expr::Object { .. } => true,
        _ => false,
    });
    out
}

impl Analyzer {
    fn rule(&mut self, r: &Ref<Rule>) -> Result<(), Refusal> {
        match r.as_ref() {
            Rule::Spec { head, bodies, .. } => {
                let mut arg_scope = Scope::default();
                let (key, value, is_partial) = match head {
                    RuleHead::Compr { assign, refr, .. } => (
                        None,
                        assign.as_ref().map(|a| a.value.clone()),
                        matches!(refr.as_ref(), Expr::RefBrack { .. }),
                    ),
                    RuleHead::Set { key, .. } => (key.clone(), None, true),
                    RuleHead::Func { args, assign, .. } => {
                        for a in args {
                            traverse(a, &mut |e| {
                                if let Some((t, _)) = var_name(e) {
                                    arg_scope.unscoped.insert(t.to_owned());
                                }
                                true
                            });
                        }
                        (None, assign.as_ref().map(|a| a.value.clone()), false)
                    }
                };
                self.scopes.push(arg_scope);
                for (idx, b) in bodies.iter().enumerate() {
                    let head_output = idx == 0 || (is_partial && b.assign.is_none());
                    let (bk, bv) = if head_output {
                        (key.clone(), value.clone())
                    } else {
                        (None, b.assign.as_ref().map(|a| a.value.clone()))
                    };
                    self.query(bk.as_ref(), bv.as_ref(), &b.query, Scope::default())?;
                }
                if bodies.is_empty() {
                    let mut scope = Scope::default();
                    if let Some(k) = &key {
                        self.value_expr(k, &mut scope)?;
                    }
                    if let Some(v) = &value {
                        self.value_expr(v, &mut scope)?;
                    }
                }
                self.scopes.pop();
                Ok(())
            }
            Rule::Default { value, .. } => self.value_expr(value, &mut Scope::default()),
        }
    }

    fn compr_queries(e: &Ref<Expr>) -> Vec<Ref<Expr>> {
        let mut out = Vec::new();
        traverse(e, &mut |n| match n.as_ref() {
            Expr::ArrayCompr { .. } | Expr::SetCompr { .. } | Expr::ObjectCompr { .. } => {
                out.push(n.clone());
                false
            }
            _ => true,
        });
        out
    }

    /// Analyses a comprehension's query; its scope afterwards.
    fn compr(&mut self, c: &Ref<Expr>) -> Result<Scope, Refusal> {
        match c.as_ref() {
            Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                self.query(None, Some(term), query, Scope::default())
            }
            Expr::ObjectCompr {
                key, value, query, ..
            } => self.query(Some(key), Some(value), query, Scope::default()),
            _ => Err("not a comprehension".into()),
        }
    }

    fn value_expr(&mut self, e: &Ref<Expr>, scope: &mut Scope) -> Result<(), Refusal> {
        for c in Self::compr_queries(e) {
            let cs = self.compr(&c)?;
            propagate(&cs, scope);
        }
        Ok(())
    }

    fn output_expr(&mut self, e: &Ref<Expr>, scope: &mut Scope) -> Result<(), Refusal> {
        let mut out = scope.clone();
        let locals: Vec<String> = out.locals.keys().cloned().collect();
        out.unscoped.extend(locals);
        self.scopes.push(out.clone());
        let r = self.value_expr(e, &mut out);
        self.scopes.pop();
        propagate(&out, scope);
        r
    }

    fn process_comprs(
        &mut self,
        comprs: &[Ref<Expr>],
        scope: &mut Scope,
        used: &mut Vec<String>,
    ) -> Result<(), Refusal> {
        self.scopes.push(scope.clone());
        let mut result = Ok(());
        for c in comprs {
            match self.compr(c) {
                Ok(cs) => {
                    for iv in &cs.inputs {
                        if is_scoped(scope, iv) {
                            used.push(iv.clone());
                        } else {
                            scope.inputs.insert(iv.clone());
                        }
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.scopes.pop();
        result
    }

    fn gather_locals(
        &self,
        key: Option<&Ref<Expr>>,
        value: Option<&Ref<Expr>>,
        q: &Query,
        scope: &mut Scope,
    ) {
        let parents = &self.scopes[..];
        for stmt in &q.stmts {
            match &stmt.literal {
                Literal::SomeVars { vars, .. } => {
                    for v in vars {
                        scope.locals.insert(v.text().to_owned(), v.line);
                    }
                }
                Literal::SomeIn {
                    key,
                    value,
                    collection,
                    ..
                } => {
                    if let Some(k) = key {
                        gather_vars(k, true, parents, scope);
                    }
                    gather_vars(value, true, parents, scope);
                    gather_inputs(collection, parents, scope);
                    gather_loop_vars(collection, parents, scope);
                }
                Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => {
                    if let Expr::AssignExpr { .. } = expr.as_ref() {
                        gather_vars(expr, false, parents, scope);
                    } else {
                        gather_inputs(expr, parents, scope);
                        gather_loop_vars(expr, parents, scope);
                    }
                }
                Literal::Every { domain, .. } => {
                    gather_inputs(domain, parents, scope);
                    gather_loop_vars(domain, parents, scope);
                }
            }
        }
        if let Some(k) = key {
            gather_vars(k, false, parents, scope);
        }
        if let Some(v) = value {
            gather_vars(v, false, parents, scope);
        }
        let locals: Vec<String> = scope.locals.keys().cloned().collect();
        for v in locals {
            scope.inputs.remove(&v);
            scope.unscoped.remove(&v);
        }
    }

    fn assign(
        &mut self,
        lhs: &Ref<Expr>,
        rhs: &Ref<Expr>,
        scope: &mut Scope,
        defs: &mut Definitions,
    ) -> Result<(), Refusal> {
        if let (Expr::Array { items: l, .. }, Expr::Array { items: r, .. }) =
            (lhs.as_ref(), rhs.as_ref())
        {
            if l.len() != r.len() {
                return Err("array assignment of different lengths".into());
            }
            for (le, re) in l.iter().zip(r) {
                self.assign(le, re, scope, defs)?;
            }
            return Ok(());
        }
        for (from, to) in [(rhs, lhs), (lhs, rhs)] {
            let (mut used, comprs) = used_vars(from, scope, defs)?;
            self.process_comprs(&comprs, scope, &mut used)?;
            let assigned = assigned_vars(to, scope);
            for var in &assigned {
                defs.push((
                    var.clone(),
                    used.iter().filter(|v| *v != var).cloned().collect(),
                ));
            }
            if assigned.is_empty() {
                defs.push((String::new(), used));
            }
        }
        Ok(())
    }

    fn plain_expr(
        &mut self,
        e: &Ref<Expr>,
        scope: &mut Scope,
        defs: &mut Definitions,
    ) -> Result<(), Refusal> {
        if let Expr::AssignExpr { lhs, rhs, .. } = e.as_ref() {
            return self.assign(lhs, rhs, scope, defs);
        }
        let (mut used, comprs) = used_vars(e, scope, defs)?;
        self.process_comprs(&comprs, scope, &mut used)?;
        defs.push((String::new(), used));
        Ok(())
    }

    fn query(
        &mut self,
        key: Option<&Ref<Expr>>,
        value: Option<&Ref<Expr>>,
        q: &Ref<Query>,
        mut scope: Scope,
    ) -> Result<Scope, Refusal> {
        self.gather_locals(key, value, q, &mut scope);
        let mut infos: Vec<Definitions> = Vec::new();
        for stmt in &q.stmts {
            if !stmt.with_mods.is_empty() {
                return Err("`with`".into());
            }
            let mut defs = Definitions::new();
            match &stmt.literal {
                Literal::SomeVars { .. } => {}
                Literal::SomeIn {
                    key,
                    value,
                    collection,
                    ..
                } => {
                    let mut some_vars = Vec::new();
                    let mut non_vars = Vec::new();
                    for e in key.iter().chain(std::iter::once(value)) {
                        traverse(e, &mut |n| match n.as_ref() {
                            Expr::Var { span, .. } if span.text() == "input" => false,
                            Expr::Var { span, .. } if scope.locals.contains_key(span.text()) => {
                                some_vars.push(span.text().to_owned());
                                false
                            }
                            Expr::Array { .. } | Expr::Object { .. } => true,
                            _ => {
                                non_vars.push(n.clone());
                                false
                            }
                        });
                    }
                    let (mut col_used, comprs) = used_vars(collection, &scope, &mut defs)?;
                    self.process_comprs(&comprs, &mut scope, &mut col_used)?;
                    for v in &some_vars {
                        defs.push((v.clone(), col_used.clone()));
                    }
                    let mut used = Vec::new();
                    for e in non_vars {
                        let mut inner = Definitions::new();
                        let (uv, comprs) = used_vars(&e, &scope, &mut inner)?;
                        if !inner.is_empty() {
                            return Err("index variable in a `some` pattern".into());
                        }
                        used.extend(uv);
                        self.process_comprs(&comprs, &mut scope, &mut used)?;
                    }
                    defs.push((String::new(), used));
                }
                Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => {
                    self.plain_expr(expr, &mut scope, &mut defs)?;
                }
                Literal::Every {
                    key,
                    value,
                    domain,
                    query,
                    ..
                } => {
                    let (mut uv, comprs) = used_vars(domain, &scope, &mut defs)?;
                    self.process_comprs(&comprs, &mut scope, &mut uv)?;
                    defs.push((String::new(), uv));
                    self.scopes.push(scope.clone());
                    let mut every = Scope::default();
                    if let Some(k) = key {
                        every.locals.insert(k.text().to_owned(), k.line);
                    }
                    every.locals.insert(value.text().to_owned(), value.line);
                    self.scopes.push(every);
                    let r = self.query(None, None, query, Scope::default());
                    self.scopes.pop();
                    self.scopes.pop();
                    r?;
                }
            }
            if defs.is_empty() {
                defs.push((String::new(), Vec::new()));
            }
            infos.push(defs);
        }
        let order = order(&infos);
        if let Some(k) = key {
            self.output_expr(k, &mut scope)?;
        }
        if let Some(v) = value {
            self.output_expr(v, &mut scope)?;
        }
        self.orders.insert(q.qidx, order);
        Ok(scope)
    }
}

fn propagate(inner: &Scope, scope: &mut Scope) {
    for iv in &inner.inputs {
        if !is_scoped(scope, iv) {
            scope.inputs.insert(iv.clone());
        }
    }
}

/// regorus's ordering rule over the statements' definitions; text order when it cannot order
/// every statement.
fn order<'a>(infos: &'a [Definitions]) -> Vec<u16> {
    let n = infos.len();
    let mut defining: BTreeMap<&'a str, Vec<usize>> = BTreeMap::new();
    for (idx, defs) in infos.iter().enumerate() {
        for (var, _) in defs {
            defining.entry(var.as_str()).or_default().push(idx);
        }
    }
    let mut order: Vec<u16> = Vec::with_capacity(n);
    let mut defined: BTreeSet<&'a str> = BTreeSet::new();
    let mut scheduled = vec![false; n];

    let mut try_stmt = |idx: usize, defined: &mut BTreeSet<&'a str>, order: &mut Vec<u16>| {
        if scheduled[idx] {
            return None;
        }
        let defs = &infos[idx];
        let ok = if defs.len() == 1 {
            defs[0].1.iter().all(|u| defined.contains(u.as_str()))
        } else {
            let mut in_stmt: BTreeSet<&'a str> = BTreeSet::new();
            let mut queue: VecDeque<&'a (String, Vec<String>)> = defs.iter().collect();
            while !queue.is_empty() {
                let len = queue.len();
                for _ in 0..len {
                    let Some(d) = queue.pop_front() else { break };
                    if d.1
                        .iter()
                        .all(|u| defined.contains(u.as_str()) || in_stmt.contains(u.as_str()))
                    {
                        in_stmt.insert(d.0.as_str());
                    } else {
                        queue.push_back(d);
                    }
                }
                if len == queue.len() {
                    break;
                }
            }
            queue.is_empty()
        };
        if ok {
            order.push(idx as u16);
            scheduled[idx] = true;
            for (var, _) in defs {
                defined.insert(var.as_str());
            }
        }
        Some(ok)
    };

    let mut process = |var: &str, defined: &mut BTreeSet<&'a str>, order: &mut Vec<u16>| {
        let (mut any, mut again) = (false, false);
        if let Some(stmts) = defining.get(var) {
            for &idx in stmts {
                match try_stmt(idx, defined, order) {
                    Some(true) => any = true,
                    Some(false) => again = true,
                    None => {}
                }
            }
        }
        (any, again)
    };

    let mut vars: Vec<&'a str> = infos
        .iter()
        .flat_map(|d| d.iter().map(|(v, _)| v.as_str()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    process("", &mut defined, &mut order);
    let mut done = false;
    while !done {
        done = true;
        let current = std::mem::take(&mut vars);
        for var in current {
            let (any, again) = process(var, &mut defined, &mut order);
            if any {
                done = false;
                process("", &mut defined, &mut order);
            }
            if again {
                vars.push(var);
            }
        }
    }
    if order.len() != n {
        return (0..n as u16).collect();
    }
    order
}
