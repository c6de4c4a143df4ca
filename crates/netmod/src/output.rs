//! Human tables by default, JSON for scripts (`-o json`), and YAML where a
//! resource has a file format of its own (`netmod policy get/list -o yaml`).

use crate::CliError;

/// What most commands print: a table or JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// The global `-o` flag: `yaml` is for the policy commands only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputArg {
    Table,
    Json,
    Yaml,
}

impl OutputArg {
    /// The format of a command that prints tables or JSON only.
    pub fn plain(self) -> Result<Format, CliError> {
        match self {
            OutputArg::Table => Ok(Format::Table),
            OutputArg::Json => Ok(Format::Json),
            OutputArg::Yaml => Err(CliError::Other(
                "-o yaml is only for `netmod policy get` and `netmod policy list`; \
                 use -o table or -o json"
                    .into(),
            )),
        }
    }
}

/// Print rows under a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

pub fn json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("plain data serialises")
    );
}
