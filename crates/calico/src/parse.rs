//! Policy files in Calico's format → validated [`GlobalNetworkPolicy`] values.
//!
//! Two steps: the text (YAML, or JSON when it opens like JSON: `{"`, `[{`, `[]`) is
//! read into plain values, refusing duplicate keys, YAML tags and
//! non-finite numbers; then a walk over those values checks every key and
//! value, so an error names the document and the exact field path. A field
//! that netmod does not implement is refused, never ignored. The few Calico
//! fields whose default value means "no effect" (`spec.tier: default`,
//! `spec.doNotTrack/preDNAT/applyOnForward: false`, an empty
//! `spec.namespaceSelector`/`serviceAccountSelector` or rule
//! `namespaceSelector`, as `calicoctl` exports print them) are accepted in
//! that form only.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{DocumentRef, Error, ErrorKind, ListForm};
use crate::model::*;
use crate::selector::Selector;

type Result<T> = std::result::Result<T, Error>;

/// Parses a file's text: one or many YAML documents (`---`), or JSON values,
/// each a `GlobalNetworkPolicy`, a `List`/`GlobalNetworkPolicyList` with
/// `items`, or an array of policies. Empty documents are skipped; an empty
/// file gives no policies. Names must be unique within the file. The
/// policies come back in file order.
pub fn parse_policies(text: &str) -> Result<Vec<GlobalNetworkPolicy>> {
    let documents = read_documents(text)?;
    let mut out = Vec::new();
    let mut seen: HashMap<String, DocumentRef> = HashMap::new();
    for (index, value) in documents {
        for (item, resource) in expand(index, &value)? {
            let doc = DocumentRef {
                index,
                item,
                name: resource
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            };
            let policy = policy_from_value(resource).map_err(|e| e.in_document(&doc))?;
            if let Some(first) = seen.get(&policy.name) {
                return Err(Error::new(
                    "metadata.name",
                    ErrorKind::DuplicateName {
                        first: first.clone(),
                    },
                )
                .in_document(&doc));
            }
            seen.insert(policy.name.clone(), doc);
            out.push(policy);
        }
    }
    Ok(out)
}

impl GlobalNetworkPolicy {
    /// Validates one resource given as a JSON value (the form
    /// [`GlobalNetworkPolicy::to_json_value`] produces).
    pub fn from_json_value(value: &Value) -> Result<GlobalNetworkPolicy> {
        policy_from_value(value)
    }

    /// Checks a policy built in code against the same rules as a parsed one
    /// (parsed policies always pass).
    pub fn validate(&self) -> Result<()> {
        if !self.types.ingress && !self.types.egress {
            return Err(Error::invalid(
                "spec.types",
                "a policy must apply to at least one direction",
            ));
        }
        policy_from_value(&self.to_json_value()).map(|_| ())
    }
}

impl<'de> Deserialize<'de> for GlobalNetworkPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        policy_from_value(&value).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------
// Step 1: text → documents of plain values.

fn read_documents(text: &str) -> Result<Vec<(usize, Value)>> {
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    // JSON when it opens like JSON (`{"`, `[{"`, `[]`, ...); a YAML flow
    // collection such as `{apiVersion: ...}` stays YAML.
    let after_brackets =
        trimmed.trim_start_matches(|c: char| c == '{' || c == '[' || c.is_whitespace());
    let looks_like_json = trimmed.len() != after_brackets.len()
        && (after_brackets.is_empty() || after_brackets.starts_with(['"', '}', ']']));
    if looks_like_json {
        read_json(trimmed)
    } else {
        read_yaml(text)
    }
}

fn read_json(text: &str) -> Result<Vec<(usize, Value)>> {
    let mut out = Vec::new();
    let stream = serde_json::Deserializer::from_str(text).into_iter::<serde_norway::Value>();
    for (i, doc) in stream.enumerate() {
        let doc = doc.map_err(|e| syntax(i + 1, "JSON", e.to_string()))?;
        push_document(&mut out, i + 1, doc)?;
    }
    Ok(out)
}

fn read_yaml(text: &str) -> Result<Vec<(usize, Value)>> {
    let mut out = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let doc = serde_norway::Value::deserialize(doc)
            .map_err(|e| syntax(i + 1, "YAML", e.to_string()))?;
        push_document(&mut out, i + 1, doc)?;
    }
    Ok(out)
}

fn syntax(index: usize, format: &'static str, message: String) -> Error {
    Error::new("", ErrorKind::Syntax { format, message }).in_document(&DocumentRef {
        index,
        item: None,
        name: None,
    })
}

fn push_document(
    out: &mut Vec<(usize, Value)>,
    index: usize,
    doc: serde_norway::Value,
) -> Result<()> {
    let value = plain(doc, "").map_err(|e| {
        e.in_document(&DocumentRef {
            index,
            item: None,
            name: None,
        })
    })?;
    if !value.is_null() {
        out.push((index, value));
    }
    Ok(())
}

/// A YAML value as a JSON value: string keys, finite numbers, no tags.
fn plain(value: serde_norway::Value, path: &str) -> Result<Value> {
    use serde_norway::Value as Y;
    Ok(match value {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                match serde_json::Number::from_f64(f) {
                    Some(n) => Value::Number(n),
                    None => return Err(Error::invalid(path, format!("{n} is not a finite number"))),
                }
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| plain(v, &index(path, i)))
                .collect::<Result<_>>()?,
        ),
        Y::Mapping(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let key = match k {
                    Y::String(s) => s,
                    other => {
                        return Err(Error::invalid(
                            path,
                            format!("keys must be strings, found {}", describe_yaml(&other)),
                        ))
                    }
                };
                let v = plain(v, &join(path, &key))?;
                out.insert(key, v);
            }
            Value::Object(out)
        }
        Y::Tagged(tagged) => {
            return Err(Error::invalid(
                path,
                format!(
                    "unexpected YAML tag {}; a value that starts with '!' (such as the selector \"!has(k)\") must be quoted",
                    tagged.tag
                ),
            ))
        }
    })
}

fn describe_yaml(v: &serde_norway::Value) -> String {
    match serde_norway::to_string(v) {
        Ok(s) => format!("`{}`", s.trim()),
        Err(_) => "a non-string key".to_string(),
    }
}

/// Where an entry sits in a list.
type Item = Option<(ListForm, usize)>;

/// A document's policies: itself, or the entries of a list.
fn expand(index: usize, value: &Value) -> Result<Vec<(Item, &Value)>> {
    let doc = DocumentRef {
        index,
        item: None,
        name: None,
    };
    match value {
        Value::Array(items) => Ok(items
            .iter()
            .enumerate()
            .map(|(i, v)| (Some((ListForm::Array, i)), v))
            .collect()),
        Value::Object(map)
            if matches!(
                map.get("kind").and_then(Value::as_str),
                Some("List") | Some(LIST_KIND)
            ) =>
        {
            list_items(map)
                .map(|items| {
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, v)| (Some((ListForm::Items, i)), v))
                        .collect()
                })
                .map_err(|e| e.in_document(&doc))
        }
        Value::Object(_) => Ok(vec![(None, value)]),
        other => Err(
            wrong_type("", "a policy (a mapping) or a list of policies", other).in_document(&doc),
        ),
    }
}

fn list_items(map: &Map<String, Value>) -> Result<&Vec<Value>> {
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default();
    check_keys(
        map,
        "",
        &["apiVersion", "kind", "items", "metadata"],
        |_, _| None,
    )?;
    let api_version = required_str(map, "", "apiVersion")?;
    let ok = api_version == API_VERSION || (kind == "List" && api_version == "v1");
    if !ok {
        let expected = if kind == "List" {
            format!("\"v1\" or \"{API_VERSION}\"")
        } else {
            format!("\"{API_VERSION}\"")
        };
        return Err(Error::invalid(
            "apiVersion",
            format!("{api_version:?} is not supported for kind {kind}; expected {expected}"),
        ));
    }
    if let Some(meta) = get(map, "metadata") {
        // List metadata describes the listing (paging), not the policies.
        let meta = object(meta, "metadata")?;
        check_keys(
            meta,
            "metadata",
            &["resourceVersion", "continue"],
            |_, _| None,
        )?;
    }
    match get(map, "items") {
        None => Err(Error::new("items", ErrorKind::Missing)),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(wrong_type("items", "a list", other)),
    }
}

// ---------------------------------------------------------------------------
// Step 2: the walk.

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".to_string(),
        Value::Object(_) => "a mapping".to_string(),
    }
}

fn wrong_type(path: &str, expected: &'static str, found: &Value) -> Error {
    Error::new(
        path,
        ErrorKind::WrongType {
            expected,
            found: describe(found),
        },
    )
}

/// A present, non-null field.
fn get<'v>(map: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    map.get(key).filter(|v| !v.is_null())
}

fn object<'v>(v: &'v Value, path: &str) -> Result<&'v Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| wrong_type(path, "a mapping", v))
}

fn array<'v>(v: &'v Value, path: &str) -> Result<&'v Vec<Value>> {
    v.as_array().ok_or_else(|| wrong_type(path, "a list", v))
}

fn string<'v>(v: &'v Value, path: &str) -> Result<&'v str> {
    v.as_str().ok_or_else(|| wrong_type(path, "a string", v))
}

fn required_str<'v>(map: &'v Map<String, Value>, path: &str, key: &str) -> Result<&'v str> {
    match get(map, key) {
        None => Err(Error::new(join(path, key), ErrorKind::Missing)),
        Some(v) => string(v, &join(path, key)),
    }
}

/// Refuses any key not in `allowed`; `special` may give a better error for
/// a key (a Calico field netmod does not implement) or accept it (`Some(Ok)`).
fn check_keys(
    map: &Map<String, Value>,
    path: &str,
    allowed: &[&'static str],
    special: impl Fn(&str, &Value) -> Option<Result<()>>,
) -> Result<()> {
    for (key, value) in map {
        if allowed.contains(&key.as_str()) {
            continue;
        }
        match special(key, value) {
            Some(Ok(())) => continue,
            Some(Err(e)) => return Err(e),
            None => {
                return Err(Error::new(
                    join(path, key),
                    ErrorKind::UnknownField {
                        expected: allowed.to_vec(),
                    },
                ))
            }
        }
    }
    Ok(())
}

/// Accepts a Calico field only with its no-effect value.
fn only_noop(path: &str, key: &str, value: &Value, noop: &Value, what: &str) -> Option<Result<()>> {
    let path = join(path, key);
    Some(if value.is_null() || value == noop {
        Ok(())
    } else {
        Err(Error::unsupported(path, what.to_string()))
    })
}

fn string_map(v: &Value, path: &str) -> Result<BTreeMap<String, String>> {
    object(v, path)?
        .iter()
        .map(|(k, v)| Ok((k.clone(), string(v, &join(path, k))?.to_string())))
        .collect()
}

fn integer(v: &Value, path: &str, min: u64, max: u64, what: &str) -> Result<u64> {
    match v.as_u64() {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ if v.is_number() => Err(Error::invalid(
            path,
            format!("{v} is not {what} ({min}–{max})"),
        )),
        _ => Err(wrong_type(path, "an integer", v)),
    }
}

/// A DNS-1123 subdomain: lower-case letters, digits, '-' and '.', each
/// dot-separated part starting and ending with a letter or digit, at most
/// 253 characters in all.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

fn policy_from_value(value: &Value) -> Result<GlobalNetworkPolicy> {
    let map = object(value, "")?;
    // Kind and version first: for the wrong kind of resource, the key
    // check below would only confuse.
    let kind = required_str(map, "", "kind")?;
    if kind != KIND {
        return Err(match kind {
            "NetworkPolicy" | "StagedNetworkPolicy" | "StagedGlobalNetworkPolicy" => Error::unsupported(
                "kind",
                format!("{kind}: netmod implements GlobalNetworkPolicy only (it has no namespaces or staging)"),
            ),
            _ => Error::invalid("kind", format!("{kind:?} is not {KIND:?}")),
        });
    }
    let api_version = required_str(map, "", "apiVersion")?;
    if api_version != API_VERSION {
        let hint = if api_version == "crd.projectcalico.org/v1" {
            " (that is the storage form inside Kubernetes; write the projectcalico.org/v3 form)"
        } else {
            ""
        };
        return Err(Error::invalid(
            "apiVersion",
            format!("{api_version:?} is not supported; expected {API_VERSION:?}{hint}"),
        ));
    }
    check_keys(
        map,
        "",
        &["apiVersion", "kind", "metadata", "spec"],
        |key, _| {
            (key == "status").then(|| {
                Err(Error::unsupported(
                    "status",
                    "status is set by an API server; remove it",
                ))
            })
        },
    )?;

    let Some(meta) = get(map, "metadata") else {
        return Err(Error::new("metadata", ErrorKind::Missing));
    };
    let meta = object(meta, "metadata")?;
    check_keys(
        meta,
        "metadata",
        &["name", "labels", "annotations"],
        |key, _| match key {
            "namespace" => Some(Err(Error::unsupported(
                "metadata.namespace",
                "a GlobalNetworkPolicy is not namespaced; remove metadata.namespace",
            ))),
            "resourceVersion"
            | "uid"
            | "creationTimestamp"
            | "generation"
            | "generateName"
            | "managedFields"
            | "selfLink"
            | "deletionTimestamp"
            | "deletionGracePeriodSeconds"
            | "finalizers"
            | "ownerReferences" => Some(Err(Error::unsupported(
                join("metadata", key),
                "set by a Kubernetes or Calico API server; remove it from the file",
            ))),
            _ => None,
        },
    )?;
    let name = required_str(meta, "metadata", "name")?;
    if !valid_name(name) {
        return Err(Error::invalid(
            "metadata.name",
            format!(
                "{name:?} is not a valid name: use lower-case letters, digits, '-' and '.', start and end each dot-separated part with a letter or digit, at most 253 characters"
            ),
        ));
    }
    let labels = match get(meta, "labels") {
        Some(v) => string_map(v, "metadata.labels")?,
        None => BTreeMap::new(),
    };
    let annotations = match get(meta, "annotations") {
        Some(v) => string_map(v, "metadata.annotations")?,
        None => BTreeMap::new(),
    };

    let empty = Map::new();
    let spec = match get(map, "spec") {
        Some(v) => object(v, "spec")?,
        None => &empty,
    };
    spec_from_map(name, labels, annotations, spec)
}

fn spec_from_map(
    name: &str,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    spec: &Map<String, Value>,
) -> Result<GlobalNetworkPolicy> {
    check_keys(
        spec,
        "spec",
        &[
            "order",
            "selector",
            "types",
            "ingress",
            "egress",
            "performanceHints",
        ],
        |key, value| {
            match key {
            "tier" => only_noop(
                "spec",
                key,
                value,
                &Value::from("default"),
                "policy tiers; only the default tier exists (`tier: default`)",
            ),
            "doNotTrack" | "preDNAT" | "applyOnForward" => only_noop(
                "spec",
                key,
                value,
                &Value::Bool(false),
                "host-endpoint policy options (only `false` is accepted)",
            ),
            "namespaceSelector" | "serviceAccountSelector" => only_noop(
                "spec",
                key,
                value,
                &Value::from(""),
                "namespace and service-account selection (netmod has neither); select endpoints with spec.selector",
            ),
            _ => None,
        }
        },
    )?;

    let order = match get(spec, "order") {
        None => None,
        Some(v) => match v.as_f64() {
            Some(f) if v.is_number() && f.is_finite() => Some(f),
            _ => return Err(wrong_type("spec.order", "a number", v)),
        },
    };
    let selector = match get(spec, "selector") {
        None => Selector::parse("").expect("the empty selector parses"),
        Some(v) => selector(v, "spec.selector")?,
    };
    let ingress = rules(spec, "ingress")?;
    let egress = rules(spec, "egress")?;
    let explicit_types = match get(spec, "types") {
        None => None,
        Some(v) => {
            let items = array(v, "spec.types")?;
            let mut types = Types {
                ingress: false,
                egress: false,
            };
            for (i, item) in items.iter().enumerate() {
                let path = index("spec.types", i);
                let flag = match string(item, &path)? {
                    "Ingress" => &mut types.ingress,
                    "Egress" => &mut types.egress,
                    other => {
                        return Err(Error::invalid(
                            path,
                            format!(
                            "{other:?} is not a policy type; expected \"Ingress\" or \"Egress\""
                        ),
                        ))
                    }
                };
                if *flag {
                    return Err(Error::invalid(path, "listed twice"));
                }
                *flag = true;
            }
            // Calico treats an empty list like an absent one.
            (!items.is_empty()).then_some(types)
        }
    };
    let types = match explicit_types {
        Some(types) => {
            for (direction, rules) in [(Direction::Ingress, &ingress), (Direction::Egress, &egress)]
            {
                if !rules.is_empty() && !types.has(direction) {
                    return Err(Error::invalid(
                        join("spec", &direction.as_str().to_lowercase()),
                        format!(
                            "{} rules are given but spec.types does not include {direction}, so they would never apply",
                            direction.as_str().to_lowercase()
                        ),
                    ));
                }
            }
            types
        }
        None => Types::default_for(!ingress.is_empty(), !egress.is_empty()),
    };
    let performance_hints = match get(spec, "performanceHints") {
        None => Vec::new(),
        Some(v) => array(v, "spec.performanceHints")?
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let path = index("spec.performanceHints", i);
                match string(h, &path)? {
                    "AssumeNeededOnEveryNode" => Ok("AssumeNeededOnEveryNode".to_string()),
                    other => Err(Error::invalid(
                        path,
                        format!("{other:?} is not a performance hint; expected \"AssumeNeededOnEveryNode\""),
                    )),
                }
            })
            .collect::<Result<_>>()?,
    };
    Ok(GlobalNetworkPolicy {
        name: name.to_string(),
        labels,
        annotations,
        order,
        selector,
        types,
        ingress,
        egress,
        performance_hints,
    })
}

fn selector(v: &Value, path: &str) -> Result<Selector> {
    Selector::parse(string(v, path)?).map_err(|e| Error::new(path, ErrorKind::Selector(e)))
}

fn rules(spec: &Map<String, Value>, key: &str) -> Result<Vec<Rule>> {
    let path = join("spec", key);
    match get(spec, key) {
        None => Ok(Vec::new()),
        Some(v) => array(v, &path)?
            .iter()
            .enumerate()
            .map(|(i, r)| rule(r, &index(&path, i)))
            .collect(),
    }
}

const RULE_KEYS: [&str; 9] = [
    "action",
    "metadata",
    "ipVersion",
    "protocol",
    "notProtocol",
    "icmp",
    "notICMP",
    "source",
    "destination",
];

fn rule(v: &Value, path: &str) -> Result<Rule> {
    let map = object(v, path)?;
    check_keys(map, path, &RULE_KEYS, |key, _| {
        (key == "http").then(|| {
            Err(Error::unsupported(
                join(path, key),
                "HTTP matching needs Calico's application-layer policy",
            ))
        })
    })?;
    let action = match required_str(map, path, "action")? {
        "Allow" => Action::Allow,
        "Deny" => Action::Deny,
        "Log" => Action::Log,
        "Pass" => Action::Pass,
        other => {
            let hint = ["Allow", "Deny", "Log", "Pass"]
                .iter()
                .find(|a| a.eq_ignore_ascii_case(other))
                .map(|a| format!(" (did you mean {a:?}?)"))
                .unwrap_or_default();
            return Err(Error::invalid(
                join(path, "action"),
                format!("{other:?} is not an action; expected \"Allow\", \"Deny\", \"Log\" or \"Pass\"{hint}"),
            ));
        }
    };
    let annotations = match get(map, "metadata") {
        None => BTreeMap::new(),
        Some(m) => {
            let mpath = join(path, "metadata");
            let meta = object(m, &mpath)?;
            check_keys(meta, &mpath, &["annotations"], |_, _| None)?;
            match get(meta, "annotations") {
                Some(a) => string_map(a, &join(&mpath, "annotations"))?,
                None => BTreeMap::new(),
            }
        }
    };
    let ip_version = match get(map, "ipVersion") {
        None => None,
        Some(v) => Some(match v.as_u64() {
            Some(4) => IpVersion::V4,
            Some(6) => IpVersion::V6,
            _ => {
                return Err(Error::invalid(
                    join(path, "ipVersion"),
                    format!("{} is not an IP version; expected 4 or 6", describe(v)),
                ))
            }
        }),
    };
    let protocol = get(map, "protocol")
        .map(|v| parse_protocol(v, &join(path, "protocol")))
        .transpose()?;
    let not_protocol = get(map, "notProtocol")
        .map(|v| parse_protocol(v, &join(path, "notProtocol")))
        .transpose()?;
    let icmp = get(map, "icmp")
        .map(|v| parse_icmp(v, &join(path, "icmp")))
        .transpose()?;
    let not_icmp = get(map, "notICMP")
        .map(|v| parse_icmp(v, &join(path, "notICMP")))
        .transpose()?;
    let source = match get(map, "source") {
        None => EntityRule::default(),
        Some(v) => entity(v, &join(path, "source"))?,
    };
    let destination = match get(map, "destination") {
        None => EntityRule::default(),
        Some(v) => entity(v, &join(path, "destination"))?,
    };
    let rule = Rule {
        action,
        annotations,
        ip_version,
        protocol,
        not_protocol,
        icmp,
        not_icmp,
        source,
        destination,
    };
    check_rule(&rule, path)?;
    Ok(rule)
}

/// The checks that involve more than one field of a rule.
fn check_rule(rule: &Rule, path: &str) -> Result<()> {
    // ICMP type/code only with an ICMP protocol.
    for (key, m) in [("icmp", &rule.icmp), ("notICMP", &rule.not_icmp)] {
        if m.is_some() && !rule.protocol.is_some_and(Protocol::is_icmp) {
            return Err(Error::invalid(
                join(path, key),
                format!("{key} needs protocol ICMP or ICMPv6"),
            ));
        }
    }
    // ICMP is IPv4's, ICMPv6 is IPv6's.
    if let Some(version) = rule.ip_version {
        for (key, p) in [
            ("protocol", rule.protocol),
            ("notProtocol", rule.not_protocol),
        ] {
            let needs = match p.map(Protocol::number) {
                Some(1) => IpVersion::V4,
                Some(58) => IpVersion::V6,
                _ => continue,
            };
            if needs != version {
                return Err(Error::invalid(
                    join(path, "ipVersion"),
                    format!(
                        "{key} {} needs ipVersion {}, not {}",
                        p.unwrap(),
                        needs.number(),
                        version.number()
                    ),
                ));
            }
        }
    }
    // Ports only with a protocol that has them.
    for (side, entity) in [("source", &rule.source), ("destination", &rule.destination)] {
        for (key, ports) in [("ports", &entity.ports), ("notPorts", &entity.not_ports)] {
            if !ports.is_empty() && !rule.protocol.is_some_and(Protocol::has_ports) {
                return Err(Error::invalid(
                    join(&join(path, side), key),
                    format!("{key} need protocol TCP, UDP or SCTP"),
                ));
            }
        }
    }
    // Networks: one family per rule, agreeing with ipVersion; no catch-all
    // in notNets (it would match nothing of its family).
    let mut family: Option<(IpVersion, String)> = None;
    for (side, entity) in [("source", &rule.source), ("destination", &rule.destination)] {
        for (key, nets) in [("nets", &entity.nets), ("notNets", &entity.not_nets)] {
            for (i, net) in nets.iter().enumerate() {
                let here = index(&join(&join(path, side), key), i);
                let version = IpVersion::of_net(net);
                if let Some(v) = rule.ip_version {
                    if v != version {
                        return Err(Error::invalid(
                            here,
                            format!(
                                "{net} is IPv{} but the rule's ipVersion is {}",
                                version.number(),
                                v.number()
                            ),
                        ));
                    }
                }
                match &family {
                    Some((v, first)) if *v != version => {
                        return Err(Error::invalid(
                            here,
                            format!(
                                "{net} is IPv{} but {first} is IPv{}: one rule cannot mix IPv4 and IPv6 networks",
                                version.number(),
                                v.number()
                            ),
                        ))
                    }
                    Some(_) => {}
                    None => family = Some((version, here.clone())),
                }
                if key == "notNets" && net.prefix_len() == 0 {
                    return Err(Error::invalid(
                        here,
                        format!("{net} in notNets excludes every address of its family, so the rule could never match"),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn parse_protocol(v: &Value, path: &str) -> Result<Protocol> {
    match v {
        Value::String(s) => Protocol::from_name(s).ok_or_else(|| {
            let hint = Protocol::NAMES
                .iter()
                .find(|n| n.eq_ignore_ascii_case(s))
                .map(|n| format!(" (did you mean {n:?}?)"))
                .or_else(|| {
                    s.parse::<u8>()
                        .ok()
                        .map(|n| format!(" (write a protocol number without quotes: {n})"))
                })
                .unwrap_or_default();
            Error::invalid(
                path,
                format!(
                    "{s:?} is not a protocol; expected one of {} or a number 1–255{hint}",
                    Protocol::NAMES.join(", ")
                ),
            )
        }),
        Value::Number(_) => {
            let n = integer(v, path, 1, 255, "a protocol number")?;
            // Keep the number as written; `Protocol::number` equates it with the name.
            Ok(Protocol::Number(n as u8))
        }
        other => Err(wrong_type(path, "a protocol name or number", other)),
    }
}

fn parse_icmp(v: &Value, path: &str) -> Result<IcmpMatch> {
    let map = object(v, path)?;
    check_keys(map, path, &["type", "code"], |_, _| None)?;
    let code = get(map, "code")
        .map(|c| integer(c, &join(path, "code"), 0, 255, "an ICMP code").map(|n| n as u8))
        .transpose()?;
    let icmp_type = match get(map, "type") {
        Some(t) => integer(t, &join(path, "type"), 0, 254, "an ICMP type")? as u8,
        None if code.is_some() => {
            return Err(Error::invalid(
                join(path, "code"),
                "an ICMP code needs an ICMP type",
            ))
        }
        None => return Err(Error::new(join(path, "type"), ErrorKind::Missing)),
    };
    Ok(IcmpMatch { icmp_type, code })
}

const ENTITY_KEYS: [&str; 6] = [
    "nets",
    "notNets",
    "selector",
    "notSelector",
    "ports",
    "notPorts",
];

fn entity(v: &Value, path: &str) -> Result<EntityRule> {
    let map = object(v, path)?;
    check_keys(map, path, &ENTITY_KEYS, |key, value| match key {
        "namespaceSelector" => only_noop(
            path,
            key,
            value,
            &Value::from(""),
            "namespace selection (netmod has no namespaces); match endpoints with selector",
        ),
        "serviceAccounts" => Some(Err(Error::unsupported(
            join(path, key),
            "service-account matching (netmod endpoints have no service accounts)",
        ))),
        "services" => Some(Err(Error::unsupported(
            join(path, key),
            "Kubernetes service matching",
        ))),
        _ => None,
    })?;
    let nets = |key: &str| -> Result<Vec<IpNet>> {
        let kpath = join(path, key);
        match get(map, key) {
            None => Ok(Vec::new()),
            Some(v) => array(v, &kpath)?
                .iter()
                .enumerate()
                .map(|(i, n)| net(n, &index(&kpath, i)))
                .collect(),
        }
    };
    let ports = |key: &str| -> Result<Vec<PortRange>> {
        let kpath = join(path, key);
        match get(map, key) {
            None => Ok(Vec::new()),
            Some(v) => array(v, &kpath)?
                .iter()
                .enumerate()
                .map(|(i, p)| port(p, &index(&kpath, i)))
                .collect(),
        }
    };
    let sel = |key: &str| -> Result<Option<Selector>> {
        match get(map, key) {
            None => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(v) => selector(v, &join(path, key)).map(Some),
        }
    };
    Ok(EntityRule {
        nets: nets("nets")?,
        not_nets: nets("notNets")?,
        selector: sel("selector")?,
        not_selector: sel("notSelector")?,
        ports: ports("ports")?,
        not_ports: ports("notPorts")?,
    })
}

fn net(v: &Value, path: &str) -> Result<IpNet> {
    let s = string(v, path)?;
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net);
    }
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    Err(Error::invalid(
        path,
        format!("{s:?} is not a CIDR or an IP address"),
    ))
}

fn port(v: &Value, path: &str) -> Result<PortRange> {
    let bad = || Error::invalid(path, format!("{v} is not a port or a from:to range"));
    let number = |s: &str| -> Option<u16> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u16>().ok())
            .flatten()
    };
    match v {
        Value::Number(_) => v
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .map(PortRange::single)
            .ok_or_else(bad),
        Value::String(s) => {
            if let Some((from, to)) = s.split_once(':') {
                let (Some(first), Some(last)) = (number(from.trim()), number(to.trim())) else {
                    return Err(bad());
                };
                if first > last {
                    return Err(Error::invalid(
                        path,
                        format!("{v} is not a from:to range: {first} is greater than {last}"),
                    ));
                }
                Ok(PortRange { first, last })
            } else if let Some(p) = number(s.trim()) {
                Ok(PortRange::single(p))
            } else if is_port_name(s) {
                Err(Error::unsupported(
                    path,
                    format!(
                        "{v} is a named port; netmod endpoints have no named ports, use numbers"
                    ),
                ))
            } else {
                Err(bad())
            }
        }
        other => Err(wrong_type(
            path,
            "a port number or a \"from:to\" string",
            other,
        )),
    }
}

/// Kubernetes' port-name syntax (IANA service names): 1–15 lower-case
/// letters, digits and '-', with a letter, no leading/trailing/double '-'.
fn is_port_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(|c| c.is_ascii_lowercase())
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !s.contains("--")
}

#[cfg(test)]
mod tests;
