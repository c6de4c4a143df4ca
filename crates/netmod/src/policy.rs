//! `netmod policy`: Calico GlobalNetworkPolicy resources in the datastore.
//! Files are parsed and validated completely (netmod-calico) before anything
//! is stored, and one file is stored in one transaction: all or nothing.

use crate::output::{self, OutputArg};
use crate::CliError;
use netmod_calico::GlobalNetworkPolicy;
use netmod_core::policies::{self, Applied};
use netmod_store::Store;
use std::io::Read;

const APPLY_HELP: &str = "Create or update the policies of a file (Calico's GlobalNetworkPolicy, \
apiVersion projectcalico.org/v3).

The file is YAML or JSON: one or many documents (`---`), a \
GlobalNetworkPolicyList or List with `items`, or an array. Every document is \
checked first; a field netmod does not implement, a bad selector, a bad port \
range or two policies of one name is an error that names the document and the \
field, and then nothing is stored, not even the file's valid policies. \
Otherwise all of them are stored in one transaction, and each is reported as \
created, updated or unchanged.

Every `netmod node` follows the stored policies and enforces them. Selectors \
see an endpoint's labels plus one label per netgroup, \
`netgroup.netmod.io/<group>` with an empty value: `has(netgroup.netmod.io/web)`.";

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCmd {
    /// Create or update the policies of a YAML or JSON file: all of them, or none when any is invalid.
    #[command(long_about = APPLY_HELP)]
    Apply {
        /// The policy file (YAML or JSON, one or many documents); `-` reads stdin.
        #[arg(short = 'f', long = "filename", value_name = "FILE")]
        file: String,
    },
    /// List the stored policies in evaluation order (order, then name); `-o yaml|json` prints a GlobalNetworkPolicyList.
    List,
    /// Print one policy in Calico's format: YAML unless `-o json` (the default table format prints YAML too). A missing policy is an error (exit status 1).
    Get {
        /// The policy's name (metadata.name).
        name: String,
    },
    /// Delete one policy. A missing policy is an error (exit status 1) unless --ignore-not-found.
    Delete {
        /// The policy's name (metadata.name).
        name: String,
        /// A missing policy is not an error: say "nothing to delete" and exit 0.
        #[arg(long)]
        ignore_not_found: bool,
    },
}

/// Run one policy command against the store `--store` names. Only `apply`
/// may create the store, and only once its file has been accepted.
pub fn run(store_flag: Option<&str>, cmd: PolicyCmd, out: OutputArg) -> Result<(), CliError> {
    match cmd {
        PolicyCmd::Apply { file } => {
            if out == OutputArg::Yaml {
                return Err(CliError::Other(
                    "-o yaml is not an output of `policy apply`; use -o table or -o json".into(),
                ));
            }
            let (label, text) = read_file(&file)?;
            let policies = parse_file(&label, &text)?;
            apply(&*crate::open(store_flag)?, &policies, out)
        }
        PolicyCmd::List => list(&*crate::open_existing(store_flag)?, out),
        PolicyCmd::Get { name } => {
            check_name(&name)?;
            get(&*crate::open_existing(store_flag)?, &name, out)
        }
        PolicyCmd::Delete {
            name,
            ignore_not_found,
        } => {
            check_name(&name)?;
            delete(
                &*crate::open_existing(store_flag)?,
                &name,
                ignore_not_found,
                out,
            )
        }
    }
}

/// The largest policy file read (a guard against `-f /dev/zero`).
const MAX_FILE_BYTES: u64 = 64 << 20;

/// The file's text, and how to name it in messages.
fn read_file(file: &str) -> Result<(String, String), CliError> {
    let (label, bytes) = if file == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| CliError::Other(format!("reading stdin: {e}")))?;
        ("stdin".to_string(), bytes)
    } else {
        let mut bytes = Vec::new();
        std::fs::File::open(file)
            .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
            .map_err(|e| CliError::Other(format!("cannot read {file}: {e}")))?;
        (file.to_string(), bytes)
    };
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(CliError::Other(format!(
            "{label} is larger than {} MiB; nothing was applied",
            MAX_FILE_BYTES >> 20
        )));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        CliError::Other(format!(
            "{label} is not UTF-8 text (byte {}); nothing was applied",
            e.utf8_error().valid_up_to()
        ))
    })?;
    Ok((label, text))
}

/// Parse a policy file completely: every error names the file, the document
/// and the field.
fn parse_file(label: &str, text: &str) -> Result<Vec<GlobalNetworkPolicy>, CliError> {
    let policies = netmod_calico::parse_policies(text).map_err(|e| {
        // A selector error goes on with the selector and a caret under the
        // position: keep the sentence on the first line.
        let msg = e.to_string();
        let (sentence, caret) = msg.split_once('\n').unwrap_or((&msg, ""));
        let sep = if caret.is_empty() { "" } else { "\n" };
        CliError::Other(format!(
            "{label}: {sentence}; nothing was applied{sep}{caret}"
        ))
    })?;
    if policies.is_empty() {
        return Err(CliError::Other(format!(
            "{label}: the file holds no policy; nothing was applied"
        )));
    }
    Ok(policies)
}

fn apply(
    store: &dyn Store,
    policies: &[GlobalNetworkPolicy],
    out: OutputArg,
) -> Result<(), CliError> {
    let outcome = policies::apply(store, policies)?;
    match out {
        OutputArg::Json => {
            #[derive(serde::Serialize)]
            struct Row<'a> {
                name: &'a str,
                result: Applied,
            }
            let rows: Vec<Row> = outcome
                .iter()
                .map(|(name, result)| Row {
                    name,
                    result: *result,
                })
                .collect();
            output::json(&rows);
        }
        OutputArg::Table | OutputArg::Yaml => output::table(
            &["NAME", "RESULT"],
            &outcome
                .iter()
                .map(|(name, result)| vec![name.clone(), applied_word(*result).to_string()])
                .collect::<Vec<_>>(),
        ),
    }
    Ok(())
}

fn applied_word(a: Applied) -> &'static str {
    match a {
        Applied::Created => "created",
        Applied::Updated => "updated",
        Applied::Unchanged => "unchanged",
    }
}

/// The list table's columns for one policy.
pub fn row(p: &GlobalNetworkPolicy) -> Vec<String> {
    let selector = p.selector.source().trim();
    let mut types = Vec::new();
    if p.types.ingress {
        types.push("Ingress");
    }
    if p.types.egress {
        types.push("Egress");
    }
    vec![
        p.name.clone(),
        p.order.map_or_else(|| "-".to_string(), |o| o.to_string()),
        if selector.is_empty() {
            "all()".to_string()
        } else {
            selector.to_string()
        },
        types.join(","),
        p.ingress.len().to_string(),
        p.egress.len().to_string(),
    ]
}

fn list(store: &dyn Store, out: OutputArg) -> Result<(), CliError> {
    let all = policies::list(store)?;
    match out {
        OutputArg::Json => println!("{}", netmod_calico::list_to_json(&all)),
        OutputArg::Yaml => print!("{}", netmod_calico::list_to_yaml(&all)),
        OutputArg::Table => output::table(
            &[
                "NAME",
                "ORDER",
                "SELECTOR",
                "TYPES",
                "INGRESS RULES",
                "EGRESS RULES",
            ],
            &all.iter().map(row).collect::<Vec<_>>(),
        ),
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), CliError> {
    if netmod_calico::valid_name(name) {
        Ok(())
    } else {
        Err(CliError::Other(format!(
            "{name:?} is not a policy name (lower-case letters, digits, '-' and '.', at most 253 characters)"
        )))
    }
}

fn get(store: &dyn Store, name: &str, out: OutputArg) -> Result<(), CliError> {
    let Some(p) = policies::get(store, name)? else {
        return Err(CliError::Other(format!(
            "no policy named {name} (`netmod policy list` lists them)"
        )));
    };
    match out {
        OutputArg::Json => println!("{}", p.to_json()),
        OutputArg::Yaml | OutputArg::Table => print!("{}", p.to_yaml()),
    }
    Ok(())
}

fn delete(
    store: &dyn Store,
    name: &str,
    ignore_not_found: bool,
    out: OutputArg,
) -> Result<(), CliError> {
    let deleted = policies::delete(store, name)?;
    if !deleted && !ignore_not_found {
        return Err(CliError::Other(format!(
            "no policy named {name}, nothing to delete (--ignore-not-found makes this exit 0)"
        )));
    }
    match out {
        OutputArg::Json => output::json(&serde_json::json!({"name": name, "deleted": deleted})),
        _ if deleted => println!("policy {name} deleted"),
        _ => println!("no policy named {name}, nothing to delete"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calico's documentation example, in examples/calico/.
    const DOC_EXAMPLE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/calico/allow-tcp-6379.yaml"
    ));

    #[test]
    fn the_list_row_of_calicos_example() {
        let p = parse_file("f", DOC_EXAMPLE).unwrap();
        assert_eq!(
            row(&p[0]),
            [
                "allow-tcp-6379",
                "-",
                "role == 'database'",
                "Ingress,Egress",
                "1",
                "1"
            ]
        );
    }

    #[test]
    fn an_empty_file_is_an_error_and_errors_name_the_file() {
        let e = parse_file("p.yaml", "\n---\n").unwrap_err().to_string();
        assert!(e.starts_with("p.yaml: the file holds no policy"), "{e}");
        let e = parse_file("p.yaml", &DOC_EXAMPLE.replace("ports:", "portz:"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("p.yaml: document 1 (allow-tcp-6379): spec.ingress[0].destination"),
            "{e}"
        );
        assert!(e.ends_with("nothing was applied"), "{e}");
    }

    #[test]
    fn policy_names_are_checked_before_the_store_is_asked() {
        assert!(check_name("allow-tcp-6379").is_ok());
        for bad in ["", "A", "a/b", "-a", "a..b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
