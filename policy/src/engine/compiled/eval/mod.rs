//! Running the compiled form, with regorus's interpreter's semantics (strict builtin errors
//! off). The structure follows the interpreter's on purpose — a stack of output contexts
//! pushed and popped at the same points (an error leaves them as the interpreter leaves them),
//! loops over hoisted `x[_]` expressions around the statements after them, rules evaluated
//! once at their first reference — so that what is visible (the value, an error, the print
//! lines and their order) is the same.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use regorus::Value;
use regorus::unstable::{BinOp, comparison, numbers, sets};

use super::ir::*;

mod rules;
use crate::engine::prints::PendingPrint;

/// The lowered policy, ready to run.
#[derive(Debug)]
pub(super) struct Program {
    pub(super) rules: Vec<Option<RuleSet>>,
    pub(super) funcs: Vec<Option<Func>>,
    pub(super) file: &'static str,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Rule {
        set: bool,
        constant: bool,
        determined: bool,
    },
    Compr,
    Func,
    Every,
}

struct Ctx<'p> {
    kind: Kind,
    name: Option<&'p Value>,
    key: Option<&'p E>,
    output: Option<&'p E>,
    value: Value,
    rule_value: Value,
    early_return: bool,
}

impl<'p> Ctx<'p> {
    fn new(kind: Kind, value: Value) -> Self {
        Self {
            kind,
            name: None,
            key: None,
            output: None,
            value,
            rule_value: Value::new_object(),
            early_return: false,
        }
    }
}

/// An evaluation that ran past its time limit (the interpreter's is the same, and denies).
#[derive(Debug)]
pub(super) struct TimeLimit(pub(super) Duration);

impl std::fmt::Display for TimeLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the policy evaluation ran past its {} s time limit",
            self.0.as_secs()
        )
    }
}

impl std::error::Error for TimeLimit {}

/// Steps between two looks at the clock.
const TICKS_PER_CHECK: u32 = 256;

/// One evaluation: the state the interpreter keeps per query.
pub(super) struct Run<'p> {
    p: &'p Program,
    limit: Duration,
    deadline: Instant,
    ticks: u32,
    input: &'p Value,
    data: &'p Value,
    values: Vec<Value>,
    def_done: Vec<Vec<bool>>,
    default_done: Vec<bool>,
    path_done: Vec<bool>,
    rule_paths: BTreeMap<Vec<Value>, Value>,
    ctxs: Vec<Ctx<'p>>,
    /// How many `eval` and `stmts` calls are in progress (see [`MAX_NESTING`]).
    nesting: usize,
    /// What the policy printed.
    pub(super) prints: Vec<PendingPrint>,
}

const PACKAGE: &str = "agent_policy";

/// How many expression evaluations and statement sequences may be in progress at once (each
/// nested rule, function, comprehension, loop and operand is one more). Deeper evaluations are
/// left to the interpreter, so the compiled form's recursion stays within a small fraction of
/// a 2 MiB thread stack whatever the policy. genpolicy's deepest request (a CreateContainer) goes 26 deep.
const MAX_NESTING: usize = 300;

/// The value at `fields` under `base` (Undefined where a field is missing).
fn follow<'v>(mut base: &'v Value, fields: &[Value]) -> &'v Value {
    for field in fields {
        base = &base[field];
    }
    base
}

/// A slot's value; a slot outside the frame is a bug, reported as an error, never a panic.
fn get(f: &[Value], slot: Slot) -> Result<Value> {
    f.get(slot)
        .cloned()
        .ok_or_else(|| anyhow!(Fallback("slot outside its frame")))
}

fn set(f: &mut [Value], slot: Slot, v: Value) -> Result<()> {
    *f.get_mut(slot)
        .ok_or_else(|| anyhow!(Fallback("slot outside its frame")))? = v;
    Ok(())
}

/// An evaluation the compiled form gives up on, leaving the request to the interpreter: the
/// interpreter's state after a swallowed error (a function definition that failed inside a
/// comprehension or `every` leaves that context on its stack) is not modelled.
#[derive(Debug)]
pub(super) struct Fallback(pub(super) &'static str);

impl std::fmt::Display for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the compiled form does not model this evaluation: {}",
            self.0
        )
    }
}

impl std::error::Error for Fallback {}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        v => *v != Value::Undefined,
    }
}

impl<'p> Run<'p> {
    pub(super) fn new(p: &'p Program, input: &'p Value, data: &'p Value, limit: Duration) -> Self {
        let n = p.rules.len();
        Self {
            p,
            limit,
            deadline: Instant::now() + limit,
            ticks: 0,
            input,
            data,
            values: vec![Value::Undefined; n],
            def_done: p
                .rules
                .iter()
                .map(|r| vec![false; r.as_ref().map_or(0, |r| r.defs.len())])
                .collect(),
            default_done: vec![false; n],
            path_done: vec![false; n],
            rule_paths: BTreeMap::new(),
            ctxs: Vec::new(),
            nesting: 0,
            prints: Vec::new(),
        }
    }

    /// The value of rule `id` (`data.agent_policy.<name>`).
    pub(super) fn rule(&mut self, id: usize) -> Result<Value> {
        self.ensure(id)?;
        Ok(self.values[id].clone())
    }

    fn query(&mut self, f: &mut [Value], q: &'p Query) -> Result<bool> {
        self.stmts(f, q, 0)
    }

    /// Counts a step; past the deadline, the evaluation fails as the interpreter's does.
    fn tick(&mut self) -> Result<()> {
        self.ticks = self.ticks.wrapping_add(1);
        if self.ticks.is_multiple_of(TICKS_PER_CHECK) && Instant::now() > self.deadline {
            bail!(TimeLimit(self.limit));
        }
        Ok(())
    }

    fn early_return(&self) -> bool {
        self.ctxs.last().is_some_and(|c| c.early_return)
    }

    fn stmts(&mut self, f: &mut [Value], q: &'p Query, from: usize) -> Result<bool> {
        self.enter()?;
        let result = self.stmts_from(f, q, from);
        self.nesting -= 1;
        result
    }

    fn stmts_from(&mut self, f: &mut [Value], q: &'p Query, from: usize) -> Result<bool> {
        for idx in from..q.stmts.len() {
            self.tick()?;
            let stmt = &q.stmts[idx];
            if !stmt.loops.is_empty() {
                return self.loops(f, q, idx, 0);
            }
            if matches!(stmt.lit, Lit::SomeIn { .. }) {
                return self.some_in(f, q, idx);
            }
            if !self.stmt(f, stmt)? {
                return Ok(false);
            }
        }
        self.output(f)
    }

    fn loops(&mut self, f: &mut [Value], q: &'p Query, idx: usize, li: usize) -> Result<bool> {
        let stmt = &q.stmts[idx];
        let Some(lp) = stmt.loops.get(li) else {
            if matches!(stmt.lit, Lit::SomeIn { .. }) {
                return self.some_in(f, q, idx);
            }
            return if self.stmt(f, stmt)? {
                self.stmts(f, q, idx + 1)
            } else {
                Ok(false)
            };
        };
        let coll = self.eval(f, &lp.collection)?;
        if let Some(iv) = lp.index {
            let current = get(f, iv)?;
            if coll[&current] != Value::Undefined {
                return self.loops(f, q, idx, li + 1);
            } else if current != Value::Undefined {
                return Ok(false);
            }
        }
        let mut result = false;
        let mut step = |run: &mut Self, f: &mut [Value], v: &Value, k: Value| -> Result<bool> {
            run.tick()?;
            set(f, lp.slot, v.clone())?;
            if let Some(iv) = lp.index {
                set(f, iv, k)?;
            }
            result = run.loops(f, q, idx, li + 1)? || result;
            if let Some(iv) = lp.index {
                set(f, iv, Value::Undefined)?;
            }
            Ok(run.early_return())
        };
        match &coll {
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    if step(self, f, v, Value::from(i))? {
                        break;
                    }
                }
            }
            Value::Set(items) => {
                for v in items.iter() {
                    if step(self, f, v, v.clone())? {
                        break;
                    }
                }
            }
            Value::Object(obj) => {
                for (k, v) in obj.iter() {
                    if step(self, f, v, k.clone())? {
                        break;
                    }
                }
            }
            _ => {}
        }
        set(f, lp.slot, Value::Undefined)?;
        Ok(result)
    }

    fn some_in(&mut self, f: &mut [Value], q: &'p Query, idx: usize) -> Result<bool> {
        let Lit::SomeIn {
            key,
            value,
            collection,
        } = &q.stmts[idx].lit
        else {
            bail!("not some-in");
        };
        let coll = self.eval(f, collection)?;
        let mut count = 0usize;
        let mut step = |run: &mut Self, f: &mut [Value], k: Value, v: &Value| -> Result<bool> {
            run.tick()?;
            if let Some(Some(ks)) = key {
                set(f, *ks, k)?;
            }
            if let Some(vs) = value {
                set(f, *vs, v.clone())?;
            }
            if run.stmts(f, q, idx + 1)? {
                count += 1;
                return Ok(run.early_return());
            }
            Ok(false)
        };
        match &coll {
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    if step(self, f, Value::from(i), v)? {
                        break;
                    }
                }
            }
            Value::Set(s) => {
                for v in s.iter() {
                    if step(self, f, v.clone(), v)? {
                        break;
                    }
                }
            }
            Value::Object(o) => {
                for (k, v) in o.iter() {
                    if step(self, f, k.clone(), v)? {
                        break;
                    }
                }
            }
            Value::Undefined => {}
            v => bail!("`some .. in collection` expects array/set/object. Got `{v}`"),
        }
        Ok(count > 0)
    }

    fn stmt(&mut self, f: &mut [Value], stmt: &'p Stmt) -> Result<bool> {
        Ok(match &stmt.lit {
            Lit::Expr(e) => truthy(&self.eval(f, e)?),
            Lit::Not(e) => matches!(self.eval(f, e)?, Value::Bool(false) | Value::Undefined),
            Lit::SomeVars(slots) => {
                for s in slots {
                    set(f, *s, Value::Undefined)?;
                }
                true
            }
            Lit::SomeIn { .. } => bail!("some-in outside its driver"),
            Lit::Every {
                key,
                value,
                domain,
                query,
            } => {
                let domain = self.eval(f, domain)?;
                self.ctxs.push(Ctx::new(Kind::Every, Value::new_set()));
                let mut r = true;
                let items: Vec<(Value, Value)> = match &domain {
                    Value::Array(a) => a
                        .iter()
                        .enumerate()
                        .map(|(i, v)| (Value::from(i), v.clone()))
                        .collect(),
                    Value::Set(s) => s.iter().map(|v| (v.clone(), v.clone())).collect(),
                    Value::Object(o) => o.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    _ => {
                        r = false;
                        Vec::new()
                    }
                };
                for (k, v) in items {
                    self.tick()?;
                    set(f, *value, v)?;
                    if let Some(ks) = key {
                        set(f, *ks, k)?;
                    }
                    if !self.query(f, query)? {
                        r = false;
                        break;
                    }
                }
                self.ctxs.pop();
                r
            }
        })
    }

    /// regorus's `eval_output_expr` for the current context (no loops in outputs).
    fn output(&mut self, f: &mut [Value]) -> Result<bool> {
        let Some(ctx) = self.ctxs.last() else {
            bail!("no context");
        };
        let (kind, name, key, output) = (ctx.kind, ctx.name, ctx.key, ctx.output);
        if let Kind::Rule {
            set,
            constant,
            determined,
        } = kind
        {
            let is_const = !determined && constant;
            let mut comps = vec![name.cloned().ok_or_else(|| anyhow!("rule name"))?];
            if let Some(k) = key {
                comps.push(self.eval(f, k)?);
            }
            let value = match output {
                Some(o) => self.eval(f, o)?,
                None => Value::Bool(true),
            };
            let ctx = self.ctxs.last_mut().ok_or_else(|| anyhow!("no context"))?;
            if is_const {
                ctx.early_return = true;
            }
            if let Kind::Rule { determined, .. } = &mut ctx.kind {
                *determined = true;
            }
            if value == Value::Undefined || comps.contains(&Value::Undefined) {
                ctx.rule_value = Value::Undefined;
                return Ok(false);
            }
            let comps = Value::from(comps);
            let obj = ctx.rule_value.as_object_mut()?;
            if set {
                obj.get_or_insert_with(comps, Value::new_set)
                    .as_set_mut()?
                    .insert(value);
            } else {
                let existing = obj.get_or_insert_with(comps, || value.clone());
                if *existing != value {
                    bail!("rules must not produce multiple outputs");
                }
            }
            return Ok(output.is_none() || ctx.rule_value != Value::Undefined);
        }
        match (key, output) {
            (Some(k), Some(o)) => {
                let key = self.eval(f, k)?;
                let value = self.eval(f, o)?;
                let ctx = self.ctxs.last_mut().ok_or_else(|| anyhow!("no context"))?;
                if key != Value::Undefined && value != Value::Undefined {
                    let map = ctx.value.as_object_mut()?;
                    match map.get(&key) {
                        Some(pv) if *pv != value => {
                            bail!("value for key generated multiple times")
                        }
                        _ => {
                            map.insert(key, value);
                        }
                    }
                } else if !matches!(ctx.value, Value::Object(_)) {
                    ctx.value = Value::Undefined;
                }
            }
            (None, Some(o)) => {
                let value = self.eval(f, o)?;
                let ctx = self.ctxs.last_mut().ok_or_else(|| anyhow!("no context"))?;
                let is_compr = matches!(ctx.kind, Kind::Compr);
                if value != Value::Undefined {
                    match &mut ctx.value {
                        Value::Array(_) => ctx.value.as_array_mut()?.push(value),
                        Value::Set(_) => {
                            ctx.value.as_set_mut()?.insert(value);
                        }
                        _ => bail!("invalid context value"),
                    }
                } else if !is_compr && !matches!(ctx.value, Value::Set(_)) {
                    ctx.value = Value::Undefined;
                }
            }
            _ => {}
        }
        let ctx = self.ctxs.last().ok_or_else(|| anyhow!("no context"))?;
        Ok(ctx.output.is_none() || ctx.rule_value != Value::Undefined)
    }

    fn eval_all(&mut self, f: &mut [Value], items: &'p [E]) -> Result<Option<Vec<Value>>> {
        let mut out = Vec::with_capacity(items.len());
        for i in items {
            let v = self.eval(f, i)?;
            if v == Value::Undefined {
                return Ok(None);
            }
            out.push(v);
        }
        Ok(Some(out))
    }

    /// Evaluates `e`, one level deeper (see [`MAX_NESTING`]).
    pub(super) fn eval(&mut self, f: &mut [Value], e: &'p E) -> Result<Value> {
        self.enter()?;
        let value = self.eval_expr(f, e);
        self.nesting -= 1;
        value
    }

    /// Counts one level of recursion; past [`MAX_NESTING`] the interpreter decides.
    fn enter(&mut self) -> Result<()> {
        if self.nesting >= MAX_NESTING {
            bail!(Fallback("nested deeper than the compiled form recurses"));
        }
        self.nesting += 1;
        Ok(())
    }

    fn eval_expr(&mut self, f: &mut [Value], e: &'p E) -> Result<Value> {
        Ok(match e {
            E::Const(v) => v.clone(),
            // The head is borrowed where it can be and only the value read is cloned: the
            // data document and rule values are shared by every thread deciding on this
            // state, and each clone of one is an atomic reference count both write.
            E::Ref { head, fields } => match &**head {
                Head::Input => follow(self.input, fields).clone(),
                Head::Data => follow(self.data, fields).clone(),
                Head::Local(s) => follow(
                    f.get(*s)
                        .ok_or_else(|| anyhow!(Fallback("slot outside its frame")))?,
                    fields,
                )
                .clone(),
                Head::Rule(id) => {
                    self.ensure(*id)?;
                    follow(&self.values[*id], fields).clone()
                }
                head => {
                    let base = self.head(f, head)?;
                    if fields.is_empty() {
                        base
                    } else {
                        follow(&base, fields).clone()
                    }
                }
            },
            E::Array(items) => match self.eval_all(f, items)? {
                Some(v) => Value::from(v),
                None => Value::Undefined,
            },
            E::Set(items) => match self.eval_all(f, items)? {
                Some(v) => Value::from(v.into_iter().collect::<std::collections::BTreeSet<_>>()),
                None => Value::Undefined,
            },
            E::Object(fields) => {
                let mut obj = Value::new_object();
                for (k, v) in fields {
                    let k = self.eval(f, k)?;
                    if k == Value::Undefined {
                        return Ok(Value::Undefined);
                    }
                    let v = self.eval(f, v)?;
                    if v == Value::Undefined {
                        return Ok(Value::Undefined);
                    }
                    obj.as_object_mut()?.insert(k, v);
                }
                obj
            }
            E::Compr(c) => {
                let (kind, value) = match c.kind {
                    ComprKind::Array => (Kind::Compr, Value::new_array()),
                    ComprKind::Set => (Kind::Compr, Value::new_set()),
                    ComprKind::Object => (Kind::Compr, Value::new_object()),
                };
                let mut ctx = Ctx::new(kind, value);
                ctx.key = c.key.as_ref();
                ctx.output = Some(&c.term);
                self.ctxs.push(ctx);
                self.query(f, &c.query)?;
                self.ctxs
                    .pop()
                    .ok_or_else(|| anyhow!("context popped"))?
                    .value
            }
            E::Call { func, args } => self.call(f, *func, args)?,
            E::Builtin(b) => {
                let Some(args) = self.eval_all_keep(f, &b.args)? else {
                    return Ok(Value::Undefined);
                };
                match (b.f.0)(&b.span, &b.params, &args, false) {
                    Ok(v) => v,
                    Err(e) if e.downcast_ref::<regorus::LimitError>().is_some() => return Err(e),
                    Err(_) => Value::Undefined,
                }
            }
            E::Print { args, line } => {
                for a in args {
                    self.eval(f, a)?;
                }
                // regorus evaluates the arguments twice; the second values are printed,
                // rendered only if the lines are read (see `engine::prints`).
                let mut values = Vec::with_capacity(args.len());
                for a in args {
                    values.push(self.eval(f, a)?);
                }
                self.prints.push(PendingPrint {
                    line: *line,
                    args: values,
                });
                Value::Bool(true)
            }
            E::Compare { op, lhs, rhs } => {
                let l = self.eval(f, lhs)?;
                let r = self.eval(f, rhs)?;
                if l == Value::Undefined || r == Value::Undefined {
                    return Ok(Value::Undefined);
                }
                comparison::compare(op, &l, &r)?
            }
            E::Arith(a) => {
                let l = self.eval(f, &a.lhs)?;
                let r = self.eval(f, &a.rhs)?;
                if l == Value::Undefined || r == Value::Undefined {
                    return Ok(Value::Undefined);
                }
                if matches!(a.op, regorus::unstable::ArithOp::Sub)
                    && (matches!(l, Value::Set(_)) || matches!(r, Value::Set(_)))
                {
                    sets::difference(&a.lhs_ast, &a.rhs_ast, l, r)?
                } else {
                    numbers::arithmetic_operation(
                        &a.span, &a.op, &a.lhs_ast, &a.rhs_ast, l, r, false,
                    )?
                }
            }
            E::SetOp(s) => {
                let l = self.eval(f, &s.lhs)?;
                let r = self.eval(f, &s.rhs)?;
                if l == Value::Undefined || r == Value::Undefined {
                    return Ok(Value::Undefined);
                }
                match s.op {
                    BinOp::Union => sets::union(&s.lhs_ast, &s.rhs_ast, l, r)?,
                    BinOp::Intersection => sets::intersection(&s.lhs_ast, &s.rhs_ast, l, r)?,
                }
            }
            E::Member {
                key,
                value,
                collection,
            } => {
                let value = self.eval(f, value)?;
                let coll = self.eval(f, collection)?;
                Value::Bool(match &coll {
                    Value::Array(_) | Value::Object(_) => match key {
                        Some(k) => {
                            let k = self.eval(f, k)?;
                            coll[&k] == value
                        }
                        None => match &coll {
                            Value::Array(a) => a.contains(&value),
                            Value::Object(o) => o.values().any(|v| *v == value),
                            _ => false,
                        },
                    },
                    Value::Set(s) => key.is_none() && s.contains(&value),
                    _ => false,
                })
            }
            E::Assign(plan) => self.plan(f, plan)?,
        })
    }

    /// All argument values (undefined ones included), or `None` if one is undefined.
    fn eval_all_keep(&mut self, f: &mut [Value], items: &'p [E]) -> Result<Option<Vec<Value>>> {
        let mut out = Vec::with_capacity(items.len());
        for i in items {
            out.push(self.eval(f, i)?);
        }
        if out.contains(&Value::Undefined) {
            return Ok(None);
        }
        Ok(Some(out))
    }

    fn plan(&mut self, f: &mut [Value], plan: &'p Plan) -> Result<Value> {
        Ok(match plan {
            Plan::Bind { value, slot } => {
                let v = self.eval(f, value)?;
                if v == Value::Undefined {
                    return Ok(v);
                }
                set(f, *slot, v)?;
                Value::Bool(true)
            }
            Plan::Array { value, slots } => {
                let v = self.eval(f, value)?;
                match &v {
                    Value::Array(a) if a.len() == slots.len() => {
                        for (s, item) in slots.iter().zip(a.iter()) {
                            if let Some(s) = s {
                                set(f, *s, item.clone())?;
                            }
                        }
                        Value::Bool(true)
                    }
                    _ => Value::Undefined,
                }
            }
            Plan::Wildcard(e) => {
                if self.eval(f, e)? == Value::Undefined {
                    Value::Undefined
                } else {
                    Value::Bool(true)
                }
            }
            Plan::Check { lhs, rhs } => {
                let l = self.eval(f, lhs)?;
                let r = self.eval(f, rhs)?;
                if l == Value::Undefined || r == Value::Undefined || l != r {
                    Value::Undefined
                } else {
                    Value::Bool(true)
                }
            }
        })
    }

    fn head(&mut self, f: &mut [Value], head: &'p Head) -> Result<Value> {
        Ok(match head {
            Head::Local(s) => get(f, *s)?,
            Head::Input => self.input.clone(),
            Head::Data => self.data.clone(),
            Head::Rule(id) => self.rule(*id)?,
            Head::Index {
                loop_slot,
                index,
                refr,
                data_root,
            } => {
                if let Some(ls) = loop_slot {
                    let v = get(f, *ls)?;
                    if v != Value::Undefined {
                        return Ok(v);
                    }
                }
                let index = self.eval(f, index)?;
                let obj = self.eval(f, refr)?;
                let mut v = obj[&index].clone();
                if v == Value::Undefined && *data_root && matches!(index, Value::Number(_)) {
                    v = obj[&Value::from(index.to_string())].clone();
                }
                v
            }
            Head::Other(e) => self.eval(f, e)?,
        })
    }
}
