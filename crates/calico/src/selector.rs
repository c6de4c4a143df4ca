//! Calico's label selectors: parsing with byte positions, matching, and a
//! canonical form.
//!
//! The grammar and the meaning of each operator follow Calico's selector
//! library (`libcalico-go/lib/selector`): `k == 'v'`, `k != 'v'`,
//! `k in {'a', 'b'}`, `k not in {...}`, `has(k)`, `all()`,
//! `k contains 's'`, `k starts with 's'`, `k ends with 's'`, combined with
//! `!`, `&&`, `||` and parentheses. Precedence, highest first: the match
//! operators, parentheses, `!`, `&&`, `||`. Values are single- or
//! double-quoted strings without escapes. Label keys are runs of letters,
//! digits and `-_./` (so `example.com/tier` is one key). An empty selector
//! is `all()`. Like Calico, `k != 'v'` and `k not in {...}` also match
//! endpoints that lack the label `k`.
//!
//! `global()` is refused: it names non-namespaced Calico resources that
//! netmod does not have.
//!
//! Every parsed selector is normalised: negations are pushed down to the
//! match operators (`!(k == 'v')` is `k != 'v'`, De Morgan for `&&`/`||`),
//! nested `&&`/`||` are flattened, their operands sorted and de-duplicated,
//! one-element sets become `==`/`!=`, and `all()` is folded away where it
//! has no effect. [`Selector`]'s `Display` prints that normal form, so two
//! spellings of the same selector print the same string: the key under which
//! the node shares one kernel set per distinct selector.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

/// How deeply parentheses may nest before the parser refuses the selector
/// (bounds the recursion of parsing, normalising and matching).
pub const MAX_NESTING: usize = 64;

/// A parsed, normalised selector, with the text it was parsed from.
///
/// Equality, ordering and hashing use the normal form only: two selectors
/// that differ only in spelling are equal.
#[derive(Clone, Debug)]
pub struct Selector {
    source: String,
    expr: Expr,
}

/// A selector expression. Parsed selectors are always in the normal form
/// described in the module documentation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Expr {
    /// `all()`: every endpoint.
    All,
    /// `!all()`: no endpoint.
    Nothing,
    /// `has(k)`.
    Has(String),
    /// `!has(k)`.
    NotHas(String),
    /// `k == 'v'`.
    Eq(String, String),
    /// `k != 'v'` (also true when `k` is absent).
    Ne(String, String),
    /// `k in {...}`.
    In(String, BTreeSet<String>),
    /// `k not in {...}` (also true when `k` is absent).
    NotIn(String, BTreeSet<String>),
    /// `k contains 's'`.
    Contains(String, String),
    /// `k starts with 's'`.
    StartsWith(String, String),
    /// `k ends with 's'`.
    EndsWith(String, String),
    /// `!e`; in the normal form only around `contains`/`starts with`/`ends with`.
    Not(Box<Expr>),
    /// `a && b && ...` (at least two operands in the normal form).
    And(Vec<Expr>),
    /// `a || b || ...` (at least two operands in the normal form).
    Or(Vec<Expr>),
}

/// A selector that does not parse: what was expected, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorError {
    /// The selector text.
    pub input: String,
    /// Byte offset of the error in `input`.
    pub offset: usize,
    /// What went wrong, without the position.
    pub message: String,
}

impl SelectorError {
    /// The input with a caret under the error, on two lines.
    pub fn caret(&self) -> String {
        let column = self.input[..self.offset.min(self.input.len())]
            .chars()
            .count();
        let shown: String = self
            .input
            .chars()
            .map(|c| if c.is_whitespace() { ' ' } else { c })
            .collect();
        format!("{shown}\n{}^", " ".repeat(column))
    }
}

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}\n  ", self.message, self.offset)?;
        let caret = self.caret();
        let (line, mark) = caret.split_once('\n').unwrap_or((&caret, ""));
        write!(f, "{line}\n  {mark}")
    }
}

impl std::error::Error for SelectorError {}

impl Selector {
    /// Parses Calico selector syntax. Empty (or blank) text is `all()`.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let expr = Parser::new(text).parse()?;
        Ok(Selector {
            source: text.to_string(),
            expr: expr.normalized(),
        })
    }

    /// `all()`.
    pub fn all() -> Selector {
        Selector {
            source: "all()".to_string(),
            expr: Expr::All,
        }
    }

    /// The text this selector was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The normalised expression.
    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// Whether an endpoint with these labels is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.expr.matches(labels)
    }

    /// The canonical text (same as `to_string()`).
    pub fn canonical(&self) -> String {
        self.expr.to_string()
    }

    /// True for `all()` (including the empty selector).
    pub fn is_all(&self) -> bool {
        self.expr == Expr::All
    }

    /// The label keys the selector looks at.
    pub fn label_keys(&self) -> BTreeSet<&str> {
        let mut keys = BTreeSet::new();
        self.expr.collect_keys(&mut keys);
        keys
    }
}

impl PartialEq for Selector {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr
    }
}
impl Eq for Selector {}
impl Hash for Selector {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.expr.hash(state)
    }
}
impl PartialOrd for Selector {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Selector {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.expr.cmp(&other.expr)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.expr.fmt(f)
    }
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::parse(s)
    }
}

impl serde::Serialize for Selector {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl<'de> serde::Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Selector::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Expr {
    /// Whether an endpoint with these labels matches.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let get = |k: &String| labels.get(k);
        match self {
            Expr::All => true,
            Expr::Nothing => false,
            Expr::Has(k) => labels.contains_key(k),
            Expr::NotHas(k) => !labels.contains_key(k),
            Expr::Eq(k, v) => get(k) == Some(v),
            Expr::Ne(k, v) => get(k) != Some(v),
            Expr::In(k, set) => get(k).is_some_and(|v| set.contains(v)),
            Expr::NotIn(k, set) => !get(k).is_some_and(|v| set.contains(v)),
            Expr::Contains(k, s) => get(k).is_some_and(|v| v.contains(s.as_str())),
            Expr::StartsWith(k, s) => get(k).is_some_and(|v| v.starts_with(s.as_str())),
            Expr::EndsWith(k, s) => get(k).is_some_and(|v| v.ends_with(s.as_str())),
            Expr::Not(e) => !e.matches(labels),
            Expr::And(es) => es.iter().all(|e| e.matches(labels)),
            Expr::Or(es) => es.iter().any(|e| e.matches(labels)),
        }
    }

    /// The normal form (see the module documentation). Idempotent.
    pub fn normalized(&self) -> Expr {
        self.normalize(false)
    }

    fn normalize(&self, negate: bool) -> Expr {
        fn set_of(k: &str, set: &BTreeSet<String>, negate: bool) -> Expr {
            match (set.len(), negate) {
                (0, false) => Expr::Nothing,
                (0, true) => Expr::All,
                (1, false) => Expr::Eq(k.to_string(), set.iter().next().cloned().unwrap()),
                (1, true) => Expr::Ne(k.to_string(), set.iter().next().cloned().unwrap()),
                (_, false) => Expr::In(k.to_string(), set.clone()),
                (_, true) => Expr::NotIn(k.to_string(), set.clone()),
            }
        }
        fn substring(e: Expr, k: &str, s: &str, negate: bool) -> Expr {
            // An empty substring only asks for the label to be there.
            let e = if s.is_empty() {
                Expr::Has(k.to_string())
            } else {
                e
            };
            match (e, negate) {
                (Expr::Has(k), true) => Expr::NotHas(k),
                (e, true) => Expr::Not(Box::new(e)),
                (e, false) => e,
            }
        }
        match self {
            Expr::All if negate => Expr::Nothing,
            Expr::All => Expr::All,
            Expr::Nothing if negate => Expr::All,
            Expr::Nothing => Expr::Nothing,
            Expr::Has(k) if negate => Expr::NotHas(k.clone()),
            Expr::Has(k) => Expr::Has(k.clone()),
            Expr::NotHas(k) if negate => Expr::Has(k.clone()),
            Expr::NotHas(k) => Expr::NotHas(k.clone()),
            Expr::Eq(k, v) if negate => Expr::Ne(k.clone(), v.clone()),
            Expr::Eq(k, v) => Expr::Eq(k.clone(), v.clone()),
            Expr::Ne(k, v) if negate => Expr::Eq(k.clone(), v.clone()),
            Expr::Ne(k, v) => Expr::Ne(k.clone(), v.clone()),
            Expr::In(k, set) => set_of(k, set, negate),
            Expr::NotIn(k, set) => set_of(k, set, !negate),
            Expr::Contains(k, s) => substring(self.clone(), k, s, negate),
            Expr::StartsWith(k, s) => substring(self.clone(), k, s, negate),
            Expr::EndsWith(k, s) => substring(self.clone(), k, s, negate),
            Expr::Not(e) => e.normalize(!negate),
            // De Morgan: a negated conjunction is the disjunction of the
            // negations, and the other way round.
            Expr::And(es) => combine(es.iter().map(|e| e.normalize(negate)), !negate),
            Expr::Or(es) => combine(es.iter().map(|e| e.normalize(negate)), negate),
        }
    }

    fn collect_keys<'a>(&'a self, keys: &mut BTreeSet<&'a str>) {
        match self {
            Expr::All | Expr::Nothing => {}
            Expr::Has(k) | Expr::NotHas(k) => {
                keys.insert(k);
            }
            Expr::Eq(k, _)
            | Expr::Ne(k, _)
            | Expr::Contains(k, _)
            | Expr::StartsWith(k, _)
            | Expr::EndsWith(k, _)
            | Expr::In(k, _)
            | Expr::NotIn(k, _) => {
                keys.insert(k);
            }
            Expr::Not(e) => e.collect_keys(keys),
            Expr::And(es) | Expr::Or(es) => es.iter().for_each(|e| e.collect_keys(keys)),
        }
    }

    fn is_compound(&self) -> bool {
        matches!(self, Expr::And(_) | Expr::Or(_))
    }
}

/// Builds a normalised `&&` (`conjunction`) or `||` from normalised operands.
fn combine(operands: impl Iterator<Item = Expr>, conjunction: bool) -> Expr {
    // For `&&`, `all()` is the identity and `!all()` absorbs; for `||` the
    // other way round.
    let (identity, absorbing) = if conjunction {
        (Expr::All, Expr::Nothing)
    } else {
        (Expr::Nothing, Expr::All)
    };
    let mut flat = BTreeSet::new();
    for e in operands {
        match e {
            Expr::And(inner) if conjunction => flat.extend(inner),
            Expr::Or(inner) if !conjunction => flat.extend(inner),
            e if e == identity => {}
            e if e == absorbing => return absorbing,
            e => {
                flat.insert(e);
            }
        }
    }
    let mut flat: Vec<Expr> = flat.into_iter().collect();
    match flat.len() {
        0 => identity,
        1 => flat.pop().unwrap(),
        _ if conjunction => Expr::And(flat),
        _ => Expr::Or(flat),
    }
}

fn quoted(f: &mut fmt::Formatter<'_>, value: &str) -> fmt::Result {
    if value.contains('"') {
        write!(f, "'{value}'")
    } else {
        write!(f, "\"{value}\"")
    }
}

fn write_set(f: &mut fmt::Formatter<'_>, set: &BTreeSet<String>) -> fmt::Result {
    f.write_str("{")?;
    for (i, v) in set.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        quoted(f, v)?;
    }
    f.write_str("}")
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::All => f.write_str("all()"),
            Expr::Nothing => f.write_str("!all()"),
            Expr::Has(k) => write!(f, "has({k})"),
            Expr::NotHas(k) => write!(f, "!has({k})"),
            Expr::Eq(k, v) => {
                write!(f, "{k} == ")?;
                quoted(f, v)
            }
            Expr::Ne(k, v) => {
                write!(f, "{k} != ")?;
                quoted(f, v)
            }
            Expr::In(k, set) => {
                write!(f, "{k} in ")?;
                write_set(f, set)
            }
            Expr::NotIn(k, set) => {
                write!(f, "{k} not in ")?;
                write_set(f, set)
            }
            Expr::Contains(k, s) => {
                write!(f, "{k} contains ")?;
                quoted(f, s)
            }
            Expr::StartsWith(k, s) => {
                write!(f, "{k} starts with ")?;
                quoted(f, s)
            }
            Expr::EndsWith(k, s) => {
                write!(f, "{k} ends with ")?;
                quoted(f, s)
            }
            Expr::Not(e) => write!(f, "!({e})"),
            Expr::And(es) | Expr::Or(es) => {
                let op = if matches!(self, Expr::And(_)) {
                    " && "
                } else {
                    " || "
                };
                for (i, e) in es.iter().enumerate() {
                    if i > 0 {
                        f.write_str(op)?;
                    }
                    if e.is_compound() {
                        write!(f, "({e})")?;
                    } else {
                        write!(f, "{e}")?;
                    }
                }
                Ok(())
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Tokenizer and recursive-descent parser.

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    LParen,
    RParen,
    LBrace,
    RBrace,
    Comma,
    Eq,
    Ne,
    Not,
    And,
    Or,
    Str(String),
    Ident(String),
    End,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::LParen => f.write_str("'('"),
            Tok::RParen => f.write_str("')'"),
            Tok::LBrace => f.write_str("'{'"),
            Tok::RBrace => f.write_str("'}'"),
            Tok::Comma => f.write_str("','"),
            Tok::Eq => f.write_str("'=='"),
            Tok::Ne => f.write_str("'!='"),
            Tok::Not => f.write_str("'!'"),
            Tok::And => f.write_str("'&&'"),
            Tok::Or => f.write_str("'||'"),
            Tok::Str(s) => write!(f, "the string {s:?}"),
            Tok::Ident(s) => write!(f, "'{s}'"),
            Tok::End => f.write_str("the end of the selector"),
        }
    }
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b'-')
}

struct Parser<'a> {
    input: &'a str,
    pos: usize,
    /// The current token and the byte offset where it starts.
    tok: Tok,
    at: usize,
    depth: usize,
}

type PResult<T> = Result<T, SelectorError>;

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Self {
        Parser {
            input,
            pos: 0,
            tok: Tok::End,
            at: 0,
            depth: 0,
        }
    }

    fn error<T>(&self, offset: usize, message: impl Into<String>) -> PResult<T> {
        Err(SelectorError {
            input: self.input.to_string(),
            offset,
            message: message.into(),
        })
    }

    /// Reads the next token into `self.tok`.
    fn advance(&mut self) -> PResult<()> {
        let bytes = self.input.as_bytes();
        while self.pos < bytes.len() && bytes[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
        self.at = self.pos;
        let Some(&b) = bytes.get(self.pos) else {
            self.tok = Tok::End;
            return Ok(());
        };
        let two = |second: u8| bytes.get(self.pos + 1) == Some(&second);
        let (tok, len) = match b {
            b'(' => (Tok::LParen, 1),
            b')' => (Tok::RParen, 1),
            b'{' => (Tok::LBrace, 1),
            b'}' => (Tok::RBrace, 1),
            b',' => (Tok::Comma, 1),
            b'=' if two(b'=') => (Tok::Eq, 2),
            b'=' => return self.error(self.pos, "'=' must be '=='"),
            b'!' if two(b'=') => (Tok::Ne, 2),
            b'!' => (Tok::Not, 1),
            b'&' if two(b'&') => (Tok::And, 2),
            b'&' => return self.error(self.pos, "'&' must be '&&'"),
            b'|' if two(b'|') => (Tok::Or, 2),
            b'|' => return self.error(self.pos, "'|' must be '||'"),
            b'\'' | b'"' => {
                let rest = &self.input[self.pos + 1..];
                let Some(end) = rest.find(b as char) else {
                    return self.error(self.pos, "unterminated string");
                };
                (Tok::Str(rest[..end].to_string()), end + 2)
            }
            b if is_key_byte(b) => {
                let len = bytes[self.pos..]
                    .iter()
                    .take_while(|&&b| is_key_byte(b))
                    .count();
                let word = &self.input[self.pos..self.pos + len];
                (Tok::Ident(word.to_string()), len)
            }
            _ => {
                let c = self.input[self.pos..].chars().next().unwrap_or('?');
                return self.error(self.pos, format!("unexpected character {c:?}"));
            }
        };
        self.tok = tok;
        self.pos += len;
        Ok(())
    }

    /// The byte after the current token's trailing whitespace: is it `(`?
    fn next_is_lparen(&self) -> bool {
        self.input[self.pos..].trim_start().starts_with('(')
    }

    fn parse(mut self) -> PResult<Expr> {
        self.advance()?;
        if self.tok == Tok::End {
            return Ok(Expr::All);
        }
        let e = self.or()?;
        if self.tok != Tok::End {
            let what = match &self.tok {
                Tok::RParen => "unmatched ')'".to_string(),
                t => format!("expected '&&', '||' or the end of the selector, found {t}"),
            };
            return self.error(self.at, what);
        }
        Ok(e)
    }

    fn or(&mut self) -> PResult<Expr> {
        let mut terms = vec![self.and()?];
        while self.tok == Tok::Or {
            self.advance()?;
            terms.push(self.and()?);
        }
        Ok(if terms.len() == 1 {
            terms.pop().unwrap()
        } else {
            Expr::Or(terms)
        })
    }

    fn and(&mut self) -> PResult<Expr> {
        let mut terms = vec![self.unary()?];
        while self.tok == Tok::And {
            self.advance()?;
            terms.push(self.unary()?);
        }
        Ok(if terms.len() == 1 {
            terms.pop().unwrap()
        } else {
            Expr::And(terms)
        })
    }

    fn unary(&mut self) -> PResult<Expr> {
        let mut negate = false;
        while self.tok == Tok::Not {
            negate = !negate;
            self.advance()?;
        }
        let e = self.primary()?;
        Ok(if negate { Expr::Not(Box::new(e)) } else { e })
    }

    fn primary(&mut self) -> PResult<Expr> {
        let start = self.at;
        match self.tok.clone() {
            Tok::LParen => {
                self.depth += 1;
                if self.depth > MAX_NESTING {
                    return self.error(
                        start,
                        format!("parentheses nest more than {MAX_NESTING} deep"),
                    );
                }
                self.advance()?;
                if self.tok == Tok::RParen {
                    return self.error(self.at, "empty parentheses");
                }
                let e = self.or()?;
                if self.tok != Tok::RParen {
                    return self.error(
                        self.at,
                        format!(
                            "expected ')' to close the '(' at byte {start}, found {}",
                            self.tok
                        ),
                    );
                }
                self.depth -= 1;
                self.advance()?;
                Ok(e)
            }
            Tok::Ident(word)
                if self.next_is_lparen() && matches!(word.as_str(), "all" | "has" | "global") =>
            {
                self.advance()?; // now at '('
                self.advance()?;
                let e = match word.as_str() {
                    "all" => Expr::All,
                    "global" => {
                        return self.error(
                            start,
                            "global() is not supported: it selects non-namespaced Calico resources, which netmod does not have",
                        )
                    }
                    _ => match self.tok.clone() {
                        Tok::Ident(key) => {
                            self.advance()?;
                            Expr::Has(key)
                        }
                        t => {
                            return self
                                .error(self.at, format!("expected a label key in has(...), found {t}"))
                        }
                    },
                };
                if self.tok != Tok::RParen {
                    return self.error(
                        self.at,
                        format!("expected ')' to close {word}(, found {}", self.tok),
                    );
                }
                self.advance()?;
                Ok(e)
            }
            Tok::Ident(key) => {
                self.advance()?;
                self.comparison(key)
            }
            t => self.error(
                start,
                format!("expected a label, '(', '!', has(...) or all(), found {t}"),
            ),
        }
    }

    /// After a label key: the operator and its operand.
    fn comparison(&mut self, key: String) -> PResult<Expr> {
        let op_at = self.at;
        let expected = || {
            format!(
                "expected an operator after the label '{key}' (==, !=, in, not in, contains, starts with, ends with)"
            )
        };
        match self.tok.clone() {
            Tok::Eq => {
                self.advance()?;
                Ok(Expr::Eq(key, self.string("'=='")?))
            }
            Tok::Ne => {
                self.advance()?;
                Ok(Expr::Ne(key, self.string("'!='")?))
            }
            Tok::Ident(op) => match op.as_str() {
                "in" => {
                    self.advance()?;
                    Ok(Expr::In(key, self.set("in")?))
                }
                "not" => {
                    self.advance()?;
                    if self.tok != Tok::Ident("in".into()) {
                        return self.error(
                            self.at,
                            format!("expected 'in' after 'not', found {}", self.tok),
                        );
                    }
                    self.advance()?;
                    Ok(Expr::NotIn(key, self.set("not in")?))
                }
                "contains" => {
                    self.advance()?;
                    Ok(Expr::Contains(key, self.string("'contains'")?))
                }
                "starts" | "ends" => {
                    self.advance()?;
                    if self.tok != Tok::Ident("with".into()) {
                        return self.error(
                            self.at,
                            format!("expected 'with' after '{op}', found {}", self.tok),
                        );
                    }
                    self.advance()?;
                    let operand = self.string(&format!("'{op} with'"))?;
                    Ok(if op == "starts" {
                        Expr::StartsWith(key, operand)
                    } else {
                        Expr::EndsWith(key, operand)
                    })
                }
                _ => self.error(op_at, format!("{}, found {}", expected(), self.tok)),
            },
            t => self.error(op_at, format!("{}, found {t}", expected())),
        }
    }

    fn string(&mut self, after: &str) -> PResult<String> {
        match self.tok.clone() {
            Tok::Str(s) => {
                self.advance()?;
                Ok(s)
            }
            t => self.error(
                self.at,
                format!("expected a quoted value after {after}, found {t}"),
            ),
        }
    }

    fn set(&mut self, after: &str) -> PResult<BTreeSet<String>> {
        if self.tok != Tok::LBrace {
            return self.error(
                self.at,
                format!("expected '{{' after '{after}', found {}", self.tok),
            );
        }
        self.advance()?;
        let mut values = BTreeSet::new();
        loop {
            match self.tok.clone() {
                Tok::RBrace => break,
                Tok::Str(s) => {
                    values.insert(s);
                    self.advance()?;
                    match self.tok {
                        Tok::Comma => self.advance()?,
                        Tok::RBrace => break,
                        ref t => {
                            return self.error(
                                self.at,
                                format!("expected ',' or '}}' in a set, found {t}"),
                            )
                        }
                    }
                }
                t => {
                    return self.error(
                        self.at,
                        format!("expected a quoted value or '}}' in a set, found {t}"),
                    )
                }
            }
        }
        self.advance()?;
        Ok(values)
    }
}

#[cfg(test)]
mod tests;
