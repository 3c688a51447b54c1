//! Lowering of one rule or function definition: its queries, statements and expressions, with
//! locals in frame slots (`Fx`), refusing what is not on the whitelist.

use std::collections::{BTreeMap, BTreeSet};

use regorus::Value;
use regorus::unstable::{
    ArithOp, AssignOp, BUILTINS, Expr as Ast, Literal, LiteralStmt, Query as AstQuery, Ref,
    must_cache, numbers,
};

use super::ir::*;
use super::lower::{Dep, Names, root_name};
use super::schedule::Refusal;
use super::walk::{any_child, any_in_literal};

/// Lowering state for one definition (one frame).
pub(super) struct Fx<'a> {
    pub(super) names: &'a Names,
    pub(super) deps: &'a mut BTreeSet<Dep>,
    pub(super) scopes: Vec<BTreeMap<String, Slot>>,
    /// Declared by `some x` and not bound yet.
    pub(super) unbound: BTreeSet<Slot>,
    /// `every` variables: bound at run time, but regorus's loop hoisting does not count them as
    /// bound, so `x[v]` is hoisted as a loop (that checks `v` at run time) until a binding
    /// plan (a hoisted index, a call's last argument) binds `v` for the rest of the query.
    pub(super) hoist_unbound: BTreeSet<Slot>,
    pub(super) next: Slot,
}

impl<'a> Fx<'a> {
    pub(super) fn new(names: &'a Names, deps: &'a mut BTreeSet<Dep>) -> Self {
        Self {
            names,
            deps,
            scopes: Vec::new(),
            unbound: BTreeSet::new(),
            hoist_unbound: BTreeSet::new(),
            next: 0,
        }
    }

    pub(super) fn local(&self, name: &str) -> Option<Slot> {
        self.scopes.iter().rev().find_map(|s| s.get(name).copied())
    }

    pub(super) fn new_slot(&mut self, name: Option<&str>) -> Slot {
        let slot = self.next;
        self.next += 1;
        if let (Some(n), Some(scope)) = (name, self.scopes.last_mut()) {
            scope.insert(n.to_owned(), slot);
        }
        slot
    }

    /// A name that may be newly bound here: not special, not a rule, not in scope.
    pub(super) fn fresh(&self, name: &str) -> Result<(), Refusal> {
        if matches!(name, "_" | "input" | "data")
            || self.names.globals.contains(name)
            || self.local(name).is_some()
        {
            return Err(format!("cannot bind {name}"));
        }
        Ok(())
    }

    /// The slot `name` binds in a unification, when it is an unbound variable.
    pub(super) fn unbound_var(&self, e: &Ast) -> Option<Option<Slot>> {
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
    pub(super) fn has_pattern_var(&self, e: &Ast) -> bool {
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
    pub(super) fn mentions_hoist_unbound(&self, e: &Ast) -> bool {
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

    pub(super) fn query(
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

    pub(super) fn query_in_scope(
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

    pub(super) fn bind_name(&mut self, e: &Ast) -> Result<Option<Slot>, Refusal> {
        let Ast::Var { span, .. } = e else {
            return Err("pattern".into());
        };
        if span.text() == "_" {
            return Ok(None);
        }
        self.fresh(span.text())?;
        Ok(Some(self.new_slot(Some(span.text()))))
    }

    pub(super) fn stmt(&mut self, stmt: &LiteralStmt, seen_loop: bool) -> Result<Stmt, Refusal> {
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

    pub(super) fn assign(
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

    pub(super) fn expr(&mut self, e: &Ref<Ast>, loops: &mut Vec<Loop>) -> Result<E, Refusal> {
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

    pub(super) fn exprs(
        &mut self,
        items: &[Ref<Ast>],
        loops: &mut Vec<Loop>,
    ) -> Result<Vec<E>, Refusal> {
        items.iter().map(|i| self.expr(i, loops)).collect()
    }

    pub(super) fn compr(
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

    pub(super) fn call(
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

    pub(super) fn var_head(&mut self, name: &str) -> Result<Head, Refusal> {
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

    pub(super) fn reference(&mut self, e: &Ref<Ast>, loops: &mut Vec<Loop>) -> Result<E, Refusal> {
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
    match e {
        Ast::Var { span, .. } => span.text() == name,
        e => any_child(e, (&mut |e| names(e, name), &mut |q| query_names(q, name))),
    }
}

fn query_names(q: &AstQuery, name: &str) -> bool {
    q.stmts.iter().any(|s| {
        let declared = match &s.literal {
            Literal::SomeVars { vars, .. } => vars.iter().any(|v| v.text() == name),
            Literal::Every { key, value, .. } => {
                key.as_ref().is_some_and(|k| k.text() == name) || value.text() == name
            }
            _ => false,
        };
        declared
            || any_in_literal(
                &s.literal,
                (&mut |e| names(e, name), &mut |q| query_names(q, name)),
            )
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
