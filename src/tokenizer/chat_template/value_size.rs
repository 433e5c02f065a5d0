//! A bound on the size of every list, map and string a chat template builds.
//!
//! minijinja charges fuel for most of what a template builds, but not for lists that stay
//! lazy or share their items: `['x'] * 99999999` is a 100M-item list that costs nothing until
//! it is turned into text, and `[a, a, a, a]` nested a dozen levels holds a few items per
//! level but billions in all. Turning such a value into text (`~`, `|string`, printing it)
//! then runs for seconds to hours, and builds gigabytes, before any fuel is checked.
//!
//! So, before compiling, every expression that can build such a value (list, tuple and map
//! literals, `+`, `*`, filters and calls) is wrapped in [`CHECK`], which walks the value it
//! gets and refuses one that holds more than [`MAX_VALUE_SIZE`] units, counted at every depth.
//! The walk stops at the limit and costs fuel, so the check itself stays cheap. Values built
//! from values that passed can only grow by what one expression adds, and every expression that
//! adds is checked. Real chat templates build short lists of messages and strings.

use minijinja::machinery::ast::{CallArg, Expr, Stmt};
use minijinja::machinery::{ast, parse, Span};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{ObjectRepr, Value};
use minijinja::{Environment, Error, ErrorKind, State};

/// The function the value-building expressions are wrapped in (as a call, or as a filter
/// after a filter).
const CHECK: &str = "__llmcad_size_checked";

/// The most one value may hold: one unit per item (of lists, maps and their keys, at every
/// depth) and one per 64 bytes of text, so up to a million items or 64 MB of text, far
/// more than a conversation that fits a context.
const MAX_VALUE_SIZE: u64 = 1 << 20;
/// Units of the walk per unit of fuel: the walk is about as cheap as the copying that fuel
/// charges per 64 bytes.
const UNITS_PER_FUEL: u64 = 16;

/// Registers the check, as a function and as a filter.
pub fn register(env: &mut Environment<'static>) {
    env.add_function(CHECK, size_checked);
    env.add_filter(CHECK, size_checked);
}

/// Passes `value` through when its size, counted at every depth, is within
/// [`MAX_VALUE_SIZE`].
fn size_checked(state: &State, value: Value) -> Result<Value, Error> {
    let mut left = MAX_VALUE_SIZE;
    let mut take = |v: &Value| -> Result<(), Error> {
        let size = 1 + v.as_str().map_or(0, |s| s.len() as u64 / 64);
        left = left.checked_sub(size).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!(
                    "a value grew past {MAX_VALUE_SIZE} items (or {} MB of text): the \
                     template builds data without bound",
                    (MAX_VALUE_SIZE * 64) >> 20
                ),
            )
        })?;
        Ok(())
    };
    take(&value)?;
    // each value is charged before it is stacked, so the stack never outgrows the limit
    let mut stack = vec![value.clone()];
    let mut result = Ok(());
    while let Some(v) = stack.pop() {
        let Some(object) = v.as_object() else {
            continue;
        };
        result = match object.repr() {
            ObjectRepr::Map => {
                object
                    .try_iter_pairs()
                    .into_iter()
                    .flatten()
                    .try_for_each(|(key, item)| {
                        // a key can be a list too
                        take(&key)?;
                        take(&item)?;
                        stack.push(key);
                        stack.push(item);
                        Ok(())
                    })
            }
            ObjectRepr::Seq | ObjectRepr::Iterable => object
                .try_iter()
                .into_iter()
                .flatten()
                .try_for_each(|item| {
                    take(&item)?;
                    stack.push(item);
                    Ok(())
                }),
            // functions, macros, loop state: shown by name, never walked
            _ => Ok(()),
        };
        if result.is_err() {
            break;
        }
    }
    state.consume_fuel((MAX_VALUE_SIZE - left) / UNITS_PER_FUEL)?;
    result.map(|()| value)
}

/// Wraps every value-building expression of `source` in [`CHECK`]: `check((…))` around `+`,
/// `*` and literals, `|check` after each filter and call (whose spans do not reach back to the
/// start of the expression). Lines keep their numbers; a syntax error is left for minijinja to
/// report. The result is parsed again, so that a gap in the rewrite is an error, not a
/// different template.
pub fn rewrite_value_builders(source: &str, syntax: SyntaxConfig) -> Result<String, Error> {
    let Ok(template) = parse(source, "chat", syntax.clone()) else {
        return Ok(source.to_string());
    };
    let mut edits = Edits::default();
    edits.stmt(&template);
    // at one offset: a filter's check, then what closes, then what opens (all opens and all
    // closes are the same text, so their order among themselves does not matter)
    edits.0.sort_by_key(|&(at, edit)| (at, edit));
    // spaced, so that no name next to an insertion runs into it (`f(x)in y`)
    let (filter_check, open) = (format!("|{CHECK} "), format!(" {CHECK}(("));
    let mut out = String::with_capacity(source.len() + edits.0.len() * open.len());
    let mut copied = 0;
    for (at, edit) in edits.0 {
        out.push_str(&source[copied..at]);
        out.push_str(match edit {
            Edit::FilterCheck => &filter_check,
            Edit::Close => "))",
            Edit::Open => &open,
        });
        copied = at;
    }
    out.push_str(&source[copied..]);
    match parse(&out, "chat", syntax) {
        Ok(_) => Ok(out),
        Err(e) => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("{REWRITE_FAILED} (a bug in llmcad: please report it with the template): {e}"),
        )),
    }
}

/// The start of the error for a template the rewrite broke.
const REWRITE_FAILED: &str = "llmcad could not add its size checks to this template";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Edit {
    FilterCheck,
    Close,
    Open,
}

/// Insertions into the source, by byte offset.
#[derive(Default)]
struct Edits(Vec<(usize, Edit)>);

impl Edits {
    fn wrap(&mut self, span: Span) {
        self.0.push((span.start_offset as usize, Edit::Open));
        self.0.push((span.end_offset as usize, Edit::Close));
    }

    fn stmts(&mut self, stmts: &[Stmt<'_>]) {
        stmts.iter().for_each(|s| self.stmt(s));
    }

    /// Assignment targets, macro parameters and the filters of filter blocks are not values,
    /// so they are left alone; every expression inside them that computes one is visited.
    fn stmt(&mut self, stmt: &Stmt<'_>) {
        match stmt {
            Stmt::Template(t) => self.stmts(&t.children),
            Stmt::EmitExpr(e) => self.expr(&e.expr),
            Stmt::EmitRaw(_) | Stmt::Continue(_) | Stmt::Break(_) => {}
            Stmt::Block(b) => self.stmts(&b.body),
            Stmt::ForLoop(f) => {
                self.expr(&f.iter);
                self.opt(&f.filter_expr);
                self.stmts(&f.body);
                self.stmts(&f.else_body);
            }
            Stmt::IfCond(i) => {
                self.expr(&i.expr);
                self.stmts(&i.true_body);
                self.stmts(&i.false_body);
            }
            Stmt::WithBlock(w) => {
                w.assignments.iter().for_each(|(_, value)| self.expr(value));
                self.stmts(&w.body);
            }
            Stmt::Set(s) => self.expr(&s.expr),
            Stmt::SetBlock(s) => {
                if let Some(filter) = &s.filter {
                    self.filter_block_args(filter);
                }
                self.stmts(&s.body);
            }
            Stmt::AutoEscape(a) => {
                self.expr(&a.enabled);
                self.stmts(&a.body);
            }
            Stmt::FilterBlock(f) => {
                self.filter_block_args(&f.filter);
                self.stmts(&f.body);
            }
            Stmt::Import(i) => self.expr(&i.expr),
            Stmt::FromImport(f) => self.expr(&f.expr),
            Stmt::Extends(e) => self.expr(&e.name),
            Stmt::Include(i) => self.expr(&i.name),
            Stmt::Macro(m) => self.macro_decl(m),
            // `{% call f() %}` and `{% do f() %}` must stay calls: only their parts are wrapped
            Stmt::CallBlock(c) => {
                self.call_parts(&c.call);
                self.macro_decl(&c.macro_decl);
            }
            Stmt::Do(d) => self.call_parts(&d.call),
        }
    }

    fn macro_decl(&mut self, m: &ast::Macro<'_>) {
        m.defaults.iter().for_each(|d| self.expr(d));
        self.stmts(&m.body);
    }

    /// The arguments of the filters in `{% filter f(x)|g %}` or `{% set v | f(x) %}`.
    fn filter_block_args(&mut self, filter: &Expr<'_>) {
        if let Expr::Filter(f) = filter {
            self.args(&f.args);
            if let Some(inner) = &f.expr {
                self.filter_block_args(inner);
            }
        }
    }

    fn call_parts(&mut self, call: &ast::Call<'_>) {
        self.postfix_operand(&call.expr);
        self.args(&call.args);
    }

    fn args(&mut self, args: &[CallArg<'_>]) {
        for arg in args {
            match arg {
                CallArg::Pos(e)
                | CallArg::Kwarg(_, e)
                | CallArg::PosSplat(e)
                | CallArg::KwargSplat(e) => self.expr(e),
            }
        }
    }

    /// What `.name`, `[…]` or `(…)` applies to. A call there is not checked: only a filter
    /// could check it (a call's span starts at its last `.name`, not at the start of the
    /// chain), and a filter cannot stand inside a chain. What the chain ends in is checked.
    fn postfix_operand(&mut self, expr: &Expr<'_>) {
        match expr {
            Expr::Call(c) => self.call_parts(c),
            _ => self.expr(expr),
        }
    }

    fn opt(&mut self, expr: &Option<Expr<'_>>) {
        if let Some(e) = expr {
            self.expr(e);
        }
    }

    fn expr(&mut self, expr: &Expr<'_>) {
        match expr {
            Expr::Var(_) | Expr::Const(_) => {}
            Expr::Slice(s) => {
                self.postfix_operand(&s.expr);
                self.opt(&s.start);
                self.opt(&s.stop);
                self.opt(&s.step);
            }
            Expr::UnaryOp(u) => self.expr(&u.expr),
            Expr::BinOp(b) => {
                self.expr(&b.left);
                self.expr(&b.right);
                if matches!(b.op, ast::BinOpKind::Add | ast::BinOpKind::Mul) {
                    self.wrap(expr.span());
                }
            }
            Expr::Compare(c) => {
                self.expr(&c.expr);
                c.ops.iter().for_each(|op| self.expr(&op.expr));
            }
            Expr::IfExpr(i) => {
                self.expr(&i.test_expr);
                self.expr(&i.true_expr);
                self.opt(&i.false_expr);
            }
            // a filter's span starts at its name, not at its input, and a call's at its last
            // `.name`: both are checked by a filter after them
            Expr::Filter(f) => {
                self.opt(&f.expr);
                self.args(&f.args);
                self.0
                    .push((expr.span().end_offset as usize, Edit::FilterCheck));
            }
            Expr::Test(t) => {
                self.expr(&t.expr);
                self.args(&t.args);
            }
            Expr::GetAttr(g) => self.postfix_operand(&g.expr),
            Expr::GetItem(g) => {
                self.postfix_operand(&g.expr);
                self.expr(&g.subscript_expr);
            }
            Expr::Call(c) => {
                self.call_parts(c);
                self.0
                    .push((expr.span().end_offset as usize, Edit::FilterCheck));
            }
            Expr::List(l) => {
                l.items.iter().for_each(|i| self.expr(i));
                self.wrap(expr.span());
            }
            Expr::Tuple(t) => {
                t.items.iter().for_each(|i| self.expr(i));
                self.wrap(expr.span());
            }
            Expr::Map(m) => {
                m.keys.iter().chain(&m.values).for_each(|e| self.expr(e));
                self.wrap(expr.span());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syntax() -> SyntaxConfig {
        super::super::syntax().unwrap()
    }

    fn render(mut env: Environment<'static>, source: String) -> Result<String, Error> {
        env.set_syntax(syntax());
        env.add_template_owned("t", source)?;
        env.get_template("t")?.render(minijinja::context! {
            messages => vec![
                minijinja::context! { role => "user", content => "Hi" },
                minijinja::context! { role => "assistant", content => "Hello" },
            ],
        })
    }

    /// With Python's string and dict methods, as chat templates get them.
    fn python_env() -> Environment<'static> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env
    }

    fn native(source: &str) -> Result<String, Error> {
        render(python_env(), source.to_string())
    }

    fn checked(source: &str) -> Result<String, Error> {
        let mut env = python_env();
        env.set_fuel(Some(1_000_000));
        register(&mut env);
        let rewritten = rewrite_value_builders(source, syntax()).unwrap();
        render(env, rewritten)
    }

    /// Every place an expression can stand, and every expression kind the rewrite wraps,
    /// renders exactly as without the rewrite.
    #[test]
    fn templates_render_as_without_the_check() {
        let benign = [
            "{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ -2 * 3 }} {{ 2 ** 3 * 2 }} {{ 7 // 2 + 7 % 2 }}",
            "{{ 'ab' * 3 }} {{ 3 * 'ab' }} {{ [1, 2] * 2 }} {{ (1, 2) * 2 }} {{ [1] + [2, 3] }}",
            "{{ 'a' ~ [1, 2] ~ {'k': (1,)} }} {{ [[1, 2], {'a': [3]}] }} {{ {'a': 1}['a'] }}",
            "{{ [1, 2, 3][1:] }} {{ [1, 2, 3][::-1] }} {{ ([3, 1, 2]|sort)[0] }} {{ [1, 2][0] * 2 }}",
            "{{ messages|map(attribute='role')|join(',') }} {{ messages|length * 2 }}",
            "{{ (messages|selectattr('role', 'eq', 'user')|list)[0].content|upper }}",
            "{{ (1 + 2)|string ~ 'x' }} {{ -3|abs }} {{ 'a b'.split(' ')|list }} {{ 'x'.upper() }}",
            "{{ range(3)|list + range(2)|list }} {{ dict(a=1, b=[2]) }} {{ namespace(a=1).a }}",
            "{% if messages|length > 1 and 'a' in ['a'] %}y{% endif %}{{ 1 if [] else 2 }}",
            "{% if [1] is defined and missing|default([1, 2]) is iterable %}ok{% endif %}",
            "{{ missing is defined }} {{ (missing|default('d')) ~ '' }} {{ none|default([]) }}",
            // targets of assignments and loops are not values: bare tuples, unpacking
            "{% set a, b = 1, 2 %}{{ a + b }}{% set t = 1, [2] %}{{ t }}",
            "{% for k, v in {'a': 1, 'b': [2]}|items %}{{ k }}={{ v }};{% endfor %}",
            "{% for m in messages if m.role != 'x' %}{{ loop.index * 10 }}{{ loop.cycle('a', 'b') }}{% else %}none{% endfor %}",
            "{% for i in [[1, [2]], [3]] recursive %}[{{ loop(i[1:]) if i|length > 1 else i }}]{% endfor %}",
            "{% with x = [1, 2] + [3], y = {'k': 'v'} %}{{ x }}{{ y.k }}{% endwith %}",
            // macros: defaults, calls, call blocks, varargs
            "{% macro f(a, b=[1, 2] + [3], c={'k': 1}) %}{{ a }}{{ b }}{{ c }}{% endmacro %}{{ f(1) }}{{ f([2] * 2, c=(3,)) }}",
            "{% macro m(x) %}<{{ caller(x * 2) }}>{% endmacro %}{% call(y) m([1] + [2]) %}{{ y|length }}{% endcall %}",
            // filter blocks, set blocks with filters, do
            "{% filter upper|replace('A', 'b' * 2) %}abc{% endfilter %}{% set s | trim|upper %}  x  {% endset %}{{ s }}",
            "{% macro g(x) %}{% endmacro %}{% do g([1] * 2) %}{% do 'a'.upper() %}ok",
            "{% set x = [1, 2] %}{{ x|tojson }} {{ x|map('string')|join }} {{ x|sum * 2 }}",
            // whitespace control and line statements keep their meaning
            "{%- set x = [1] * 2 -%}\n  {{- x -}}  \n{% if x %}\n{{ x + [3] }}\n{% endif %}",
            // no space between a call or a literal and a keyword (found by the fuzzer)
            "{{ range(2)in [range(2)] }}{{ 1 in[1] }}{{ 2 if[1]else 3 }}{{ (1,)in[(1,)] }}",
        ];
        for source in benign {
            let theirs = native(source).unwrap_or_else(|e| panic!("{source}: {e:#}"));
            let ours = checked(source).unwrap_or_else(|e| panic!("{source}: {e:#}"));
            assert_eq!(ours, theirs, "{source}");
            let rewritten = rewrite_value_builders(source, syntax()).unwrap();
            assert!(rewritten.contains(CHECK), "{rewritten}");
            assert_eq!(rewritten.lines().count(), source.lines().count());
        }
        let broken = "{{ [1, }}{% for %}";
        assert_eq!(rewrite_value_builders(broken, syntax()).unwrap(), broken);
    }

    /// Without the check each of these runs for seconds or more and builds gigabytes (the
    /// first one was found by the fuzzer); with it each is a plain error.
    #[test]
    fn values_that_would_grow_without_bound_are_refused() {
        let hostile = [
            "{{ 'x'.split(' ') * 99999999 }}",
            "{{ (['x'] * 99999999) ~ '' }}",
            "{{ (['x'] * 99999999)|string }}",
            "{{ [['x'] * 99999] * 99999 }}",
            "{% set a = range(99999)|list %}{% set b = [a, a, a, a] %}{% set c = [b, b, b, b] %}\
             {% set d = [c, c, c, c] %}{{ (d ~ '')|length }}",
            "{% macro f(l, n) %}{% if n %}{{ f([l, l], n - 1) }}{% else %}{{ l ~ '' }}{% endif %}\
             {% endmacro %}{{ f([1], 60) }}",
            "{% macro f(l, n) %}{% if n %}{{ f(l + l, n - 1) }}{% else %}{{ l|length }}{% endif %}\
             {% endmacro %}{{ f([1], 60) }}",
            "{% set s = 'x' * 9999999 %}{{ [s, s, s, s, s, s, s, s]|string|length }}",
            "{% set a = range(99999)|list %}{% set m = {(a, a, a, a): 1} %}\
             {% set n = {(m, m, m, m): 1} %}{{ ({(n, n, n, n): 1} ~ '')|length }}",
        ];
        for source in hostile {
            let e = checked(source).unwrap_err();
            assert!(e.to_string().contains("grew past"), "{source}: {e:#}");
        }
    }

    #[test]
    fn the_limit_is_exact_and_the_walk_costs_fuel() {
        let mut env = Environment::new();
        register(&mut env);
        // the list itself is one unit, each item one more
        let fits = format!("{{{{ (range(1)|list) * {} }}}}", MAX_VALUE_SIZE - 1);
        assert!(render(
            env.clone(),
            rewrite_value_builders(&fits, syntax()).unwrap()
        )
        .is_ok());
        let over = format!("{{{{ (range(1)|list) * {} }}}}", MAX_VALUE_SIZE);
        let e = render(
            env.clone(),
            rewrite_value_builders(&over, syntax()).unwrap(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("grew past"), "{e:#}");
        // checking a big list over and over runs out of fuel
        env.set_fuel(Some(1_000_000));
        let source = "{% set l = range(99999)|list %}{% for i in range(1000) %}{% set x = l + [] %}{% endfor %}";
        let e = render(env, rewrite_value_builders(source, syntax()).unwrap()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::OutOfFuel, "{e:#}");
    }
}
