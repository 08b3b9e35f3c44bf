//! `meta` expressions: rule names combined with `&& || ! ( )`, arithmetic and comparisons.
//!
//! Values follow Perl, as SpamAssassin evaluates them: a rule name is its hit count (0 when it
//! did not hit or does not exist), `&&`/`||` return one of their operands (so `A || B` can be
//! 2), `!` and comparisons give 1 or 0. A division by zero makes the expression false.

/// A parsed expression; rule names are indexes into the rule set's name table.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Num(f64),
    Var(usize),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Bin(Op, Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Name(String),
    Num(f64),
    Op(&'static str),
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    const OPS: [&str; 16] = [
        "&&", "||", "==", "!=", ">=", "<=", "!", "(", ")", "<", ">", "+", "-", "*", "/", "=",
    ];
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Name(s[start..i].to_string()));
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            let start = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            let n: f64 = s[start..i]
                .parse()
                .map_err(|_| format!("bad number '{}'", &s[start..i]))?;
            out.push(Tok::Num(n));
        } else {
            let Some(op) = OPS.iter().find(|op| s[i..].starts_with(**op)) else {
                return Err(format!(
                    "unexpected character '{}'",
                    s[i..].chars().next().unwrap_or('?')
                ));
            };
            if *op == "=" {
                return Err("'=' is not an operator (use '==')".into());
            }
            out.push(Tok::Op(op));
            i += op.len();
        }
    }
    Ok(out)
}

/// Parses `src`; every rule name is passed to `resolve`, which returns its index.
pub fn parse(src: &str, resolve: &mut dyn FnMut(&str) -> usize) -> Result<Expr, String> {
    let toks = tokenize(src)?;
    if toks.is_empty() {
        return Err("empty meta expression".into());
    }
    let mut p = Parser {
        toks: &toks,
        i: 0,
        resolve,
        depth: 0,
    };
    let e = p.expr(0)?;
    if p.i != toks.len() {
        return Err(format!("unexpected '{}'", show(&toks[p.i])));
    }
    Ok(e)
}

/// The names `src` refers to, without parsing it fully (for dependency checks).
pub fn names(src: &str) -> Vec<String> {
    tokenize(src)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|t| match t {
            Tok::Name(n) => Some(n),
            _ => None,
        })
        .collect()
}

fn show(t: &Tok) -> String {
    match t {
        Tok::Name(n) => n.clone(),
        Tok::Num(n) => n.to_string(),
        Tok::Op(o) => (*o).to_string(),
    }
}

struct Parser<'a, 'r> {
    toks: &'a [Tok],
    i: usize,
    resolve: &'r mut dyn FnMut(&str) -> usize,
    depth: usize,
}

fn binop(op: &str) -> Option<(Op, u8)> {
    // Perl precedence, loosest first.
    Some(match op {
        "||" => (Op::Or, 1),
        "&&" => (Op::And, 2),
        "==" => (Op::Eq, 3),
        "!=" => (Op::Ne, 3),
        "<" => (Op::Lt, 4),
        "<=" => (Op::Le, 4),
        ">" => (Op::Gt, 4),
        ">=" => (Op::Ge, 4),
        "+" => (Op::Add, 5),
        "-" => (Op::Sub, 5),
        "*" => (Op::Mul, 6),
        "/" => (Op::Div, 6),
        _ => return None,
    })
}

impl Parser<'_, '_> {
    fn expr(&mut self, min_prec: u8) -> Result<Expr, String> {
        self.depth += 1;
        if self.depth > 200 {
            return Err("expression nested too deeply".into());
        }
        let mut lhs = self.unary()?;
        while let Some(Tok::Op(op)) = self.toks.get(self.i) {
            let Some((op, prec)) = binop(op) else { break };
            if prec < min_prec {
                break;
            }
            self.i += 1;
            // all these operators are left-associative (Perl's comparisons are
            // non-associative; chaining them is rare and harmless here)
            let rhs = self.expr(prec + 1)?;
            lhs = Expr::Bin(op, Box::new(lhs), Box::new(rhs));
        }
        self.depth -= 1;
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        let Some(t) = self.toks.get(self.i) else {
            return Err("expression ends too early".into());
        };
        self.i += 1;
        self.depth += 1;
        if self.depth > 400 {
            return Err("expression nested too deeply".into());
        }
        let r = self.unary_inner(t);
        self.depth -= 1;
        r
    }

    fn unary_inner(&mut self, t: &Tok) -> Result<Expr, String> {
        match t {
            Tok::Op("!") => Ok(Expr::Not(Box::new(self.unary()?))),
            Tok::Op("-") => Ok(Expr::Neg(Box::new(self.unary()?))),
            Tok::Op("+") => self.unary(),
            Tok::Op("(") => {
                let e = self.expr(0)?;
                match self.toks.get(self.i) {
                    Some(Tok::Op(")")) => {
                        self.i += 1;
                        Ok(e)
                    }
                    _ => Err("missing ')'".into()),
                }
            }
            Tok::Num(n) => Ok(Expr::Num(*n)),
            Tok::Name(n) => Ok(Expr::Var((self.resolve)(n))),
            Tok::Op(o) => Err(format!("unexpected '{o}'")),
        }
    }
}

fn truth(v: f64) -> bool {
    v != 0.0 && !v.is_nan()
}

fn b(x: bool) -> f64 {
    if x { 1.0 } else { 0.0 }
}

/// Evaluates `e` with `values[i]` as the value of name `i`.
pub fn eval(e: &Expr, values: &[f64]) -> f64 {
    match e {
        Expr::Num(n) => *n,
        Expr::Var(i) => values.get(*i).copied().unwrap_or(0.0),
        Expr::Not(x) => b(!truth(eval(x, values))),
        Expr::Neg(x) => -eval(x, values),
        Expr::Bin(op, l, r) => {
            let lv = eval(l, values);
            match op {
                Op::Or => {
                    if truth(lv) {
                        lv
                    } else {
                        eval(r, values)
                    }
                }
                Op::And => {
                    if truth(lv) {
                        eval(r, values)
                    } else {
                        lv
                    }
                }
                _ => {
                    let rv = eval(r, values);
                    match op {
                        Op::Eq => b(lv == rv),
                        Op::Ne => b(lv != rv),
                        Op::Lt => b(lv < rv),
                        Op::Le => b(lv <= rv),
                        Op::Gt => b(lv > rv),
                        Op::Ge => b(lv >= rv),
                        Op::Add => lv + rv,
                        Op::Sub => lv - rv,
                        Op::Mul => lv * rv,
                        Op::Div => {
                            if rv == 0.0 {
                                f64::NAN
                            } else {
                                lv / rv
                            }
                        }
                        Op::Or | Op::And => 0.0,
                    }
                }
            }
        }
    }
}

/// The variables `e` refers to.
pub fn vars(e: &Expr, out: &mut Vec<usize>) {
    match e {
        Expr::Num(_) => {}
        Expr::Var(i) => out.push(*i),
        Expr::Not(x) | Expr::Neg(x) => vars(x, out),
        Expr::Bin(_, l, r) => {
            vars(l, out);
            vars(r, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run(src: &str, vals: &[(&str, f64)]) -> f64 {
        let mut names: HashMap<String, usize> = HashMap::new();
        let e = parse(src, &mut |n| {
            let k = names.len();
            *names.entry(n.to_string()).or_insert(k)
        })
        .unwrap();
        let mut values = vec![0.0; names.len()];
        for (n, v) in vals {
            if let Some(&i) = names.get(*n) {
                values[i] = *v;
            }
        }
        eval(&e, &values)
    }

    #[test]
    fn boolean_logic_and_precedence() {
        assert_eq!(run("A && B || C", &[("C", 1.0)]), 1.0);
        assert_eq!(run("A && (B || C)", &[("C", 1.0)]), 0.0);
        assert_eq!(run("!A && B", &[("B", 1.0)]), 1.0);
        assert_eq!(run("! (A || B)", &[("B", 1.0)]), 0.0);
        // Perl's || returns the operand
        assert_eq!(run("A || B", &[("B", 3.0)]), 3.0);
    }

    #[test]
    fn arithmetic_and_comparisons() {
        assert_eq!(run("(A + B + C) > 1", &[("A", 1.0), ("C", 1.0)]), 1.0);
        assert_eq!(run("(A + B + C) >= 3", &[("A", 1.0), ("C", 1.0)]), 0.0);
        assert_eq!(run("A * 2 - 1 == 1", &[("A", 1.0)]), 1.0);
        assert_eq!(run("A + B * 2", &[("A", 1.0), ("B", 1.0)]), 3.0);
        assert_eq!(run("-1 < A", &[]), 1.0);
        assert!(run("A / B", &[("A", 1.0)]).is_nan());
        assert_eq!(run("0.5 <= 0.50", &[]), 1.0);
        assert_eq!(run("A != 0", &[]), 0.0);
    }

    #[test]
    fn syntax_errors() {
        for bad in ["", "A &&", "(A", "A B", "A = B", "A $ B", "A)", "&& A"] {
            assert!(parse(bad, &mut |_| 0).is_err(), "{bad}");
        }
        let deep = "(".repeat(500) + "A" + &")".repeat(500);
        assert!(parse(&deep, &mut |_| 0).is_err());
    }
}
