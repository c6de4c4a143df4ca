use super::*;
use proptest::prelude::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sel(text: &str) -> Selector {
    Selector::parse(text).unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
}

fn canon(text: &str) -> String {
    sel(text).to_string()
}

fn err(text: &str) -> SelectorError {
    match Selector::parse(text) {
        Ok(s) => panic!("{text:?} should not parse, got {s}"),
        Err(e) => e,
    }
}

// --- Meaning of each operator (Calico's documented semantics) -------------

#[test]
fn equality_needs_the_label_with_that_value() {
    let s = sel("role == 'db'");
    assert!(s.matches(&labels(&[("role", "db")])));
    assert!(!s.matches(&labels(&[("role", "web")])));
    assert!(!s.matches(&labels(&[])));
}

#[test]
fn inequality_also_matches_a_missing_label() {
    let s = sel("role != 'db'");
    assert!(!s.matches(&labels(&[("role", "db")])));
    assert!(s.matches(&labels(&[("role", "web")])));
    assert!(s.matches(&labels(&[])));
}

#[test]
fn in_and_not_in() {
    let s = sel("role in {'a', 'b'}");
    assert!(s.matches(&labels(&[("role", "a")])));
    assert!(s.matches(&labels(&[("role", "b")])));
    assert!(!s.matches(&labels(&[("role", "c")])));
    assert!(!s.matches(&labels(&[])));
    let s = sel("role not in {'a', 'b'}");
    assert!(!s.matches(&labels(&[("role", "a")])));
    assert!(s.matches(&labels(&[("role", "c")])));
    assert!(s.matches(&labels(&[])), "not in matches a missing label");
}

#[test]
fn has_and_not_has() {
    assert!(sel("has(role)").matches(&labels(&[("role", "")])));
    assert!(!sel("has(role)").matches(&labels(&[("x", "y")])));
    assert!(sel("!has(role)").matches(&labels(&[("x", "y")])));
    assert!(!sel("!has(role)").matches(&labels(&[("role", "y")])));
}

#[test]
fn all_and_empty_match_everything() {
    for text in ["all()", "", "   ", "all( )", "all ()"] {
        assert!(sel(text).matches(&labels(&[])), "{text:?}");
        assert!(sel(text).is_all(), "{text:?}");
    }
    assert!(!sel("!all()").matches(&labels(&[])));
}

#[test]
fn substring_operators() {
    let l = labels(&[("name", "production-web")]);
    assert!(sel("name contains 'ion-w'").matches(&l));
    assert!(sel("name starts with 'prod'").matches(&l));
    assert!(sel("name ends with 'web'").matches(&l));
    assert!(!sel("name ends with 'prod'").matches(&l));
    assert!(!sel("other contains ''").matches(&l), "needs the label");
    assert!(sel("!(name contains 'x')").matches(&l));
    assert!(sel("!(other contains 'x')").matches(&l));
}

#[test]
fn precedence_is_not_then_and_then_or() {
    // Calico's documentation example: ((!has(my-label)) || ((starts) && (in))).
    let s =
        sel("! has(my-label) || my-label starts with 'prod' && role in {'frontend','business'}");
    assert!(s.matches(&labels(&[("role", "x")])));
    assert!(s.matches(&labels(&[("my-label", "prod-1"), ("role", "business")])));
    assert!(!s.matches(&labels(&[("my-label", "prod-1"), ("role", "db")])));
    assert!(!s.matches(&labels(&[("my-label", "test"), ("role", "frontend")])));
    // `a || b && c` is `a || (b && c)`.
    let s = sel("a == '1' || b == '1' && c == '1'");
    assert!(s.matches(&labels(&[("a", "1")])));
    assert!(!s.matches(&labels(&[("b", "1")])));
    // Parentheses override.
    let s = sel("(a == '1' || b == '1') && c == '1'");
    assert!(!s.matches(&labels(&[("a", "1")])));
    assert!(s.matches(&labels(&[("b", "1"), ("c", "1")])));
}

#[test]
fn negation_of_groups() {
    let s = sel("!(a == '1' && b == '2')");
    assert!(s.matches(&labels(&[("a", "1")])));
    assert!(!s.matches(&labels(&[("a", "1"), ("b", "2")])));
    assert!(sel("!!has(a)").matches(&labels(&[("a", "")])));
    assert!(!sel("!!!has(a)").matches(&labels(&[("a", "")])));
}

#[test]
fn both_quote_styles_and_quotes_inside() {
    assert_eq!(sel(r#"a == "x""#), sel("a == 'x'"));
    let s = sel(r#"a == 'say "hi"'"#);
    assert!(s.matches(&labels(&[("a", "say \"hi\"")])));
    assert_eq!(s.to_string(), r#"a == 'say "hi"'"#);
    let s = sel(r#"a == "it's""#);
    assert_eq!(s.to_string(), r#"a == "it's""#);
    assert_eq!(sel("a == ''").to_string(), r#"a == """#);
}

#[test]
fn label_keys_with_prefixes_and_keyword_names() {
    let s = sel("example.com/tier-1_x == 'a' && has(k8s.io/app)");
    assert!(s.matches(&labels(&[
        ("example.com/tier-1_x", "a"),
        ("k8s.io/app", "")
    ])));
    assert_eq!(
        s.label_keys().into_iter().collect::<Vec<_>>(),
        vec!["example.com/tier-1_x", "k8s.io/app"]
    );
    // Keywords are keys when not followed by '('.
    assert!(sel("has == 'x'").matches(&labels(&[("has", "x")])));
    assert!(sel("all != 'x'").matches(&labels(&[])));
    assert!(sel("in in {'in'}").matches(&labels(&[("in", "in")])));
    assert!(sel("not not in {'x'}").matches(&labels(&[])));
}

#[test]
fn whitespace_is_free() {
    assert_eq!(
        canon("a=='b'&&b!='c'"),
        canon("  a  ==  'b'\t&&\n b != 'c' ")
    );
    assert_eq!(canon("k in{'a','b'}"), canon("k in { 'b' , 'a' }"));
    assert_eq!(canon("has( k )"), "has(k)");
    assert_eq!(canon("k not   in {'a','b'}"), r#"k not in {"a", "b"}"#);
    assert_eq!(canon("k starts   with 'a'"), r#"k starts with "a""#);
}

#[test]
fn trailing_comma_in_a_set_is_accepted_like_calico() {
    assert_eq!(canon("k in {'a', 'b',}"), r#"k in {"a", "b"}"#);
}

// --- Canonical form --------------------------------------------------------

#[test]
fn canonical_form_examples() {
    let cases = [
        ("role == 'database'", r#"role == "database""#),
        ("b == 'x' && a == 'y'", r#"a == "y" && b == "x""#),
        ("(a == 'y') && ((b == 'x'))", r#"a == "y" && b == "x""#),
        ("a == 'y' && a == 'y'", r#"a == "y""#),
        ("!(a == 'y')", r#"a != "y""#),
        ("!(a != 'y')", r#"a == "y""#),
        ("!(k in {'a','b'})", r#"k not in {"a", "b"}"#),
        ("!(k not in {'a','b'})", r#"k in {"a", "b"}"#),
        ("k in {'a'}", r#"k == "a""#),
        ("k not in {'a', 'a'}", r#"k != "a""#),
        ("k in {}", "!all()"),
        ("k not in {}", "all()"),
        ("!(has(a) && has(b))", "!has(a) || !has(b)"),
        ("!(has(a) || has(b))", "!has(a) && !has(b)"),
        (
            "a == 'x' && (b == 'x' && c == 'x')",
            r#"a == "x" && b == "x" && c == "x""#,
        ),
        (
            "(b == 'x' && c == 'x') || a == 'x'",
            r#"a == "x" || (b == "x" && c == "x")"#,
        ),
        ("all() && has(a)", "has(a)"),
        ("all() || has(a)", "all()"),
        ("!all() || has(a)", "has(a)"),
        ("!all() && has(a)", "!all()"),
        ("!!all()", "all()"),
        ("k contains ''", "has(k)"),
        ("!(k starts with '')", "!has(k)"),
        ("!(k ends with 'x')", r#"!(k ends with "x")"#),
        ("k contains 'x'", r#"k contains "x""#),
    ];
    for (input, expected) in cases {
        assert_eq!(canon(input), expected, "canonical form of {input:?}");
        // And the canonical text is a fixed point.
        assert_eq!(canon(expected), expected, "{expected:?} re-parsed");
    }
}

#[test]
fn spellings_of_one_selector_are_equal_and_hash_alike() {
    use std::collections::HashSet;
    let spellings = [
        "role == 'db' && tier in {'a','b'}",
        "tier in {\"b\", \"a\"} && role == \"db\"",
        "((tier in {'a', 'b', 'a'}) && !(role != 'db'))",
        "!(!(role == 'db') || tier not in {'b','a'})",
    ];
    let set: HashSet<Selector> = spellings.iter().map(|s| sel(s)).collect();
    assert_eq!(set.len(), 1, "{set:?}");
    let texts: HashSet<String> = spellings.iter().map(|s| canon(s)).collect();
    assert_eq!(texts.len(), 1);
    // The original text is kept for printing back.
    assert_eq!(sel(spellings[1]).source(), spellings[1]);
}

// --- Errors ----------------------------------------------------------------

#[test]
fn errors_carry_the_byte_offset_and_a_caret() {
    let cases: [(&str, usize, &str); 22] = [
        ("role == database", 8, "expected a quoted value after '=='"),
        ("role = 'db'", 5, "'=' must be '=='"),
        ("a == 'x' & b == 'y'", 9, "'&' must be '&&'"),
        ("a == 'x' | b == 'y'", 9, "'|' must be '||'"),
        ("role == 'db", 8, "unterminated string"),
        ("role", 4, "expected an operator after the label 'role'"),
        (
            "role is 'db'",
            5,
            "expected an operator after the label 'role'",
        ),
        ("role in 'db'", 8, "expected '{' after 'in'"),
        ("role in {'a' 'b'}", 13, "expected ',' or '}' in a set"),
        ("role in {a}", 9, "expected a quoted value or '}' in a set"),
        ("role not 'x'", 9, "expected 'in' after 'not'"),
        ("role starts 'x'", 12, "expected 'with' after 'starts'"),
        ("(a == 'x'", 9, "expected ')' to close the '(' at byte 0"),
        ("a == 'x')", 8, "unmatched ')'"),
        (
            "a == 'x' b == 'y'",
            9,
            "expected '&&', '||' or the end of the selector",
        ),
        ("has()", 4, "expected a label key in has(...)"),
        ("has(a b)", 6, "expected ')' to close has("),
        ("all(x)", 4, "expected ')' to close all("),
        ("global()", 0, "global() is not supported"),
        ("()", 1, "empty parentheses"),
        (
            "a == 'x' && ",
            12,
            "expected a label, '(', '!', has(...) or all()",
        ),
        ("a == 'x' # comment", 9, "unexpected character '#'"),
    ];
    for (input, offset, message) in cases {
        let e = err(input);
        assert_eq!(e.offset, offset, "offset for {input:?}: {e}");
        assert!(
            e.message.starts_with(message),
            "message for {input:?}: {:?} should start with {message:?}",
            e.message
        );
        assert_eq!(e.input, input);
    }
}

#[test]
fn error_display_shows_a_caret_under_the_error() {
    let e = err("role == database");
    assert_eq!(
        e.to_string(),
        "expected a quoted value after '==', found 'database' at byte 8\n  role == database\n          ^"
    );
    // Columns count characters, not bytes.
    let e = err("a == 'é' x");
    assert_eq!(e.offset, 10);
    assert_eq!(e.caret(), "a == 'é' x\n         ^");
    assert_eq!(err("é == 'x'").message, "unexpected character 'é'");
    let e = err("a ==\n'x' &");
    assert_eq!(e.caret(), "a == 'x' &\n         ^");
}

#[test]
fn nesting_is_bounded() {
    let ok = format!(
        "{}has(a){}",
        "(".repeat(MAX_NESTING),
        ")".repeat(MAX_NESTING)
    );
    assert!(Selector::parse(&ok).is_ok());
    let deep = format!(
        "{}has(a){}",
        "(".repeat(MAX_NESTING + 1),
        ")".repeat(MAX_NESTING + 1)
    );
    let e = err(&deep);
    assert!(e.message.contains("nest more than"), "{e}");
    // Long runs of '!' and long flat chains need no recursion.
    let bangs = format!("{}has(a)", "!".repeat(100_000));
    assert!(sel(&bangs).matches(&labels(&[("a", "")])));
    let chain = vec!["has(a)"; 10_000].join(" && ");
    assert_eq!(canon(&chain), "has(a)");
}

#[test]
fn serde_uses_the_source_text() {
    let s = sel("role == 'db'");
    assert_eq!(serde_json::to_string(&s).unwrap(), r#""role == 'db'""#);
    let back: Selector = serde_json::from_str(r#""role == 'db'""#).unwrap();
    assert_eq!(back, s);
    assert!(serde_json::from_str::<Selector>(r#""role =""#).is_err());
    assert_eq!("has(a)".parse::<Selector>().unwrap(), sel("has( a )"));
}

// --- Properties -------------------------------------------------------------

const KEYS: [&str; 3] = ["a", "b", "ex.com/c-d_e"];
const VALUES: [&str; 5] = ["x", "y", "", "q\"r", "it's"];

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(&KEYS[..]).prop_map(str::to_string)
}

fn value() -> impl Strategy<Value = String> {
    prop::sample::select(&VALUES[..]).prop_map(str::to_string)
}

fn leaf() -> impl Strategy<Value = Expr> {
    prop_oneof![
        Just(Expr::All),
        key().prop_map(Expr::Has),
        (key(), value()).prop_map(|(k, v)| Expr::Eq(k, v)),
        (key(), value()).prop_map(|(k, v)| Expr::Ne(k, v)),
        (key(), prop::collection::btree_set(value(), 0..4)).prop_map(|(k, s)| Expr::In(k, s)),
        (key(), prop::collection::btree_set(value(), 0..4)).prop_map(|(k, s)| Expr::NotIn(k, s)),
        (key(), value()).prop_map(|(k, v)| Expr::Contains(k, v)),
        (key(), value()).prop_map(|(k, v)| Expr::StartsWith(k, v)),
        (key(), value()).prop_map(|(k, v)| Expr::EndsWith(k, v)),
    ]
}

fn expr() -> impl Strategy<Value = Expr> {
    leaf().prop_recursive(5, 40, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
            prop::collection::vec(inner, 2..4).prop_map(Expr::Or),
        ]
    })
}

fn label_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(key(), value(), 0..3)
}

/// A small deterministic source of spelling choices.
struct Style(u64);

impl Style {
    fn pick(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
    fn space(&mut self) -> &'static str {
        ["", " ", "  ", "\t"][self.pick(4) as usize]
    }
    fn quote(&mut self, v: &str) -> String {
        let q = if v.contains('"') {
            '\''
        } else if v.contains('\'') || self.pick(2) == 0 {
            '"'
        } else {
            '\''
        };
        format!("{q}{v}{q}")
    }
}

/// Spells an expression in raw Calico syntax with varied whitespace,
/// quoting and redundant parentheses (the raw tree, not the normal form).
fn spell(e: &Expr, st: &mut Style) -> String {
    let sp = st.space();
    let text = match e {
        Expr::All => format!("all({sp})"),
        Expr::Nothing => format!("!{sp}all()"),
        Expr::Has(k) => format!("has({sp}{k}{sp})"),
        Expr::NotHas(k) => format!("!has({k})"),
        Expr::Eq(k, v) => format!("{k}{sp}=={} {}", st.space(), st.quote(v)),
        Expr::Ne(k, v) => format!("{k} !={sp}{}", st.quote(v)),
        Expr::In(k, set) | Expr::NotIn(k, set) => {
            let op = if matches!(e, Expr::In(..)) {
                "in"
            } else {
                "not in"
            };
            let items: Vec<String> = set.iter().map(|v| st.quote(v)).collect();
            format!(
                "{k} {op}{sp}{{{}}}",
                items.join(&format!(",{}", st.space()))
            )
        }
        Expr::Contains(k, v) => format!("{k} contains {}", st.quote(v)),
        Expr::StartsWith(k, v) => format!("{k} starts with{sp} {}", st.quote(v)),
        Expr::EndsWith(k, v) => format!("{k}  ends with {}", st.quote(v)),
        Expr::Not(inner) => format!("!{sp}({})", spell(inner, st)),
        Expr::And(es) | Expr::Or(es) => {
            let op = if matches!(e, Expr::And(_)) {
                "&&"
            } else {
                "||"
            };
            let parts: Vec<String> = es
                .iter()
                .map(|x| {
                    let s = spell(x, st);
                    if x.is_compound() || st.pick(3) == 0 {
                        format!("({s})")
                    } else {
                        s
                    }
                })
                .collect();
            parts.join(&format!("{}{op}{}", st.space(), st.space()))
        }
    };
    if st.pick(6) == 0 {
        format!("({text})")
    } else {
        text
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any spelling parses, means what the raw tree means, and its canonical
    /// text parses back to the same selector and the same text.
    #[test]
    fn spellings_parse_to_the_same_meaning(e in expr(), seed in 1u64.., maps in prop::collection::vec(label_map(), 8)) {
        let text = spell(&e, &mut Style(seed));
        let s = Selector::parse(&text).map_err(|err| TestCaseError::fail(format!("{text:?}: {err}")))?;
        for m in &maps {
            prop_assert_eq!(s.matches(m), e.matches(m), "{:?} on {:?} (canonical {})", text, m, s);
        }
        let canonical = s.to_string();
        let again = Selector::parse(&canonical).map_err(|err| TestCaseError::fail(format!("{canonical:?}: {err}")))?;
        prop_assert_eq!(&again, &s);
        prop_assert_eq!(again.to_string(), canonical);
        prop_assert_eq!(e.normalized(), s.expr().clone());
        prop_assert_eq!(s.expr().normalized(), s.expr().clone(), "normalising is idempotent");
    }

    /// Two spellings of one tree give one canonical text.
    #[test]
    fn canonical_text_does_not_depend_on_spelling(e in expr(), a in 1u64.., b in 1u64..) {
        let x = Selector::parse(&spell(&e, &mut Style(a))).unwrap();
        let y = Selector::parse(&spell(&e, &mut Style(b))).unwrap();
        prop_assert_eq!(x.to_string(), y.to_string());
    }

    #[test]
    fn parse_never_panics_on_arbitrary_text(text in any::<String>()) {
        let _ = Selector::parse(&text);
    }

    #[test]
    fn parse_never_panics_on_selector_like_text(text in "[a-c()!&|=' \"{},.in ]{0,60}") {
        if let Err(e) = Selector::parse(&text) {
            prop_assert!(e.offset <= text.len());
            let _ = e.to_string();
        }
    }
}
